//! What a job can leave behind to run again later, outside the runner's
//! files and the home: the user's crontab and `at` jobs, a lingering
//! systemd user manager (which starts the user's units at boot and keeps
//! them running after the job), and SysV IPC objects. All of it belongs to
//! the dedicated runner user alone, so all of it goes.

use crate::nofollow::{DirFd, FsError, Kind};
use crate::runner::user::RunnerUser;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Where cron keeps one crontab per user, named after the user: Debian and
/// Ubuntu (cron), then Amazon Linux and RHEL (cronie).
const CRONTAB_DIRS: &[&str] = &["/var/spool/cron/crontabs", "/var/spool/cron"];
/// Where `at` keeps its queued jobs, one file per job, owned by the user
/// who queued it (Debian's at; at on Amazon Linux and RHEL).
const AT_DIRS: &[&str] = &["/var/spool/cron/atjobs", "/var/spool/at"];
/// systemd-logind's linger flags, one empty file per user.
const LINGER_DIR: &str = "/var/lib/systemd/linger";
/// The cron and at deny lists (consulted when no allow list exists).
const DENY_FILES: &[&str] = &["/etc/cron.deny", "/etc/at.deny"];

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ipcrm {args:?}: {reason}")]
    Ipcrm { args: Vec<String>, reason: String },
    #[error("writing {path}: {source}")]
    Deny {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the system files live; the tests point it into a temp dir.
#[derive(Debug, Clone)]
pub struct Places {
    pub root: PathBuf,
    pub sysvipc: PathBuf,
}

impl Default for Places {
    fn default() -> Self {
        Places {
            root: PathBuf::from("/"),
            sysvipc: PathBuf::from("/proc/sysvipc"),
        }
    }
}

impl Places {
    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

/// What went, for the reset's summary.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleared {
    pub crontabs: usize,
    pub at_jobs: usize,
    pub linger: bool,
    pub ipc: usize,
}

impl Cleared {
    pub fn is_empty(&self) -> bool {
        *self == Cleared::default()
    }
}

impl std::fmt::Display for Cleared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} crontabs, {} at jobs, {} linger, {} IPC objects",
            self.crontabs,
            self.at_jobs,
            if self.linger { "1" } else { "no" },
            self.ipc
        )
    }
}

/// Removes every crontab, `at` job, linger flag and SysV IPC object of
/// `user`.
pub fn clear(user: &RunnerUser, places: &Places) -> Result<Cleared, PersistError> {
    sweep(user, places, true)
}

/// What of those `user` has now (the check: nothing), changing nothing.
pub fn find(user: &RunnerUser, places: &Places) -> Result<Cleared, PersistError> {
    sweep(user, places, false)
}

fn sweep(user: &RunnerUser, places: &Places, remove: bool) -> Result<Cleared, PersistError> {
    let name = OsStr::new(&user.name);
    let gone = |dir: &DirFd, name: &OsStr| -> Result<bool, FsError> {
        Ok(if remove {
            dir.remove(name)? > 0
        } else {
            dir.stat(name)?.is_some()
        })
    };
    let mut cleared = Cleared::default();
    for dir in CRONTAB_DIRS {
        if let Some(dir) = DirFd::open(&places.at(dir))? {
            // Only a file named after the user: /var/spool/cron also holds
            // Debian's spool directories.
            let is_file = dir
                .stat(name)?
                .is_some_and(|s| crate::nofollow::kind_of(&s) == Kind::Other);
            if is_file && gone(&dir, name)? {
                cleared.crontabs += 1;
            }
        }
    }
    for dir in AT_DIRS {
        if let Some(mut dir) = DirFd::open(&places.at(dir))? {
            for entry in dir.entries()? {
                if entry.stat.st_uid == user.uid.as_raw()
                    && entry.kind() == Kind::Other
                    && gone(&dir, &entry.name)?
                {
                    cleared.at_jobs += 1;
                }
            }
        }
    }
    if let Some(dir) = DirFd::open(&places.at(LINGER_DIR))? {
        cleared.linger = gone(&dir, name)?;
    }
    cleared.ipc = ipc(user.uid.as_raw(), &places.sysvipc, remove)?;
    Ok(cleared)
}

/// SysV shared memory, semaphores and message queues the user owns or
/// created, from `/proc/sysvipc/{shm,sem,msg}` (columns found by their
/// header, which differs per kind), removed with util-linux's `ipcrm`.
fn ipc(uid: u32, sysvipc: &Path, remove: bool) -> Result<usize, PersistError> {
    let mut args = Vec::new();
    for (file, id_column, flag) in [
        ("shm", "shmid", "-m"),
        ("sem", "semid", "-s"),
        ("msg", "msqid", "-q"),
    ] {
        let path = sysvipc.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // No SysV IPC in this kernel (or no /proc/sysvipc): nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(PersistError::Read { path, source }),
        };
        for id in owned_ids(&text, id_column, uid) {
            args.push(flag.to_owned());
            args.push(id);
        }
    }
    if args.is_empty() || !remove {
        return Ok(args.len() / 2);
    }
    let out = std::process::Command::new("ipcrm")
        .args(&args)
        .output()
        .map_err(|e| PersistError::Ipcrm {
            args: args.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(PersistError::Ipcrm {
            args,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(args.len() / 2)
}

/// Ids (column `id_column`) of the rows whose `uid` or `cuid` is `uid`.
fn owned_ids(table: &str, id_column: &str, uid: u32) -> Vec<String> {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let columns: Vec<&str> = header.split_whitespace().collect();
    let find = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(id), Some(owner), Some(creator)) = (find(id_column), find("uid"), find("cuid"))
    else {
        return Vec::new();
    };
    let uid = uid.to_string();
    lines
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|row| {
            row.get(owner) == Some(&uid.as_str()) || row.get(creator) == Some(&uid.as_str())
        })
        .filter_map(|row| row.get(id).map(|s| s.to_string()))
        .collect()
}

/// Adds `user` to cron's and at's deny lists (the operator's opt-in), so
/// neither takes jobs from it at all.
pub fn deny(user: &RunnerUser, places: &Places) -> Result<(), PersistError> {
    use std::io::Write;
    for file in DENY_FILES {
        let path = places.at(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(PersistError::Read { path, source }),
        };
        if text.lines().any(|l| l.trim() == user.name) {
            continue;
        }
        let line = if text.is_empty() || text.ends_with('\n') {
            format!("{}\n", user.name)
        } else {
            format!("\n{}\n", user.name)
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|source| PersistError::Deny { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{Gid, Uid};

    const SHM: &str = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n         0         17  1600                  1024   100   100      0  1001  1001  1001  1001          0          0 1700000000                     0                     0\n         0         18  1600                  1024   100   100      0     0     0     0     0          0          0 1700000000                     0                     0\n";
    const SEM: &str = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n  12345678          3   600          1     0     0  1001  1001          0 1700000000\n";

    #[test]
    fn ipc_rows_are_found_by_their_header() {
        assert_eq!(owned_ids(SHM, "shmid", 1001), ["17"]);
        // Created by the user, handed to root: still the run's.
        assert_eq!(owned_ids(SEM, "semid", 1001), ["3"]);
        assert!(owned_ids(SHM, "shmid", 1002).is_empty());
        assert!(owned_ids("", "shmid", 1001).is_empty());
    }

    fn user(uid: u32) -> RunnerUser {
        RunnerUser {
            name: "ci".into(),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(uid),
            groups: vec![],
            home: "/home/ci".into(),
        }
    }

    /// In a fake root: the user's crontab (both layouts), at jobs, linger
    /// flag go; another user's, and Debian's spool directories, stay.
    #[test]
    fn crontabs_at_jobs_and_linger_of_the_user_go() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let me = std::fs::metadata(r).unwrap().uid();
        for path in [
            "var/spool/cron/crontabs/ci",
            "var/spool/cron/crontabs/other",
            "var/spool/cron/ci",
            "var/spool/cron/atjobs/a0001",
            "var/lib/systemd/linger/ci",
            "var/lib/systemd/linger/other",
        ] {
            std::fs::create_dir_all(r.join(path).parent().unwrap()).unwrap();
            std::fs::write(r.join(path), "x").unwrap();
        }
        let places = Places {
            root: r.to_owned(),
            sysvipc: r.join("no-sysvipc"),
        };
        let found = find(&user(me), &places).unwrap();
        let cleared = clear(&user(me), &places).unwrap();
        assert_eq!(found, cleared, "looking finds what clearing removes");
        assert!(find(&user(me), &places).unwrap().is_empty());
        assert_eq!(
            cleared,
            Cleared {
                crontabs: 2,
                at_jobs: 1,
                linger: true,
                ipc: 0
            }
        );
        assert!(r.join("var/spool/cron/crontabs/other").exists());
        assert!(r.join("var/lib/systemd/linger/other").exists());
        assert!(r.join("var/spool/cron/atjobs").is_dir());
        // Someone else's at job stays.
        std::fs::write(r.join("var/spool/cron/atjobs/a0002"), "x").unwrap();
        assert_eq!(clear(&user(me + 1), &places).unwrap().at_jobs, 0);
    }

    #[test]
    fn deny_lists_get_the_user_once() {
        let root = tempfile::tempdir().unwrap();
        let places = Places {
            root: root.path().to_owned(),
            sysvipc: root.path().join("x"),
        };
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/cron.deny"), "daemon").unwrap();
        deny(&user(1), &places).unwrap();
        deny(&user(1), &places).unwrap();
        let cron = std::fs::read_to_string(root.path().join("etc/cron.deny")).unwrap();
        assert_eq!(cron, "daemon\nci\n");
        let at = std::fs::read_to_string(root.path().join("etc/at.deny")).unwrap();
        assert_eq!(at, "ci\n");
    }
}

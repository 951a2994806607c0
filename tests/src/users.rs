//! Users a test creates: the dedicated runner user of a hostile-job test,
//! the users whose isolation hardened mode checks. Made afresh (a leftover
//! of a killed run is removed first) and removed again when dropped, with
//! whatever crontab, at jobs and processes they still have. Also what a
//! test that switches users needs first: root, a system user that stays
//! (`ensure_user`), and a stack the runner user can reach.

use crate::Stack;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// Whether the test runs as root; if not, it says that it is skipped and
/// why (`needs`), and the caller returns.
pub fn root_or_skip(needs: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: {needs}");
    false
}

/// The uid of system user `name`, created if missing and left in place
/// (tests of one binary share it).
pub fn ensure_user(name: &str) -> u32 {
    let id = || Command::new("id").args(["-u", name]).output().unwrap();
    let mut out = id();
    if !out.status.success() {
        // Another test may create it at the same time.
        let _ = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/bash", name])
            .status();
        out = id();
    }
    assert!(out.status.success(), "no user {name}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

impl Stack {
    /// A runner user other than root must reach the stack's directory and
    /// write the fake runner's log and job queue.
    pub fn open_to_runner_user(&self) {
        let mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        mode(self.dir.path(), 0o755);
        std::fs::write(self.runner_log(), "").unwrap();
        mode(&self.runner_log(), 0o666);
        mode(&self.jobs_dir(), 0o777);
    }
}

pub struct TestUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

impl TestUser {
    /// A system user with no home and no login shell, in `groups`.
    pub fn create(name: &'static str, groups: &[&str]) -> TestUser {
        let list = groups.join(",");
        let mut args = vec!["--no-create-home", "--shell", "/usr/sbin/nologin"];
        if !groups.is_empty() {
            args.extend(["--groups", &list]);
        }
        Self::add(name, &args)
    }

    /// A user whose home is `home` (made and given to it), with bash as
    /// its shell: what a runner user has on an instance.
    pub fn with_home(name: &'static str, home: &Path) -> TestUser {
        let home_text = home.to_string_lossy().into_owned();
        let user = Self::add(
            name,
            &[
                "--home-dir",
                &home_text,
                "--no-create-home",
                "--shell",
                "/bin/bash",
            ],
        );
        std::fs::create_dir_all(home).unwrap();
        std::os::unix::fs::chown(home, Some(user.uid), Some(user.gid)).unwrap();
        user
    }

    fn add(name: &'static str, extra: &[&str]) -> TestUser {
        remove(name);
        let mut args = vec!["useradd", "--system"];
        args.extend(extra);
        args.push(name);
        sh(&args);
        let id = |flag: &str| {
            String::from_utf8(sh(&["id", flag, name]).stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let user = TestUser {
            name,
            uid: id("-u"),
            gid: id("-g"),
        };
        // A uid is reused once its user is gone: what an earlier user of
        // this uid left (a killed test run) must not count for this one.
        purge_uid(user.uid);
        user
    }

    /// `command` run as this user (uid, gid, its groups), as a job would.
    pub fn run(&self, script: &str) -> Output {
        Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .args(["bash", "-c", script])
            .output()
            .unwrap()
    }
}

fn remove(name: &str) {
    let _ = Command::new("pkill").args(["-KILL", "-u", name]).output();
    let _ = Command::new("crontab").args(["-r", "-u", name]).output();
    let _ = Command::new("userdel").arg(name).output();
}

/// The SysV IPC objects `uid` owns or created, as `ipcrm` flag and id,
/// from `/proc/sysvipc` (columns found by their header).
pub fn sysv_of(uid: u32) -> Vec<(&'static str, String)> {
    let uid = uid.to_string();
    let mut found = Vec::new();
    for (kind, id_column, flag) in [
        ("shm", "shmid", "-m"),
        ("sem", "semid", "-s"),
        ("msg", "msqid", "-q"),
    ] {
        let table = std::fs::read_to_string(format!("/proc/sysvipc/{kind}")).unwrap_or_default();
        let mut lines = table.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let col = |name: &str| header.iter().position(|c| *c == name);
        let (Some(id), Some(owner), Some(creator)) = (col(id_column), col("uid"), col("cuid"))
        else {
            continue;
        };
        for row in lines.map(|l| l.split_whitespace().collect::<Vec<_>>()) {
            let mine = [owner, creator]
                .iter()
                .any(|c| row.get(*c) == Some(&uid.as_str()));
            if let (true, Some(id)) = (mine, row.get(id)) {
                found.push((flag, id.to_string()));
            }
        }
    }
    found
}

/// The `at` jobs `uid` queued (Debian's spool: one file per job, the
/// user's).
pub fn at_jobs_of(uid: u32) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/var/spool/cron/atjobs")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.uid() == uid))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The uid's SysV IPC objects and at jobs, which outlive a user.
fn purge_uid(uid: u32) {
    for (flag, id) in sysv_of(uid) {
        let _ = Command::new("ipcrm").args([flag, &id]).output();
    }
    for job in at_jobs_of(uid) {
        let _ = std::fs::remove_file(job);
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        purge_uid(self.uid);
        remove(self.name);
    }
}

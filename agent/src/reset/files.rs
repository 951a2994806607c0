//! Files a run leaves: the work directory (but for what is kept as a
//! cache), the runner's diagnostic logs (rotated, not wiped: they are what
//! an operator reads after a failed run), credentials in the runner user's
//! home, and the user's temp files. Every walk goes through `nofollow`:
//! links are removed, never followed, at the end of a path or in it.

use crate::nofollow::{DirFd, FsError, Kind, MAX_DEPTH};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The directory `name` in `parent` (a directory the operator configured);
/// `None` when either is missing, or when `name` was a link (removed).
fn open_in(parent: &Path, name: &str) -> Result<Option<DirFd>, FsError> {
    match DirFd::open(parent)? {
        Some(dir) => dir.descend(Path::new(name)),
        None => Ok(None),
    }
}

/// Empties `relative` (`_work`, the hooks' marker directory) in
/// `install_dir` but for the `keep` paths (relative to it). A kept path
/// deeper down keeps the directories above it, and only them.
pub fn empty(install_dir: &Path, relative: &str, keep: &[PathBuf]) -> Result<usize, FsError> {
    match open_in(install_dir, relative)? {
        Some(mut dir) => clean_keeping(&mut dir, keep),
        None => Ok(0),
    }
}

/// The kept paths below `name`, relative to it (a kept path deeper down
/// keeps the directories above it).
fn below(keep: &[PathBuf], name: &Path) -> Vec<PathBuf> {
    keep.iter()
        .filter_map(|k| k.strip_prefix(name).ok())
        .filter(|rest| !rest.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect()
}

fn clean_keeping(dir: &mut DirFd, keep: &[PathBuf]) -> Result<usize, FsError> {
    let mut removed = 0;
    for entry in dir.entries()? {
        let name = PathBuf::from(&entry.name);
        if keep.iter().any(|k| k == &name) {
            continue;
        }
        let deeper = below(keep, &name);
        let sub = if deeper.is_empty() {
            None
        } else {
            dir.child(&entry.name)?
        };
        match sub {
            Some(mut sub) => removed += clean_keeping(&mut sub, &deeper)?,
            None if dir.remove(&entry.name)? > 0 => removed += 1,
            None => {}
        }
    }
    Ok(removed)
}

/// Keeps the `keep` newest files of `_diag` in `install_dir` (and its
/// subdirectories) as long as they fit in `max_bytes`; removes the rest.
pub fn rotate_diag(install_dir: &Path, keep: usize, max_bytes: u64) -> Result<usize, FsError> {
    let Some(mut diag) = open_in(install_dir, "_diag")? else {
        return Ok(0);
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = diag
        .walk_files()?
        .into_iter()
        .map(|(path, stat)| {
            let mtime = SystemTime::UNIX_EPOCH
                + Duration::from_secs(stat.st_mtime.max(0) as u64)
                + Duration::from_nanos(stat.st_mtime_nsec.max(0) as u64);
            (mtime, stat.st_size.max(0) as u64, path)
        })
        .collect();
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let (mut kept, mut bytes, mut removed) = (0, 0u64, 0);
    for (_, size, path) in files {
        if kept < keep && bytes + size <= max_bytes {
            kept += 1;
            bytes += size;
        } else if diag.remove_path(&path)? > 0 {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Files under `home`'s `.ssh`, relative to it (what it held at first
/// start); nothing when it is missing or a link.
pub fn list_ssh(home: &Path) -> Result<BTreeSet<PathBuf>, FsError> {
    let mut found = BTreeSet::new();
    if let Some(mut ssh) = open_in(home, ".ssh")? {
        ssh.walk(&mut |relative, _| {
            found.insert(relative.to_owned());
        })?;
    }
    Ok(found)
}

/// Removes `paths` from `home`; `.ssh` only loses what `ssh_baseline`
/// (relative to `.ssh`) did not hold.
pub fn clean_home(
    home: &Path,
    paths: &[PathBuf],
    ssh_baseline: &BTreeSet<PathBuf>,
) -> Result<usize, FsError> {
    let Some(dir) = DirFd::open(home)? else {
        return Ok(0);
    };
    let mut removed = 0;
    for relative in paths {
        if relative == Path::new(".ssh") {
            let Some(mut ssh) = dir.descend(relative)? else {
                continue;
            };
            let mut extra = Vec::new();
            ssh.walk(&mut |path, _| {
                if !ssh_baseline.contains(path) {
                    extra.push(path.to_owned());
                }
            })?;
            // Parents before children: removing a new directory takes what
            // it holds, and its children are then gone already.
            for path in extra {
                if ssh.remove_path(&path)? > 0 {
                    removed += 1;
                }
            }
        } else if dir.remove_path(relative)? > 0 {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes what `uid` owns in each temp dir, at any depth: an entry of the
/// user goes whole; a directory of someone else's is looked into.
pub fn clean_temp(dirs: &[PathBuf], uid: u32) -> Result<usize, FsError> {
    owned_in(dirs, uid, true).map(|found| found.len())
}

/// What `uid` owns in the temp dirs (the check: none).
pub fn temp_of(dirs: &[PathBuf], uid: u32) -> Result<Vec<PathBuf>, FsError> {
    owned_in(dirs, uid, false)
}

fn owned_in(dirs: &[PathBuf], uid: u32, remove: bool) -> Result<Vec<PathBuf>, FsError> {
    let mut found = Vec::new();
    for path in dirs {
        if let Some(mut dir) = DirFd::open(path)? {
            owned(&mut dir, uid, 0, remove, &mut found)?;
        }
    }
    Ok(found)
}

fn owned(
    dir: &mut DirFd,
    uid: u32,
    depth: usize,
    remove: bool,
    found: &mut Vec<PathBuf>,
) -> Result<(), FsError> {
    if depth >= MAX_DEPTH {
        return Err(FsError::TooDeep(dir.path().to_owned()));
    }
    for entry in dir.entries()? {
        if entry.stat.st_uid == uid {
            if !remove || dir.remove(&entry.name)? > 0 {
                found.push(dir.path().join(&entry.name));
            }
        } else if entry.kind() == Kind::Dir {
            if let Some(mut sub) = dir.child(&entry.name)? {
                owned(&mut sub, uid, depth + 1, remove, found)?;
            }
        }
    }
    Ok(())
}

/// What `relative` (`_work`, the marker dir) in `install_dir` holds beyond
/// the `keep` paths and the directories above them (the check: nothing).
pub fn extra_in(
    install_dir: &Path,
    relative: &str,
    keep: &[PathBuf],
) -> Result<Vec<PathBuf>, FsError> {
    let Some(root) = DirFd::open(install_dir)? else {
        return Ok(Vec::new());
    };
    match root.lookup(Path::new(relative))? {
        Some(mut dir) => {
            let mut extra = Vec::new();
            beyond(&mut dir, Path::new(relative), keep, 0, &mut extra)?;
            Ok(extra)
        }
        None if root.exists(Path::new(relative))? => Ok(vec![PathBuf::from(relative)]),
        None => Ok(Vec::new()),
    }
}

fn beyond(
    dir: &mut DirFd,
    prefix: &Path,
    keep: &[PathBuf],
    depth: usize,
    extra: &mut Vec<PathBuf>,
) -> Result<(), FsError> {
    if depth >= MAX_DEPTH {
        return Err(FsError::TooDeep(dir.path().to_owned()));
    }
    for entry in dir.entries()? {
        let name = Path::new(&entry.name);
        if keep.iter().any(|k| k == name) {
            continue;
        }
        let deeper = below(keep, name);
        match dir.child(&entry.name)? {
            Some(mut sub) if !deeper.is_empty() => {
                beyond(&mut sub, &prefix.join(name), &deeper, depth + 1, extra)?
            }
            _ => extra.push(prefix.join(name)),
        }
    }
    Ok(())
}

/// The user's entries in `dir` (for the tests' sake: how a name is given).
#[cfg(test)]
fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut dir = DirFd::open(dir).unwrap().unwrap();
    dir.entries().unwrap().into_iter().map(|e| e.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![b'x'; bytes]).unwrap();
    }

    #[test]
    fn work_is_emptied_but_for_the_keep_list_and_links_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("_work");
        let outside = root.path().join("outside");
        touch(&outside.join("precious"), 1);
        touch(&work.join("_tool/node/18/bin/node"), 1);
        touch(&work.join("repo/repo/src/main.rs"), 1);
        touch(&work.join("cache/keep/a"), 1);
        touch(&work.join("cache/drop/b"), 1);
        touch(&work.join("_temp/secret"), 1);
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        let keep = [PathBuf::from("_tool"), PathBuf::from("cache/keep")];
        let removed = empty(root.path(), "_work", &keep).unwrap();
        assert_eq!(removed, 4, "repo, cache/drop, _temp, link");
        assert!(work.join("_tool/node/18/bin/node").exists());
        assert!(work.join("cache/keep/a").exists());
        assert!(!work.join("cache/drop").exists());
        assert!(!work.join("repo").exists());
        assert!(!work.join("link").exists());
        assert!(outside.join("precious").exists(), "link target untouched");
        assert_eq!(
            empty(&root.path().join("missing"), "_work", &keep).unwrap(),
            0
        );
        // _work itself a link: the link goes, its target stays whole.
        std::fs::remove_dir_all(&work).unwrap();
        std::os::unix::fs::symlink(&outside, &work).unwrap();
        assert_eq!(empty(root.path(), "_work", &keep).unwrap(), 0);
        assert!(!work.exists() && !work.is_symlink());
        assert!(outside.join("precious").exists());
    }

    #[test]
    fn diag_keeps_the_newest_files_within_the_cap() {
        let root = tempfile::tempdir().unwrap();
        let diag = root.path().join("_diag");
        for i in 0..6 {
            let path = diag.join(format!("Worker_{i}.log"));
            touch(&path, 100);
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        assert_eq!(rotate_diag(root.path(), 4, 10_000).unwrap(), 2);
        assert!(diag.join("Worker_5.log").exists());
        assert!(!diag.join("Worker_1.log").exists());
        // The size cap bites first: 250 bytes hold two files.
        assert_eq!(rotate_diag(root.path(), 4, 250).unwrap(), 2);
        assert!(diag.join("Worker_5.log").exists() && diag.join("Worker_4.log").exists());
        assert!(!diag.join("Worker_3.log").exists());
    }

    #[test]
    fn home_credentials_go_and_ssh_keeps_what_was_there_first() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        touch(&h.join(".docker/config.json"), 1);
        touch(&h.join(".docker/buildx/keep"), 1);
        touch(&h.join(".aws/credentials"), 1);
        touch(&h.join(".ssh/authorized_keys"), 1);
        let baseline = list_ssh(h).unwrap();
        touch(&h.join(".ssh/id_job"), 1);
        touch(&h.join(".ssh/new/key"), 1);
        touch(&h.join(".bashrc"), 1);
        let paths: Vec<PathBuf> = runner_agent_common::config::DEFAULT_HOME_PATHS
            .iter()
            .map(PathBuf::from)
            .collect();
        let removed = clean_home(h, &paths, &baseline).unwrap();
        assert_eq!(removed, 4, "config.json, .aws, id_job, new (with new/key)");
        assert!(!h.join(".docker/config.json").exists());
        assert!(h.join(".docker/buildx/keep").exists());
        assert!(!h.join(".aws").exists());
        assert!(h.join(".ssh/authorized_keys").exists());
        assert!(!h.join(".ssh/id_job").exists() && !h.join(".ssh/new").exists());
        assert!(h.join(".bashrc").exists());
    }

    /// `.ssh` and `.docker` replaced by links to directories of someone
    /// else's: the links go, every file they point at stays.
    #[test]
    fn home_links_are_removed_and_their_targets_kept() {
        let root = tempfile::tempdir().unwrap();
        let h = root.path().join("home");
        let elsewhere = root.path().join("root-owned");
        for name in ["authorized_keys", "config.json", "id_rsa"] {
            touch(&elsewhere.join(name), 1);
        }
        std::fs::create_dir_all(&h).unwrap();
        let baseline = list_ssh(&h).unwrap();
        std::os::unix::fs::symlink(&elsewhere, h.join(".ssh")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, h.join(".docker")).unwrap();
        let paths = [PathBuf::from(".docker/config.json"), PathBuf::from(".ssh")];
        clean_home(&h, &paths, &baseline).unwrap();
        assert!(!h.join(".ssh").is_symlink() && !h.join(".docker").is_symlink());
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 3);
    }

    #[test]
    fn temp_files_of_the_user_only() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        touch(&tmp.path().join("mine/a"), 1);
        touch(&tmp.path().join("mine.txt"), 1);
        let me = std::fs::metadata(tmp.path().join("mine.txt"))
            .unwrap()
            .uid();
        assert_eq!(clean_temp(&[tmp.path().to_path_buf()], me + 1).unwrap(), 0);
        assert_eq!(clean_temp(&[tmp.path().to_path_buf()], me).unwrap(), 2);
        assert_eq!(names(tmp.path()).len(), 0);
        // Deeper, inside a directory of someone else's (uid 0 here when
        // root: the test can chown only then).
        touch(&tmp.path().join("shared/deeper/mine"), 1);
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(tmp.path().join("shared"), Some(me + 7), None).unwrap();
            std::os::unix::fs::chown(tmp.path().join("shared/deeper"), Some(me + 7), None).unwrap();
            assert_eq!(clean_temp(&[tmp.path().to_path_buf()], me).unwrap(), 1);
            assert!(tmp.path().join("shared/deeper").exists());
            assert!(!tmp.path().join("shared/deeper/mine").exists());
        }
    }
}

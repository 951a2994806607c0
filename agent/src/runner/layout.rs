//! Who owns what in the install dir when the runner runs as a dedicated
//! user. Jobs run as that user, so whatever it can write, a job can change
//! for the next run: `config.sh`, `bin/`, `.env` (which the listener loads
//! into its environment) or the agent's hooks, edited by one run, would
//! run at the next registration and see its token. So the install is
//! root's and not writable by anyone else; the user owns only what the
//! listener writes while it runs: `_work`, `_diag` and the directory where
//! the job hooks leave their marker. Registration runs as root (config.sh
//! with `RUNNER_ALLOW_RUNASROOT`), and its files are given to root with the
//! user's group allowed to read them: the listener reads them, and the
//! root-side `config.sh remove` must not trust a `.runner` a job rewrote.
//!
//! What this costs: the listener cannot save a changed `.runner`
//! (`UpdateAgentNameIfNeeded`, which only logs the failure) or the
//! `.runner_migrated` / `.credentials_migrated` of a
//! `RunnerRefreshConfigMessage` (actions/runner `RunnerConfigUpdater`);
//! the registration is the run's own and is removed at its release.

use crate::nofollow::{DirFd, FsError, Kind};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, FileStat, Mode};
use nix::unistd::{Gid, Uid};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::path::Path;

use super::user::RunnerUser;
use super::{HOOK_DIR, JOB_DIR, REGISTRATION_FILES};

/// The user's own directories, relative to the install dir. What is in
/// them is the run's (the reset cleans it); the directories themselves are
/// re-made here whenever they are missing or a link stands in their place.
pub const USER_DIRS: &[&str] = &["_work", "_diag"];

fn sys(path: &Path) -> impl FnOnce(Errno) -> FsError + '_ {
    move |errno| FsError::Sys {
        path: path.to_owned(),
        errno,
    }
}

/// Gives the install at `dir` to root (no group or other write, no setuid
/// or setgid bit) but for the user's directories, which are made and given
/// to `user`, and the registration files, root's and readable by the
/// user's group. Nothing is followed: a link anywhere is changed as a link.
pub fn secure(dir: &Path, user: &RunnerUser) -> Result<(), FsError> {
    let Some(mut root) = DirFd::open(dir)? else {
        return Ok(());
    };
    own_as_root(&root, None)?;
    for entry in root.entries()? {
        let name = entry.name.to_string_lossy();
        if USER_DIRS.contains(&name.as_ref()) {
            continue;
        }
        if REGISTRATION_FILES.contains(&name.as_ref()) {
            registration_file(&root, &entry.name, user)?;
            continue;
        }
        secure_entry(&root, &entry.name, &entry.stat)?;
    }
    user_dirs(dir, user)
}

/// Makes the user's directories (`_work`, `_diag`, the hooks' marker
/// directory) where they are missing, and gives them to `user`; a link or
/// file in their place is removed first. What they hold is left alone.
pub fn user_dirs(dir: &Path, user: &RunnerUser) -> Result<(), FsError> {
    let Some(root) = DirFd::open(dir)? else {
        return Ok(());
    };
    let hooks = root.descend(Path::new(HOOK_DIR))?;
    let hooks = match hooks {
        Some(hooks) => hooks,
        None => {
            make_dir(
                &root,
                OsStr::new(HOOK_DIR),
                Uid::from_raw(0),
                Gid::from_raw(0),
                0o755,
            )?;
            root.descend(Path::new(HOOK_DIR))?
                .ok_or_else(|| sys(&dir.join(HOOK_DIR))(Errno::ENOENT))?
        }
    };
    own_as_root(&hooks, Some(0o755))?;
    for (parent, name) in USER_DIRS
        .iter()
        .map(|n| (&root, *n))
        .chain([(&hooks, JOB_DIR)])
    {
        let name = OsStr::new(name);
        if parent.child(name)?.is_none() {
            // Missing, or a link or file (removed: not followed).
            parent.remove(name)?;
            make_dir(parent, name, user.uid, user.gid, 0o755)?;
        }
        let sub = parent
            .child(name)?
            .ok_or_else(|| sys(&parent.path().join(name))(Errno::ENOENT))?;
        nix::unistd::fchown(sub.fd(), Some(user.uid), Some(user.gid)).map_err(sys(sub.path()))?;
    }
    Ok(())
}

fn make_dir(parent: &DirFd, name: &OsStr, uid: Uid, gid: Gid, mode: u32) -> Result<(), FsError> {
    let path = parent.path().join(name);
    match nix::sys::stat::mkdirat(parent.fd(), name, Mode::from_bits_truncate(mode)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(sys(&path)(errno)),
    }
    let dir = parent
        .child(name)?
        .ok_or_else(|| sys(&path)(Errno::ENOENT))?;
    nix::unistd::fchown(dir.fd(), Some(uid), Some(gid)).map_err(sys(&path))?;
    fchmod(dir.fd(), Mode::from_bits_truncate(mode)).map_err(sys(&path))
}

/// Root's, with the mode cut to `mode & 0o755` (or set to `mode`).
fn own_as_root(dir: &DirFd, mode: Option<u32>) -> Result<(), FsError> {
    let stat = nix::sys::stat::fstat(dir.fd()).map_err(sys(dir.path()))?;
    fix(
        dir.fd(),
        dir.path(),
        &stat,
        Uid::from_raw(0),
        Gid::from_raw(0),
        mode,
    )
}

fn fix(
    fd: impl AsFd,
    path: &Path,
    stat: &FileStat,
    uid: Uid,
    gid: Gid,
    mode: Option<u32>,
) -> Result<(), FsError> {
    if stat.st_uid != uid.as_raw() || stat.st_gid != gid.as_raw() {
        nix::unistd::fchown(fd.as_fd(), Some(uid), Some(gid)).map_err(sys(path))?;
    }
    let current = stat.st_mode & 0o7777;
    let wanted = mode.unwrap_or(current & 0o755);
    // chown may have cleared setuid bits already; set what we want anyway.
    fchmod(fd.as_fd(), Mode::from_bits_truncate(wanted)).map_err(sys(path))
}

fn secure_entry(parent: &DirFd, name: &OsStr, stat: &FileStat) -> Result<(), FsError> {
    let path = parent.path().join(name);
    match crate::nofollow::kind_of(stat) {
        Kind::Link => nix::unistd::fchownat(
            parent.fd(),
            name,
            Some(Uid::from_raw(0)),
            Some(Gid::from_raw(0)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(sys(&path)),
        Kind::Dir => {
            let Some(mut dir) = parent.child(name)? else {
                return Ok(());
            };
            own_as_root(&dir, None)?;
            for entry in dir.entries()? {
                secure_entry(&dir, &entry.name, &entry.stat)?;
            }
            Ok(())
        }
        Kind::Other => {
            let fd = open_file(parent, name)?;
            fix(&fd, &path, stat, Uid::from_raw(0), Gid::from_raw(0), None)
        }
    }
}

/// A file, opened without following a link and without blocking on a
/// fifo; anything that cannot be opened so (a socket) has no place in an
/// install and is removed.
fn open_file(parent: &DirFd, name: &OsStr) -> Result<std::os::fd::OwnedFd, FsError> {
    let path = parent.path().join(name);
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(parent.fd(), name, flags | OFlag::O_NOCTTY, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(errno) => {
            tracing::warn!(path = %path.display(), %errno, "cannot be opened as a file; removed from the install");
            parent.remove(name)?;
            Err(sys(&path)(errno))
        }
    }
}

fn registration_file(parent: &DirFd, name: &OsStr, user: &RunnerUser) -> Result<(), FsError> {
    let Some(stat) = parent.stat(name)? else {
        return Ok(());
    };
    if crate::nofollow::kind_of(&stat) != Kind::Other {
        tracing::warn!(path = %parent.path().join(name).display(), "not a file where a registration file belongs; removed");
        parent.remove(name)?;
        return Ok(());
    }
    let fd = open_file(parent, name)?;
    fix(
        &fd,
        &parent.path().join(name),
        &stat,
        Uid::from_raw(0),
        user.gid,
        Some(0o640),
    )
}

/// After `config.sh` ran as root: its files are root's, the user's group
/// may read them (the listener does).
pub fn registration_readable(dir: &Path, user: &RunnerUser) -> Result<(), FsError> {
    let Some(root) = DirFd::open(dir)? else {
        return Ok(());
    };
    for name in REGISTRATION_FILES {
        registration_file(&root, OsStr::new(name), user)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn test_user() -> Option<RunnerUser> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return None;
        }
        RunnerUser::lookup("nobody").ok()
    }

    /// A user-owned install (as a baked image may have it) becomes root's,
    /// links and all, but for the user's directories; a link planted where
    /// `_work` belongs is replaced by a real directory.
    #[test]
    fn the_install_becomes_roots_and_the_user_keeps_its_directories() {
        let Some(user) = test_user() else { return };
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runner");
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(dir.join("config.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.join("config.sh"),
            std::fs::Permissions::from_mode(0o4777),
        )
        .unwrap();
        std::fs::write(dir.join("bin/Runner.Listener"), "x").unwrap();
        std::fs::write(dir.join(".runner"), "{}").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("_work")).unwrap();
        std::os::unix::fs::symlink("config.sh", dir.join("run.sh")).unwrap();
        let nobody = (user.uid.as_raw(), user.gid.as_raw());
        for path in ["", "config.sh", "bin", "bin/Runner.Listener", ".runner"] {
            std::os::unix::fs::lchown(dir.join(path), Some(nobody.0), Some(nobody.1)).unwrap();
        }
        secure(&dir, &user).unwrap();
        for path in ["", "config.sh", "bin", "bin/Runner.Listener", "run.sh"] {
            let meta = std::fs::symlink_metadata(dir.join(path)).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path}");
        }
        assert_eq!(
            std::fs::metadata(dir.join("config.sh")).unwrap().mode() & 0o7777,
            0o755
        );
        let runner = std::fs::metadata(dir.join(".runner")).unwrap();
        assert_eq!((runner.uid(), runner.gid()), (0, nobody.1));
        assert_eq!(runner.mode() & 0o777, 0o640);
        for path in ["_work", "_diag", ".runner-agent/job"] {
            let meta = std::fs::symlink_metadata(dir.join(path)).unwrap();
            assert!(meta.is_dir(), "{path}");
            assert_eq!(meta.uid(), nobody.0, "{path}");
        }
        let hooks = std::fs::metadata(dir.join(".runner-agent")).unwrap();
        assert_eq!((hooks.uid(), hooks.mode() & 0o777), (0, 0o755));
        assert!(elsewhere.exists(), "the link's target is left alone");
    }
}

//! The rootless daemon's directories: the runner user's, in parents only
//! root can change.

use super::RootlessError;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// `dir`, owned by `uid`:`gid`, mode 0700, in a parent that only root can
/// change (made 0755 if missing): the runner user then cannot swap the
/// directory for a link to something of root's, and root never looks
/// inside it.
pub(super) fn owned_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), RootlessError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RootlessError::DirIo { path, source }
    };
    let parent = dir.parent().ok_or_else(|| RootlessError::Dir {
        path: dir.to_owned(),
        reason: "no parent".into(),
    })?;
    if !parent.exists() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .map_err(io(parent))?;
    }
    let meta = std::fs::metadata(parent).map_err(io(parent))?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(RootlessError::Dir {
            path: dir.to_owned(),
            reason: format!(
                "its parent must be root's and writable by root only (it is uid {}, {:04o})",
                meta.uid(),
                meta.mode() & 0o7777
            ),
        });
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            // Not what the agent made; a root-only parent means root put
            // it there, but a link is never followed.
            std::fs::remove_file(dir).map_err(io(dir))?;
            std::fs::create_dir(dir).map_err(io(dir))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dir).map_err(io(dir))?
        }
        Err(e) => return Err(io(dir)(e)),
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_need_a_parent_only_root_can_change() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let top = tempfile::tempdir().unwrap();
        let parent = top.path().join("p");
        let dir = parent.join("docker");
        owned_dir(&dir, 4242, 4243).unwrap();
        let m = std::fs::symlink_metadata(&dir).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4242, 4243, 0o700));
        assert_eq!(std::fs::metadata(&parent).unwrap().mode() & 0o7777, 0o755);
        // A link where the directory belongs is replaced, not followed.
        std::fs::remove_dir(&dir).unwrap();
        let target = top.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &dir).unwrap();
        owned_dir(&dir, 4242, 4243).unwrap();
        assert!(std::fs::symlink_metadata(&dir).unwrap().is_dir());
        assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0);
        // A parent others can write: refused.
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = owned_dir(&dir, 4242, 4243).unwrap_err().to_string();
        assert!(err.contains("root only"), "{err}");
    }
}

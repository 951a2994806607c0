//! The Unix user the runner runs as, and switching to it in a child.

use std::ffi::{CStr, CString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("runner user {0:?} does not exist")]
    Unknown(String),
    #[error("runner user {name:?}: the agent runs as uid {agent_uid}, not root, so it cannot switch users")]
    NotRoot { name: String, agent_uid: u32 },
    #[error("looking up runner user {name:?}: {source}")]
    Lookup {
        name: String,
        source: std::io::Error,
    },
}

impl RunnerUser {
    pub fn lookup(name: &str) -> Result<RunnerUser, UserError> {
        let c_name = CString::new(name).map_err(|_| UserError::Unknown(name.to_owned()))?;
        let mut buf = vec![0_u8; 16 * 1024];
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to live, correctly sized storage.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 {
            return Err(UserError::Lookup {
                name: name.to_owned(),
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            return Err(UserError::Unknown(name.to_owned()));
        }
        // SAFETY: getpwnam_r filled `pwd` with pointers into `buf`.
        let home = unsafe { CStr::from_ptr(pwd.pw_dir) }
            .to_string_lossy()
            .into_owned();
        Ok(RunnerUser {
            name: name.to_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home: PathBuf::from(home),
        })
    }

    /// The user to switch to, or `None` when the runner runs as the agent's
    /// own user.
    pub fn resolve(name: Option<&str>) -> Result<Option<RunnerUser>, UserError> {
        let Some(name) = name else { return Ok(None) };
        let user = RunnerUser::lookup(name)?;
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if user.uid == euid {
            return Ok(None);
        }
        if euid != 0 {
            return Err(UserError::NotRoot {
                name: name.to_owned(),
                agent_uid: euid,
            });
        }
        Ok(Some(user))
    }

    /// Makes `command` run as this user: supplementary groups (docker, ...)
    /// from the group database, then gid, then uid; HOME, USER and LOGNAME
    /// to match.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        let name = CString::new(self.name.clone()).expect("checked at lookup");
        let (uid, gid) = (self.uid, self.gid);
        command
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
        // SAFETY: the closure only calls async-signal-safe functions
        // (initgroups reads files but allocates nothing we share).
        unsafe {
            command.as_std_mut().pre_exec(move || {
                if libc::initgroups(name.as_ptr(), gid as _) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Gives the whole tree at `root` to this user (links themselves, not
    /// their targets).
    pub fn chown_tree(&self, root: &Path) -> std::io::Result<()> {
        std::os::unix::fs::lchown(root, Some(self.uid), Some(self.gid))?;
        if root.is_symlink() || !root.is_dir() {
            return Ok(());
        }
        for entry in std::fs::read_dir(root)? {
            self.chown_tree(&entry?.path())?;
        }
        Ok(())
    }
}

/// Whether the agent runs as root.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_unknown_user_does_not() {
        let root = RunnerUser::lookup("root").unwrap();
        assert_eq!(root.uid, 0);
        assert!(matches!(
            RunnerUser::lookup("no-such-user-ra"),
            Err(UserError::Unknown(_))
        ));
        assert_eq!(RunnerUser::resolve(None).unwrap(), None);
    }
}

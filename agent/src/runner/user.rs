//! The Unix user the runner runs as, and switching to it in a child.

use nix::unistd::{Gid, Uid, User};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Everything the child needs to become the runner user, resolved in the
/// agent: the child only makes system calls (see `confine`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups (docker, ...) from the group database, the
    /// primary group among them, as initgroups(3) would set them.
    pub groups: Vec<Gid>,
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
    #[error("looking up the groups of runner user {name:?}: {source}")]
    Groups {
        name: String,
        source: std::io::Error,
    },
}

impl RunnerUser {
    pub fn lookup(name: &str) -> Result<RunnerUser, UserError> {
        let user = User::from_name(name)
            .map_err(|errno| UserError::Lookup {
                name: name.to_owned(),
                source: errno.into(),
            })?
            .ok_or_else(|| UserError::Unknown(name.to_owned()))?;
        // from_name found it, so the name has no NUL.
        let c_name = CString::new(name).map_err(|_| UserError::Unknown(name.to_owned()))?;
        let groups =
            nix::unistd::getgrouplist(&c_name, user.gid).map_err(|errno| UserError::Groups {
                name: name.to_owned(),
                source: errno.into(),
            })?;
        Ok(RunnerUser {
            name: name.to_owned(),
            uid: user.uid,
            gid: user.gid,
            groups,
            home: user.dir,
        })
    }

    /// The user to switch to, or `None` when the runner runs as the agent's
    /// own user.
    pub fn resolve(name: Option<&str>) -> Result<Option<RunnerUser>, UserError> {
        let Some(name) = name else { return Ok(None) };
        let user = RunnerUser::lookup(name)?;
        let euid = nix::unistd::geteuid();
        if user.uid == euid {
            return Ok(None);
        }
        if !euid.is_root() {
            return Err(UserError::NotRoot {
                name: name.to_owned(),
                agent_uid: euid.as_raw(),
            });
        }
        Ok(Some(user))
    }
}

/// Prepares a child: born into the runner's cgroups when `cgroup_procs`
/// (their `cgroup.procs`, open for writing) are given, then running as
/// `user` when one is given, with HOME, USER and LOGNAME to match.
pub fn confine(command: &mut Command, user: Option<&RunnerUser>, cgroup_procs: Vec<File>) {
    if let Some(user) = user {
        command
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
    }
    if user.is_none() && cgroup_procs.is_empty() {
        return;
    }
    let credentials = user.map(|u| (u.uid, u.gid, u.groups.clone()));
    // SAFETY: the closure runs in the child between fork and exec, where
    // the agent's other threads (tokio's blocking pool, the SDK's) may have
    // left locks held, so only async-signal-safe work is sound. It makes
    // only system calls through thin nix wrappers (a write of "0" to each
    // cgroup.procs file the closure owns, which moves the caller, iterating
    // a Vec it owns without growing it; setgroups on the slice it owns,
    // setgid, setuid) and on failure turns the errno into an io::Error,
    // which does not allocate: no allocation, no lock, no file opened
    // (files and groups were resolved in the agent).
    unsafe {
        command.pre_exec(move || {
            for procs in &cgroup_procs {
                nix::unistd::write(procs, b"0")?;
            }
            if let Some((uid, gid, groups)) = &credentials {
                nix::unistd::setgroups(groups)?;
                nix::unistd::setgid(*gid)?;
                nix::unistd::setuid(*uid)?;
            }
            Ok(())
        });
    }
}

/// Whether the agent runs as root.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_unknown_user_does_not() {
        let root = RunnerUser::lookup("root").unwrap();
        assert_eq!(root.uid.as_raw(), 0);
        assert!(matches!(
            RunnerUser::lookup("no-such-user-ra"),
            Err(UserError::Unknown(_))
        ));
        assert_eq!(RunnerUser::resolve(None).unwrap(), None);
    }

    /// Groups `name` is listed in, as `/etc/group` says: what the resolved
    /// list must hold at least (other sources may add more).
    fn etc_group_memberships(name: &str) -> Vec<Gid> {
        let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
        groups
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let [_, _, gid, members] = fields[..] else {
                    return None;
                };
                let gid = Gid::from_raw(gid.parse().ok()?);
                members.split(',').any(|m| m == name).then_some(gid)
            })
            .collect()
    }

    #[test]
    fn groups_are_resolved_at_lookup_with_the_primary_group() {
        let root = RunnerUser::lookup("root").unwrap();
        assert!(root.groups.contains(&root.gid), "{root:?}");
        for gid in etc_group_memberships("root") {
            assert!(root.groups.contains(&gid), "{gid} missing: {root:?}");
        }
    }

    /// The child really becomes the user: uid, gid and every group, with
    /// nothing of root's left over.
    #[tokio::test]
    async fn a_command_runs_as_the_user_with_its_groups() {
        if !running_as_root() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let Ok(user) = RunnerUser::lookup("nobody") else {
            eprintln!("skipped: no user nobody");
            return;
        };
        let mut command = tokio::process::Command::new("sh");
        command.args(["-c", "id -u; id -g; id -G; echo $HOME"]);
        confine(command.as_std_mut(), Some(&user), Vec::new());
        let out = command.output().await.unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], user.uid.to_string());
        assert_eq!(lines[1], user.gid.to_string());
        let mut got: Vec<u32> = lines[2]
            .split_whitespace()
            .map(|g| g.parse().unwrap())
            .collect();
        let mut want: Vec<u32> = user.groups.iter().map(|g| g.as_raw()).collect();
        got.sort_unstable();
        got.dedup();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got, want);
        assert_eq!(std::path::Path::new(lines[3]), user.home);
    }
}

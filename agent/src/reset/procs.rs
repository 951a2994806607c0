//! Every process of the runner user: with a dedicated user, nothing of
//! that uid may outlive a run (a job can leave the runner's cgroup only
//! through another service, e.g. `systemd-run --user`; it cannot change
//! its uid). Any of the four uids counts, the name is never decoded, and a
//! /proc that cannot be read fails the sweep (`ps`).

use crate::ps::{self, PsError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};
use std::time::Duration;

const ROUNDS: usize = 50;
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("refusing to kill every process of uid {0}")]
    Refused(Uid),
    #[error(transparent)]
    Proc(#[from] PsError),
    #[error("{left} processes of uid {uid} survive SIGKILL")]
    Survivors { uid: Uid, left: usize },
}

/// Live pids with `uid` among their uids.
fn owned_by(uid: Uid) -> Result<Vec<i32>, PsError> {
    Ok(ps::snapshot()?
        .into_iter()
        .filter(|p| !p.zombie && p.has_uid(uid.as_raw()))
        .map(|p| p.pid)
        .collect())
}

/// SIGKILLs every process of `uid` until none is left (a process forking
/// while we look is caught on the next round). Returns how many were
/// killed.
pub async fn kill_user(uid: Uid) -> Result<usize, SweepError> {
    if uid.is_root() || uid == nix::unistd::geteuid() {
        return Err(SweepError::Refused(uid));
    }
    let mut killed = 0;
    for _ in 0..ROUNDS {
        let pids = owned_by(uid)?;
        if pids.is_empty() {
            return Ok(killed);
        }
        for pid in pids {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    match owned_by(uid)?.len() {
        0 => Ok(killed),
        left => Err(SweepError::Survivors { uid, left }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc that cannot be read fails the sweep: it never reads as
    /// "nothing of the user left".
    #[tokio::test(flavor = "current_thread")]
    async fn an_unreadable_proc_fails_the_sweep() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("4242/stat")).unwrap();
        let _fake = crate::ps::tests::FakeProc::at(root.path().to_owned());
        let err = kill_user(Uid::from_raw(60_123)).await.unwrap_err();
        assert!(matches!(err, SweepError::Proc(_)), "{err}");
    }

    /// A process of the user whose name is not UTF-8 (set with
    /// PR_SET_NAME, as a job can) and that left its session is killed.
    #[tokio::test(flavor = "current_thread")]
    async fn a_process_with_a_non_utf8_name_is_killed() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        // A user of this test's own: the sweep kills all of its processes.
        let name = "ra-unit-sweep";
        let _ = std::process::Command::new("userdel")
            .arg(name)
            .stderr(std::process::Stdio::null())
            .status();
        let made = std::process::Command::new("useradd")
            .args(["--system", "--no-create-home", name])
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: useradd failed");
            return;
        }
        let _remove = RemoveUser(name);
        let user = crate::runner::user::RunnerUser::lookup(name).unwrap();
        // The shell (printf is a builtin) writes the name's bytes into its
        // own comm, as prctl(PR_SET_NAME) does, then waits in a loop
        // (an exec would rename it).
        let mut command = std::process::Command::new("setsid");
        command.args([
            "sh",
            "-c",
            "printf 'job\\377\\376' > /proc/self/comm; while :; do sleep 0.2; done",
        ]);
        crate::runner::user::confine(&mut command, Some(&user), Vec::new());
        let mut child = command.spawn().unwrap();
        let pid = child.id() as i32;
        let started = std::time::Instant::now();
        loop {
            let name = ps::read_one(pid).unwrap().map(|p| p.name);
            if name.as_deref() == Some(b"job\xff\xfe".as_slice()) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{name:?}");
            tokio::time::sleep(POLL).await;
        }
        assert!(kill_user(user.uid).await.unwrap() >= 1);
        let _ = child.wait();
        assert!(owned_by(user.uid).unwrap().is_empty());
    }

    struct RemoveUser(&'static str);
    impl Drop for RemoveUser {
        fn drop(&mut self) {
            let _ = std::process::Command::new("userdel").arg(self.0).status();
        }
    }
}

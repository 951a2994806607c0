//! Every process of the runner user: with a dedicated user, nothing of
//! that uid may outlive a run (a job can leave the runner's cgroup only
//! through another service, e.g. `systemd-run --user`; it cannot change
//! its uid).

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};
use std::time::Duration;

const ROUNDS: usize = 50;
const POLL: Duration = Duration::from_millis(20);

/// Pids whose real or effective uid is `uid`.
fn owned_by(uid: Uid) -> Vec<i32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.filter_map(Result::ok)
        .filter(|p| {
            p.status()
                .is_ok_and(|s| s.ruid == uid.as_raw() || s.euid == uid.as_raw())
        })
        .map(|p| p.pid)
        .collect()
}

/// SIGKILLs every process of `uid` until none is left (a process forking
/// while we look is caught on the next round). Returns how many were
/// killed, or how many survived.
pub async fn kill_user(uid: Uid) -> Result<usize, String> {
    if uid.is_root() || uid == nix::unistd::geteuid() {
        return Err(format!("refusing to kill every process of uid {uid}"));
    }
    let mut killed = 0;
    for _ in 0..ROUNDS {
        let pids = owned_by(uid);
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
    let left = owned_by(uid).len();
    if left == 0 {
        Ok(killed)
    } else {
        Err(format!("{left} processes of uid {uid} survive SIGKILL"))
    }
}

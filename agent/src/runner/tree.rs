//! Stopping a whole process tree: the runner's process group plus every
//! descendant found through `/proc` (jobs may start their own sessions or
//! process groups). SIGTERM first, SIGKILL for whatever is left after the
//! grace period.

use super::pid::Pgid;
use crate::ps::{self, Process, PsError};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// How often to look whether the tree is gone while waiting.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// The processes by pid, not counting zombies (already dead, waiting for
/// their parent).
fn live() -> Result<HashMap<i32, Process>, PsError> {
    Ok(ps::snapshot()?
        .into_iter()
        .filter(|p| !p.zombie)
        .map(|p| (p.pid, p))
        .collect())
}

/// Live members of process group `pgid` and all descendants of them. A
/// /proc that cannot be read is an error: never "nothing left".
pub fn tree_members(pgid: Pgid) -> Result<HashSet<i32>, PsError> {
    let procs = live()?;
    let mut members: HashSet<i32> = procs
        .values()
        .filter(|p| p.pgrp == pgid.as_raw())
        .map(|p| p.pid)
        .collect();
    loop {
        let before = members.len();
        for p in procs.values() {
            if members.contains(&p.ppid) {
                members.insert(p.pid);
            }
        }
        if members.len() == before {
            return Ok(members);
        }
    }
}

/// Whether the tree still has a member; an unreadable /proc says yes (the
/// callers then keep watching, or kill).
pub fn tree_alive(pgid: Pgid) -> bool {
    match tree_members(pgid) {
        Ok(members) => !members.is_empty(),
        Err(e) => {
            tracing::warn!(%pgid, error = %e, "cannot tell whether the process tree lives; taking it as alive");
            true
        }
    }
}

/// Whether a live process runs `program`: as its executable (argv[0]), or
/// as the script an interpreter runs (argv[1]).
pub fn runs_program(program: &Path) -> Result<bool, PsError> {
    let wanted = program.as_os_str().as_encoded_bytes();
    Ok(live()?.keys().any(|pid| {
        ps::cmdline(*pid)
            .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).take(2).any(|arg| arg == wanted))
    }))
}

/// Stale ids fail with ESRCH, which is what we want: the process is gone.
fn signal_all(pgid: Pgid, pids: &HashSet<i32>, signal: Signal) {
    let _ = killpg(pgid.as_pid(), signal);
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
}

/// Sends SIGTERM to the tree rooted in process group `pgid`, waits up to
/// `grace` for it to go, then SIGKILLs what is left. Returns whether the
/// tree was gone within the grace period. While /proc cannot be read, the
/// group itself is still signalled and the tree counts as not gone.
pub async fn stop_tree(pgid: Pgid, grace: Duration) -> bool {
    let mut members = tree_members(pgid).unwrap_or_else(|e| {
        tracing::warn!(%pgid, error = %e, "listing the process tree; signalling its group only");
        HashSet::new()
    });
    tracing::debug!(%pgid, processes = members.len(), "stopping process tree");
    signal_all(pgid, &members, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        let gone = match tree_members(pgid) {
            Ok(now) => {
                members.extend(now);
                members.retain(|p| alive(*p));
                members.is_empty()
            }
            Err(_) => false,
        };
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                %pgid,
                processes = members.len(),
                "process tree ignored SIGTERM; sending SIGKILL"
            );
            signal_all(pgid, &members, Signal::SIGKILL);
            return false;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// Unreadable counts as alive.
fn alive(pid: i32) -> bool {
    ps::read_one(pid).map_or(true, |p| p.is_some_and(|p| !p.zombie))
}

fn works_in(pid: i32, dir: &Path) -> bool {
    ps::cwd(pid).is_ok_and(|cwd| cwd.starts_with(dir))
}

/// Whether process group `pgid` still has a member working in `dir`: guards
/// against killing an unrelated group that reused a runner's old pgid after
/// a reboot or a long outage.
pub fn group_belongs_to(pgid: Pgid, dir: &Path) -> Result<bool, PsError> {
    Ok(live()?
        .values()
        .filter(|p| p.pgrp == pgid.as_raw())
        .any(|p| works_in(p.pid, dir)))
}

/// Process groups with a live member whose working directory is in `dir`,
/// except the agent's own (and group 0 of kernel threads).
pub fn groups_in_dir(dir: &Path) -> Result<HashSet<Pgid>, PsError> {
    let own = std::process::id() as i32;
    Ok(live()?
        .values()
        .filter(|p| p.pid != own && p.pgrp != own)
        .filter(|p| works_in(p.pid, dir))
        .filter_map(|p| Pgid::new(p.pgrp))
        .collect())
}

/// Stops every process group working in `dir` (SIGTERM, SIGKILL after
/// `grace`); returns how many there were.
pub async fn stop_groups_in(dir: &Path, grace: Duration) -> Result<usize, PsError> {
    let groups = groups_in_dir(dir)?;
    for pgid in &groups {
        tracing::warn!(%pgid, "stopping a stray runner process group");
        stop_tree(*pgid, grace).await;
    }
    Ok(groups.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[tokio::test]
    async fn stops_group_and_escaped_descendants() {
        // A group leader with a child that moved to its own session, as a
        // job's daemon would: both must go.
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg("setsid sleep 30 & sleep 30 & wait")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = Pgid::new(child.id() as i32).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let members = tree_members(pgid).unwrap();
        assert!(members.len() >= 3, "{members:?}");
        assert!(stop_tree(pgid, Duration::from_secs(5)).await);
        let _ = child.wait();
        for pid in members {
            assert!(!alive(pid), "{pid} survived");
        }
    }

    #[tokio::test]
    async fn escalates_to_sigkill() {
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg("trap '' TERM; while :; do sleep 0.05; done")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = Pgid::new(child.id() as i32).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!stop_tree(pgid, Duration::from_millis(300)).await);
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}

//! Stopping a whole process tree: the runner's process group plus every
//! descendant found through `/proc` (jobs may start their own sessions or
//! process groups). SIGTERM first, SIGKILL for whatever is left after the
//! grace period.

use super::pid::Pgid;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// How often to look whether the tree is gone while waiting.
const EXIT_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy)]
struct ProcInfo {
    ppid: i32,
    pgrp: i32,
    zombie: bool,
}

fn read_proc(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or
    // parentheses; the fields after the last ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcInfo {
        ppid,
        pgrp,
        zombie: state == "Z" || state == "X",
    })
}

fn all_processes() -> HashMap<i32, ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, read_proc(pid)?)))
        .collect()
}

/// Live members of process group `pgid` and all descendants of them, not
/// counting zombies (already dead, waiting for their parent).
pub fn tree_members(pgid: Pgid) -> HashSet<i32> {
    let procs = all_processes();
    let mut members: HashSet<i32> = procs
        .iter()
        .filter(|(_, p)| p.pgrp == pgid.as_raw())
        .map(|(pid, _)| *pid)
        .collect();
    loop {
        let before = members.len();
        for (pid, p) in &procs {
            if members.contains(&p.ppid) {
                members.insert(*pid);
            }
        }
        if members.len() == before {
            break;
        }
    }
    members.retain(|pid| procs.get(pid).is_some_and(|p| !p.zombie));
    members
}

/// Whether a live process runs `program`: as its executable (argv[0]), or
/// as the script an interpreter runs (argv[1]).
pub fn runs_program(program: &Path) -> bool {
    let wanted = program.as_os_str().as_encoded_bytes();
    all_processes()
        .iter()
        .filter(|(_, p)| !p.zombie)
        .any(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).take(2).any(|arg| arg == wanted))
        })
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
/// tree was gone within the grace period.
pub async fn stop_tree(pgid: Pgid, grace: Duration) -> bool {
    let members = tree_members(pgid);
    if members.is_empty() {
        return true;
    }
    tracing::debug!(%pgid, processes = members.len(), "stopping process tree");
    signal_all(pgid, &members, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        let left = tree_members(pgid);
        let left: HashSet<i32> = left
            .union(&members)
            .copied()
            .filter(|p| alive(*p))
            .collect();
        if left.is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                %pgid,
                processes = left.len(),
                "process tree ignored SIGTERM; sending SIGKILL"
            );
            signal_all(pgid, &left, Signal::SIGKILL);
            return false;
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

fn alive(pid: i32) -> bool {
    read_proc(pid).is_some_and(|p| !p.zombie)
}

/// Whether process group `pgid` still has a member working in `dir`: guards
/// against killing an unrelated group that reused a runner's old pgid after
/// a reboot or a long outage.
pub fn group_belongs_to(pgid: Pgid, dir: &Path) -> bool {
    all_processes()
        .iter()
        .filter(|(_, p)| p.pgrp == pgid.as_raw() && !p.zombie)
        .any(|(pid, _)| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
}

/// Process groups with a live member whose working directory is in `dir`,
/// except the agent's own (and group 0 of kernel threads).
pub fn groups_in_dir(dir: &Path) -> HashSet<Pgid> {
    let own = std::process::id() as i32;
    all_processes()
        .iter()
        .filter(|(pid, p)| !p.zombie && **pid != own && p.pgrp != own)
        .filter(|(pid, _)| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .filter_map(|(_, p)| Pgid::new(p.pgrp))
        .collect()
}

/// Stops every process group working in `dir` (SIGTERM, SIGKILL after
/// `grace`); returns how many there were.
pub async fn stop_groups_in(dir: &Path, grace: Duration) -> usize {
    let groups = groups_in_dir(dir);
    for pgid in &groups {
        tracing::warn!(%pgid, "stopping a stray runner process group");
        stop_tree(*pgid, grace).await;
    }
    groups.len()
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
        let members = tree_members(pgid);
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

//! The runner's cgroup: every process the runner starts (config.sh, the
//! listener, job steps, their double-forked daemons, setsid or not)
//! is born into it, and the reset kills it whole. Process groups and
//! working directories, which a job can leave, are only the fallback.
//!
//! Where the host mounts the unified hierarchy (cgroup v2, alone or beside
//! v1 as systemd's "hybrid" layout) the group is made there: `cgroup.kill`
//! (Linux 5.14) kills it atomically, `cgroup.freeze` stops it first on older
//! kernels. Where only v1 exists, the freezer hierarchy: freeze, kill every
//! member, thaw.
//!
//! Limits (`Limits`: a pids and a memory ceiling) keep a fork bomb or a
//! leak in a job from starving the agent's heartbeat and reset. Where the
//! unified hierarchy has the `pids` and `memory` controllers (cgroup v2
//! alone), the agent moves itself into a leaf `agent` of its own cgroup
//! (the unit's `Delegate=yes` allows it) and enables them for the runner's
//! group beside it: a cgroup with processes cannot enable controllers for
//! its children. Where they are v1 hierarchies (v1 alone, or systemd's
//! hybrid layout), the runner joins a group of the same name in each, and
//! the limit is set there. A limit that cannot be set is logged, and the
//! runner runs without it.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the kill may take before the reset reports survivors.
const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V2,
    V1Freezer,
}

/// Ceilings for everything the runner starts; `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub pids: Option<u64>,
    pub memory: Option<u64>,
}

#[derive(Debug)]
pub struct RunnerCgroup {
    kind: Kind,
    dir: PathBuf,
    /// `dir` as `/proc/<pid>/cgroup` names it: the path within its
    /// hierarchy, for a listing of the group independent of `cgroup.procs`.
    path: PathBuf,
    /// v1 `pids` / `memory` groups the runner joins too, for their limits.
    limit_groups: Vec<PathBuf>,
    /// What was applied, for the log.
    limits: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy the agent can use (neither cgroup2 nor a v1 freezer is mounted)")]
    NoHierarchy,
    #[error(transparent)]
    Proc(crate::ps::PsError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no {0} controller the agent can use")]
    NoController(&'static str),
    #[error("{count} processes still in {path} after {KILL_WAIT:?}")]
    Survivors { path: PathBuf, count: usize },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

impl RunnerCgroup {
    /// Makes (or finds, after a restart) the group `name` beside the
    /// agent's own cgroup, in the best hierarchy the host has.
    pub fn create(name: &str, limits: Limits) -> Result<RunnerCgroup, CgroupError> {
        Self::create_in(name, true, limits)
    }

    /// `v2_allowed: false` skips the unified hierarchy (the tests cover the
    /// v1 freezer on hosts that have both).
    fn create_in(
        name: &str,
        v2_allowed: bool,
        limits: Limits,
    ) -> Result<RunnerCgroup, CgroupError> {
        let (mounts, groups) = crate::ps::own_mounts_and_cgroups().map_err(CgroupError::Proc)?;
        let place = |fs_type: &str,
                     wanted: &dyn Fn(&procfs::process::MountInfo) -> bool,
                     own: Option<&str>| {
            let mount = mounts.iter().find(|m| m.fs_type == fs_type && wanted(m))?;
            let own = Path::new(own?);
            let relative = own.strip_prefix(&mount.root).ok()?;
            Some(mount.mount_point.join(relative))
        };
        let v2_own = groups
            .iter()
            .find(|g| g.hierarchy == 0)
            .map(|g| g.pathname.as_str());
        let v1_own = groups
            .iter()
            .find(|g| g.controllers.iter().any(|c| c == "freezer"))
            .map(|g| g.pathname.as_str());
        let v2 = if v2_allowed {
            place("cgroup2", &|_| true, v2_own)
        } else {
            None
        };
        let (kind, parent, own) = if let Some(dir) = v2 {
            (Kind::V2, dir, v2_own)
        } else if let Some(dir) = place(
            "cgroup",
            &|m| m.super_options.contains_key("freezer"),
            v1_own,
        ) {
            (Kind::V1Freezer, dir, v1_own)
        } else {
            return Err(CgroupError::NoHierarchy);
        };
        let dir = parent.join(name);
        make_dir(&dir)?;
        let mut cgroup = RunnerCgroup {
            kind,
            dir,
            path: Path::new(own.unwrap_or("/")).join(name),
            limit_groups: Vec::new(),
            limits: String::new(),
        };
        let mut applied = Vec::new();
        for (controller, value) in [("pids", limits.pids), ("memory", limits.memory)] {
            let Some(value) = value else { continue };
            let result = if kind == Kind::V2 && controllers(&parent).contains(controller) {
                enable_v2(&parent, &cgroup.dir, controller, value)
            } else {
                let v1 = place("cgroup", &|m| m.super_options.contains_key(controller), {
                    groups
                        .iter()
                        .find(|g| g.controllers.iter().any(|c| c == controller))
                        .map(|g| g.pathname.as_str())
                });
                match v1 {
                    Some(v1_parent) => {
                        let group = v1_parent.join(name);
                        let file = match controller {
                            "pids" => "pids.max",
                            _ => "memory.limit_in_bytes",
                        };
                        make_dir(&group)
                            .and_then(|()| write(&group.join(file), &value.to_string()))
                            .map(|()| cgroup.limit_groups.push(group))
                    }
                    None => Err(CgroupError::NoController(controller)),
                }
            };
            match result {
                Ok(()) => applied.push(format!("{controller} {value}")),
                Err(e) => {
                    tracing::error!(error = %e, controller, "the runner runs without this limit");
                }
            }
        }
        cgroup.limits = if applied.is_empty() {
            "no limits".to_owned()
        } else {
            applied.join(", ")
        };
        Ok(cgroup)
    }

    /// For the log: which mechanism tracks the runner, and where.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            Kind::V2 => "cgroup v2",
            Kind::V1Freezer => "cgroup v1 (freezer)",
        };
        format!("{kind} at {} ({})", self.dir.display(), self.limits)
    }

    /// The `cgroup.procs` files (the group's, and those of its v1 limit
    /// groups), open for a child to write "0" into between fork and exec:
    /// it then starts its life inside the groups, with no window in which
    /// it could fork outside.
    pub fn procs_files(&self) -> Result<Vec<File>, CgroupError> {
        std::iter::once(&self.dir)
            .chain(&self.limit_groups)
            .map(|dir| {
                let path = dir.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))
            })
            .collect()
    }

    /// The group's path within its hierarchy (`ps::Process::in_cgroup`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn members(&self) -> Result<Vec<i32>, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Kills every process in the group; returns how many there were.
    pub async fn kill_all(&self) -> Result<usize, CgroupError> {
        let before = self.members()?.len();
        if before == 0 {
            return Ok(0);
        }
        let kill_file = self.dir.join("cgroup.kill");
        if self.kind == Kind::V2 && kill_file.exists() {
            write(&kill_file, "1")?;
        } else {
            // Frozen, nothing in the group can fork while we read its
            // members and signal them; SIGKILL takes effect on thaw.
            let (file, frozen, thawed) = match self.kind {
                Kind::V2 => ("cgroup.freeze", "1", "0"),
                Kind::V1Freezer => ("freezer.state", "FROZEN", "THAWED"),
            };
            let state = self.dir.join(file);
            write(&state, frozen)?;
            self.wait_frozen().await;
            for pid in self.members()? {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            write(&state, thawed)?;
        }
        let started = tokio::time::Instant::now();
        loop {
            let left = self.members()?.len();
            if left == 0 {
                return Ok(before);
            }
            if started.elapsed() >= KILL_WAIT {
                return Err(CgroupError::Survivors {
                    path: self.dir.clone(),
                    count: left,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_frozen(&self) {
        let (file, done) = match self.kind {
            Kind::V2 => ("cgroup.events", "frozen 1"),
            Kind::V1Freezer => ("freezer.state", "FROZEN"),
        };
        let path = self.dir.join(file);
        for _ in 0..50 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().any(|l| l.trim() == done) {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Removes the (empty) groups when the agent stops.
    pub fn remove(&self) {
        for dir in std::iter::once(&self.dir).chain(&self.limit_groups) {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::debug!(error = %e, dir = %dir.display(), "runner cgroup left in place");
            }
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err(path))
}

fn make_dir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// The controllers a v2 group may hand to its children.
fn controllers(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default()
}

/// Where the agent lives on v2 when it limits its runner: a leaf of its
/// own cgroup, so that cgroup has no processes of its own and may enable
/// controllers for the runner's group beside the leaf.
const AGENT_LEAF: &str = "agent";

fn enable_v2(parent: &Path, group: &Path, controller: &str, value: u64) -> Result<(), CgroupError> {
    let enabled =
        std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
    if !enabled.split_whitespace().any(|c| c == controller) {
        let leaf = parent.join(AGENT_LEAF);
        make_dir(&leaf)?;
        write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
        write(
            &parent.join("cgroup.subtree_control"),
            &format!("+{controller}"),
        )?;
    }
    write(&group.join(format!("{controller}.max")), &value.to_string())
}

/// The default memory ceiling: all of the machine's memory but what the
/// agent and the system keep (512 MiB), at least 256 MiB.
pub fn default_memory_max() -> Option<u64> {
    let total = crate::ps::mem_total()?;
    Some(total.saturating_sub(512 << 20).max(256 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell in the group that double-forks a `setsid` daemon and a
    /// background sleeper: all of them die with the group.
    async fn kills_every_process_born_in_the_group(v2_allowed: bool, kind: Kind) {
        let name = format!("ra-unit-{}-{v2_allowed}", std::process::id());
        let cgroup = match RunnerCgroup::create_in(&name, v2_allowed, Limits::default()) {
            Ok(c) => c,
            Err(e) => {
                // Not root or no cgroupfs: nothing here can be tested.
                eprintln!("skipped: {e}");
                return;
            }
        };
        if cgroup.kind != kind {
            eprintln!("skipped: this host gave {}", cgroup.describe());
            cgroup.remove();
            return;
        }
        let procs = cgroup.procs_files().unwrap();
        let mut command = std::process::Command::new("sh");
        command.args([
            "-c",
            "setsid sh -c 'sleep 300 &' ; sleep 300 & exec sleep 300",
        ]);
        crate::runner::user::confine(&mut command, None, procs);
        let mut child = command.spawn().unwrap();
        let started = std::time::Instant::now();
        while cgroup.members().unwrap().len() < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{:?}",
                cgroup.members()
            );
            tokio::time::sleep(POLL).await;
        }
        let killed = cgroup.kill_all().await.unwrap();
        assert!(killed >= 3, "{killed}");
        assert!(cgroup.members().unwrap().is_empty());
        let _ = child.wait();
        cgroup.remove();
        assert!(!cgroup.dir.exists());
    }

    #[tokio::test]
    async fn kills_every_process_born_in_a_v2_group_however_it_left() {
        kills_every_process_born_in_the_group(true, Kind::V2).await;
    }

    /// The v1 freezer path, on hosts with v1 (alone or beside v2).
    #[tokio::test]
    async fn kills_every_process_born_in_a_v1_freezer_group_however_it_left() {
        kills_every_process_born_in_the_group(false, Kind::V1Freezer).await;
    }
}

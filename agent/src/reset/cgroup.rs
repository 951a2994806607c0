//! The runner's cgroup: every process the runner starts (config.sh, the
//! listener, job steps, their double-forked daemons, setsid or not)
//! is born into it, and the reset kills it whole. Process groups and
//! working directories, which a job can leave, are only the fallback.
//!
//! Where the host mounts the unified hierarchy (cgroup v2, alone or beside
//! v1 as systemd's "hybrid" layout) the group is made there: `cgroup.kill`
//! (Linux 5.14) kills it atomically, `cgroup.freeze` stops it first on older
//! kernels. Where only v1 exists, the freezer hierarchy: freeze, kill every
//! member, thaw. Controllers are never enabled, so the group is allowed
//! beside the agent's own processes, and no limit applies to the runner.

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

#[derive(Debug)]
pub struct RunnerCgroup {
    kind: Kind,
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy the agent can use (neither cgroup2 nor a v1 freezer is mounted)")]
    NoHierarchy,
    #[error("reading /proc/self: {0}")]
    Proc(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
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
    pub fn create(name: &str) -> Result<RunnerCgroup, CgroupError> {
        Self::create_in(name, true)
    }

    /// `v2_allowed: false` skips the unified hierarchy (the tests cover the
    /// v1 freezer on hosts that have both).
    fn create_in(name: &str, v2_allowed: bool) -> Result<RunnerCgroup, CgroupError> {
        let me =
            procfs::process::Process::myself().map_err(|e| CgroupError::Proc(e.to_string()))?;
        let mounts = me
            .mountinfo()
            .map_err(|e| CgroupError::Proc(e.to_string()))?;
        let groups = me
            .cgroups()
            .map_err(|e| CgroupError::Proc(e.to_string()))?
            .0;
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
        let (kind, parent) = if let Some(dir) = v2 {
            (Kind::V2, dir)
        } else if let Some(dir) = place(
            "cgroup",
            &|m| m.super_options.contains_key("freezer"),
            v1_own,
        ) {
            (Kind::V1Freezer, dir)
        } else {
            return Err(CgroupError::NoHierarchy);
        };
        let dir = parent.join(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&dir)(e)),
        }
        Ok(RunnerCgroup { kind, dir })
    }

    /// For the log: which mechanism tracks the runner, and where.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            Kind::V2 => "cgroup v2",
            Kind::V1Freezer => "cgroup v1 (freezer)",
        };
        format!("{kind} at {}", self.dir.display())
    }

    /// `cgroup.procs`, open for a child to write "0" into between fork and
    /// exec: it then starts its life inside the group, with no window in
    /// which it could fork outside.
    pub fn procs_file(&self) -> Result<File, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))
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

    /// Removes the (empty) group when the agent stops.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::debug!(error = %e, dir = %self.dir.display(), "runner cgroup left in place");
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell in the group that double-forks a `setsid` daemon and a
    /// background sleeper: all of them die with the group.
    async fn kills_every_process_born_in_the_group(v2_allowed: bool, kind: Kind) {
        let name = format!("ra-unit-{}-{v2_allowed}", std::process::id());
        let cgroup = match RunnerCgroup::create_in(&name, v2_allowed) {
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
        let procs = cgroup.procs_file().unwrap();
        let mut command = std::process::Command::new("sh");
        command.args([
            "-c",
            "setsid sh -c 'sleep 300 &' ; sleep 300 & exec sleep 300",
        ]);
        crate::runner::user::confine(&mut command, None, Some(procs));
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

//! The clean slate, checked. A reset that reports success is not taken on
//! its word: after the steps, every invariant the next run relies on is
//! looked at again, by code that only reads (the steps' look-only twins
//! and independent listings), and the instance goes back to the pool only
//! if all of them hold. A failure names the invariant, and it becomes
//! `UD_REMOVE_REG_REMOVE_RUN_FAILED`.

use super::docker::Inventory;
use super::{files, health, persist, Resetter};
use crate::runner::manifest::Manifest;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invariant {
    /// No process of the runner user, none in the runner's cgroup.
    Processes,
    /// The install is the verified one, and nothing else in it is writable
    /// by anyone but root.
    Install,
    /// The home is its baseline, but for the keep-list.
    Home,
    /// `_work` holds only what is kept; the hooks' marker dir is empty.
    Work,
    /// No crontab, at job, linger flag or SysV IPC object of the user.
    Scheduled,
    /// Nothing of the user's in the temp dirs, at any depth.
    Temp,
    /// Docker holds what it held before the first run (containers,
    /// volumes, networks).
    Docker,
    /// Free space and inodes on the runner's volume.
    Room,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::Processes => "processes",
            Invariant::Install => "install",
            Invariant::Home => "home",
            Invariant::Work => "work",
            Invariant::Scheduled => "scheduled jobs",
            Invariant::Temp => "temp files",
            Invariant::Docker => "docker",
            Invariant::Room => "room",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the clean-slate check failed: {invariant}: {detail}")]
pub struct Unclean {
    pub invariant: Invariant,
    pub detail: String,
}

fn unclean(invariant: Invariant) -> impl Fn(String) -> Unclean {
    move |detail| Unclean { invariant, detail }
}

/// "a, b, c and 4 more": what failed, short enough for a status line.
fn listed<T: fmt::Display>(items: &[T]) -> String {
    let mut text = items
        .iter()
        .take(3)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > 3 {
        text.push_str(&format!(" and {} more", items.len() - 3));
    }
    text
}

/// `Err` when `found` is not empty.
fn none<T: fmt::Display>(invariant: Invariant, what: &str, found: &[T]) -> Result<(), Unclean> {
    if found.is_empty() {
        Ok(())
    } else {
        Err(unclean(invariant)(format!("{what}: {}", listed(found))))
    }
}

impl Resetter {
    /// Every invariant, cheapest first; the first that does not hold is
    /// the answer.
    pub(super) async fn check(&self, docker: Option<&Inventory>) -> Result<(), Unclean> {
        self.check_processes()?;
        let s = &self.settings;
        let work = files::extra_in(&self.install_dir, "_work", &s.keep_work)
            .map_err(|e| unclean(Invariant::Work)(e.to_string()))?;
        none(Invariant::Work, "left in _work", &display(&work))?;
        let marker_dir = Path::new(crate::runner::HOOK_DIR).join(crate::runner::JOB_DIR);
        let markers = files::extra_in(&self.install_dir, &marker_dir.to_string_lossy(), &[])
            .map_err(|e| unclean(Invariant::Work)(e.to_string()))?;
        none(Invariant::Work, "left by the job hooks", &display(&markers))?;
        if let Some(user) = &self.user {
            let temp = files::temp_of(&s.temp_dirs, user.uid.as_raw())
                .map_err(|e| unclean(Invariant::Temp)(e.to_string()))?;
            none(Invariant::Temp, "the runner user's", &display(&temp))?;
            let scheduled = persist::find(user, &persist::Places::default())
                .map_err(|e| unclean(Invariant::Scheduled)(e.to_string()))?;
            if !scheduled.is_empty() {
                return Err(unclean(Invariant::Scheduled)(format!("left: {scheduled}")));
            }
            self.check_install()?;
        }
        if let (Some(home), Some(store)) = (&self.home, &self.home_store) {
            let mut baseline = store
                .load()
                .map_err(|e| unclean(Invariant::Home)(e.to_string()))?;
            let differs = store
                .differences(home, &mut baseline)
                .map_err(|e| unclean(Invariant::Home)(e.to_string()))?;
            none(
                Invariant::Home,
                "differs from its baseline",
                &display(&differs),
            )?;
        }
        if let Some(baseline) = docker {
            let now = self
                .docker
                .inventory()
                .await
                .map_err(|e| unclean(Invariant::Docker)(e.to_string()))?;
            let images_too = s.images == crate::config::ImageMode::Baseline;
            let extra = now.beyond(baseline, images_too);
            none(Invariant::Docker, "not in the baseline", &extra)?;
        }
        let room = health::room(&self.runner_volume())
            .map_err(|e| unclean(Invariant::Room)(e.to_string()))?;
        health::verdict(room, s.min_free_space, s.min_free_inodes)
            .map_err(|e| unclean(Invariant::Room)(e.to_string()))
    }

    fn check_processes(&self) -> Result<(), Unclean> {
        let fail = unclean(Invariant::Processes);
        if self.cgroup.is_none() && self.user.is_none() {
            return Ok(());
        }
        // One look at /proc serves both listings below.
        let live: Vec<crate::ps::Process> = crate::ps::snapshot()
            .map_err(|e| fail(e.to_string()))?
            .into_iter()
            .filter(|p| !p.zombie)
            .collect();
        let named = |keep: &dyn Fn(&crate::ps::Process) -> bool| -> Vec<String> {
            live.iter()
                .filter(|p| keep(p))
                .map(|p| format!("{} ({})", p.pid, p.name_lossy()))
                .collect()
        };
        // The runner user's rootless daemon, which the reset started.
        let spared = self.rootless_tree(&live);
        if let Some(cgroup) = &self.cgroup {
            let members: Vec<i32> = cgroup
                .members()
                .map_err(|e| fail(e.to_string()))?
                .into_iter()
                .filter(|pid| !spared.contains(pid))
                .collect();
            none(Invariant::Processes, "in the runner's cgroup", &members)?;
            // Listed again from every process's own cgroup file: a group
            // file that lied (or a member below it) is caught here.
            let inside = named(&|p| p.in_cgroup(cgroup.path()) && !spared.contains(&p.pid));
            none(Invariant::Processes, "in the runner's cgroup", &inside)?;
        }
        if let Some(user) = &self.user {
            let left = named(&|p| p.has_uid(user.uid.as_raw()) && !spared.contains(&p.pid));
            none(Invariant::Processes, "of the runner user", &left)?;
        }
        Ok(())
    }

    fn check_install(&self) -> Result<(), Unclean> {
        let fail = unclean(Invariant::Install);
        let manifest = Manifest::load(&self.manifest_path)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| {
                fail(format!(
                    "no install manifest at {}",
                    self.manifest_path.display()
                ))
            })?;
        let differs = manifest
            .differences(&self.install_dir)
            .map_err(|e| fail(e.to_string()))?;
        none(Invariant::Install, "not as verified", &differs)
    }
}

fn display(paths: &[std::path::PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

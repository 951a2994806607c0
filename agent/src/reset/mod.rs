//! The clean slate between runs on a reused instance: after the runner is
//! deregistered and before the release is signalled, every process the run
//! started goes, its files, credentials and docker objects go, and the
//! instance is checked for room for the next run. A reset that fails is
//! never hidden: the machine signals `UD_REMOVE_REG_REMOVE_RUN_FAILED` and
//! refuses later claims (see `machine/reset.rs`).

pub mod cgroup;
mod check;
mod docker;
mod error;
mod files;
pub mod health;
mod home;
mod persist;
mod procs;
mod rootless;

use crate::config::{DockerMode, ImageMode, ResetSettings, RunnerSettings};
use crate::runner::user::RunnerUser;
use cgroup::RunnerCgroup;
use docker::{Docker, Inventory};
pub use error::ResetError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BASELINE_FILE: &str = "baseline.json";
const HOME_BASELINE_DIR: &str = "home-baseline";
/// The verified install, written down (`runner/manifest.rs`).
pub const INSTALL_MANIFEST: &str = "install-manifest.json";

/// What the instance held before its first run, kept across restarts:
/// this is not cleaned away.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Baseline {
    /// `None`: docker did not answer at the first start.
    docker: Option<Inventory>,
    /// Files under the home's `.ssh`, relative to it.
    ssh: BTreeSet<PathBuf>,
}

pub struct Resetter {
    settings: ResetSettings,
    install_dir: PathBuf,
    baseline_path: PathBuf,
    /// A dedicated runner user (not the agent's, not root).
    user: Option<RunnerUser>,
    home: Option<PathBuf>,
    /// With a dedicated user, the home is restored whole to its baseline.
    home_store: Option<home::HomeStore>,
    manifest_path: PathBuf,
    /// The last clean-slate check, for the state file and the heartbeat.
    last_check: std::sync::Mutex<Option<crate::state::CheckRecord>>,
    cgroup: Option<Arc<RunnerCgroup>>,
    docker: Docker,
    /// The runner user's own daemon (hardened mode), restarted by each
    /// reset (`rootless.rs`); `docker` is then aimed at it.
    rootless: Option<Arc<crate::hardening::rootless::RootlessDocker>>,
    stop_timeout: std::time::Duration,
}

impl Resetter {
    /// The reset of `runner`'s install as `reset` says, keeping its
    /// baselines in `state_dir`.
    pub fn new(
        reset: &ResetSettings,
        runner: &RunnerSettings,
        state_dir: &Path,
        user: Option<RunnerUser>,
        cgroup: Option<Arc<RunnerCgroup>>,
    ) -> Resetter {
        let reset = reset.clone();
        let home = reset.home.clone().or_else(|| match &user {
            Some(user) => Some(user.home.clone()),
            None => nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.dir),
        });
        let user = user.filter(|u| !u.uid.is_root());
        let home_store = user.as_ref().map(|_| home::HomeStore {
            dir: state_dir.join(HOME_BASELINE_DIR),
            keep: reset.home_keep.clone(),
            max_bytes: reset.home_max,
        });
        Resetter {
            home_store,
            manifest_path: state_dir.join(INSTALL_MANIFEST),
            last_check: Default::default(),
            docker: Docker {
                cli: reset.docker_cli.clone(),
                host: reset.docker_host.clone(),
            },
            settings: reset,
            install_dir: runner.install_dir.clone(),
            baseline_path: state_dir.join(BASELINE_FILE),
            user,
            home,
            cgroup,
            rootless: None,
            stop_timeout: runner.stop_timeout,
        }
    }

    fn load_baseline(&self) -> Option<Baseline> {
        let text = std::fs::read(&self.baseline_path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(baseline) => Some(baseline),
            Err(e) => {
                tracing::error!(error = %e, path = %self.baseline_path.display(), "unreadable baseline; taking it again");
                None
            }
        }
    }

    /// Records what the instance holds before its first run (once per
    /// instance: later starts keep the first record).
    pub async fn take_baseline(&self) {
        if !self.settings.enabled {
            return;
        }
        if let (Some(user), true) = (&self.user, self.settings.deny_cron) {
            match persist::deny(user, &persist::Places::default()) {
                Ok(()) => {
                    tracing::info!(user = %user.name, "runner user denied in cron.deny and at.deny")
                }
                Err(e) => tracing::error!(error = %e, "denying cron and at to the runner user"),
            }
        }
        if let (Some(store), Some(home)) = (&self.home_store, &self.home) {
            if !store.exists() {
                match store.take(home) {
                    Ok(_) => tracing::info!(home = %home.display(), "home baseline taken"),
                    Err(e) => {
                        tracing::error!(error = %e, "taking the home's baseline; every reset will fail until it is taken")
                    }
                }
            }
        }
        if self.load_baseline().is_some() {
            return;
        }
        let wanted = self.rootless.is_some() || self.settings.docker != DockerMode::Off;
        let docker = if wanted && self.docker.installed() {
            match self.docker.inventory().await {
                Ok(inventory) => Some(inventory),
                Err(e) => {
                    tracing::info!(error = %e, "docker does not answer; it is left alone unless it does later");
                    None
                }
            }
        } else {
            None
        };
        let ssh = match &self.home {
            Some(home) => match files::list_ssh(home) {
                Ok(ssh) => ssh,
                Err(e) => {
                    tracing::error!(error = %e, "listing the runner's .ssh for the baseline; not saved");
                    return;
                }
            },
            None => Default::default(),
        };
        let baseline = Baseline { docker, ssh };
        let bytes = serde_json::to_vec_pretty(&baseline).expect("baseline serializes");
        if let Err(e) =
            runner_agent_common::fs::write_atomically(&self.baseline_path, &bytes, 0o600)
        {
            tracing::error!(error = %e, "saving the reset baseline");
        }
        tracing::info!(
            docker = baseline.docker.is_some(),
            ssh_files = baseline.ssh.len(),
            "reset baseline taken"
        );
    }

    /// Runs every step within the configured time; `Ok` carries a summary
    /// for the log, `Err` the reason the instance is not clean.
    pub async fn run(&self) -> Result<String, ResetError> {
        if !self.settings.enabled {
            return Ok("reset disabled by config".into());
        }
        let timeout = self.settings.timeout;
        tokio::time::timeout(timeout, self.steps())
            .await
            .map_err(|_| ResetError::TimedOut(timeout))?
    }

    pub fn last_check(&self) -> Option<crate::state::CheckRecord> {
        self.last_check
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn steps(&self) -> Result<String, ResetError> {
        let started = std::time::Instant::now();
        let baseline = self.load_baseline().unwrap_or_default();
        // The runner user's daemon dies in the sweep; it is started again
        // after the last one, and cleaned then.
        let held = self.hold_rootless().await;
        let mut done = vec![self.processes().await?];
        let mut docker = match held {
            Some(_) => None,
            None => self.docker_in_use(&baseline).await?,
        };
        if let Some(inventory) = &docker {
            done.push(self.docker_steps(inventory).await?);
        }
        done.push(self.files(&baseline)?);
        if let Some(user) = &self.user {
            // A link the job put where `_work` or `_diag` belongs was
            // removed above; the runner needs the directories back.
            crate::runner::layout::user_dirs(&self.install_dir, user)
                .map_err(ResetError::step("restoring the runner user's directories"))?;
            let cleared = persist::clear(user, &persist::Places::default()).map_err(
                ResetError::step("removing the runner user's scheduled jobs"),
            )?;
            done.push(format!("{cleared} removed"));
            // Whatever cron or at started since the first sweep.
            procs::kill_user(user.uid)
                .await
                .map_err(ResetError::step("killing the runner user's processes"))?;
        }
        if let Some(held) = held {
            let (inventory, summary) = self.restart_rootless(held, &baseline).await?;
            done.push(summary);
            docker = Some(inventory);
        }
        let checked = std::time::Instant::now();
        let verdict = self.check(docker.as_ref()).await;
        *self.last_check.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(crate::state::CheckRecord {
                passed: verdict.is_ok(),
                at: crate::protocol::now_timestamp(),
                millis: started.elapsed().as_millis() as u64,
                failed: verdict
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {}", e.invariant, e.detail)),
            });
        verdict?;
        let room = health::room(&self.runner_volume())?;
        done.push(format!(
            "checked clean in {} ms; {} and {} inodes free",
            checked.elapsed().as_millis(),
            bytesize::ByteSize::b(room.free_bytes),
            room.free_inodes
        ));
        Ok(done.join("; "))
    }

    /// The run's files: `_work` (but for what is kept), the hooks' marker
    /// dir, `_diag` rotated, the home, the user's temp files.
    fn files(&self, baseline: &Baseline) -> Result<String, ResetError> {
        let s = &self.settings;
        let work = files::empty(&self.install_dir, "_work", &s.keep_work)
            .map_err(ResetError::step("emptying _work"))?;
        let hooks = Path::new(crate::runner::HOOK_DIR).join(crate::runner::JOB_DIR);
        files::empty(&self.install_dir, &hooks.to_string_lossy(), &[])
            .map_err(ResetError::step(format!("emptying {}", hooks.display())))?;
        let diag = files::rotate_diag(&self.install_dir, s.diag_keep, s.diag_max_size)
            .map_err(ResetError::step("rotating _diag"))?;
        let home = match (&self.home, &self.home_store) {
            (Some(home), Some(store)) => {
                let restore = || -> Result<home::Restored, home::HomeError> {
                    let mut recorded = store.load()?;
                    let done = store.restore(home, &mut recorded)?;
                    store.save(&recorded)?;
                    Ok(done)
                };
                let done = restore().map_err(ResetError::step("restoring the runner's home"))?;
                format!("home: {} removed, {} put back", done.removed, done.restored)
            }
            (Some(home), None) => {
                let n = files::clean_home(home, &s.home_paths, &baseline.ssh)
                    .map_err(ResetError::step("cleaning the runner's home"))?;
                format!("{n} home paths removed")
            }
            (None, _) => "no home".to_owned(),
        };
        let temp = match &self.user {
            Some(user) => files::clean_temp(&s.temp_dirs, user.uid.as_raw())
                .map_err(ResetError::step("removing the runner user's temp files"))?,
            None => 0,
        };
        Ok(format!(
            "{work} work entries, {diag} diag logs, {temp} temp files removed; {home}"
        ))
    }

    /// Jobs write under `_work`, which may be a volume of its own.
    fn runner_volume(&self) -> PathBuf {
        let work = self.install_dir.join("_work");
        if work.is_dir() {
            work
        } else {
            self.install_dir.clone()
        }
    }

    /// Every process of the run: the cgroup, else the process groups that
    /// work in the runner directory; then, with a dedicated user, all of
    /// that user's.
    async fn processes(&self) -> Result<String, ResetError> {
        let mut summary = match &self.cgroup {
            Some(cgroup) => {
                let n = cgroup
                    .kill_all()
                    .await
                    .map_err(ResetError::step("killing the runner's cgroup"))?;
                format!("{n} processes killed (cgroup)")
            }
            None => {
                let n = crate::runner::tree::stop_groups_in(&self.install_dir, self.stop_timeout)
                    .await
                    .map_err(ResetError::step("looking for the run's processes"))?;
                format!("{n} process groups stopped (no cgroup)")
            }
        };
        if let Some(user) = &self.user {
            let n = procs::kill_user(user.uid)
                .await
                .map_err(ResetError::step("killing the runner user's processes"))?;
            summary.push_str(&format!(", {n} more of user {}", user.name));
        }
        Ok(summary)
    }

    /// The inventory to keep when docker is to be cleaned; `None` when
    /// docker is not used here.
    async fn docker_in_use(&self, baseline: &Baseline) -> Result<Option<Inventory>, ResetError> {
        let mode = self.settings.docker;
        if mode == DockerMode::Off || (mode == DockerMode::Auto && !self.docker.installed()) {
            return Ok(None);
        }
        match self.docker.ping().await {
            Ok(_) => Ok(Some(baseline.docker.clone().unwrap_or_default())),
            // It answered before: jobs may have left things in it.
            Err(e) if mode == DockerMode::Required || baseline.docker.is_some() => {
                Err(ResetError::DockerDown(e))
            }
            Err(_) => Ok(None),
        }
    }

    async fn docker_steps(&self, baseline: &Inventory) -> Result<String, ResetError> {
        let images_too = self.settings.images == ImageMode::Baseline;
        let cleaned = self.docker.clean(baseline, images_too).await?;
        // The caches: over their caps they shrink; a failure to shrink is
        // no reason to fail the instance (the health check guards space).
        let protected = baseline.tags.values().cloned().collect();
        let cap = self.settings.image_cache_max;
        let images = match self.docker.cap_images(cap, &protected).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "capping the image cache");
                0
            }
        };
        // With images = "baseline" the build cache goes too: it is how a
        // job's layers would come back into the next build.
        let build_cache = if images_too {
            0
        } else {
            self.settings.build_cache_max
        };
        if let Err(e) = self.docker.cap_build_cache(build_cache).await {
            tracing::warn!(error = %e, "pruning the build cache");
        }
        // Health: the daemon still answers for the next run.
        self.docker.ping().await.map_err(ResetError::DockerGone)?;
        Ok(format!(
            "docker: {} containers, {} volumes, {} networks, {} images removed, {} tags restored{} in {} rounds",
            cleaned.containers,
            cleaned.volumes,
            cleaned.networks,
            cleaned.images + images,
            cleaned.tags,
            if cleaned.swarm_left { ", swarm left" } else { "" },
            cleaned.rounds
        ))
    }
}

#[cfg(test)]
mod tests;

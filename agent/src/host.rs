//! The real runner host: `actions/runner` on this instance, driven by
//! `RunnerControl`, installed by `runner::install`, reset by `Resetter`.

use crate::config::{PreRunner, RunnerSettings};
use crate::machine::{InstallFailure, RunnerHost, RunnerProcess};
use crate::prerunner::PreRunnerError;
use crate::reset::ResetError;
use crate::runner::pid::Pgid;
use crate::runner::{RemoveOutcome, RunnerControl, RunnerError, RunningRunner};
use std::path::PathBuf;
use std::process::ExitStatus;

/// The real host: `RunnerControl` for the runner, the settings for the
/// pre-runner script and the install, the `Resetter` between runs.
pub struct LocalHost {
    pub control: RunnerControl,
    pub resetter: crate::reset::Resetter,
    pub runner: RunnerSettings,
    pub pre_runner: Option<PreRunner>,
    /// Where the verified install is written down (`runner/manifest.rs`).
    pub manifest_path: PathBuf,
    pub user: Option<crate::runner::user::RunnerUser>,
    /// The runner version the install dir holds, once installed.
    pub installed: std::sync::Mutex<Option<String>>,
    /// Why this host must not serve at all (no cgroup for the runner):
    /// the install fails with it, so every claim gets `UD_REG_FAILED`.
    pub refusal: Option<String>,
    /// Per-run AWS credentials for jobs, when `[job_credentials]` is set.
    pub credentials: Option<crate::credentials::JobCredentials>,
}

impl LocalHost {
    /// With a dedicated runner user: writes down the verified, root-owned
    /// install, which the reset's check compares after every run.
    fn record_manifest(&self) -> Result<(), crate::runner::install::InstallError> {
        use crate::runner::install::InstallError;
        use crate::runner::manifest::Manifest;
        if self.user.is_none() {
            return Ok(());
        }
        let path = &self.manifest_path;
        let err = |e: crate::runner::manifest::ManifestError| InstallError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let previous = Manifest::load(path).unwrap_or_default();
        let manifest =
            Manifest::record(&self.runner.install_dir, previous.as_ref()).map_err(err)?;
        manifest.save(path).map_err(err)?;
        tracing::info!(entries = manifest.files(), "install manifest recorded");
        Ok(())
    }
}

impl RunnerHost for LocalHost {
    type Runner = RunningRunner;

    async fn pre_runner(&self) -> Result<(), PreRunnerError> {
        match &self.pre_runner {
            None => Ok(()),
            Some(pre) => crate::prerunner::run(&pre.script, pre.timeout).await,
        }
    }

    async fn install(&self) -> Result<(), InstallFailure> {
        use crate::runner::install::{self, InstallOutcome};
        if let Some(reason) = &self.refusal {
            return Err(InstallFailure {
                retryable: false,
                message: reason.clone(),
            });
        }
        let runner = &self.runner;
        let dir = runner.install_dir.display();
        let installed = install::ensure_installed(runner, self.user.as_ref()).await;
        let installed = match installed {
            Ok(outcome) => self.record_manifest().map(|()| outcome),
            Err(e) => Err(e),
        };
        match installed {
            Ok(outcome) => {
                let version = outcome.version();
                *self.installed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(version.to_owned());
                match &outcome {
                    InstallOutcome::AlreadyPresent { verified, .. } => {
                        tracing::info!(version, configured = %runner.version, verified, %dir, "runner already installed")
                    }
                    InstallOutcome::Installed { sha256, .. } => {
                        tracing::info!(version, configured = %runner.version, sha256 = %sha256, %dir, "runner installed")
                    }
                    // ensure_installed warned with the reason.
                    InstallOutcome::KeptInstalled { verified, .. } => {
                        tracing::info!(version, configured = %runner.version, verified, %dir, "runner kept")
                    }
                }
                Ok(())
            }
            Err(e) => Err(InstallFailure::from(e)),
        }
    }

    fn runner_version(&self) -> Option<String> {
        self.installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn upgrade(&self) -> Result<String, InstallFailure> {
        use crate::runner::install::{self, UpgradeOutcome};
        let current = self
            .installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let runner = &self.runner;
        let upgraded = install::upgrade(runner, self.user.as_ref(), &current).await;
        let upgraded = match upgraded {
            Ok(outcome @ UpgradeOutcome::Upgraded { .. }) => {
                self.record_manifest().map(|()| outcome)
            }
            other => other,
        };
        match upgraded {
            Ok(UpgradeOutcome::Upgraded { version, sha256 }) => {
                tracing::info!(from = current, to = version, sha256, "runner upgraded");
                *self.installed.lock().unwrap_or_else(|e| e.into_inner()) = Some(version.clone());
                Ok(version)
            }
            // GitHub refuses what we run and has nothing newer: retried
            // later (a release may be on its way).
            Ok(UpgradeOutcome::NotNewer { latest }) => Err(InstallFailure {
                retryable: true,
                message: format!("the latest release ({latest}) is not newer than {current}"),
            }),
            Err(e) => Err(InstallFailure::from(e)),
        }
    }

    fn write_hooks(&self) -> Result<(), RunnerError> {
        self.control.write_hooks()
    }

    fn is_configured(&self) -> bool {
        self.control.is_configured()
    }

    fn job_active(&self) -> bool {
        self.control.job_active()
    }

    fn worker_running(&self) -> bool {
        self.control.worker_running()
    }

    fn clear_job_marker(&self) {
        self.control.clear_job_marker()
    }

    async fn configure(&self, token: &str, name: &str, run_id: &str) -> Result<(), RunnerError> {
        self.control.configure(token, name, run_id).await
    }

    async fn remove(&self, token: Option<&str>) -> Result<RemoveOutcome, RunnerError> {
        self.control.remove(token).await
    }

    fn start(&self) -> Result<RunningRunner, RunnerError> {
        match &self.credentials {
            Some(credentials) => self.control.start_with(&credentials.run_env()),
            None => self.control.start(),
        }
    }

    fn run_claimed(&self, run_id: &str) {
        if let Some(credentials) = &self.credentials {
            credentials.begin(run_id);
        }
    }

    fn run_over(&self) {
        if let Some(credentials) = &self.credentials {
            credentials.end();
        }
    }

    fn adopt(&self, pgid: Pgid) -> Option<RunningRunner> {
        self.control.adopt(pgid)
    }

    async fn stop_strays(&self) {
        self.control.stop_strays().await
    }

    async fn take_baseline(&self) {
        self.resetter.take_baseline().await
    }

    async fn reset(&self) -> Result<String, ResetError> {
        self.resetter.run().await
    }

    fn last_check(&self) -> Option<crate::state::CheckRecord> {
        self.resetter.last_check()
    }
}

impl RunnerProcess for RunningRunner {
    fn pgid(&self) -> Pgid {
        RunningRunner::pgid(self)
    }

    async fn exited(&mut self) -> Option<ExitStatus> {
        RunningRunner::exited(self).await
    }

    async fn stop(self) {
        RunningRunner::stop(self).await
    }
}

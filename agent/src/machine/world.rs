//! What the lifecycle needs from the world, as traits: the pool's table,
//! the host the runner lives on, and the wall clock. The agent implements
//! them with DynamoDB, `actions/runner` and the system clock (below); the
//! in-process tests with fakes (`tests/fakes.rs`). Time for waits is
//! tokio's, which the tests pause.

use crate::protocol::{InstanceRecord, RegistrationToken, Signal};
use crate::runner::pid::Pgid;
use crate::runner::{RemoveOutcome, RunnerControl, RunnerError, RunningRunner};
use crate::status::Status;
use crate::table::{Table, TableError};
use std::future::Future;
use std::process::ExitStatus;
use time::OffsetDateTime;

/// The pool's DynamoDB table, seen from one instance.
pub trait Pool: Clone + Send + Sync + 'static {
    /// The instance record; `Ok(None)` when the control plane has none.
    fn read_instance(
        &self,
        consistent: bool,
    ) -> impl Future<Output = Result<Option<InstanceRecord>, TableError>> + Send;
    /// The instance record and the registration token, strongly consistent.
    fn read_claim_and_token(
        &self,
    ) -> impl Future<Output = Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError>>
           + Send;
    fn read_token(
        &self,
    ) -> impl Future<Output = Result<Option<RegistrationToken>, TableError>> + Send;
    fn put_signal(
        &self,
        signal: Signal,
        run_id: &str,
    ) -> impl Future<Output = Result<(), TableError>> + Send;
    fn put_heartbeat(
        &self,
        status: &Status,
        free_disk: Option<u64>,
    ) -> impl Future<Output = Result<(), TableError>> + Send;
}

/// Why installing the runner failed, and whether trying again may help
/// (a download error may; a digest mismatch will not).
#[derive(Debug, Clone)]
pub struct InstallFailure {
    pub retryable: bool,
    pub message: String,
}

/// The host the runner lives on: the operator's pre-runner script, the
/// runner's installation, its registration and its processes.
pub trait RunnerHost: Send + Sync {
    type Runner: RunnerProcess;

    /// Runs the pre-runner script (nothing to run is a success).
    fn pre_runner(&self) -> impl Future<Output = Result<(), String>> + Send;
    fn install(&self) -> impl Future<Output = Result<(), InstallFailure>> + Send;
    /// Installs the latest release in place of a deprecated one (no
    /// registration, no runner process); the version now installed.
    fn upgrade(&self) -> impl Future<Output = Result<String, InstallFailure>> + Send;
    /// The runner version installed, once known.
    fn runner_version(&self) -> Option<String>;
    /// Writes the job hooks the runner calls around each job.
    fn write_hooks(&self) -> Result<(), RunnerError>;
    /// Whether the runner directory holds a registration.
    fn is_configured(&self) -> bool;
    fn job_active(&self) -> bool;
    /// Whether a `Runner.Worker` (the process that runs a job) lives.
    fn worker_running(&self) -> bool;
    fn clear_job_marker(&self);
    fn configure(
        &self,
        token: &str,
        name: &str,
        run_id: &str,
    ) -> impl Future<Output = Result<(), RunnerError>> + Send;
    fn remove(
        &self,
        token: Option<&str>,
    ) -> impl Future<Output = Result<RemoveOutcome, RunnerError>> + Send;
    fn start(&self) -> Result<Self::Runner, RunnerError>;
    /// Takes over a runner an earlier agent process started, if it lives.
    fn adopt(&self, pgid: Pgid) -> Option<Self::Runner>;
    /// Stops processes left in the runner directory by earlier runs.
    fn stop_strays(&self) -> impl Future<Output = ()> + Send;
    /// Records what the instance holds before its first run, which the
    /// reset keeps (once per instance).
    fn take_baseline(&self) -> impl Future<Output = ()> + Send;
    /// Resets the instance for the next run: `Ok` with a summary, or why it
    /// is not clean.
    fn reset(&self) -> impl Future<Output = Result<String, String>> + Send;
    /// The clean-slate check of the last reset, if it got that far.
    fn last_check(&self) -> Option<crate::state::CheckRecord> {
        None
    }
}

/// A running `Runner.Listener`.
pub trait RunnerProcess: Send {
    fn pgid(&self) -> Pgid;
    /// Resolves when the runner exits (with its status when known).
    fn exited(&mut self) -> impl Future<Output = Option<ExitStatus>> + Send;
    /// Stops the runner and every process under it.
    fn stop(self) -> impl Future<Output = ()> + Send;
}

/// Wall-clock time, for what the control plane writes as timestamps
/// (thresholds, token expiry, our own `updatedAt`-style stamps).
pub trait Clock: Clone + Send + Sync + 'static {
    fn now_utc(&self) -> OffsetDateTime;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

impl Pool for Table {
    async fn read_instance(&self, consistent: bool) -> Result<Option<InstanceRecord>, TableError> {
        Table::read_instance(self, consistent).await
    }

    async fn read_claim_and_token(
        &self,
    ) -> Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError> {
        Table::read_claim_and_token(self).await
    }

    async fn read_token(&self) -> Result<Option<RegistrationToken>, TableError> {
        Table::read_token(self).await
    }

    async fn put_signal(&self, signal: Signal, run_id: &str) -> Result<(), TableError> {
        Table::put_signal(self, signal, run_id).await
    }

    async fn put_heartbeat(
        &self,
        status: &Status,
        free_disk: Option<u64>,
    ) -> Result<(), TableError> {
        Table::put_heartbeat(self, status, free_disk).await
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

/// The real host: `RunnerControl` for the runner, the settings for the
/// pre-runner script and the install, the `Resetter` between runs.
pub struct LocalHost {
    pub control: RunnerControl,
    pub resetter: crate::reset::Resetter,
    pub settings: crate::config::Settings,
    pub user: Option<crate::runner::user::RunnerUser>,
    /// The runner version the install dir holds, once installed.
    pub installed: std::sync::Mutex<Option<String>>,
    /// Why this host must not serve at all (no cgroup for the runner):
    /// the install fails with it, so every claim gets `UD_REG_FAILED`.
    pub refusal: Option<String>,
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
        let path = self.settings.state_dir.join(crate::reset::INSTALL_MANIFEST);
        let err = |e: crate::runner::manifest::ManifestError| InstallError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let previous = Manifest::load(&path).unwrap_or_default();
        let manifest =
            Manifest::record(&self.settings.runner.install_dir, previous.as_ref()).map_err(err)?;
        manifest.save(&path).map_err(err)?;
        tracing::info!(entries = manifest.files(), "install manifest recorded");
        Ok(())
    }
}

impl RunnerHost for LocalHost {
    type Runner = RunningRunner;

    async fn pre_runner(&self) -> Result<(), String> {
        match &self.settings.pre_runner {
            None => Ok(()),
            Some(pre) => crate::prerunner::run(&pre.script, pre.timeout)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn install(&self) -> Result<(), InstallFailure> {
        use crate::runner::install::{self, InstallError, InstallOutcome};
        if let Some(reason) = &self.refusal {
            return Err(InstallFailure {
                retryable: false,
                message: reason.clone(),
            });
        }
        let runner = &self.settings.runner;
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
            Err(e) => Err(InstallFailure {
                retryable: matches!(
                    e,
                    InstallError::Download { .. } | InstallError::ReleaseApi { .. }
                ),
                message: e.to_string(),
            }),
        }
    }

    fn runner_version(&self) -> Option<String> {
        self.installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn upgrade(&self) -> Result<String, InstallFailure> {
        use crate::runner::install::{self, InstallError, UpgradeOutcome};
        let current = self
            .installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        let runner = &self.settings.runner;
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
            Err(e) => Err(InstallFailure {
                retryable: matches!(
                    e,
                    InstallError::Download { .. } | InstallError::ReleaseApi { .. }
                ),
                message: e.to_string(),
            }),
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
        self.control.start()
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

    async fn reset(&self) -> Result<String, String> {
        self.resetter.run().await
    }

    fn last_check(&self) -> Option<crate::state::CheckRecord> {
        self.resetter.last_check()
    }
}

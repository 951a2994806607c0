//! What the lifecycle needs from the host the runner lives on, as traits
//! (the pool's table is `crate::pool`, the wall clock `crate::clock`). The
//! agent implements them with `actions/runner` (`crate::host`); the
//! in-process tests with fakes (`tests/fakes/`).

use crate::prerunner::PreRunnerError;
use crate::reset::ResetError;
use crate::runner::pid::Pgid;
use crate::runner::{RemoveOutcome, RunnerError};
use std::future::Future;
use std::process::ExitStatus;

/// Why installing the runner failed, and whether trying again may help
/// (a download error may; a digest mismatch will not).
#[derive(Debug, Clone)]
pub struct InstallFailure {
    pub retryable: bool,
    pub message: String,
}

impl From<crate::runner::install::InstallError> for InstallFailure {
    fn from(e: crate::runner::install::InstallError) -> InstallFailure {
        InstallFailure {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// The host the runner lives on: the operator's pre-runner script, the
/// runner's installation, its registration and its processes.
pub trait RunnerHost: Send + Sync {
    type Runner: RunnerProcess;

    /// Runs the pre-runner script (nothing to run is a success).
    fn pre_runner(&self) -> impl Future<Output = Result<(), PreRunnerError>> + Send;
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
    fn reset(&self) -> impl Future<Output = Result<String, ResetError>> + Send;
    /// `run_id` holds the instance (claimed, or resumed): what its jobs
    /// need is prepared in the background (`crate::credentials`); the
    /// claim never waits for it. Called again for the same run: nothing.
    fn run_claimed(&self, _run_id: &str) {}
    /// No run holds the instance any more: what its jobs were given stops
    /// working.
    fn run_over(&self) {}
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

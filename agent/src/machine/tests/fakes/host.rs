//! The runner host, faked: config.sh, the listener, the pre-runner script,
//! the install and the reset, with knobs for faults.

use crate::machine::{InstallFailure, RunnerHost, RunnerProcess};
use crate::prerunner::PreRunnerError;
use crate::reset::ResetError;
use crate::runner::pid::Pgid;
use crate::runner::{RemoveOutcome, RunnerError};
use std::collections::{HashSet, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;

pub fn failed(what: &'static str, code: i32) -> RunnerError {
    RunnerError::Failed {
        what,
        status: ExitStatus::from_raw(code << 8),
    }
}

#[derive(Default)]
pub struct HostState {
    /// The pre-runner script's exit code when it fails.
    pub pre_runner: Option<Result<(), i32>>,
    pub pre_runner_runs: usize,
    pub pre_runner_delay: Duration,
    pub installs: VecDeque<Result<(), InstallFailure>>,
    pub install_calls: usize,
    /// Outcomes of the next upgrades; empty: success, to "2.999.0".
    pub upgrades: VecDeque<Result<String, InstallFailure>>,
    pub upgrade_calls: usize,
    pub configured: bool,
    /// Outcomes of the next config.sh runs; empty: success.
    pub configure_results: VecDeque<Result<(), RunnerError>>,
    pub configure_delay: Duration,
    /// (runner name, run id, token) per config.sh run.
    pub configures: Vec<(String, String, String)>,
    /// The token each `config.sh remove` got.
    pub removes: Vec<Option<String>>,
    pub start_failures: usize,
    /// What a successful install or upgrade left installed.
    pub runner_version: Option<String>,
    pub starts: usize,
    pub next_pgid: i32,
    /// Process groups an earlier agent left running.
    pub alive: HashSet<i32>,
    pub adopted: Vec<i32>,
    pub stops: Vec<i32>,
    pub stray_sweeps: usize,
    pub job_active: bool,
    /// A Runner.Worker lives (without the job hook's marker).
    pub worker_running: bool,
    pub hooks_written: bool,
    /// Outcomes of the next resets; empty: success.
    pub reset_results: VecDeque<Result<String, ResetError>>,
    pub reset_delay: Duration,
    pub resets: usize,
    /// At each reset: deregistrations so far, and runners still running.
    pub reset_saw: Vec<(usize, usize)>,
    pub baselines: usize,
    /// The run whose jobs' credentials are live (`run_claimed`, until
    /// `run_over`), and each change of it in order.
    pub current_run: Option<String>,
    pub run_changes: Vec<Option<String>>,
    /// `current_run` at each runner start and at each reset.
    pub started_for: Vec<Option<String>>,
    pub reset_for: Vec<Option<String>>,
    /// Exit senders (raw wait status) of the runners started, by pgid.
    pub exits: Vec<(i32, watch::Sender<Option<i32>>)>,
}

/// The runner host: config.sh, the listener and the pre-runner script, faked.
#[derive(Clone)]
pub struct FakeHost(Arc<Mutex<HostState>>);

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost(Arc::new(Mutex::new(HostState {
            next_pgid: 1000,
            ..Default::default()
        })))
    }

    pub fn lock(&self) -> MutexGuard<'_, HostState> {
        self.0.lock().unwrap()
    }

    /// The newest runner exits with `code`.
    pub fn runner_exits(&self, code: i32) {
        self.runner_ends(code << 8);
    }

    /// The newest runner is killed by `signal` (SIGKILL from the OOM
    /// killer, say).
    pub fn runner_killed(&self, signal: i32) {
        self.runner_ends(signal);
    }

    /// The newest runner ends with the raw wait status `status`.
    fn runner_ends(&self, status: i32) {
        let s = self.lock();
        let (_, exit) = s.exits.last().expect("a runner was started");
        exit.send_replace(Some(status));
    }

    /// Process groups started and not stopped.
    pub fn running(&self) -> Vec<i32> {
        let s = self.lock();
        s.exits
            .iter()
            .filter(|(pgid, exit)| !s.stops.contains(pgid) && exit.borrow().is_none())
            .map(|(pgid, _)| *pgid)
            .collect()
    }

    fn runner(&self, pgid: i32) -> FakeRunner {
        let (tx, rx) = watch::channel(None);
        self.lock().exits.push((pgid, tx));
        FakeRunner {
            pgid,
            exit: rx,
            host: self.clone(),
        }
    }
}

impl RunnerHost for FakeHost {
    type Runner = FakeRunner;

    async fn pre_runner(&self) -> Result<(), PreRunnerError> {
        let (delay, outcome) = {
            let mut s = self.lock();
            s.pre_runner_runs += 1;
            (s.pre_runner_delay, s.pre_runner.unwrap_or(Ok(())))
        };
        tokio::time::sleep(delay).await;
        outcome.map_err(|code| PreRunnerError::Failed {
            path: "pre-runner.sh".into(),
            status: ExitStatus::from_raw(code << 8),
        })
    }

    async fn install(&self) -> Result<(), InstallFailure> {
        let mut s = self.lock();
        s.install_calls += 1;
        let outcome = s.installs.pop_front().unwrap_or(Ok(()));
        if outcome.is_ok() {
            s.runner_version = Some("2.330.0".into());
        }
        outcome
    }

    async fn upgrade(&self) -> Result<String, InstallFailure> {
        let mut s = self.lock();
        s.upgrade_calls += 1;
        let outcome = s
            .upgrades
            .pop_front()
            .unwrap_or_else(|| Ok("2.999.0".into()));
        if let Ok(version) = &outcome {
            s.runner_version = Some(version.clone());
        }
        outcome
    }

    fn runner_version(&self) -> Option<String> {
        self.lock().runner_version.clone()
    }

    fn write_hooks(&self) -> Result<(), RunnerError> {
        self.lock().hooks_written = true;
        Ok(())
    }

    fn is_configured(&self) -> bool {
        self.lock().configured
    }

    fn job_active(&self) -> bool {
        self.lock().job_active
    }

    fn worker_running(&self) -> bool {
        self.lock().worker_running
    }

    fn clear_job_marker(&self) {
        self.lock().job_active = false;
    }

    async fn configure(&self, token: &str, name: &str, run_id: &str) -> Result<(), RunnerError> {
        let delay = {
            let mut s = self.lock();
            s.configures
                .push((name.to_owned(), run_id.to_owned(), token.to_owned()));
            s.configure_delay
        };
        tokio::time::sleep(delay).await;
        let mut s = self.lock();
        let result = s.configure_results.pop_front().unwrap_or(Ok(()));
        s.configured = result.is_ok();
        result
    }

    async fn remove(&self, token: Option<&str>) -> Result<RemoveOutcome, RunnerError> {
        let mut s = self.lock();
        s.removes.push(token.map(Into::into));
        s.configured = false;
        Ok(RemoveOutcome::LocalOnly)
    }

    fn start(&self) -> Result<FakeRunner, RunnerError> {
        let pgid = {
            let mut s = self.lock();
            s.starts += 1;
            let run = s.current_run.clone();
            s.started_for.push(run);
            if s.start_failures > 0 {
                s.start_failures -= 1;
                return Err(failed("run.sh", 127));
            }
            s.next_pgid += 1;
            s.next_pgid
        };
        Ok(self.runner(pgid))
    }

    fn adopt(&self, pgid: Pgid) -> Option<FakeRunner> {
        let pgid = pgid.as_raw();
        if !self.lock().alive.remove(&pgid) {
            return None;
        }
        self.lock().adopted.push(pgid);
        Some(self.runner(pgid))
    }

    async fn stop_strays(&self) {
        let mut s = self.lock();
        s.stray_sweeps += 1;
        s.alive.clear();
    }

    fn run_claimed(&self, run_id: &str) {
        let mut s = self.lock();
        if s.current_run.as_deref() != Some(run_id) {
            s.current_run = Some(run_id.to_owned());
            s.run_changes.push(Some(run_id.to_owned()));
        }
    }

    fn run_over(&self) {
        let mut s = self.lock();
        if s.current_run.take().is_some() {
            s.run_changes.push(None);
        }
    }

    async fn take_baseline(&self) {
        self.lock().baselines += 1;
    }

    async fn reset(&self) -> Result<String, ResetError> {
        let running = self.running().len();
        let delay = {
            let mut s = self.lock();
            s.resets += 1;
            let run = s.current_run.clone();
            s.reset_for.push(run);
            let removes = s.removes.len();
            s.reset_saw.push((removes, running));
            s.reset_delay
        };
        tokio::time::sleep(delay).await;
        let mut s = self.lock();
        s.reset_results
            .pop_front()
            .unwrap_or_else(|| Ok("clean".into()))
    }
}

pub struct FakeRunner {
    pgid: i32,
    exit: watch::Receiver<Option<i32>>,
    host: FakeHost,
}

impl RunnerProcess for FakeRunner {
    fn pgid(&self) -> Pgid {
        Pgid::new(self.pgid).expect("fake pgids are above 1")
    }

    async fn exited(&mut self) -> Option<ExitStatus> {
        let status = *self.exit.wait_for(Option::is_some).await.ok()?;
        status.map(ExitStatus::from_raw)
    }

    async fn stop(self) {
        self.host.lock().stops.push(self.pgid);
    }
}

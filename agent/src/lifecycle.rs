//! The claim / register / serve / release loop, and resuming it after a
//! restart. Every wait here also listens for shutdown and spot
//! interruption; every signal the control plane waits for is retried until
//! it is written.

use crate::expiry::Observation;
use crate::protocol::{InstanceRecord, RegistrationToken, Signal};
use crate::runner::{RunnerControl, RunningRunner};
use crate::state::{AgentState, LastSignal, Registration, StateStore};
use crate::table::Table;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a wait ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Shutdown,
    Spot,
}

/// The agent's two external events, as cheap clonable receivers.
#[derive(Clone)]
pub struct Events {
    pub shutdown: watch::Receiver<bool>,
    pub spot: watch::Receiver<Option<String>>,
}

impl Events {
    pub async fn wait(&self) -> Interrupt {
        let (mut shutdown, mut spot) = (self.shutdown.clone(), self.spot.clone());
        tokio::select! {
            Ok(_) = shutdown.wait_for(|s| *s) => Interrupt::Shutdown,
            Ok(_) = spot.wait_for(|s| s.is_some()) => Interrupt::Spot,
            else => std::future::pending().await,
        }
    }

    /// Sleeps for `duration` unless interrupted first.
    pub async fn sleep(&self, duration: Duration) -> Result<(), Interrupt> {
        tokio::select! {
            _ = tokio::time::sleep(duration) => Ok(()),
            i = self.wait() => Err(i),
        }
    }
}

enum Stage {
    Released,
    Interrupted(Interrupt),
}

impl From<Interrupt> for Stage {
    fn from(i: Interrupt) -> Stage {
        Stage::Interrupted(i)
    }
}

pub struct Timing {
    pub idle_poll: Duration,
    pub claimed_poll: Duration,
    pub job_poll: Duration,
}

/// After releasing a run, eventually consistent reads may still show its id
/// for a moment; such reads are not a new claim.
const RELEASED_ECHO_WINDOW: Duration = Duration::from_secs(5);
/// Runner restarts while a claim holds: 1 s, doubling, at most 30 s; a
/// runner that ran for `RUNNER_HEALTHY_AFTER` resets the schedule.
const RUNNER_RESTART_FIRST: Duration = Duration::from_secs(1);
const RUNNER_RESTART_CAP: Duration = Duration::from_secs(30);
const RUNNER_HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Deregistration reads the current token; it must not hold up a stop.
/// Everything done on SIGTERM or a spot notice, inside systemd's stop
/// timeout and the 30 s the agent promises.
const FINISH_BUDGET: Duration = Duration::from_secs(25);
const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// config.sh attempts per token before `UD_REG_FAILED`: GitHub API blips
/// are common, and the control plane fails the instance on the signal.
const CONFIGURE_ATTEMPTS: u32 = 3;
const CONFIGURE_RETRY: Duration = Duration::from_secs(1);
/// While checking the job marker between DynamoDB reads.
const MARKER_POLL: Duration = Duration::from_millis(250);
/// Repeated read errors are logged at most this often.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

pub struct Lifecycle {
    pub instance_id: String,
    pub table: Table,
    pub control: RunnerControl,
    pub store: StateStore,
    pub state: AgentState,
    pub events: Events,
    pub observations: watch::Sender<Option<Observation>>,
    pub timing: Timing,
    /// `Err` when the runner could not be installed: claims are answered
    /// with `UD_REG_FAILED` and nothing runs.
    pub runner_ready: Result<(), Arc<str>>,
    pub runner: Option<RunningRunner>,
    released: Option<(String, Instant)>,
    last_error_log: Option<Instant>,
}

impl Lifecycle {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        instance_id: String,
        table: Table,
        control: RunnerControl,
        store: StateStore,
        state: AgentState,
        events: Events,
        observations: watch::Sender<Option<Observation>>,
        timing: Timing,
        runner_ready: Result<(), Arc<str>>,
    ) -> Lifecycle {
        Lifecycle {
            instance_id,
            table,
            control,
            store,
            state,
            events,
            observations,
            timing,
            runner_ready,
            runner: None,
            released: None,
            last_error_log: None,
        }
    }

    pub fn set_phase(&mut self, phase: &str) {
        if self.state.phase != phase {
            self.state.phase = phase.to_owned();
            self.state.phase_since = crate::protocol::now_timestamp();
            crate::notify::status(phase);
            tracing::debug!(phase, "phase");
        }
        self.save();
    }

    fn save(&self) {
        if let Err(e) = self.store.save(&self.state) {
            tracing::error!(error = %e, "saving state");
        }
    }

    fn log_read_error(&mut self, what: &str, error: &dyn std::fmt::Display) {
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
        {
            tracing::warn!(error = %error, "{what}; retrying");
            self.last_error_log = Some(Instant::now());
        }
    }

    fn observe(&self, record: &Option<InstanceRecord>) {
        self.observations.send_replace(Some(Observation {
            at: Instant::now(),
            record: record.clone(),
        }));
    }

    /// Writes a signal, retrying until it is stored or the agent is
    /// interrupted (then the interruption's own final signal supersedes it).
    pub async fn signal(&mut self, signal: Signal, run_id: &str) -> Result<(), Interrupt> {
        let events = self.events.clone();
        tokio::select! {
            r = self.table.put_signal_until_written(signal, run_id, None) => {
                if r.is_ok() { self.record_signal(signal, run_id); }
                Ok(())
            }
            i = events.wait() => Err(i),
        }
    }

    fn record_signal(&mut self, signal: Signal, run_id: &str) {
        self.state.last_signal = Some(LastSignal {
            signal: signal.as_str().to_owned(),
            run_id: run_id.to_owned(),
            at: crate::protocol::now_timestamp(),
        });
        self.save();
    }

    /// Runs until shutdown or spot interruption; returns which.
    pub async fn run(mut self) -> Interrupt {
        let Err(interrupt) = self.main_loop().await;
        self.finish(interrupt).await;
        interrupt
    }

    async fn main_loop(&mut self) -> Result<std::convert::Infallible, Interrupt> {
        self.resume().await?;
        loop {
            let (run_id, token) = self.wait_for_claim().await?;
            match self.register(&run_id, token).await {
                Ok(()) => {}
                Err(Stage::Released) => {
                    self.released = Some((run_id, Instant::now()));
                    continue;
                }
                Err(Stage::Interrupted(i)) => return Err(i),
            }
            match self.serve(&run_id).await {
                Stage::Released => {
                    self.teardown(Signal::RemoveRegRemoveRunOk, None).await;
                    self.released = Some((run_id, Instant::now()));
                }
                Stage::Interrupted(i) => return Err(i),
            }
        }
    }

    /// Picks up a registration held by an earlier agent process.
    async fn resume(&mut self) -> Result<(), Interrupt> {
        let Some(registration) = self.state.registration.clone() else {
            if self.control.is_configured() {
                tracing::warn!(
                    "runner directory holds a registration the agent has no record of; removing it"
                );
                self.control.stop_strays().await;
                let _ = self.control.remove(None).await;
            }
            return Ok(());
        };
        let run_id = registration.run_id.clone();
        tracing::info!(run_id = %run_id, runner = %registration.runner_name, "resuming a registration from before the restart");
        let record = loop {
            match self.table.read_instance(true).await {
                Ok(record) => break record,
                Err(e) => self.log_read_error("reading the instance record to resume", &e),
            }
            self.events.sleep(self.timing.claimed_poll).await?;
        };
        self.observe(&record);
        let still_claimed =
            record.as_ref().and_then(|r| r.run_id.as_deref()) == Some(run_id.as_str());
        let adopted = registration
            .runner_pgid
            .and_then(|pgid| self.control.adopt(crate::runner::pid::Pgid::new(pgid)?));
        if still_claimed && self.control.is_configured() {
            if let Some(runner) = adopted {
                tracing::info!(
                    pgid = runner.pgid().as_raw(),
                    "re-attached to the running runner"
                );
                self.runner = Some(runner);
            } else {
                self.control.stop_strays().await;
            }
            if self
                .state
                .last_signal
                .as_ref()
                .is_none_or(|s| s.signal != Signal::RegOk.as_str() || s.run_id != run_id)
            {
                self.signal(Signal::RegOk, &run_id).await?;
            }
            return match self.serve(&run_id).await {
                Stage::Released => {
                    self.teardown(Signal::RemoveRegRemoveRunOk, None).await;
                    self.released = Some((run_id, Instant::now()));
                    Ok(())
                }
                Stage::Interrupted(i) => Err(i),
            };
        }
        if still_claimed {
            // Crashed during config.sh: nothing was registered for this run
            // as far as the control plane knows; clean up and let the main
            // loop register for the claim at once.
            tracing::info!(run_id = %run_id, "registration never finished; registering again");
            if let Some(runner) = adopted {
                runner.stop().await;
            }
            self.control.stop_strays().await;
            let _ = self.control.remove(None).await;
            self.state.registration = None;
            self.save();
            return Ok(());
        }
        // Released while the agent was down.
        self.runner = adopted;
        self.teardown(Signal::RemoveRegRemoveRunOk, None).await;
        self.released = Some((run_id, Instant::now()));
        Ok(())
    }

    async fn wait_for_claim(&mut self) -> Result<(String, Option<RegistrationToken>), Interrupt> {
        self.set_phase("idle");
        let mut warned_missing = false;
        loop {
            match self.table.read_instance(false).await {
                Ok(record) => {
                    self.observe(&record);
                    if record.is_none() && !warned_missing {
                        tracing::warn!("no instance record in the table yet; waiting");
                        warned_missing = true;
                    }
                    let seen = record.and_then(|r| r.run_id);
                    let echo = self.released.as_ref().is_some_and(|(r, at)| {
                        Some(r) == seen.as_ref() && at.elapsed() < RELEASED_ECHO_WINDOW
                    });
                    if let (Some(run_id), false) = (seen, echo) {
                        match self.table.read_claim_and_token().await {
                            Ok((record, token)) => {
                                self.observe(&record);
                                if record.and_then(|r| r.run_id).as_ref() == Some(&run_id) {
                                    tracing::info!(run_id = %run_id, "claimed");
                                    return Ok((run_id, token));
                                }
                            }
                            Err(e) => self.log_read_error("confirming a claim", &e),
                        }
                    }
                }
                Err(e) => self.log_read_error("polling the instance record", &e),
            }
            self.events.sleep(self.timing.idle_poll).await?;
        }
    }

    /// Registers the runner for `run_id`. Refused tokens and failed
    /// registrations signal `UD_REG_FAILED` once each, then wait for a fresh
    /// token (or the release).
    async fn register(
        &mut self,
        run_id: &str,
        mut token: Option<RegistrationToken>,
    ) -> Result<(), Stage> {
        self.set_phase("registering");
        let mut signalled_failure_for: Option<Option<RegistrationToken>> = None;
        loop {
            let attempt = match (&self.runner_ready, &token) {
                (Err(why), _) => Err(format!("runner not installed: {why}")),
                (Ok(()), None) => Err(crate::protocol::TokenProblem::Missing.to_string()),
                (Ok(()), Some(t)) => match t.usable_at(time::OffsetDateTime::now_utc()) {
                    Err(problem) => Err(problem.to_string()),
                    Ok(()) => self.configure(run_id, &t.token).await?,
                },
            };
            match attempt {
                Ok(()) => {
                    self.signal(Signal::RegOk, run_id).await?;
                    return Ok(());
                }
                Err(why) => {
                    tracing::error!(run_id, reason = %why, "registration failed");
                    if signalled_failure_for.as_ref() != Some(&token) {
                        self.signal(Signal::RegFailed, run_id).await?;
                        signalled_failure_for = Some(token.clone());
                    }
                }
            }
            // Wait for the control plane to refresh the token, or release.
            loop {
                self.events.sleep(self.timing.claimed_poll).await?;
                match self.table.read_claim_and_token().await {
                    Ok((record, fresh)) => {
                        self.observe(&record);
                        if record.and_then(|r| r.run_id).as_deref() != Some(run_id) {
                            tracing::info!(run_id, "released before registration succeeded");
                            return Err(Stage::Released);
                        }
                        if fresh != token && self.runner_ready.is_ok() {
                            token = fresh;
                            break;
                        }
                    }
                    Err(e) => self.log_read_error("waiting for a fresh registration token", &e),
                }
            }
        }
    }

    /// One `config.sh` run. `Ok(Err(why))` is a failed registration, with
    /// the local registration files cleaned up so the next try can work.
    async fn configure(&mut self, run_id: &str, token: &str) -> Result<Result<(), String>, Stage> {
        if self.control.is_configured() {
            // Never two registrations: drop a leftover before adding one.
            let _ = self.control.remove(None).await;
        }
        self.state.registration_counter += 1;
        let name = format!("{}-{}", self.instance_id, self.state.registration_counter);
        self.state.registration = Some(Registration {
            run_id: run_id.to_owned(),
            runner_name: name.clone(),
            runner_pgid: None,
        });
        self.save();
        let events = self.events.clone();
        let started = Instant::now();
        let mut attempt = 1;
        let result = loop {
            let result = tokio::select! {
                r = self.control.configure(token, &name, run_id) => r,
                i = events.wait() => return Err(i.into()),
            };
            match result {
                Err(e) if attempt < CONFIGURE_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "config.sh failed; retrying");
                    let _ = self.control.remove(None).await;
                    events.sleep(CONFIGURE_RETRY * attempt).await?;
                    attempt += 1;
                }
                other => break other,
            }
        };
        tracing::info!(runner = %name, elapsed_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "config.sh finished");
        match result {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                let _ = self.control.remove(None).await;
                self.state.registration = None;
                self.save();
                Ok(Err(e.to_string()))
            }
        }
    }

    /// Keeps the runner running while the claim holds; returns on release.
    async fn serve(&mut self, run_id: &str) -> Stage {
        self.set_phase("registered");
        let events = self.events.clone();
        let mut restart_delay = RUNNER_RESTART_FIRST;
        let mut last_read = Instant::now();
        let mut job_was_active = false;
        let mut start_not_before = Instant::now();
        let mut runner_started = Instant::now();
        loop {
            if self.runner.is_none() && Instant::now() >= start_not_before {
                match self.control.start() {
                    Ok(runner) => {
                        if let Some(reg) = &mut self.state.registration {
                            reg.runner_pgid = Some(runner.pgid().as_raw());
                        }
                        self.save();
                        self.runner = Some(runner);
                        runner_started = Instant::now();
                    }
                    Err(e) => {
                        // Keep polling for the release meanwhile.
                        tracing::error!(error = %e, retry_in_s = restart_delay.as_secs(), "starting the runner");
                        start_not_before = Instant::now() + restart_delay;
                        restart_delay = (restart_delay * 2).min(RUNNER_RESTART_CAP);
                    }
                }
            }
            // While a job runs (the runner's job hooks say so), one read per
            // job_poll; otherwise one per claimed_poll. The marker is checked
            // every MARKER_POLL, so the end of a job brings the next read
            // forward at once.
            let job_active = self.control.job_active();
            if job_active != job_was_active {
                tracing::info!(run_id, job_active, "job hook");
                job_was_active = job_active;
            }
            let interval = if job_active {
                self.timing.job_poll
            } else {
                self.timing.claimed_poll
            };
            let due = last_read + interval;
            let wake = due.min(Instant::now() + MARKER_POLL);
            let exited = tokio::select! {
                status = async { match &mut self.runner { Some(r) => r.exited().await, None => std::future::pending().await } } => Some(status),
                _ = tokio::time::sleep_until(wake) => None,
                i = events.wait() => return Stage::Interrupted(i),
            };
            if let Some(status) = exited {
                self.runner = None;
                self.control.clear_job_marker();
                if runner_started.elapsed() >= RUNNER_HEALTHY_AFTER {
                    restart_delay = RUNNER_RESTART_FIRST;
                }
                tracing::warn!(status = ?status, restart_in_s = restart_delay.as_secs(), "runner exited while claimed; restarting");
                start_not_before = Instant::now() + restart_delay;
                restart_delay = (restart_delay * 2).min(RUNNER_RESTART_CAP);
                continue;
            }
            if Instant::now() < due {
                continue;
            }
            last_read = Instant::now();
            match self.table.read_instance(false).await {
                Ok(record) => {
                    self.observe(&record);
                    if record.and_then(|r| r.run_id).as_deref() == Some(run_id) {
                        continue;
                    }
                    match self.table.read_instance(true).await {
                        Ok(record) => {
                            self.observe(&record);
                            if record.and_then(|r| r.run_id).as_deref() != Some(run_id) {
                                tracing::info!(run_id, "released");
                                return Stage::Released;
                            }
                        }
                        Err(e) => self.log_read_error("confirming a release", &e),
                    }
                }
                Err(e) => self.log_read_error("polling the instance record", &e),
            }
        }
    }

    /// Stops the runner, deregisters, and writes `signal` for the run that
    /// was registered (if any). `deadline` bounds the signal retries when
    /// the agent is stopping.
    async fn teardown(&mut self, signal: Signal, deadline: Option<Instant>) {
        let Some(registration) = self.state.registration.clone() else {
            return;
        };
        self.set_phase("deregistering");
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
        // Job processes that left the runner's tree (double forks) but
        // still work in its directory go too.
        self.control.stop_strays().await;
        self.control.clear_job_marker();
        let token = match tokio::time::timeout(TOKEN_READ_TIMEOUT, self.table.read_token()).await {
            Ok(Ok(t)) => t.map(|t| t.token).filter(|t| !t.is_empty()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the token for deregistration");
                None
            }
            Err(_) => None,
        };
        let started = Instant::now();
        let removed = self.control.remove(token.as_deref()).await;
        tracing::info!(
            run_id = %registration.run_id,
            runner = %registration.runner_name,
            outcome = ?removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "deregistered"
        );
        if let Some(reg) = &mut self.state.registration {
            // The runner is gone; keep the record of the registration until
            // its signal is stored, so that a crash before then makes the
            // next start deregister (a no-op) and signal again.
            reg.runner_pgid = None;
        }
        self.save();
        let run_id = registration.run_id;
        let write = self
            .table
            .put_signal_until_written(signal, &run_id, deadline);
        let written = match deadline {
            Some(_) => write.await.is_ok(),
            // On the release path the write is retried for as long as it
            // takes, unless the agent is stopped: then `finish` writes it
            // within its own budget.
            None => {
                let events = self.events.clone();
                tokio::select! {
                    r = write => r.is_ok(),
                    _ = events.wait() => false,
                }
            }
        };
        if written {
            self.state.registration = None;
            self.record_signal(signal, &run_id);
        }
    }

    /// Final steps on shutdown or spot interruption.
    async fn finish(&mut self, interrupt: Interrupt) {
        // Stop within 30 s of SIGTERM whatever DynamoDB or GitHub do.
        let deadline = Instant::now() + FINISH_BUDGET;
        if tokio::time::timeout_at(
            deadline + Duration::from_secs(2),
            self.finish_steps(interrupt, deadline),
        )
        .await
        .is_err()
        {
            tracing::error!(
                "final deregistration did not finish in time; the next start resumes it"
            );
        }
    }

    async fn finish_steps(&mut self, interrupt: Interrupt, deadline: Instant) {
        match interrupt {
            Interrupt::Shutdown => {
                self.set_phase("stopping");
                self.teardown(Signal::RemoveRegRemoveRunOk, Some(deadline))
                    .await;
            }
            Interrupt::Spot => {
                let run_id = self.state.registration.as_ref().map(|r| r.run_id.clone());
                if run_id.is_some() {
                    self.teardown(Signal::SpotInterrupted, Some(deadline)).await;
                } else {
                    let current = self
                        .observations
                        .borrow()
                        .clone()
                        .and_then(|o| o.record)
                        .and_then(|r| r.run_id)
                        .unwrap_or_default();
                    if self
                        .table
                        .put_signal_until_written(Signal::SpotInterrupted, &current, Some(deadline))
                        .await
                        .is_ok()
                    {
                        self.record_signal(Signal::SpotInterrupted, &current);
                    }
                }
                self.set_phase("spot-interrupted");
            }
        }
    }
}

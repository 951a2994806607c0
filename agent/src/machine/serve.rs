//! Serving: the runner runs (and is restarted if it exits) while the claim
//! holds; a confirmed release moves to releasing.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost, RunnerProcess};
use crate::protocol::Signal;
use crate::runner::exit::ListenerExit;
use crate::spot::Notice;
use crate::state::Phase;
use std::time::Duration;
use tokio::time::Instant;

/// Runner restarts while a claim holds: 1 s, doubling, at most 30 s; a
/// runner that ran for `RUNNER_HEALTHY_AFTER` resets the schedule.
const RUNNER_RESTART_FIRST: Duration = Duration::from_secs(1);
const RUNNER_RESTART_CAP: Duration = Duration::from_secs(30);
const RUNNER_HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// While checking the job marker between DynamoDB reads.
const MARKER_POLL: Duration = Duration::from_millis(250);

/// When the runner may be (re)started, and how long the next wait is.
struct Restarts {
    delay: Duration,
    not_before: Instant,
    started: Instant,
}

impl Restarts {
    fn new() -> Restarts {
        Restarts {
            delay: RUNNER_RESTART_FIRST,
            not_before: Instant::now(),
            started: Instant::now(),
        }
    }

    /// Schedules the next start after a failure or an exit.
    fn back_off(&mut self) -> Duration {
        let wait = self.delay;
        self.not_before = Instant::now() + wait;
        self.delay = (self.delay * 2).min(RUNNER_RESTART_CAP);
        wait
    }
}

/// The next read of the record, with and without a job running.
struct NextReads {
    claimed: Instant,
    job: Instant,
}

/// A notice that came while a job runs: when the job is stopped.
struct Deferred {
    notice: Notice,
    /// `None`: when the job ends (a rebalance recommendation).
    stop_at: Option<Instant>,
}

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Keeps the runner running while the claim on `run_id` holds. While a
    /// job runs (the runner's job hooks say so) the table is read once per
    /// job poll, otherwise once per claimed poll; the marker is checked
    /// every `MARKER_POLL`, so the end of a job brings the next read
    /// forward at once.
    ///
    /// A notice from EC2 ends serving at once when no job runs. A running
    /// job is left to finish: under a rebalance recommendation until it
    /// ends, under a spot interruption until the notice's time minus
    /// `spot_job_margin`, which leaves the margin for deregistering.
    pub(super) async fn serve(&mut self, run_id: &str) -> Result<Phase, Interrupt> {
        let events = self.setup.events.clone();
        let mut restarts = Restarts::new();
        let mut next_read = self.next_reads();
        let mut deferred: Option<Deferred> = None;
        loop {
            if self.runner.is_none() && Instant::now() >= restarts.not_before {
                self.start_runner(&mut restarts);
            }
            let job_active = self.world.host.job_active();
            // `job_since` is what the hooks said last (none on entry: leaving
            // a registration ends its job).
            if job_active != self.job_since.is_some() {
                tracing::info!(run_id, job_active, "job hook");
                self.job_changed(job_active);
                if !job_active {
                    // A job's end is when a release is most likely: read
                    // now, not on the claimed schedule a job read just
                    // reset (up to a whole claimed poll away).
                    next_read.claimed = Instant::now();
                }
            }
            if let Some(notice) = events.notice() {
                self.defer_notice(run_id, notice, job_active, &mut deferred)?;
            }
            // A job's start pushes the next read out to the job poll; its
            // end brings it back to the claimed poll.
            let due = match job_active {
                true => next_read.job,
                false => next_read.claimed,
            };
            let wake = due.min(Instant::now() + MARKER_POLL);
            let runner = &mut self.runner;
            let exited = events
                .guard_shutdown(async {
                    tokio::select! {
                        status = async { match runner { Some(r) => r.exited().await, None => std::future::pending().await } } => Some(status),
                        _ = tokio::time::sleep_until(wake) => None,
                        _ = events.notice_changed() => None,
                    }
                })
                .await?;
            if let Some(status) = exited {
                self.runner = None;
                self.world.host.clear_job_marker();
                let exit = ListenerExit::of(status);
                self.setup.metrics.runner_exited(exit);
                if exit == ListenerExit::SessionConflict {
                    // Another listener holds this registration's session
                    // (its credentials were copied or an old process
                    // lives): a new registration gets new credentials.
                    tracing::error!(
                        run_id,
                        "runner {}: registering again under a new name",
                        exit.describe()
                    );
                    return self.register_again(run_id, false).await;
                }
                if exit == ListenerExit::VersionDeprecated {
                    tracing::error!(
                        run_id,
                        "runner {}: GitHub refuses this version; upgrading, then registering again",
                        exit.describe()
                    );
                    return self.register_again(run_id, true).await;
                }
                if restarts.started.elapsed() >= RUNNER_HEALTHY_AFTER {
                    restarts.delay = RUNNER_RESTART_FIRST;
                }
                let wait = restarts.back_off();
                tracing::warn!(
                    run_id,
                    restart_in_s = wait.as_secs(),
                    "runner {} while claimed; restarting",
                    exit.describe()
                );
                continue;
            }
            if Instant::now() < due {
                continue;
            }
            next_read = self.next_reads();
            if self.released_from(run_id).await {
                tracing::info!(run_id, "released");
                self.released_at = Some(Instant::now());
                return Ok(self.releasing(Signal::RemoveRegRemoveRunOk));
            }
        }
    }

    /// A job started or ended (by its hooks, or because the runner went):
    /// reported by the heartbeat and counted.
    pub(super) fn job_changed(&mut self, active: bool) {
        match (active, self.job_since) {
            (true, None) => {
                self.job_since = Some(Instant::now());
                self.setup.metrics.job_started();
            }
            (false, Some(since)) => {
                self.job_since = None;
                self.setup.metrics.job_finished(since.elapsed());
            }
            _ => {}
        }
        self.publish(|status| status.job_active = active);
    }

    /// When to read the record next, timed from now, with and without a
    /// job running (each jittered and stretched by the pace).
    fn next_reads(&self) -> NextReads {
        let now = Instant::now();
        NextReads {
            claimed: now + self.pace.interval(self.setup.timing.claimed_poll),
            job: now + self.pace.interval_at_least(self.setup.timing.job_poll),
        }
    }

    /// Under `notice`: `Err` when serving must end now (no job runs, or the
    /// job's time is up), else the job goes on and `deferred` says until
    /// when.
    fn defer_notice(
        &mut self,
        run_id: &str,
        notice: Notice,
        job_active: bool,
        deferred: &mut Option<Deferred>,
    ) -> Result<(), Interrupt> {
        // The hooks mark a job; a live Runner.Worker also counts (a job
        // whose started hook failed, or a worker still finishing).
        let busy = job_active || self.world.host.worker_running();
        if !busy {
            tracing::warn!(run_id, notice = %notice.describe(), "leaving the pool: no job runs");
            return Err(Interrupt::Notice);
        }
        if deferred.as_ref().is_none_or(|d| d.notice != notice) {
            let stop_at = notice.time_left(self.world.clock.now_utc()).map(|left| {
                Instant::now() + left.saturating_sub(self.setup.timing.spot_job_margin)
            });
            match stop_at {
                Some(at) => {
                    tracing::warn!(run_id, notice = %notice.describe(), stop_in_s = at.saturating_duration_since(Instant::now()).as_secs(), "a job runs: it may go on until the notice's time minus the margin")
                }
                None => {
                    tracing::warn!(run_id, notice = %notice.describe(), "a job runs: leaving the pool when it ends")
                }
            }
            *deferred = Some(Deferred { notice, stop_at });
        }
        if let Some(stop_at) = deferred.as_ref().and_then(|d| d.stop_at) {
            if Instant::now() >= stop_at {
                tracing::warn!(run_id, "stopping the job: the spot interruption is near");
                return Err(Interrupt::Notice);
            }
        }
        Ok(())
    }

    /// Drops the registration (runner stopped, deregistered), upgrades the
    /// runner first when `upgrade` (its version is deprecated: `upgrade.rs`),
    /// and registers again for the same claim with a fresh token. A crash
    /// in between resumes as a registration that never finished:
    /// registered again.
    async fn register_again(&mut self, run_id: &str, upgrade: bool) -> Result<Phase, Interrupt> {
        if let Some(registration) = self.state.phase.registration() {
            self.dismantle(registration, Signal::RemoveRegRemoveRunOk)
                .await;
        }
        if upgrade {
            self.upgrade_due = Some(Instant::now());
            self.upgrade_if_due().await?;
        }
        self.claim_token = match self.world.pool.read_token().await {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "reading a token to register again");
                None
            }
        };
        Ok(Phase::Registering {
            run_id: run_id.to_owned(),
            runner_name: None,
        })
    }

    fn start_runner(&mut self, restarts: &mut Restarts) {
        match self.world.host.start() {
            Ok(runner) => {
                let pgid = runner.pgid().as_raw();
                self.runner = Some(runner);
                restarts.started = Instant::now();
                if let Phase::Serving { mut registration } = self.state.phase.clone() {
                    registration.runner_pgid = Some(pgid);
                    self.enter(Phase::Serving { registration });
                }
            }
            Err(e) => {
                // Keep polling for the release meanwhile.
                let wait = restarts.back_off();
                tracing::error!(error = %e, retry_in_s = wait.as_secs(), "starting the runner");
            }
        }
    }

    /// Whether the instance record no longer names `run_id`: an eventually
    /// consistent read first, confirmed by a strongly consistent one.
    async fn released_from(&mut self, run_id: &str) -> bool {
        for consistent in [false, true] {
            match self.world.pool.read_instance(consistent).await {
                Ok(record) => {
                    self.observe(&record);
                    if record.and_then(|r| r.run_id).as_deref() == Some(run_id) {
                        return false;
                    }
                }
                Err(e) => {
                    self.read_failed("polling the instance record", &e);
                    return false;
                }
            }
        }
        true
    }

    /// The releasing state for the registration held now.
    pub(super) fn releasing(&self, signal: Signal) -> Phase {
        match self.state.phase.registration() {
            Some(registration) => Phase::Releasing {
                registration,
                signal,
            },
            None => Phase::Idle,
        }
    }
}

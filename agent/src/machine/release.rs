//! Leaving a registration: on release (releasing → idle), on shutdown (the
//! final steps; a notice's are in `leave.rs`), and picking one up after a
//! restart.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost, RunnerProcess};
use crate::protocol::Signal;
use crate::runner::pid::Pgid;
use crate::state::{Phase, Registration};
use std::time::Duration;
use tokio::time::Instant;

/// Everything done on SIGTERM or a notice, inside systemd's stop timeout
/// and the 30 s the agent promises.
pub(super) const FINISH_BUDGET: Duration = Duration::from_secs(25);
/// Of the stop budget, what the signal after a reset keeps for itself.
const SIGNAL_RESERVE: Duration = Duration::from_secs(5);
/// Deregistration reads the current token; it must not hold up a stop.
const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Released: deregister, then reset the instance and write `signal`
    /// (`reset.rs`).
    pub(super) async fn release(
        &mut self,
        registration: Registration,
        signal: Signal,
    ) -> Result<Phase, Interrupt> {
        let run_id = registration.run_id.clone();
        self.dismantle(registration, signal).await;
        if self.setup.events.notice().is_some() {
            // Leaving the pool: no reset, and `leave` answers the release
            // as failed so the instance is not pooled again.
            self.enter(Phase::Resetting { run_id, signal });
            return Err(Interrupt::Notice);
        }
        self.reset(run_id, signal).await
    }

    /// Stops the runner and every process it left, and deregisters. The
    /// registration stays in the state until its signal is stored, so that
    /// a crash before then makes the next start deregister (a no-op) and
    /// signal again.
    pub(super) async fn dismantle(&mut self, mut registration: Registration, signal: Signal) {
        self.enter(Phase::Releasing {
            registration: registration.clone(),
            signal,
        });
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
        let host = &self.world.host;
        // Job processes that left the runner's tree (double forks) but
        // still work in its directory go too.
        host.stop_strays().await;
        host.clear_job_marker();
        self.job_changed(false);
        let host = &self.world.host;
        let token =
            match tokio::time::timeout(TOKEN_READ_TIMEOUT, self.world.pool.read_token()).await {
                Ok(Ok(t)) => t.map(|t| t.token).filter(|t| !t.is_empty()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the token for deregistration");
                    None
                }
                Err(_) => None,
            };
        let started = Instant::now();
        let removed = host.remove(token.as_deref()).await;
        tracing::info!(
            run_id = %registration.run_id,
            runner = %registration.runner_name,
            outcome = ?removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "deregistered"
        );
        registration.runner_pgid = None;
        self.enter(Phase::Releasing {
            registration,
            signal,
        });
    }

    /// Final steps on shutdown or a notice, within `FINISH_BUDGET`
    /// whatever DynamoDB or GitHub do.
    pub(super) async fn finish(&mut self, interrupt: Interrupt) {
        let deadline = Instant::now() + FINISH_BUDGET;
        let steps = self.finish_steps(interrupt, deadline);
        if tokio::time::timeout_at(deadline + Duration::from_secs(2), steps)
            .await
            .is_err()
        {
            tracing::error!(
                "final deregistration did not finish in time; the next start resumes it"
            );
        }
    }

    async fn finish_steps(&mut self, interrupt: Interrupt, deadline: Instant) {
        let registration = self.state.registration();
        match (interrupt, registration) {
            (Interrupt::Shutdown, registration) => {
                let owed = match self.state.phase.clone() {
                    Phase::Resetting { run_id, signal } => Some((run_id, signal)),
                    _ => None,
                };
                self.enter(Phase::Stopping {
                    registration: registration.clone(),
                });
                let owed = match (owed, registration) {
                    (Some(owed), _) => Some(owed),
                    (None, Some(registration)) => {
                        let run_id = registration.run_id.clone();
                        self.dismantle(registration, Signal::RemoveRegRemoveRunOk)
                            .await;
                        Some((run_id, Signal::RemoveRegRemoveRunOk))
                    }
                    (None, None) => None,
                };
                if let Some((run_id, signal)) = owed {
                    if self.reset_by(run_id, signal, deadline).await {
                        self.enter(Phase::Stopping { registration: None });
                    }
                }
            }
            (Interrupt::Notice, registration) => self.leave(registration, deadline).await,
        }
    }

    /// On the way out: the reset and the signal within `deadline`. A reset
    /// that cannot finish in time stays owed in the state (resetting), and
    /// the next start finishes it before signalling; true once the signal
    /// is stored.
    async fn reset_by(&mut self, run_id: String, signal: Signal, deadline: Instant) -> bool {
        self.enter(Phase::Resetting {
            run_id: run_id.clone(),
            signal,
        });
        let started = Instant::now();
        let reset = self.world.host.reset();
        let Ok(outcome) = tokio::time::timeout_at(deadline - SIGNAL_RESERVE, reset).await else {
            tracing::error!(run_id, "the reset did not finish before the stop; the next start finishes it, then signals");
            return false;
        };
        let signal = self.judge(&run_id, signal, outcome, started.elapsed());
        self.signal_by(signal, &run_id, deadline).await
    }

    /// Picks up a registration held by an earlier agent process: serve on
    /// if the claim still holds, release if it went while the agent was
    /// down; without one, removes a registration the runner directory holds
    /// that nothing knows of.
    pub(super) async fn resume(&mut self) -> Result<Phase, Interrupt> {
        if let Phase::Resetting { .. } = self.state.phase {
            // Killed during a reset: it starts over before any signal.
            tracing::info!("resuming a reset from before the restart");
            return Ok(self.state.phase.clone());
        }
        let host = &self.world.host;
        let Some(registration) = self.state.registration() else {
            if host.is_configured() {
                tracing::warn!(
                    "runner directory holds a registration the agent has no record of; removing it"
                );
                host.stop_strays().await;
                let _ = host.remove(None).await;
            }
            return Ok(Phase::Idle);
        };
        let run_id = registration.run_id.clone();
        tracing::info!(run_id = %run_id, runner = %registration.runner_name, "resuming a registration from before the restart");
        let record = loop {
            match self.world.pool.read_instance(true).await {
                Ok(record) => break record,
                Err(e) => self.read_failed("reading the instance record to resume", &e),
            }
            self.pause(self.setup.timing.claimed_poll).await?;
        };
        self.observe(&record);
        let still_claimed = record.and_then(|r| r.run_id).as_deref() == Some(run_id.as_str());
        let host = &self.world.host;
        // A saved pgid of 0 or 1 (a corrupt file) names no runner of ours.
        let adopted = registration
            .runner_pgid
            .and_then(Pgid::new)
            .and_then(|pgid| host.adopt(pgid));
        if still_claimed && host.is_configured() {
            let mut registration = registration;
            match adopted {
                Some(runner) => {
                    tracing::info!(
                        pgid = runner.pgid().as_raw(),
                        "re-attached to the running runner"
                    );
                    self.runner = Some(runner);
                }
                None => {
                    host.stop_strays().await;
                    registration.runner_pgid = None;
                }
            }
            let owed = self
                .state
                .last_signal
                .as_ref()
                .is_none_or(|s| s.signal != Signal::RegOk || s.run_id != run_id);
            if owed {
                self.signal(Signal::RegOk, &run_id).await?;
            }
            return Ok(Phase::Serving { registration });
        }
        if still_claimed {
            // Crashed during config.sh: nothing was registered for this run
            // as far as the control plane knows; clean up and register for
            // the claim at once.
            tracing::info!(run_id = %run_id, "registration never finished; registering again");
            if let Some(runner) = adopted {
                runner.stop().await;
            }
            host.stop_strays().await;
            let _ = host.remove(None).await;
            return Ok(Phase::Idle);
        }
        // Released while the agent was down.
        self.runner = adopted;
        Ok(Phase::Releasing {
            registration,
            signal: Signal::RemoveRegRemoveRunOk,
        })
    }
}

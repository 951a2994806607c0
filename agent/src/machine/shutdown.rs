//! The final steps on SIGTERM (a notice's and an orphan's are in
//! `leave.rs`): a run
//! still registered is deregistered and the instance reset, within a
//! budget whatever DynamoDB or GitHub do.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use crate::protocol::Signal;
use crate::state::Phase;
use std::time::Duration;
use tokio::time::Instant;

/// Everything done on SIGTERM or a notice, inside systemd's stop timeout
/// and the 30 s the agent promises.
pub(super) const FINISH_BUDGET: Duration = Duration::from_secs(25);
/// Of the stop budget, what the signal after a reset keeps for itself.
const SIGNAL_RESERVE: Duration = Duration::from_secs(5);

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
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
            // Raised by the idle poll only: idle holds no registration (the
            // runner was stopped and deregistered after the last run).
            (Interrupt::Orphaned(reason), _) => self.retire(reason),
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
}

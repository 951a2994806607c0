//! Resetting → idle: the clean slate between runs, then the release's
//! signal. A reset that fails turns the signal into
//! `UD_REMOVE_REG_REMOVE_RUN_FAILED` (the control plane then expires the
//! instance instead of pooling it) and marks the instance unclean, so every
//! later claim is refused: a dirty instance is never pooled silently.

use super::signal::write_until_stored;
use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use crate::protocol::Signal;
use crate::reset::ResetError;
use crate::state::Phase;
use std::time::Duration;
use tokio::time::Instant;

/// The signal to write after a reset that failed.
pub(super) fn failed(signal: Signal) -> Signal {
    match signal {
        Signal::RemoveRegRemoveRunOk => Signal::RemoveRegRemoveRunFailed,
        other => other,
    }
}

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Resets, then writes the release's signal for as long as it takes.
    pub(super) async fn reset(
        &mut self,
        run_id: String,
        signal: Signal,
    ) -> Result<Phase, Interrupt> {
        self.enter(Phase::Resetting {
            run_id: run_id.clone(),
            signal,
        });
        let events = self.setup.events.clone();
        let started = Instant::now();
        let outcome = events.guard(self.world.host.reset()).await?;
        let signal = self.judge(&run_id, signal, outcome, started.elapsed());
        if events
            .guard(write_until_stored(&self.world.pool, signal, &run_id, None))
            .await?
            .is_ok()
        {
            self.record_signal(signal, &run_id);
            if let Some(seen) = self.released_at.take() {
                self.setup.metrics.released(seen.elapsed());
            }
        }
        Ok(Phase::Idle)
    }

    /// Logs a reset's outcome, marks the instance unclean on failure, and
    /// returns the signal that tells the control plane which it was.
    pub(super) fn judge(
        &mut self,
        run_id: &str,
        signal: Signal,
        outcome: Result<String, ResetError>,
        took: Duration,
    ) -> Signal {
        if let Some(check) = self.world.host.last_check() {
            self.publish(|status| status.set_check(&check));
            self.state.last_check = Some(check);
        }
        self.publish(|status| status.set_reset(&outcome));
        self.setup.metrics.reset(outcome.is_ok(), took);
        match outcome {
            Ok(summary) => {
                tracing::info!(run_id, %summary, "instance reset");
                signal
            }
            Err(reason) => {
                tracing::error!(run_id, %reason, "reset failed: the instance is not clean and takes no more runs");
                self.state.unclean = Some(reason.to_string());
                self.save();
                failed(signal)
            }
        }
    }
}

//! Writing the signals the control plane waits for: retried, not dropped.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use crate::protocol::Signal;
use crate::table::TableError;
use std::time::Duration;
use tokio::time::Instant;

/// Back-off for signal writes: 100 ms, doubling, capped at 5 s, for as long
/// as the caller's deadline allows.
const SIGNAL_RETRY_FIRST: Duration = Duration::from_millis(100);
const SIGNAL_RETRY_CAP: Duration = Duration::from_secs(5);

/// Writes `signal` until it is stored or `deadline` passes.
pub async fn write_until_stored<P: Pool>(
    pool: &P,
    signal: Signal,
    run_id: &str,
    deadline: Option<Instant>,
) -> Result<(), TableError> {
    let mut delay = SIGNAL_RETRY_FIRST;
    loop {
        match pool.put_signal(signal, run_id).await {
            Ok(()) => {
                tracing::info!(signal = %signal, run_id, "signal written");
                return Ok(());
            }
            Err(e) => {
                if deadline.is_some_and(|d| Instant::now() + delay > d) {
                    tracing::error!(signal = %signal, run_id, error = %e, "giving up on signal: deadline reached");
                    return Err(e);
                }
                tracing::warn!(signal = %signal, run_id, error = %e, retry_in_ms = delay.as_millis() as u64, "signal write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(SIGNAL_RETRY_CAP);
            }
        }
    }
}

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Writes a signal, retrying until it is stored or the agent is
    /// interrupted (then the interruption's own final signal supersedes it).
    pub(super) async fn signal(&mut self, signal: Signal, run_id: &str) -> Result<(), Interrupt> {
        let events = self.setup.events.clone();
        let written = events
            .guard(write_until_stored(&self.world.pool, signal, run_id, None))
            .await?;
        if written.is_ok() {
            self.record_signal(signal, run_id);
        }
        Ok(())
    }

    /// Writes a signal within `deadline` (when stopping); whether it stored.
    pub(super) async fn signal_by(
        &mut self,
        signal: Signal,
        run_id: &str,
        deadline: Instant,
    ) -> bool {
        let written = write_until_stored(&self.world.pool, signal, run_id, Some(deadline))
            .await
            .is_ok();
        if written {
            self.record_signal(signal, run_id);
        }
        written
    }
}

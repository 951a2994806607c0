//! Writing the signals the control plane waits for: retried, not dropped.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use crate::protocol::Signal;
use crate::table::TableError;
use std::time::Duration;
use tokio::time::Instant;

/// Back-off for signal writes: 100 ms, doubling, capped at 5 s, each
/// jittered (a fleet throttled together must not retry together), for as
/// long as the caller's deadline allows. Signals are not slowed by the read
/// pace: the control plane waits for them.
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
    let mut failures = 0u32;
    loop {
        match pool.put_signal(signal, run_id).await {
            Ok(()) => {
                tracing::info!(signal = %signal, run_id, failed_writes = failures, "signal written");
                return Ok(());
            }
            Err(e) => {
                let wait = crate::pace::jitter(delay);
                if deadline.is_some_and(|d| Instant::now() + wait > d) {
                    tracing::error!(signal = %signal, run_id, error = %e, failed_writes = failures + 1, "giving up on signal: deadline reached");
                    return Err(e);
                }
                // Once per signal, not per attempt: a throttled table may
                // refuse dozens before one is stored.
                if failures == 0 {
                    tracing::warn!(signal = %signal, run_id, error = %e, kind = e.kind.label(), "signal write failed; retrying until it is stored");
                } else {
                    tracing::debug!(signal = %signal, run_id, error = %e, "signal write failed again");
                }
                failures += 1;
                tokio::time::sleep(wait).await;
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

//! The agent's answers as the control plane waits for them: a worker
//! signal within the control plane's patience, and the release that ends
//! in one. One wait, so that every test that misses a signal says the
//! same things: what the table holds instead, and the agent's log.

use crate::{Stack, INITIAL_RUN_ID};
use std::time::Duration;

/// How long a test waits for a signal the control plane sets no tighter
/// limit for.
pub const SIGNAL_WAIT: Duration = Duration::from_secs(30);
/// The control plane gives a claimed idle instance 10 s to answer.
pub const CLAIM_WAIT: Duration = Duration::from_secs(10);

impl Stack {
    /// Waits up to `within` for the worker signal `state` for `run_id`, as
    /// the control plane does; panics with the signal the table holds and
    /// the agent's log.
    pub async fn assert_signal(&self, state: &str, run_id: &str, within: Duration) {
        if let Err(last) = self
            .cp
            .wait_signal(&self.instance_id, state, run_id, within)
            .await
        {
            panic!(
                "signal lost: wanted {state} for {run_id} within {within:?}, the table holds {last:?}\nagent log:\n{}",
                self.agent_log_text()
            );
        }
    }

    /// Releases `run_id` as the control plane does (the record moving from
    /// `from_state`) and waits for the agent's
    /// `UD_REMOVE_REG_REMOVE_RUN_OK`.
    pub async fn release_run(&self, run_id: &str, from_state: &str) {
        self.cp.release(&self.instance_id, run_id, from_state).await;
        self.assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", run_id, SIGNAL_WAIT)
            .await;
    }

    /// Releases the initial run and waits until the agent is idle again.
    pub async fn release_initial(&self) {
        self.release_run(INITIAL_RUN_ID, "created").await;
    }
}

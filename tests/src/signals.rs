//! The agent's answers as the control plane waits for them: a worker
//! signal within the control plane's patience. One wait, so that every
//! test that misses a signal says the same things: what the table holds
//! instead, and the agent's log.

use crate::Stack;
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
}

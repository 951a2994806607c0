//! What every fault scenario asserts, whatever the fault: the agent did not
//! panic, wrote no secret to its log, did not terminate the instance unless
//! the scenario says it must, and the signal the control plane waits for
//! is in the table (`Stack::assert_signal`, signals.rs). One place, so
//! that a scenario cannot forget one.

use crate::agent::AgentProcess;
use crate::Stack;

/// The registration token every stack starts with (`Stack::start`).
pub const STACK_TOKEN: &str = "AAAAFAKEREGISTRATIONTOKEN";

/// Secrets a log must never contain: the stack's token, plus the
/// scenario's own (other tokens it published, credentials it planted).
pub fn assert_no_secret(log: &str, extra: &[&str]) {
    for secret in std::iter::once(&STACK_TOKEN).chain(extra) {
        assert!(
            !log.contains(secret),
            "secret {secret:.6}… found in the agent's log"
        );
    }
}

/// No panic: Rust's panic message, or the runtime's report of a task that
/// panicked.
pub fn assert_no_panic(log: &str) {
    for needle in ["panicked at", "task panicked", "RUST_BACKTRACE"] {
        assert!(!log.contains(needle), "the agent panicked:\n{log}");
    }
}

impl Stack {
    /// The instance is still running (EC2 as moto keeps it).
    pub async fn assert_not_terminated(&self) {
        let state = self.cp.instance_state(&self.instance_id).await;
        assert!(
            state != "terminated" && state != "shutting-down",
            "instance wrongly terminated (state {state})"
        );
    }

    /// The invariants that hold after every scenario, the signal aside:
    /// no panic, no secret in the log, no termination.
    pub async fn assert_invariants(&self, agent: &AgentProcess, extra_secrets: &[&str]) {
        let log = agent.log_text();
        assert_no_panic(&log);
        assert_no_secret(&log, extra_secrets);
        self.assert_not_terminated().await;
    }
}

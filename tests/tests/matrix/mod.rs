//! End to end, the fault matrix (docs/faults.md): malformed items in the
//! table, IMDS faults, GitHub failing under config.sh, a misbehaving
//! runner, a broken state dir, and OS signals in every state. Each
//! scenario checks, besides its own outcome, the invariants every fault
//! must keep (`stack.assert_invariants`): no panic, no secret in the log,
//! no termination; and that the signal the control plane waits for comes.
//! Faults the process does not matter for are in-process
//! (agent/src/machine/tests/faults.rs).
//!
//! One module per fault group; the helpers they share are here.

use stack::agent::{AgentProcess, AgentSpec};
use stack::{Stack, StackOptions, CLAIM_WAIT, INITIAL_RUN_ID};
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod github;
mod imds;
mod items;
mod os_signals;
mod runner;
mod state_dir;

const WAIT: Duration = Duration::from_secs(30);

fn state_dir(stack: &Stack) -> PathBuf {
    stack.dir.path().join("state")
}

/// The phase the agent last saved (`state.json`), "" if unreadable.
fn phase(stack: &Stack) -> String {
    std::fs::read(state_dir(stack).join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["phase"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn wait_phase(stack: &Stack, agent: &AgentProcess, name: &str) {
    let started = Instant::now();
    while phase(stack) != name {
        assert!(
            started.elapsed() < WAIT,
            "never in phase {name} (now {:?})\n{}",
            phase(stack),
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

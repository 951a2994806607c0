//! Claims, as a pool makes them: after a random idle gap (the claim lands
//! at any moment of the agent's idle polling), and back-to-back (a fixed
//! short time after the previous release, the bench's older row). Each
//! claim's time is split, from the agent's own log timestamps, into what
//! happened between the control plane's write and the stored `UD_REG_OK`.

use crate::measure::{find, logged, now_unix, percentile, signal_logged, unix_of, Jitter};
use serde_json::Value;
use stack::agent::AgentProcess;
use stack::Stack;
use std::time::Duration;

/// A claim's milestones (unix seconds), from the agent's log.
struct Milestones {
    /// The driver's `UpdateItem` acknowledged.
    claimed: f64,
    /// The idle read that saw the run id returned.
    seen: f64,
    /// The strongly consistent read (with the token) confirmed the claim.
    confirmed: f64,
    config_started: f64,
    config_done: f64,
    signal_stored: f64,
    listener_started: Option<f64>,
}

impl Milestones {
    /// From the log lines of `run`'s claim: "claimed" (with `confirm_ms`),
    /// the next "config.sh finished" (with `elapsed_ms`), the next "runner
    /// started" and the `UD_REG_OK` write.
    fn of(entries: &[Value], run: &str, claimed: f64) -> Milestones {
        let at = entries
            .iter()
            .rposition(|e| e["message"] == "claimed" && e["run_id"] == run)
            .unwrap_or_else(|| panic!("claim of {run} not logged"));
        let confirm = &entries[at];
        let confirmed = unix_of(confirm);
        let seen = confirmed - confirm["confirm_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let after = &entries[at..];
        let config = after
            .iter()
            .find(|e| e["message"] == "config.sh finished")
            .expect("config.sh finished logged");
        let config_done = unix_of(config);
        let config_started = config_done - config["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        let listener_started = after
            .iter()
            .find(|e| e["message"] == "runner started")
            .map(unix_of);
        Milestones {
            claimed,
            seen,
            confirmed,
            config_started,
            config_done,
            signal_stored: signal_logged(entries, "UD_REG_OK", run),
            listener_started,
        }
    }

    fn total_ms(&self) -> f64 {
        (self.signal_stored - self.claimed) * 1000.0
    }

    fn config_ms(&self) -> f64 {
        (self.config_done - self.config_started) * 1000.0
    }
}

/// The stages printed, each from one milestone to another.
const STAGES: &[&str] = &[
    "claim acknowledged -> seen by an idle read",
    "seen -> confirmed (consistent read + token)",
    "confirmed -> config.sh started",
    "config.sh started -> done (fake, bash)",
    "config.sh done -> UD_REG_OK stored",
    "config.sh done -> listener started",
    "claim acknowledged -> UD_REG_OK stored",
];

fn stages(m: &Milestones) -> [Option<f64>; 7] {
    let ms = |from: f64, to: f64| Some((to - from) * 1000.0);
    [
        ms(m.claimed, m.seen),
        ms(m.seen, m.confirmed),
        ms(m.confirmed, m.config_started),
        ms(m.config_started, m.config_done),
        ms(m.config_done, m.signal_stored),
        m.listener_started.and_then(|at| ms(m.config_done, at)),
        ms(m.claimed, m.signal_stored),
    ]
}

/// The claims of one row, and the releases that follow them.
#[derive(Default)]
pub struct Claims {
    milestones: Vec<Milestones>,
    /// Release -> `UD_REMOVE_REG_REMOVE_RUN_OK`, with and without the
    /// logged `config.sh remove` time.
    pub release_ms: Vec<f64>,
    pub release_total_ms: Vec<f64>,
}

impl Claims {
    /// Claim -> `UD_REG_OK` minus the logged `config.sh` time (what the
    /// targets count).
    pub fn claim_ms(&self) -> Vec<f64> {
        self.milestones
            .iter()
            .map(|m| m.total_ms() - m.config_ms())
            .collect()
    }

    pub fn claim_total_ms(&self) -> Vec<f64> {
        self.milestones.iter().map(Milestones::total_ms).collect()
    }

    /// The breakdown table: p50 and p90 of each stage.
    pub fn print_breakdown(&self, title: &str) {
        println!("\n{title}: {} claims", self.milestones.len());
        println!(
            "{:<46} {:>8} {:>8}",
            "stage (agent's log timestamps)", "p50 ms", "p90 ms"
        );
        let per_claim: Vec<_> = self.milestones.iter().map(stages).collect();
        for (i, name) in STAGES.iter().enumerate() {
            let mut samples: Vec<f64> = per_claim.iter().filter_map(|s| s[i]).collect();
            if samples.is_empty() {
                println!("{name:<46} {:>8} {:>8}", "-", "-");
                continue;
            }
            println!(
                "{name:<46} {:>8.1} {:>8.1}",
                percentile(&mut samples, 50.0),
                percentile(&mut samples, 90.0)
            );
        }
    }
}

/// `count` claims of runs `<prefix>-<n>`, each after `before(jitter)` of
/// idle, held for a spread-out time, then released.
pub async fn run(
    stack: &Stack,
    agent: &AgentProcess,
    prefix: &str,
    count: usize,
    jitter: &mut Jitter,
    before: impl Fn(&mut Jitter) -> Duration,
) -> Claims {
    let id = &stack.instance_id;
    let cp = &stack.cp;
    let mut claims = Claims::default();
    for n in 0..count {
        let run = format!("{prefix}-{n}");
        tokio::time::sleep(before(jitter)).await;
        cp.claim(id, &run).await;
        let claimed = now_unix();
        cp.wait_signal(id, "UD_REG_OK", &run, crate::WAIT)
            .await
            .expect("UD_REG_OK");
        tokio::time::sleep(Duration::from_millis(200) + jitter.next(Duration::from_millis(1000)))
            .await;
        cp.release(id, &run, "claimed").await;
        let released = now_unix();
        cp.wait_signal(id, "UD_REMOVE_REG_REMOVE_RUN_OK", &run, crate::WAIT)
            .await
            .expect("released");
        // The agent logs the write after DynamoDB answered it: the driver's
        // poll can see the item first.
        let entries = logged(agent, "UD_REMOVE_REG_REMOVE_RUN_OK", &run).await;
        claims
            .milestones
            .push(Milestones::of(&entries, &run, claimed));
        let remove_ms = find(&entries, "deregistered", "run_id", &run)
            .and_then(|e| e["elapsed_ms"].as_f64())
            .unwrap_or(0.0);
        let total =
            (signal_logged(&entries, "UD_REMOVE_REG_REMOVE_RUN_OK", &run) - released) * 1000.0;
        claims.release_total_ms.push(total);
        claims.release_ms.push(total - remove_ms);
    }
    claims
}

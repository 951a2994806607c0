//! End to end, the runner's supervision (issue: job-aware supervision):
//! notices from EC2 against a running job, the listener's exit codes, a
//! session conflict. The fake IMDS serves `spot/instance-action` and
//! `events/recommendations/rebalance` as EC2 does (404 until set, then the
//! JSON); the fake listener exits with the code a test asks for and runs
//! each job in a child `Runner.Worker` (`tests/fake-runner/`).

use runner_agent::install::VERSION_MARKER;
use stack::agent::AgentSpec;
use stack::control::iso;
use stack::github::FAKE_RUNNER_VERSION;
use stack::{Stack, StackOptions, CLAIM_WAIT, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(30);

fn notices_fast() -> AgentSpec {
    AgentSpec {
        timing: vec![
            "spot_poll_interval = \"250ms\"".into(),
            "spot_job_margin = \"20s\"".into(),
        ],
        ..Default::default()
    }
}

fn exit_listener_with(stack: &Stack, code: i32) {
    let file = stack.jobs_dir().join(format!("{INITIAL_RUN_ID}.exit"));
    std::fs::write(file, code.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_notice_lets_the_job_run_until_its_time_minus_the_margin_then_fails_claims() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&notices_fast()).await;
    let id = &stack.instance_id;
    stack.queue_job(INITIAL_RUN_ID, 120);
    stack.wait_events("JOB_START", 1).await;
    // Interruption 28 s ahead, margin 20 s: the job may run ~8 s more.
    let at = OffsetDateTime::now_utc() + Duration::from_secs(28);
    let noticed = Instant::now();
    stack.imds.set_spot_notice(&format!(
        r#"{{"action": "terminate", "time": "{}"}}"#,
        iso(at)
    ));
    agent.assert_log("a job runs", WAIT).await;
    assert_eq!(
        stack.count_events("JOB_END"),
        0,
        "the job was not cut short"
    );
    assert_eq!(stack.live_listeners().len(), 1);
    stack
        .assert_signal("UD_SPOT_INTERRUPTED", INITIAL_RUN_ID, WAIT)
        .await;
    let ran = noticed.elapsed();
    assert!(ran >= Duration::from_secs(5), "stopped after {ran:?}");
    assert_eq!(stack.count_events("JOB_END name"), 1);
    assert!(stack.live_listeners().is_empty());
    assert!(!stack.runner_dir().join(".runner").exists());
    // The run is released: answered as failed, so the instance is not pooled.
    stack.cp.release(id, INITIAL_RUN_ID, "created").await;
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_FAILED", INITIAL_RUN_ID, WAIT)
        .await;
    // A new claim is refused within the control plane's 10 s.
    stack.cp.claim(id, "3000").await;
    stack
        .assert_signal("UD_REG_FAILED", "3000", CLAIM_WAIT)
        .await;
    assert_eq!(stack.count_events("CONFIGURE "), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_recommendation_while_idle_leaves_the_pool_at_once() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&notices_fast()).await;
    let id = &stack.instance_id;
    stack.release_initial().await;
    stack
        .imds
        .set_rebalance(r#"{"noticeTime": "2026-11-28T10:00:00Z"}"#);
    stack
        .assert_signal("UD_SPOT_INTERRUPTED", "", SIGNAL_WAIT)
        .await;
    stack.cp.claim(id, "3000").await;
    stack
        .assert_signal("UD_REG_FAILED", "3000", CLAIM_WAIT)
        .await;
    assert_eq!(stack.count_events("CONFIGURE "), 1, "no registration");
    assert!(agent.log_text().contains("rebalance recommendation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_exit_codes_restart_it_and_a_session_conflict_registers_again() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    // 2 (retryable): restarted, same registration.
    exit_listener_with(&stack, 2);
    stack.wait_events("LISTENER_START", 2).await;
    assert!(agent.log_text().contains("exited 2 (retryable error)"));
    assert_eq!(stack.count_events("CONFIGURE "), 1);
    // 5 (session conflict): deregistered and registered under a new name.
    exit_listener_with(&stack, 5);
    stack.wait_events("CONFIGURE ", 2).await;
    stack.wait_events("LISTENER_START", 3).await;
    let log = agent.log_text();
    assert!(log.contains("exited 5 (session conflict)"), "{log}");
    let configures = stack.events("CONFIGURE ");
    let id = &stack.instance_id;
    assert!(
        configures[1].contains(&format!("name={id}-2")),
        "{configures:?}"
    );
    assert!(configures[1].contains(&format!("labels={INITIAL_RUN_ID}")));
    assert_eq!(
        stack.count_events("REMOVE"),
        1,
        "the old registration went first"
    );
    // The new registration serves the run.
    stack.queue_job(INITIAL_RUN_ID, 1);
    stack.wait_events("JOB_END", 1).await;
    stack.release_initial().await;
}

/// GitHub refuses the runner's version: the listener (asked by the agent
/// to say so with code 7) exits, the agent installs the newer release the
/// release API names, verified by its digest, and registers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprecated_runner_is_upgraded_and_the_claim_registered_again() {
    const NEWER: &str = "2.400.0";
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    stack.github.publish(NEWER);
    exit_listener_with(&stack, 7);
    stack.wait_events("CONFIGURE ", 2).await;
    stack.wait_events("LISTENER_START", 2).await;
    let log = agent.log_text();
    assert!(
        log.contains("exited 7 (runner version deprecated)"),
        "{log}"
    );
    assert_eq!(stack.github.downloads(NEWER), 1);
    let marker = stack.runner_dir().join(VERSION_MARKER);
    assert_eq!(std::fs::read_to_string(marker).unwrap().trim(), NEWER);
    assert_eq!(stack.count_events("REMOVE"), 1, "deregistered before");
    stack.queue_job(INITIAL_RUN_ID, 1);
    stack.wait_events("JOB_END", 1).await;
    stack.release_initial().await;

    // Restarted with runner.version still pinned to the deprecated
    // release: the upgrade is kept, not replaced by the pin and upgraded
    // again; the next claim runs on it.
    let mut agent = agent;
    agent.kill(libc::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("agent exits");
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack.cp.claim(&stack.instance_id, "2000-1").await;
    stack
        .assert_signal("UD_REG_OK", "2000-1", SIGNAL_WAIT)
        .await;
    let log = agent.log_text();
    assert!(log.contains("GitHub deprecated runner.version"), "{log}");
    assert_eq!(
        stack.github.downloads(FAKE_RUNNER_VERSION),
        1,
        "the pin is not installed again"
    );
    assert_eq!(stack.github.downloads(NEWER), 1);
    let marker = stack.runner_dir().join(VERSION_MARKER);
    assert_eq!(std::fs::read_to_string(marker).unwrap().trim(), NEWER);
}

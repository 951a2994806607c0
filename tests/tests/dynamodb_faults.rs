//! DynamoDB's faults through the proxy (`stack::proxy::Faults`), against
//! the real agent: throttling, 5xx, latency past the SDK's attempt timeout,
//! connections closed without an answer, answers cut short, an outage at
//! boot and mid-job. Each scenario ends with a claim/release cycle that
//! works, and the invariants (`stack::invariants`).

use stack::agent::{AgentProcess, AgentSpec};
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::time::{Duration, Instant};

/// The control plane's patience for UD_REG_OK after a claim, plus what a
/// shared machine may add.
const CLAIM_PATIENCE: Duration = Duration::from_secs(15);

/// Booted, registered for the initial run and released: idle.
async fn idle_agent(stack: &Stack) -> AgentProcess {
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    stack.release_initial().await;
    agent
}

/// A claim answered within the control plane's window, then released.
async fn claim_and_release(stack: &Stack, run_id: &str) {
    stack.cp.claim(&stack.instance_id, run_id).await;
    stack
        .assert_signal("UD_REG_OK", run_id, CLAIM_PATIENCE)
        .await;
    stack.release_run(run_id, "claimed").await;
}

fn reads_between(stack: &Stack, from: Instant, to: Instant) -> usize {
    stack
        .proxy
        .counts()
        .read_times
        .iter()
        .filter(|t| **t >= from && **t < to)
        .count()
}

/// Every read throttled for 10 s (ProvisionedThroughputExceededException,
/// as DynamoDB answers): the agent reads at least 4× less, says so once,
/// is back at its normal rate within 10 s of the end, and answers a claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_slow_the_agent_4x_log_once_and_recover_within_10s() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    let before = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let throttle_at = Instant::now();
    stack.proxy.faults(|f| {
        f.throttle_ops.insert("GetItem".into());
        f.throttle_ops.insert("BatchGetItem".into());
    });
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.proxy.clear_faults();
    let lifted = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let recovered = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end = Instant::now();

    let rate = |from: Instant, to: Instant| {
        reads_between(&stack, from, to) as f64 / to.duration_since(from).as_secs_f64()
    };
    let (normal, throttled, after) = (
        rate(before, throttle_at),
        rate(throttle_at, lifted),
        rate(recovered, end),
    );
    assert!(
        throttled * 4.0 <= normal,
        "reads/s: {normal:.2} normal, {throttled:.2} throttled"
    );
    assert!(
        after >= normal * 0.75,
        "reads/s: {normal:.2} normal, {after:.2} from 10 s after the episode"
    );
    assert!(stack.proxy.usage().throttled_total() > 0);
    let log = agent.log_text();
    assert_eq!(
        log.matches("polls slowed until reads succeed").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("DynamoDB reads succeed again").count(),
        1,
        "{log}"
    );
    claim_and_release(&stack, "2000-1").await;
    stack.assert_invariants(&agent, &[]).await;
}

/// A claim made while reads are throttled is answered once they are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_during_a_read_throttle_is_answered_when_it_lifts() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    stack.proxy.faults(|f| {
        f.throttle_ops.insert("GetItem".into());
        f.throttle_ops.insert("BatchGetItem".into());
    });
    stack.cp.claim(&stack.instance_id, "2000-1").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_ne!(
        stack.cp.signal(&stack.instance_id).await.map(|s| s.run_id),
        Some("2000-1".to_owned()),
        "no claim can be seen through a throttled read"
    );
    stack.proxy.clear_faults();
    stack
        .assert_signal("UD_REG_OK", "2000-1", CLAIM_PATIENCE)
        .await;
    stack.release_run("2000-1", "claimed").await;
    stack.assert_invariants(&agent, &[]).await;
}

/// Writes throttled during a release: the release's signal is retried
/// until stored, and heartbeats resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_writes_during_a_release_are_retried_until_stored() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    stack.proxy.faults(|f| {
        f.throttle_ops.insert("PutItem".into());
    });
    stack
        .cp
        .release(&stack.instance_id, INITIAL_RUN_ID, "created")
        .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let refused = stack.proxy.usage().throttled.get("op:PutItem").copied();
    assert!(refused.unwrap_or(0) >= 2, "{refused:?}");
    stack.proxy.clear_faults();
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    let log = agent.log_text();
    assert_eq!(
        log.matches("signal write failed; retrying until it is stored")
            .count(),
        1,
        "logged once per signal, not per attempt"
    );
    claim_and_release(&stack, "2000-1").await;
    stack.assert_invariants(&agent, &[]).await;
}

/// Every third DynamoDB request answered HTTP 500 (InternalServerError):
/// a whole cycle still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_on_every_third_request_do_not_break_a_cycle() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    stack.proxy.faults(|f| f.server_error_every = Some(3));
    claim_and_release(&stack, "2000-1").await;
    assert!(stack.proxy.usage().server_errors > 0);
    stack.proxy.clear_faults();
    stack.assert_invariants(&agent, &[]).await;
}

/// Every DynamoDB answer 4 s late (past the agent's 3 s attempt timeout)
/// for 10 s: nothing is lost, and the agent serves claims after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_slower_than_the_attempt_timeout_then_recovery() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    stack.proxy.faults(|f| f.latency = Duration::from_secs(4));
    tokio::time::sleep(Duration::from_secs(10)).await;
    stack.proxy.clear_faults();
    claim_and_release(&stack, "2000-1").await;
    let log = agent.log_text();
    assert!(log.contains("DynamoDB does not answer"), "{log}");
    stack.assert_invariants(&agent, &[]).await;
}

/// Every third DynamoDB request: the connection closes with no answer.
/// (Every second one would alias with the claim's two reads, the idle poll
/// and its confirmation, and fail every confirmation: a pattern no real
/// network has.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_without_an_answer_are_retried() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    stack.proxy.faults(|f| f.reset_every = Some(3));
    claim_and_release(&stack, "2000-1").await;
    assert!(stack.proxy.usage().resets > 0);
    stack.proxy.clear_faults();
    stack.assert_invariants(&agent, &[]).await;
}

/// Every third DynamoDB answer cut short of its Content-Length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_cut_short_are_retried() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    stack.proxy.faults(|f| f.truncate_every = Some(3));
    claim_and_release(&stack, "2000-1").await;
    assert!(stack.proxy.usage().truncated > 0);
    stack.proxy.clear_faults();
    stack.assert_invariants(&agent, &[]).await;
}

/// DynamoDB unreachable when the agent starts: the boot and the initial
/// run's registration are signalled once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_down_at_boot_then_up_signals_the_initial_run() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.proxy.set_down(true);
    let agent = stack.spawn_agent(&AgentSpec::default());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(stack.cp.signal(&stack.instance_id).await.is_none());
    stack.proxy.set_down(false);
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    stack.release_initial().await;
    stack.assert_invariants(&agent, &[]).await;
}

/// A budget on the instance records' partition far below one agent's
/// idle rate (0.5 read unit/s against 2): throttled requests, yet the
/// agent's rate settles under the budget and a claim is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_budget_below_the_idle_rate_is_respected() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    stack.proxy.faults(|f| {
        f.budget = Some(stack::proxy::Budget {
            read_units_per_s: 0.5,
            write_units_per_s: 100.0,
        })
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let sent = reads_between(&stack, from, Instant::now()) as f64 / 10.0;
    // Unthrottled it sends 4 reads/s; paced, it settles around what the
    // budget serves (1 read/s) instead of hammering it.
    assert!(
        sent <= 1.5,
        "{sent:.2} reads/s sent against a 0.5 unit/s budget (1 read/s)"
    );
    assert!(stack.proxy.usage().throttled.contains_key("TYPE#INSTANCE"));
    stack.proxy.clear_faults();
    claim_and_release(&stack, "2000-1").await;
    stack.assert_invariants(&agent, &[]).await;
}

/// The pool's table deleted under an idle agent (the control plane torn
/// down): DynamoDB answers every call with `ResourceNotFoundException`.
/// Each failure the agent logs names the code and the service's message
/// in a short line, not the SDK's whole raw response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_table_is_logged_as_its_error_code_in_a_short_line() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_agent(&stack).await;
    stack.cp.delete_table().await;
    agent
        .assert_log("ResourceNotFoundException", Duration::from_secs(20))
        .await;
    let text = agent.log_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ResourceNotFoundException"))
        .collect();
    for line in &lines {
        // The error is a field of the line (`error`, or the watchdog's
        // `reason`; the agent logs flattened JSON): that field is what an
        // operator reads.
        let entry: serde_json::Value = serde_json::from_str(line).unwrap();
        let fields = entry.as_object().unwrap();
        let text = fields
            .values()
            .filter_map(|v| v.as_str())
            .find(|v| v.contains("ResourceNotFoundException"))
            .unwrap_or_else(|| panic!("no field names the code: {line}"));
        assert!(
            text.contains("Requested resource not found") && text.len() < 300,
            "{} bytes: {text}",
            text.len()
        );
        assert!(line.len() < 600, "{} bytes: {line}", line.len());
    }
}

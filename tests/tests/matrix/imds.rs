//! IMDS: down, refusing tokens, failing, slow; tags it cannot confirm.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_down_at_boot_is_waited_for_then_the_instance_boots_and_registers() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.imds.set_down(true);
    let agent = stack.spawn_agent(&AgentSpec::default());
    agent
        .assert_log("instance metadata not ready; retrying", WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.imds.set_down(false);
    stack.assert_signal("UD_OK", INITIAL_RUN_ID, WAIT).await;
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    stack.assert_invariants(&agent, &[]).await;
}

/// IMDS refuses a dozen tokens in a row (each new one too): the agent
/// fetches new tokens and retries until it is let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imds_401_storm_at_boot_is_outlasted_with_fresh_tokens() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.imds.state.lock().unwrap().reject_next = 12;
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    let unauthorized = stack.imds.state.lock().unwrap().unauthorized;
    assert!(unauthorized >= 12, "{unauthorized}");
    assert!(agent
        .log_text()
        .contains("IMDS refused the session token; fetching a new one"));
    stack.assert_invariants(&agent, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_500s_at_boot_are_retried_and_the_instance_registers() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.imds.state.lock().unwrap().fail_next = 10;
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack.assert_signal("UD_OK", INITIAL_RUN_ID, WAIT).await;
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    assert_eq!(stack.imds.state.lock().unwrap().fail_next, 0);
    stack.assert_invariants(&agent, &[]).await;
}

/// Every answer 1.5 s late (under the 2 s attempt timeout): slow, but the
/// instance boots, registers, and a spot notice still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_imds_answers_still_boot_and_deliver_a_spot_notice() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.imds.state.lock().unwrap().delay = Duration::from_millis(1500);
    let agent = stack
        .boot_agent(&AgentSpec {
            timing: vec!["spot_poll_interval = \"500ms\"".into()],
            ..Default::default()
        })
        .await;
    stack
        .imds
        .set_spot_notice(r#"{"action": "terminate", "time": "2026-11-22T10:00:00Z"}"#);
    stack
        .assert_signal("UD_SPOT_INTERRUPTED", INITIAL_RUN_ID, WAIT)
        .await;
    stack.assert_invariants(&agent, &[]).await;
}

/// Tokens granted for the asked TTL stop working after 1 s: every poll
/// after that meets a 401, and the agent gets a new token each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_tokens_expiring_before_their_ttl_are_replaced_and_notices_still_arrive() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.imds.state.lock().unwrap().token_lifetime = Some(Duration::from_secs(1));
    let agent = stack
        .boot_agent(&AgentSpec {
            timing: vec!["spot_poll_interval = \"500ms\"".into()],
            ..Default::default()
        })
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack
        .imds
        .set_rebalance(r#"{"noticeTime": "2026-11-28T10:00:00Z"}"#);
    stack
        .assert_signal("UD_SPOT_INTERRUPTED", INITIAL_RUN_ID, WAIT)
        .await;
    let unauthorized = stack.imds.state.lock().unwrap().unauthorized;
    assert!(unauthorized >= 2, "401 path not exercised: {unauthorized}");
    stack.assert_invariants(&agent, &[]).await;
}

/// Neither `InitialRunId` nor `AllowSelfTermination`: no boot signal (no
/// run to write it for), claims are still served, and an expired
/// threshold does not terminate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_its_tags_serves_claims_and_never_terminates() {
    // EC2 refuses an empty tag specification: one tag that is neither.
    let stack = Stack::start(StackOptions {
        tags: vec![("Name", "no-pool-tags")],
        tags_in_metadata: true,
    })
    .await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    agent
        .assert_log(
            "instance has no InitialRunId tag: cannot write the boot signal",
            WAIT,
        )
        .await;
    stack
        .cp
        .set_threshold(&stack.instance_id, "2020-01-01T00:00:00Z")
        .await;
    agent.assert_log("no AllowSelfTermination tag", WAIT).await;
    assert!(!stack.wait_terminated(Duration::from_secs(2)).await);
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 0);
    stack.assert_invariants(&agent, &[]).await;
}

/// Expired and allowed to terminate, but IMDS cannot confirm the tag: no
/// termination while it cannot; once it answers, the instance goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_instance_does_not_terminate_while_imds_cannot_confirm_the_tag() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    stack.imds.set_down(true);
    stack
        .cp
        .set_threshold(&stack.instance_id, "2020-01-01T00:00:00Z")
        .await;
    agent.assert_log("cannot read tags", WAIT).await;
    assert!(!stack.wait_terminated(Duration::from_secs(2)).await);
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 0);
    let log = agent.log_text();
    assert_no_panic_or_secret(&log);
    stack.imds.set_down(false);
    assert!(
        stack.wait_terminated(Duration::from_secs(20)).await,
        "{}",
        agent.log_text()
    );
}

fn assert_no_panic_or_secret(log: &str) {
    stack::invariants::assert_no_panic(log);
    stack::invariants::assert_no_secret(log, &[]);
}

//! GitHub, through config.sh.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_github_registration_still_signals_ud_reg_ok() {
    let stack = Stack::start(StackOptions::default()).await;
    let started = Instant::now();
    let agent = stack.spawn_agent(&AgentSpec {
        env: vec![("FAKE_GITHUB_LATENCY".into(), "4".into())],
        ..Default::default()
    });
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(stack.count_events("CONFIGURE "), 1);
    stack.assert_invariants(&agent, &[]).await;
}

fn github_refuses(stack: &Stack, registrations: u32) {
    std::fs::write(
        stack.jobs_dir().join("config.fail"),
        registrations.to_string(),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_failing_two_registrations_is_retried_within_the_claim() {
    let stack = Stack::start(StackOptions::default()).await;
    github_refuses(&stack, 2);
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    assert_eq!(stack.count_events("CONFIGURE_FAILED"), 2);
    assert_eq!(stack.count_events("CONFIGURE "), 1);
    assert_eq!(
        agent
            .log_text()
            .matches("config.sh failed; retrying")
            .count(),
        2
    );
    stack.assert_invariants(&agent, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_failing_every_attempt_signals_ud_reg_failed_then_a_fresh_token_registers() {
    let stack = Stack::start(StackOptions::default()).await;
    github_refuses(&stack, 3);
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack
        .assert_signal("UD_REG_FAILED", INITIAL_RUN_ID, WAIT)
        .await;
    assert_eq!(stack.count_events("CONFIGURE_FAILED"), 3);
    assert!(!stack.runner_dir().join(".runner").exists());
    // Not retried with the token GitHub refused: only a fresh one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.count_events("CONFIGURE"), 3);
    stack
        .cp
        .put_token("REFRESHEDTOKEN", time::Duration::hours(1))
        .await;
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, CLAIM_WAIT)
        .await;
    stack.assert_invariants(&agent, &["REFRESHEDTOKEN"]).await;
}

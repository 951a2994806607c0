//! End to end, the unhappy paths: bad scripts, bad tokens, bad tarballs,
//! expiry decisions, crashes, stops, spot notices, AWS outages.

use stack::agent::{AgentProcess, AgentSpec};
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

async fn boot(stack: &Stack, spec: &AgentSpec) -> AgentProcess {
    stack.boot_agent(spec).await
}

/// Boots an agent until it is registered, then SIGKILLs it: the runner is
/// left running, as after a crash.
async fn crash_while_registered(stack: &Stack) {
    let mut agent = boot(stack, &AgentSpec::default()).await;
    agent.kill(libc::SIGKILL);
    agent
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("killed");
}

async fn stack_with_tags(tags: Vec<(&'static str, &'static str)>, tags_in_metadata: bool) -> Stack {
    Stack::start(StackOptions {
        tags,
        tags_in_metadata,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_pre_runner_script_signals_ud_failed_and_never_registers() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.spawn_agent(&AgentSpec {
        pre_runner: Some("echo about to fail\nexit 7\n".into()),
        ..Default::default()
    });
    stack
        .assert_signal("UD_FAILED", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    // The record is claimed for the initial run; a failed instance must not
    // register for it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stack.count_events("CONFIGURE"), 0);
    let log = agent.log_text();
    assert!(
        log.contains("about to fail"),
        "script output not in the log"
    );
    assert!(log.contains("exit status: 7"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused_then_a_fresh_one_registers() {
    let stack = Stack::start(StackOptions::default()).await;
    stack
        .cp
        .put_token("EXPIREDTOKEN", time::Duration::minutes(-5))
        .await;
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack
        .assert_signal("UD_REG_FAILED", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert_eq!(
        stack.count_events("CONFIGURE"),
        0,
        "config.sh ran with an expired token"
    );
    stack
        .cp
        .put_token("FRESHTOKEN", time::Duration::hours(1))
        .await;
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert_eq!(stack.count_events("CONFIGURE "), 1);
    assert!(agent.log_text().contains("expired"), "reason not logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checksum_mismatch_unpacks_nothing_and_runs_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    // The release API vouches for the genuine tarball; the download serves
    // a tampered one.
    stack
        .github
        .state
        .lock()
        .unwrap()
        .releases
        .get_mut(stack::github::FAKE_RUNNER_VERSION)
        .unwrap()
        .tarball
        .extend_from_slice(b"tampered");
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack
        .assert_signal("UD_REG_FAILED", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert!(!stack.runner_dir().exists(), "something was unpacked");
    assert_eq!(stack.count_events("CONFIGURE"), 0);
    assert_eq!(stack.count_events("LISTENER_START"), 0);
    assert!(
        agent.log_text().contains("SHA-256 mismatch"),
        "{}",
        agent.log_text()
    );
    let leftovers: Vec<_> = std::fs::read_dir(stack.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("runner."))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_digest_is_used_and_a_wrong_pin_is_refused() {
    let stack = Stack::start(StackOptions::default()).await;
    let wrong = "0".repeat(64);
    let agent = stack.spawn_agent(&AgentSpec {
        sha256: Some(wrong.clone()),
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_FAILED", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert!(agent.log_text().contains(&wrong));
    assert!(!stack.runner_dir().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_instance_with_the_tag_terminates_itself() {
    let stack = Stack::start(StackOptions::default()).await;
    let _agent = boot(&stack, &AgentSpec::default()).await;
    assert_eq!(stack.cp.instance_state(&stack.instance_id).await, "running");
    stack
        .cp
        .set_threshold(&stack.instance_id, "2020-01-01T00:00:00Z")
        .await;
    assert!(
        stack.wait_terminated(Duration::from_secs(15)).await,
        "not terminated"
    );
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_tags_off_reads_the_tag_through_ec2() {
    let stack = stack_with_tags(
        vec![
            ("InitialRunId", INITIAL_RUN_ID),
            ("AllowSelfTermination", "true"),
        ],
        false,
    )
    .await;
    // Without metadata tags there is no InitialRunId either: no UD_OK, but
    // the claim still registers.
    let agent = boot(&stack, &AgentSpec::default()).await;
    stack
        .cp
        .set_threshold(&stack.instance_id, "2020-01-01T00:00:00Z")
        .await;
    assert!(
        stack.wait_terminated(Duration::from_secs(15)).await,
        "{}",
        agent.log_text()
    );
    assert!(stack.proxy.counts().get("DescribeTags") >= 1);
}

/// Expired, but one thing is missing or wrong each time: never terminate,
/// and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_never_terminates_without_the_tag_or_a_readable_threshold() {
    type Tags = Vec<(&'static str, &'static str)>;
    let cases: [(Tags, &str, &str); 4] = [
        (
            vec![("InitialRunId", INITIAL_RUN_ID)],
            "2020-01-01T00:00:00Z",
            "no AllowSelfTermination tag",
        ),
        (
            vec![
                ("InitialRunId", INITIAL_RUN_ID),
                ("AllowSelfTermination", "false"),
            ],
            "2020-01-01T00:00:00Z",
            "is \\\"false\\\", not",
        ),
        (
            vec![
                ("InitialRunId", INITIAL_RUN_ID),
                ("AllowSelfTermination", "true"),
            ],
            "last tuesday",
            "is not a timestamp",
        ),
        (
            vec![
                ("InitialRunId", INITIAL_RUN_ID),
                ("AllowSelfTermination", "true"),
            ],
            "",
            "has no threshold",
        ),
    ];
    for (tags, threshold, reason) in cases {
        let stack = stack_with_tags(tags, true).await;
        let agent = boot(&stack, &AgentSpec::default()).await;
        stack.cp.set_threshold(&stack.instance_id, threshold).await;
        agent.assert_log(reason, Duration::from_secs(10)).await;
        assert!(!stack.wait_terminated(Duration::from_secs(2)).await);
        assert_eq!(stack.proxy.counts().get("TerminateInstances"), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_outage_never_terminates_and_the_agent_recovers() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = boot(&stack, &AgentSpec::default()).await;
    let id = &stack.instance_id;
    stack.cp.set_threshold(id, "2020-01-01T00:00:00Z").await;
    stack.proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 0);
    assert_eq!(stack.cp.instance_state(id).await, "running");
    // Back up, not expired any more: the release is noticed and signalled.
    let later = stack::control::iso(time::OffsetDateTime::now_utc() + Duration::from_secs(600));
    stack.cp.set_threshold(id, &later).await;
    stack.cp.release(id, INITIAL_RUN_ID, "created").await;
    stack.proxy.set_down(false);
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert_eq!(
        stack.cp.instance_state(id).await,
        "running",
        "{}",
        agent.log_text()
    );
    let hb = stack.cp.heartbeat(id).await.unwrap();
    let updated = stack::control::iso(time::OffsetDateTime::now_utc() - Duration::from_secs(15));
    assert!(
        hb["updatedAt"].as_s().unwrap().as_str() >= updated.as_str(),
        "heartbeat stale"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_claim_then_restart_reattaches_without_a_second_registration() {
    let stack = Stack::start(StackOptions::default()).await;
    crash_while_registered(&stack).await;
    let agent = stack.spawn_agent(&AgentSpec::default());
    agent
        .assert_log("re-attached to the running runner", WAIT)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.count_events("CONFIGURE "), 1, "registered twice");
    assert_eq!(stack.count_events("CONFIGURE_REFUSED"), 0);
    assert_eq!(
        stack.count_events("LISTENER_START"),
        1,
        "a second listener started"
    );
    let id = &stack.instance_id;
    stack.release_initial().await;
    assert!(
        stack.live_listeners().is_empty(),
        "adopted runner still running: {:#?}\n{}",
        stack.runner_events(),
        agent.log_text()
    );
    stack.cp.claim(id, "3000-1").await;
    stack
        .assert_signal("UD_REG_OK", "3000-1", SIGNAL_WAIT)
        .await;
    assert!(
        stack
            .runner_events()
            .iter()
            .any(|(_, e)| e.contains(&format!("name={id}-2"))),
        "counter not resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_while_down_is_deregistered_and_signalled_on_restart() {
    let stack = Stack::start(StackOptions::default()).await;
    crash_while_registered(&stack).await;
    let id = &stack.instance_id;
    stack.cp.release(id, INITIAL_RUN_ID, "created").await;
    let _agent = stack.spawn_agent(&AgentSpec::default());
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert!(!stack.runner_dir().join(".runner").exists());
    assert!(
        stack.live_listeners().is_empty(),
        "orphaned runner not stopped: {:#?}\n{}",
        stack.runner_events(),
        _agent.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_exits_zero() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut agent = boot(&stack, &AgentSpec::default()).await;
    let started = Instant::now();
    agent.kill(libc::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits within 30 s");
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        !stack.runner_dir().join(".runner").exists(),
        "still registered"
    );
    assert!(
        stack.live_listeners().is_empty(),
        "runner still running: {:#?}\n{}",
        stack.runner_events(),
        agent.log_text()
    );
    let signal = stack.cp.signal(&stack.instance_id).await.unwrap();
    assert_eq!(
        (signal.state.as_str(), signal.run_id.as_str()),
        ("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_notice_deregisters_at_once_and_signals() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = boot(
        &stack,
        &AgentSpec {
            timing: vec!["spot_poll_interval = \"500ms\"".into()],
            ..Default::default()
        },
    )
    .await;
    // Tokens expire under the agent's feet: the IMDS client must take the
    // 401 and fetch a new one.
    stack.imds.expire_tokens();
    stack
        .imds
        .set_spot_notice(r#"{"action": "terminate", "time": "2026-11-22T10:00:00Z"}"#);
    stack
        .assert_signal("UD_SPOT_INTERRUPTED", INITIAL_RUN_ID, WAIT)
        .await;
    assert!(!stack.runner_dir().join(".runner").exists());
    assert!(
        stack.live_listeners().is_empty(),
        "runner still running: {:#?}\n{}",
        stack.runner_events(),
        agent.log_text()
    );
    assert!(
        stack.imds.state.lock().unwrap().unauthorized >= 1,
        "401 path not exercised"
    );
    // The spot signal is a worker signal: within the policy's partitions.
    stack.assert_agent_calls_allowed().await;
}

/// An instance role narrowed to GetItem/PutItem: BatchGetItem is denied
/// (the proxy answers as DynamoDB does), and claims are confirmed with two
/// strongly consistent GetItems instead, logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_without_batch_get_item_still_serves_claims() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.proxy.deny("BatchGetItem");
    let agent = boot(&stack, &AgentSpec::default()).await;
    let id = &stack.instance_id;
    stack.release_initial().await;
    for run in ["7100-1", "7100-2"] {
        stack.cp.claim(id, run).await;
        stack.assert_signal("UD_REG_OK", run, SIGNAL_WAIT).await;
        stack.release_run(run, "claimed").await;
    }
    let log = agent.log_text();
    assert_eq!(log.matches("BatchGetItem denied").count(), 1, "{log}");
}

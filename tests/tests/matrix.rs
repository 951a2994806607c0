//! End to end, the fault matrix (docs/faults.md): malformed items in the
//! table, IMDS faults, GitHub failing under config.sh, a misbehaving
//! runner, a broken state dir, and OS signals in every state. Each
//! scenario checks, besides its own outcome, the invariants every fault
//! must keep (`stack.assert_invariants`): no panic, no secret in the log,
//! no termination; and that the signal the control plane waits for comes.
//! Faults the process does not matter for are in-process
//! (agent/src/machine/tests/faults.rs).

use aws_sdk_dynamodb::types::AttributeValue;
use stack::agent::{AgentProcess, AgentSpec};
use stack::control::{iso, iso_millis};
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const WAIT: Duration = Duration::from_secs(30);
/// The control plane gives a claimed idle instance 10 s to answer.
const CLAIM_WAIT: Duration = Duration::from_secs(10);

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn token_map(fields: &[(&str, AttributeValue)]) -> AttributeValue {
    AttributeValue::M(
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<HashMap<_, _>>(),
    )
}

fn an_hour_from_now() -> String {
    iso_millis(OffsetDateTime::now_utc() + Duration::from_secs(3600))
}

async fn wait_log(agent: &AgentProcess, needle: &str) {
    assert!(
        agent.wait_log(needle, WAIT).await,
        "no {needle:?} in the log:\n{}",
        agent.log_text()
    );
}

/// Releases the initial run and waits until the agent is idle again.
async fn release_initial(stack: &Stack) {
    stack
        .cp
        .release(&stack.instance_id, INITIAL_RUN_ID, "created")
        .await;
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID, WAIT)
        .await;
}

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

/// A mount made by the test (we run as root), unmounted however the test
/// ends; lazily, in case something still holds a file in it.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", options, "tmpfs", path_str(at)],
        );
        Mount(at.to_owned())
    }

    /// `at` seen read-only from now on: a read-only bind mount over it.
    /// (A remount of the file system itself is refused while the agent
    /// holds its lock file open for writing; files opened from now on,
    /// like the state's temp file, get EROFS as on a read-only volume.)
    fn read_only_over(at: &Path) -> Mount {
        run("mount", &["--bind", path_str(at), path_str(at)]);
        let mount = Mount(at.to_owned());
        run("mount", &["-o", "remount,bind,ro", path_str(at)]);
        mount
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l", path_str(&self.0)])
            .status();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(program: &str, args: &[&str]) {
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

// ---------------------------------------------------------------------
// DynamoDB: malformed items, written by the control-plane driver straight
// to moto (not through the proxy).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_id_stored_as_a_number_is_no_claim_until_written_as_a_string() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = &stack.instance_id;
    stack
        .cp
        .set_record_attr(id, "runId", AttributeValue::N("1000".into()))
        .await;
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack.assert_signal("UD_OK", INITIAL_RUN_ID, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        stack.count_events("CONFIGURE"),
        0,
        "registered for a number"
    );
    let signal = stack.cp.signal(id).await.unwrap();
    assert_eq!(signal.state, "UD_OK", "{signal:?}");
    stack
        .cp
        .set_record_attr(id, "runId", s(INITIAL_RUN_ID))
        .await;
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, CLAIM_WAIT)
        .await;
    stack.assert_invariants(&agent, &[]).await;
}

/// An expired-looking threshold of the wrong type (a map, a number that
/// would be 1970 as epoch seconds, a list) is no threshold: never a
/// termination, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_of_the_wrong_type_never_terminates() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let id = &stack.instance_id;
    let past = s("2020-01-01T00:00:00Z");
    let wrong = [
        AttributeValue::M(HashMap::from([("at".to_owned(), past.clone())])),
        AttributeValue::N("0".into()),
        AttributeValue::L(vec![past]),
    ];
    for value in wrong {
        stack.cp.set_record_attr(id, "threshold", value).await;
        wait_log(&agent, "has no threshold").await;
        assert!(!stack.wait_terminated(Duration::from_secs(2)).await);
    }
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 0);
    // Still serving: the release is answered.
    release_initial(&stack).await;
    stack.assert_invariants(&agent, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_run_id_or_threshold_waits_and_never_terminates() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = &stack.instance_id;
    stack
        .cp
        .remove_record_attrs(id, &["runId", "threshold"])
        .await;
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack.assert_signal("UD_OK", INITIAL_RUN_ID, WAIT).await;
    wait_log(&agent, "has no threshold").await;
    assert!(!stack.wait_terminated(Duration::from_secs(2)).await);
    assert_eq!(stack.count_events("CONFIGURE"), 0);
    // The control plane repairs the record: the claim is served.
    let later = iso(OffsetDateTime::now_utc() + Duration::from_secs(600));
    stack.cp.set_threshold(id, &later).await;
    stack
        .cp
        .set_record_attr(id, "runId", s(INITIAL_RUN_ID))
        .await;
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, CLAIM_WAIT)
        .await;
    stack.assert_invariants(&agent, &[]).await;
}

/// The token item missing, then malformed in each way the control plane
/// could get it wrong: `UD_REG_FAILED` for the claim, the reason logged,
/// config.sh never run, no token value in the log; a good token then
/// registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_malformed_token_item_fails_the_claim_then_a_good_token_registers() {
    const BARE: &str = "BARETOKENNOTINAMAP";
    const BAD_EXPIRY: &str = "TOKENWITHGARBAGEEXPIRY";
    const NUMERIC_EXPIRY: &str = "TOKENWITHNUMERICEXPIRY";
    const GOOD: &str = "GOODTOKENATLAST";
    let stack = Stack::start(StackOptions::default()).await;
    stack.cp.delete_token().await;
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack
        .assert_signal("UD_REG_FAILED", INITIAL_RUN_ID, WAIT)
        .await;
    wait_log(&agent, "no registration token item in the table").await;
    // `value` a bare string, not the map.
    stack.cp.put_token_value(s(BARE)).await;
    wait_log(&agent, "registration token item has no `value` map").await;
    // `token` a number.
    stack
        .cp
        .put_token_value(token_map(&[
            ("token", AttributeValue::N("12345".into())),
            ("expires_at", s(&an_hour_from_now())),
        ]))
        .await;
    wait_log(&agent, "the registration token is empty").await;
    // `expires_at` garbage, then a number.
    stack
        .cp
        .put_token_value(token_map(&[
            ("token", s(BAD_EXPIRY)),
            ("expires_at", s("next tuesday")),
        ]))
        .await;
    wait_log(&agent, "\\\"next tuesday\\\" is not a timestamp").await;
    stack
        .cp
        .put_token_value(token_map(&[
            ("token", s(NUMERIC_EXPIRY)),
            ("expires_at", AttributeValue::N("1893456000".into())),
        ]))
        .await;
    wait_log(&agent, "the registration token has no expires_at").await;
    assert_eq!(stack.count_events("CONFIGURE"), 0, "config.sh ran");
    let signal = stack.cp.signal(&stack.instance_id).await.unwrap();
    assert_eq!(
        (signal.state.as_str(), signal.run_id.as_str()),
        ("UD_REG_FAILED", INITIAL_RUN_ID)
    );
    stack.cp.put_token(GOOD, time::Duration::hours(1)).await;
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, CLAIM_WAIT)
        .await;
    assert_eq!(stack.count_events("CONFIGURE "), 1);
    stack
        .assert_invariants(&agent, &[BARE, BAD_EXPIRY, NUMERIC_EXPIRY, GOOD])
        .await;
}

/// A 300 KB run id (the item stays under DynamoDB's 400 KB): no runner
/// label can be that long (the kernel refuses an argument over 128 KB), so
/// the claim fails with `UD_REG_FAILED` for that very run id; the agent
/// goes on, and the next claim registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_run_id_fails_its_claim_and_the_next_claim_registers() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let id = &stack.instance_id;
    release_initial(&stack).await;
    let huge = "7".repeat(300 * 1024);
    stack.cp.claim(id, &huge).await;
    stack.assert_signal("UD_REG_FAILED", &huge, WAIT).await;
    assert_eq!(stack.count_events("CONFIGURE "), 1, "only the first run");
    stack.cp.release(id, &huge, "claimed").await;
    // Back to idle (nothing registered, so nothing to signal), then served.
    wait_phase(&stack, &agent, "idle").await;
    stack.cp.claim(id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    stack.assert_invariants(&agent, &[]).await;
}

/// A 350 KB token: refused by the kernel as config.sh's environment
/// (over 128 KB), so `UD_REG_FAILED`; not a byte of it in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_fails_the_claim_without_logging_it_then_a_good_one_registers() {
    const MARK: &str = "OVERSIZEDTOKENSTART";
    let stack = Stack::start(StackOptions::default()).await;
    let huge = format!("{MARK}{}", "A".repeat(350 * 1024));
    stack.cp.put_token(&huge, time::Duration::hours(1)).await;
    let agent = stack.spawn_agent(&AgentSpec::default());
    stack
        .assert_signal("UD_REG_FAILED", INITIAL_RUN_ID, WAIT)
        .await;
    assert_eq!(stack.count_events("CONFIGURE "), 0);
    stack
        .cp
        .put_token("FRESHSMALLTOKEN", time::Duration::hours(1))
        .await;
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, CLAIM_WAIT)
        .await;
    stack
        .assert_invariants(&agent, &[MARK, "FRESHSMALLTOKEN"])
        .await;
}

// ---------------------------------------------------------------------
// IMDS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_down_at_boot_is_waited_for_then_the_instance_boots_and_registers() {
    let stack = Stack::start(StackOptions::default()).await;
    stack.imds.set_down(true);
    let agent = stack.spawn_agent(&AgentSpec::default());
    wait_log(&agent, "instance metadata not ready; retrying").await;
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
    wait_log(
        &agent,
        "instance has no InitialRunId tag: cannot write the boot signal",
    )
    .await;
    stack
        .cp
        .set_threshold(&stack.instance_id, "2020-01-01T00:00:00Z")
        .await;
    wait_log(&agent, "no AllowSelfTermination tag").await;
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
    wait_log(&agent, "cannot read tags").await;
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

// ---------------------------------------------------------------------
// GitHub, through config.sh

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

// ---------------------------------------------------------------------
// The runner process

/// The listener crashes at every start with a code the runner does not
/// define: restarted with back-off, never registered again, and the
/// release is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_crash_loop_is_restarted_with_back_off_and_the_release_answered() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let jobs = stack.jobs_dir();
    std::fs::write(jobs.join(format!("{INITIAL_RUN_ID}.crash")), "42").unwrap();
    std::fs::write(jobs.join(format!("{INITIAL_RUN_ID}.exit")), "42").unwrap();
    // Exit, then restarts after 1 s, 2 s, 4 s: four exits within ~9 s.
    let started = Instant::now();
    while stack.count_events("LISTENER_EXIT") < 4 {
        assert!(started.elapsed() < WAIT, "{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(6), "no back-off");
    let log = agent.log_text();
    assert!(
        log.contains("runner exited 42 while claimed; restarting"),
        "{log}"
    );
    assert_eq!(stack.count_events("CONFIGURE "), 1);
    std::fs::remove_file(jobs.join(format!("{INITIAL_RUN_ID}.crash"))).unwrap();
    release_initial(&stack).await;
    assert!(stack.live_listeners().is_empty());
    stack.assert_invariants(&agent, &[]).await;
}

/// A listener that ignores SIGTERM: stopping it (at the release, and at the
/// agent's own stop) kills its process group after `stop_timeout` (5 s
/// here), and both finish with their signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_ignoring_sigterm_is_killed_and_release_and_stop_complete() {
    let stack = Stack::start(StackOptions::default()).await;
    let jobs = stack.jobs_dir();
    for run in [INITIAL_RUN_ID, "3000-1"] {
        std::fs::write(jobs.join(format!("{run}.ignore-term")), "").unwrap();
    }
    let mut agent = stack.boot_agent(&AgentSpec::default()).await;
    let released = Instant::now();
    release_initial(&stack).await;
    assert!(
        released.elapsed() >= Duration::from_secs(5),
        "not the SIGKILL path"
    );
    assert!(stack.live_listeners().is_empty(), "listener survived");
    let id = &stack.instance_id;
    stack.cp.claim(id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    while stack.live_listeners().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill(libc::SIGTERM);
    let status = agent.wait_exit(WAIT).await.expect("stops");
    assert!(status.success(), "{status:?}");
    assert!(
        stack.live_listeners().is_empty(),
        "listener survived the stop"
    );
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", "3000-1", WAIT)
        .await;
    stack.assert_invariants(&agent, &[]).await;
}

// ---------------------------------------------------------------------
// The state dir

/// A read-only state dir at start: the lock (which keeps a second agent
/// off the runner) cannot be taken; the agent refuses to start with the
/// reason, registers nothing, and systemd's restart tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_dir_at_start_is_refused_with_the_reason() {
    let stack = Stack::start(StackOptions::default()).await;
    let _mount = Mount::tmpfs(&state_dir(&stack), "ro,size=1m");
    let mut agent = stack.spawn_agent(&AgentSpec::default());
    let status = agent.wait_exit(WAIT).await.expect("exits");
    assert!(!status.success());
    let log = agent.log_text();
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(stack.count_events("CONFIGURE"), 0);
    stack.assert_invariants(&agent, &[]).await;
}

/// The state dir turns read-only while serving: every save fails and is
/// logged, the lifecycle goes on, and no signal is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_turning_read_only_while_serving_loses_no_signal() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let _read_only = Mount::read_only_over(&state_dir(&stack));
    release_initial(&stack).await;
    stack.cp.claim(&stack.instance_id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    let log = agent.log_text();
    assert!(log.contains("saving state"), "{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    stack.assert_invariants(&agent, &[]).await;
}

/// The state dir's volume is full: saves fail and are logged, signals are
/// still written; once there is room again the state is saved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_loses_no_signal_and_saving_resumes_when_space_returns() {
    let stack = Stack::start(StackOptions::default()).await;
    let dir = state_dir(&stack);
    let _mount = Mount::tmpfs(&dir, "size=256k");
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
    }
    release_initial(&stack).await;
    let log = agent.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    std::fs::remove_file(&filler).unwrap();
    stack.cp.claim(&stack.instance_id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    // (`phase` in the file keeps the older agents' names: "registered".)
    wait_phase(&stack, &agent, "registered").await;
    let saved = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(saved.contains("3000-1"), "{saved}");
    stack.assert_invariants(&agent, &[]).await;
}

/// A crash leaves the runner registered and running, and `state.json`
/// is then found corrupt: the agent starts afresh, stops the orphaned
/// runner, drops the old registration and registers once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_after_a_crash_starts_afresh_with_one_runner() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut first = stack.boot_agent(&AgentSpec::default()).await;
    first.kill(libc::SIGKILL);
    first.wait_exit(WAIT).await.expect("killed");
    std::fs::write(state_dir(&stack).join("state.json"), b"{\"phase\": \"serv").unwrap();
    let agent = stack.spawn_agent(&AgentSpec::default());
    wait_log(&agent, "ignoring unreadable state").await;
    let started = Instant::now();
    while stack.count_events("CONFIGURE ") < 2 || stack.live_listeners().is_empty() {
        assert!(started.elapsed() < WAIT, "{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    assert_eq!(stack.count_events("CONFIGURE_REFUSED"), 0);
    assert_eq!(
        stack.live_listeners().len(),
        1,
        "{:#?}",
        stack.runner_events()
    );
    assert!(agent.log_text().contains("is corrupt"));
    release_initial(&stack).await;
    stack.assert_invariants(&agent, &[]).await;
}

// ---------------------------------------------------------------------
// Signals to the agent

const HUP_LOG: &str =
    "SIGHUP: configuration reload is not supported; restart the service to apply changes";

fn hups(agent: &AgentProcess) -> usize {
    agent.log_text().matches(HUP_LOG).count()
}

/// Waits until the agent has logged `count` SIGHUPs.
async fn wait_hups(agent: &AgentProcess, count: usize) {
    let started = Instant::now();
    while hups(agent) < count {
        assert!(
            started.elapsed() < WAIT,
            "SIGHUP not logged:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends SIGHUP and waits until the agent has logged it.
async fn hup(agent: &AgentProcess) {
    let before = hups(agent);
    agent.kill(libc::SIGHUP);
    wait_hups(agent, before + 1).await;
}

/// SIGHUP is not a reload: logged, and nothing changes, in every state
/// (booting, registering, serving, releasing, resetting, idle); the agent
/// then stops cleanly on SIGTERM. GitHub is slow (2 s per config.sh) so
/// that registering and releasing last long enough to be hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_in_every_state_is_logged_and_changes_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = &stack.instance_id;
    stack.imds.set_down(true);
    let mut agent = stack.spawn_agent(&AgentSpec {
        env: vec![("FAKE_GITHUB_LATENCY".into(), "2".into())],
        ..Default::default()
    });
    // Booting: IMDS not there yet. The signal is held until the agent
    // knows its instance, then logged.
    wait_log(&agent, "instance metadata not ready; retrying").await;
    agent.kill(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.imds.set_down(false);
    wait_hups(&agent, 1).await;
    // Registering: config.sh takes 2 s.
    wait_phase(&stack, &agent, "registering").await;
    hup(&agent).await;
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    // Serving ("registered" in the file): the listener keeps running.
    while stack.live_listeners().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hup(&agent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.live_listeners().len(), 1);
    assert_eq!(stack.count_events("LISTENER_START"), 1);
    // A job leaves many files in _work, so that the reset takes a moment.
    stack.queue_steps(
        INITIAL_RUN_ID,
        "mkdir junk && cd junk && seq 1 20000 | xargs touch && echo steps done\n",
    );
    stack.wait_steps(INITIAL_RUN_ID).await;
    // Releasing (config.sh remove takes 2 s), then resetting: SIGHUP every
    // few ms, noting the phase each one hit.
    stack.cp.release(id, INITIAL_RUN_ID, "created").await;
    let mut hit = std::collections::BTreeSet::new();
    let started = Instant::now();
    while stack
        .cp
        .signal(id)
        .await
        .is_none_or(|s| s.state != "UD_REMOVE_REG_REMOVE_RUN_OK")
    {
        assert!(started.elapsed() < WAIT, "{}", agent.log_text());
        let now = phase(&stack);
        agent.kill(libc::SIGHUP);
        hit.insert(now);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // The file's older names: "deregistering" is releasing.
    for name in ["deregistering", "resetting"] {
        assert!(hit.contains(name), "no SIGHUP while {name}: {hit:?}");
    }
    wait_phase(&stack, &agent, "idle").await;
    hup(&agent).await;
    // Still alive and serving claims.
    stack.cp.claim(id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    agent.kill(libc::SIGTERM);
    let status = agent.wait_exit(WAIT).await.expect("stops");
    assert!(status.success(), "{status:?}");
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", "3000-1", WAIT)
        .await;
    stack.assert_invariants(&agent, &[]).await;
}

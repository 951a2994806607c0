//! DynamoDB: malformed items, written by the control-plane driver straight
//! to moto (not through the proxy).

use super::*;
use aws_sdk_dynamodb::types::AttributeValue;
use stack::control::{iso, iso_millis};
use std::collections::HashMap;
use time::OffsetDateTime;

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
        agent.assert_log("has no threshold", WAIT).await;
        assert!(!stack.wait_terminated(Duration::from_secs(2)).await);
    }
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 0);
    // Still serving: the release is answered.
    stack.release_initial().await;
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
    agent.assert_log("has no threshold", WAIT).await;
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
    agent
        .assert_log("no registration token item in the table", WAIT)
        .await;
    // `value` a bare string, not the map.
    stack.cp.put_token_value(s(BARE)).await;
    agent
        .assert_log("registration token item has no `value` map", WAIT)
        .await;
    // `token` a number.
    stack
        .cp
        .put_token_value(token_map(&[
            ("token", AttributeValue::N("12345".into())),
            ("expires_at", s(&an_hour_from_now())),
        ]))
        .await;
    agent
        .assert_log("the registration token is empty", WAIT)
        .await;
    // `expires_at` garbage, then a number.
    stack
        .cp
        .put_token_value(token_map(&[
            ("token", s(BAD_EXPIRY)),
            ("expires_at", s("next tuesday")),
        ]))
        .await;
    agent
        .assert_log("\\\"next tuesday\\\" is not a timestamp", WAIT)
        .await;
    stack
        .cp
        .put_token_value(token_map(&[
            ("token", s(NUMERIC_EXPIRY)),
            ("expires_at", AttributeValue::N("1893456000".into())),
        ]))
        .await;
    agent
        .assert_log("the registration token has no expires_at", WAIT)
        .await;
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
    stack.release_initial().await;
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

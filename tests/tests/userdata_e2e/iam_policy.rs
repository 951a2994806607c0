//! The rendered IAM policy against the calls the agent makes: the same
//! actions, and each call allowed with its resource and condition keys
//! (tests/src/iam evaluates them; moto does not).

use super::*;

/// `runner-userdata iam-policy` allows exactly what the agent calls: an
/// agent through boot, a claim/release cycle, and self-termination (with
/// metadata tags off, so it reads its tag through ec2:DescribeTags) makes
/// every call it has; the proxy records them by IAM name, and with what IAM
/// authorizes them by: each must be allowed, table partitions, instance
/// ARN and tag conditions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_policy_allows_exactly_the_calls_the_agent_makes() {
    let stack = Stack::start(StackOptions {
        tags_in_metadata: false,
        ..Default::default()
    })
    .await;
    let agent = stack.spawn_agent(&Default::default());
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    stack.release_initial().await;
    stack
        .cp
        .set_threshold(&stack.instance_id, "2020-01-01T00:00:00Z")
        .await;
    assert!(
        stack.wait_terminated(Duration::from_secs(20)).await,
        "{}",
        agent.log_text()
    );

    let origin = stack.iam_origin().await;
    let out = std::process::Command::new(userdata_binary())
        .args([
            "iam-policy",
            "--table",
            &stack.cp.table,
            "--region",
            stack::REGION,
        ])
        .args(["--account", &origin.account])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut allowed: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            list => list
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect(),
        })
        .collect();
    allowed.sort();
    let called: Vec<String> = stack.proxy.counts().iam_actions.into_iter().collect();
    assert_eq!(called, allowed, "calls seen at the proxy vs the policy");
    let checked = stack.assert_calls_allowed(&policy).await;
    let calls = stack.proxy.counts().calls.len();
    eprintln!("{calls} calls, {checked} authorizations, all allowed");
    // The check can fail: a policy one partition or one tag narrower
    // denies exactly the calls that need it.
    let mut narrower = policy.clone();
    narrower["Statement"][1]["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"] =
        serde_json::json!(["TYPE#HEARTBEAT"]);
    narrower["Statement"][3]["Condition"]["StringEquals"]["ec2:ResourceTag/AllowSelfTermination"] =
        "yes".into();
    let (denied, _) = stack.denied_calls(&narrower).await;
    let denied: std::collections::BTreeSet<String> = denied
        .iter()
        .map(|(_, r)| match r.context.get("dynamodb:leadingkeys") {
            Some(keys) => format!("{} {}", r.action, keys.join(",")),
            None => r.action.clone(),
        })
        .collect();
    assert_eq!(
        denied.iter().map(String::as_str).collect::<Vec<_>>(),
        ["dynamodb:PutItem TYPE#WS", "ec2:TerminateInstances"],
        "signals and the termination, nothing else"
    );
    // The table statement names this table, and termination needs the tag.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(":table/{}\"", stack.cp.table)),
        "{text}"
    );
    assert!(
        text.contains("\"ec2:ResourceTag/AllowSelfTermination\": \"true\""),
        "{text}"
    );
    assert!(text.contains("instance/${ec2:InstanceID}\""), "{text}");
    assert!(!text.contains("sts:"), "no job role, no STS: {text}");
}

//! The IAM evaluator (tests/src/iam) on its own, and the policy
//! `runner-userdata iam-policy` prints against what a job holding the
//! instance role might try: each abuse must be denied, each call the agent
//! makes allowed. (The e2e proof over the agent's real calls is
//! userdata_e2e/iam_policy.rs.)

use serde_json::{json, Value};
use stack::agent::userdata_binary;
use stack::iam::{authorizations, evaluate, Decision, Origin, Request};
use stack::proxy::call::{self, Call};
use std::collections::BTreeMap;

const ACCOUNT: &str = "123456789012";
const TABLE: &str = "acme-widgets-pool";
const SELF: &str = "i-0000000000000self";
const OTHER: &str = "i-000000000000other";
const UNTAGGED: &str = "i-0000000000untagged";
const JOB_ROLE: &str = "arn:aws:iam::123456789012:role/ci-job";

fn allowed(policy: &Value, request: &Request) -> bool {
    matches!(evaluate(policy, request), Decision::Allowed(_))
}

fn policy(statements: Value) -> Value {
    json!({ "Version": "2012-10-17", "Statement": statements })
}

#[test]
fn actions_and_resources_match_with_wildcards_arn_part_by_part() {
    let p = policy(json!([{
        "Effect": "Allow",
        "Action": ["dynamodb:Get*"],
        "Resource": "arn:aws:dynamodb:*:*:table/t",
    }]));
    let table = "arn:aws:dynamodb:us-east-1:123456789012:table/t";
    assert!(allowed(&p, &Request::new("dynamodb:GetItem", table)));
    assert!(allowed(&p, &Request::new("DynamoDB:getitem", table)));
    assert!(!allowed(&p, &Request::new("dynamodb:PutItem", table)));
    assert!(!allowed(
        &p,
        &Request::new("dynamodb:GetItem", &format!("{table}2"))
    ));
    assert!(!allowed(&p, &Request::new("dynamodb:GetItem", "*")));
    // A `*` stays within its ARN part: it does not eat the account.
    let p = policy(json!([{
        "Effect": "Allow",
        "Action": "ec2:TerminateInstances",
        "Resource": "arn:aws:ec2:us-east-1:*",
    }]));
    let instance = "arn:aws:ec2:us-east-1:123456789012:instance/i-1";
    assert!(!allowed(
        &p,
        &Request::new("ec2:TerminateInstances", instance)
    ));
}

#[test]
fn an_explicit_deny_wins_and_nothing_is_allowed_by_default() {
    let p = policy(json!([
        { "Sid": "All", "Effect": "Allow", "Action": "*", "Resource": "*" },
        { "Sid": "NoTerminate", "Effect": "Deny", "Action": "ec2:Terminate*", "Resource": "*" },
    ]));
    let r = Request::new("ec2:TerminateInstances", "arn:aws:ec2:r:1:instance/i-1");
    assert_eq!(
        evaluate(&p, &r),
        Decision::ExplicitDeny("NoTerminate".into())
    );
    assert_eq!(
        evaluate(&p, &Request::new("ec2:DescribeTags", "*")),
        Decision::Allowed("All".into())
    );
    assert_eq!(
        evaluate(&policy(json!([])), &Request::new("ec2:DescribeTags", "*")),
        Decision::ImplicitDeny
    );
}

#[test]
fn policy_variables_take_the_request_value_literally_or_match_nothing() {
    let p = policy(json!([{
        "Effect": "Allow",
        "Action": "ec2:TerminateInstances",
        "Resource": "arn:aws:ec2:*:*:instance/*",
        "Condition": {
            "ArnLike": { "ec2:SourceInstanceARN": "arn:aws:ec2:*:*:instance/${ec2:InstanceID}" }
        },
    }]));
    let arn = |id: &str| format!("arn:aws:ec2:us-east-1:123456789012:instance/{id}");
    let r = |target: &str, source: Option<&str>| {
        let r =
            Request::new("ec2:TerminateInstances", &arn(target)).with("ec2:InstanceID", [target]);
        match source {
            Some(s) => r.with("ec2:SourceInstanceARN", [arn(s)]),
            None => r,
        }
    };
    assert!(allowed(&p, &r("i-1", Some("i-1"))));
    assert!(!allowed(&p, &r("i-2", Some("i-1"))));
    assert!(!allowed(&p, &r("i-1", None)), "no value: matches nothing");
    let no_target = Request::new("ec2:TerminateInstances", &arn("i-1"))
        .with("ec2:SourceInstanceARN", [arn("i-1")]);
    assert!(!allowed(&p, &no_target));
    // A value's `*` is a character, not a wildcard.
    assert!(!allowed(&p, &r("*", Some("i-1"))));
}

#[test]
fn condition_operators_and_set_qualifiers() {
    let keys = |statement_condition: Value| {
        policy(json!([{
            "Effect": "Allow", "Action": "dynamodb:*", "Resource": "*",
            "Condition": statement_condition,
        }]))
    };
    let r = |values: &[&str]| {
        let r = Request::new("dynamodb:GetItem", "*");
        match values.is_empty() {
            true => r,
            false => r.with("dynamodb:LeadingKeys", values.iter().copied()),
        }
    };
    let all = keys(json!({ "ForAllValues:StringEquals": { "dynamodb:LeadingKeys": ["a", "b"] } }));
    assert!(allowed(&all, &r(&["a"])));
    assert!(allowed(&all, &r(&["a", "b"])));
    assert!(!allowed(&all, &r(&["a", "c"])));
    // The trap: ForAllValues holds when the key is absent...
    assert!(allowed(&all, &r(&[])));
    // ...which Null closes.
    let guarded = keys(json!({
        "ForAllValues:StringEquals": { "dynamodb:LeadingKeys": ["a", "b"] },
        "Null": { "dynamodb:LeadingKeys": "false" },
    }));
    assert!(allowed(&guarded, &r(&["b"])));
    assert!(!allowed(&guarded, &r(&[])));
    let any = keys(json!({ "ForAnyValue:StringLike": { "dynamodb:LeadingKeys": "x*" } }));
    assert!(allowed(&any, &r(&["a", "xy"])));
    assert!(!allowed(&any, &r(&["a"])));
    assert!(!allowed(&any, &r(&[])));
    // Single-valued: absent fails, except negated or IfExists.
    let tag = |c: Value| keys(c);
    let t = |v: Option<&str>| {
        let r = Request::new("dynamodb:GetItem", "*");
        match v {
            Some(v) => r.with("aws:ResourceTag/Team", [v]),
            None => r,
        }
    };
    let equals = tag(json!({ "StringEquals": { "aws:resourcetag/team": "ci" } }));
    assert!(allowed(&equals, &t(Some("ci"))), "key names without case");
    assert!(!allowed(&equals, &t(Some("CI"))));
    assert!(!allowed(&equals, &t(None)));
    let not = tag(json!({ "StringNotEquals": { "aws:ResourceTag/Team": "ci" } }));
    assert!(allowed(&not, &t(None)));
    assert!(!allowed(&not, &t(Some("ci"))));
    let if_exists = tag(json!({ "StringEqualsIfExists": { "aws:ResourceTag/Team": "ci" } }));
    assert!(allowed(&if_exists, &t(None)));
    assert!(!allowed(&if_exists, &t(Some("web"))));
    let arn = tag(json!({ "ArnLike": { "aws:ResourceTag/Team": "arn:aws:iam::*:role/ci-*" } }));
    assert!(allowed(
        &arn,
        &t(Some("arn:aws:iam::123456789012:role/ci-job"))
    ));
    assert!(!allowed(
        &arn,
        &t(Some("arn:aws:iam::123456789012:role/web"))
    ));
    let boolean = tag(json!({ "Bool": { "aws:ResourceTag/Team": true } }));
    assert!(allowed(&boolean, &t(Some("true"))));
    assert!(!allowed(&boolean, &t(Some("false"))));
}

#[test]
#[should_panic(expected = "unsupported condition operator NumericLessThan")]
fn an_operator_it_does_not_know_is_refused_not_ignored() {
    let p = policy(json!([{
        "Effect": "Allow", "Action": "*", "Resource": "*",
        "Condition": { "NumericLessThan": { "aws:MultiFactorAuthAge": "3600" } },
    }]));
    evaluate(&p, &Request::new("ec2:DescribeTags", "*"));
}

// The generated policy against what the agent does and what a job might.

/// `runner-userdata iam-policy` for the pool table in us-east-1, with the
/// job role when `job_role`.
fn generated(job_role: bool) -> Value {
    let mut args = vec![
        "iam-policy",
        "--table",
        TABLE,
        "--region",
        "us-east-1",
        "--account",
        ACCOUNT,
    ];
    if job_role {
        args.extend(["--job-role-arn", JOB_ROLE]);
    }
    let out = std::process::Command::new(userdata_binary())
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn origin() -> Origin {
    let tagged = BTreeMap::from([("AllowSelfTermination".to_owned(), "true".to_owned())]);
    Origin {
        partition: "aws".into(),
        account: ACCOUNT.into(),
        instance_arn: format!("arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{SELF}"),
        instance_tags: BTreeMap::from([
            (SELF.to_owned(), tagged.clone()),
            (OTHER.to_owned(), tagged),
            (UNTAGGED.to_owned(), BTreeMap::new()),
        ]),
    }
}

/// The request as the SDK signs it, through the proxy's parser.
fn signed(service: &str, target: Option<&str>, body: &str) -> Call {
    let mut head = format!(
        "POST / HTTP/1.1\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20261205/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=00\r\n"
    );
    if let Some(op) = target {
        head.push_str(&format!("X-Amz-Target: DynamoDB_20120810.{op}\r\n"));
    }
    head.push_str("\r\n");
    call::parse(head.as_bytes(), body.as_bytes(), target).expect("a call")
}

fn key(pk: &str, sk: &str) -> Value {
    json!({ "PK": { "S": pk }, "SK": { "S": sk } })
}

fn dynamodb(op: &str, body: Value) -> Call {
    signed("dynamodb", Some(op), &body.to_string())
}

fn put(pk: &str, sk: &str) -> Call {
    let mut item = key(pk, sk);
    item["value"] = json!({ "S": "PING" });
    dynamodb("PutItem", json!({ "TableName": TABLE, "Item": item }))
}

fn get(table: &str, pk: &str, sk: &str) -> Call {
    dynamodb("GetItem", json!({ "TableName": table, "Key": key(pk, sk) }))
}

fn terminate(id: &str) -> Call {
    signed(
        "ec2",
        None,
        &format!("Action=TerminateInstances&Version=2016-11-15&InstanceId.1={id}"),
    )
}

fn assume(role: &str) -> Call {
    let role = url::form_urlencoded::byte_serialize(role.as_bytes()).collect::<String>();
    signed(
        "sts",
        None,
        &format!("Action=AssumeRole&Version=2011-06-15&RoleArn={role}&RoleSessionName=run-42&Tags.member.1.Key=repository&Tags.member.1.Value=acme%2Fwidgets&Tags.member.2.Key=run_id&Tags.member.2.Value=42"),
    )
}

/// Every authorization `call` needs is allowed by `policy`.
fn permits(policy: &Value, call: &Call) -> bool {
    let requests = authorizations(call, &origin());
    assert!(!requests.is_empty());
    requests.iter().all(|r| allowed(policy, r))
}

#[test]
fn the_generated_policy_allows_each_call_the_agent_makes() {
    let p = generated(true);
    let own = format!("ID#{SELF}");
    assert!(permits(&p, &put("TYPE#HEARTBEAT", &own)));
    assert!(permits(&p, &put("TYPE#WS", &own)));
    assert!(permits(&p, &get(TABLE, "TYPE#INSTANCE", &own)));
    assert!(permits(
        &p,
        &get(TABLE, "TYPE#METADATA", "ID#gh_registration_token")
    ));
    let batch = dynamodb(
        "BatchGetItem",
        json!({ "RequestItems": { TABLE: { "ConsistentRead": true, "Keys": [
            key("TYPE#INSTANCE", &own), key("TYPE#METADATA", "ID#gh_registration_token"),
        ] } } }),
    );
    assert!(permits(&p, &batch));
    let describe =
        "Action=DescribeTags&Version=2016-11-15&Filter.1.Name=resource-id&Filter.1.Value.1=";
    assert!(permits(
        &p,
        &signed("ec2", None, &format!("{describe}{SELF}"))
    ));
    assert!(permits(&p, &terminate(SELF)));
    let assume = assume(JOB_ROLE);
    let actions: Vec<String> = authorizations(&assume, &origin())
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(actions, ["sts:AssumeRole", "sts:TagSession"]);
    assert!(permits(&p, &assume));
}

#[test]
fn the_generated_policy_denies_what_a_job_might_try() {
    let p = generated(true);
    let own = format!("ID#{SELF}");
    let other = format!("ID#{OTHER}");
    let token = "ID#gh_registration_token";
    // Rewrite another instance's record, its own, or the token.
    assert!(!permits(&p, &put("TYPE#INSTANCE", &other)));
    assert!(!permits(&p, &put("TYPE#INSTANCE", &own)));
    assert!(!permits(&p, &put("TYPE#METADATA", token)));
    // Other write calls on the same items; the agent makes none.
    for op in ["UpdateItem", "DeleteItem"] {
        let call = dynamodb(
            op,
            json!({ "TableName": TABLE, "Key": key("TYPE#WS", &own) }),
        );
        assert!(!permits(&p, &call), "{op}");
    }
    let batch_write = dynamodb(
        "BatchWriteItem",
        json!({ "RequestItems": { TABLE: [{ "PutRequest": { "Item": key("TYPE#WS", &own) } }] } }),
    );
    assert!(!permits(&p, &batch_write));
    // A read of a partition the agent does not read, mixed into a batch.
    let batch = dynamodb(
        "BatchGetItem",
        json!({ "RequestItems": { TABLE: { "Keys": [
            key("TYPE#INSTANCE", &own), key("TYPE#HEARTBEAT", &other),
        ] } } }),
    );
    assert!(!permits(&p, &batch));
    // Reads without a partition key (ForAllValues alone would pass them).
    assert!(!permits(
        &p,
        &dynamodb("Scan", json!({ "TableName": TABLE }))
    ));
    let query = json!({
        "TableName": TABLE,
        "KeyConditionExpression": "PK = :pk",
        "ExpressionAttributeValues": { ":pk": { "S": "TYPE#INSTANCE" } },
    });
    assert!(!permits(&p, &dynamodb("Query", query)));
    // Another table of the account.
    assert!(!permits(&p, &get("other-pool", "TYPE#METADATA", token)));
    // Terminate another instance (tagged too), or itself untagged.
    assert!(!permits(&p, &terminate(OTHER)));
    let untagged = Origin {
        instance_arn: format!("arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{UNTAGGED}"),
        ..origin()
    };
    let requests = authorizations(&terminate(UNTAGGED), &untagged);
    assert!(requests.iter().all(|r| !allowed(&p, r)));
    // Assume any other role; or the job role under a policy without it.
    assert!(!permits(
        &p,
        &assume("arn:aws:iam::123456789012:role/admin")
    ));
    assert!(!permits(&generated(false), &assume(JOB_ROLE)));
}

/// What IAM cannot narrow, pinned so a reader sees it: the instance id is
/// in the sort key, and no condition key reads sort keys, so a job can
/// still write another instance's heartbeat or worker signal (never its
/// record or the token). docs/userdata.md says so.
#[test]
fn another_instances_heartbeat_and_signal_stay_writable() {
    let p = generated(false);
    let other = format!("ID#{OTHER}");
    assert!(permits(&p, &put("TYPE#HEARTBEAT", &other)));
    assert!(permits(&p, &put("TYPE#WS", &other)));
}

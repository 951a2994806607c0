//! IAM policies: the instance role's least privilege for the agent (built
//! from the agent's own list of calls), and the control plane's pass-role
//! statement for that role.

use runner_agent_common::permissions::{
    DYNAMODB_READ_ACTIONS, DYNAMODB_WRITE_ACTIONS, EC2_DESCRIBE_TAGS, EC2_TERMINATE,
    OPERATOR_TABLE_ACTIONS, PARTITIONS_READ, PARTITIONS_WRITTEN, STS_JOB_ROLE_ACTIONS,
    TAG_ALLOW_SELF_TERMINATION,
};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Scope {
    pub partition: String,
    /// `*` when not pinned.
    pub region: String,
    pub account: String,
}

/// The pool table's ARN within `scope`.
fn table_arn(table: &str, scope: &Scope) -> String {
    let Scope {
        partition,
        region,
        account,
    } = scope;
    format!("arn:{partition}:dynamodb:{region}:{account}:table/{table}")
}

/// Every partition key a request names must be one of `partitions`.
/// `dynamodb:LeadingKeys` is multivalued (a BatchGetItem names several),
/// hence ForAllValues; and since ForAllValues holds when the key is absent
/// (a Scan names none), `Null: false` requires it present.
fn leading_keys_within(partitions: &[&str]) -> Value {
    json!({
        "ForAllValues:StringEquals": { "dynamodb:LeadingKeys": partitions },
        "Null": { "dynamodb:LeadingKeys": "false" },
    })
}

/// The instance role's policy. `job_role`: the `[job_credentials]` role the
/// agent assumes for each run; without it, no STS statement.
pub fn instance_role(table: &str, scope: &Scope, job_role: Option<&str>) -> Value {
    let table = table_arn(table, scope);
    let Scope {
        partition,
        region,
        account,
    } = scope;
    let instances = format!("arn:{partition}:ec2:{region}:{account}:instance/");
    let mut statements = vec![
        json!({
            "Sid": "ReadInstanceRecordsAndToken",
            "Effect": "Allow",
            "Action": DYNAMODB_READ_ACTIONS,
            "Resource": table,
            "Condition": leading_keys_within(PARTITIONS_READ),
        }),
        json!({
            "Sid": "WriteHeartbeatsAndSignals",
            "Effect": "Allow",
            "Action": DYNAMODB_WRITE_ACTIONS,
            "Resource": table,
            "Condition": leading_keys_within(PARTITIONS_WRITTEN),
        }),
        json!({
            "Sid": "ReadSelfTerminationTag",
            "Effect": "Allow",
            "Action": EC2_DESCRIBE_TAGS,
            "Resource": "*",
        }),
        // ec2:SourceInstanceARN is the instance the role's credentials were
        // delivered to, ec2:InstanceID the instance acted on: equal, the
        // instance itself and no other. (IAM refuses a policy variable as
        // a whole Resource: it must read as an ARN or `*`.)
        json!({
            "Sid": "TerminateSelfWhenTagged",
            "Effect": "Allow",
            "Action": EC2_TERMINATE,
            "Resource": format!("{instances}*"),
            "Condition": {
                "ArnLike": {
                    "ec2:SourceInstanceARN": format!("{instances}${{ec2:InstanceID}}")
                },
                "StringEquals": {
                    format!("ec2:ResourceTag/{TAG_ALLOW_SELF_TERMINATION}"): "true"
                }
            },
        }),
    ];
    if let Some(role) = job_role {
        statements.push(json!({
            "Sid": "AssumeJobRole",
            "Effect": "Allow",
            "Action": STS_JOB_ROLE_ACTIONS,
            "Resource": role,
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// What `runner-agent pool` needs: Query on the pool table, read-only.
pub fn operator(table: &str, scope: &Scope) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "InspectPoolTable",
                "Effect": "Allow",
                "Action": OPERATOR_TABLE_ACTIONS,
                "Resource": table_arn(table, scope),
            },
        ],
    })
}

/// What the control plane's credentials need to launch instances with the
/// agent's role: iam:PassRole on that role, to EC2 only.
pub fn control_plane(role_arn: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PassRunnerInstanceRole",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": role_arn,
                "Condition": {
                    "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" }
                },
            },
        ],
    })
}

pub fn check_role_arn(arn: &str) -> Result<(), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "iam", "", account, resource]
            if account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.starts_with("role/")
                && resource.len() > 5 =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{arn:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
        )),
    }
}

pub fn check_scope(scope: &Scope) -> Result<(), (&'static str, String)> {
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !word(&scope.partition) {
        return Err((
            "--partition",
            format!("{:?} is not a partition", scope.partition),
        ));
    }
    if scope.region != "*" && !word(&scope.region) {
        return Err(("--region", format!("{:?} is not a region", scope.region)));
    }
    if scope.account != "*"
        && (scope.account.len() != 12 || !scope.account.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err((
            "--account",
            format!("{:?} is not a 12-digit account id", scope.account),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every action the agent calls, sorted; with the job role's when
    /// `job_role`.
    fn all_actions(job_role: bool) -> Vec<&'static str> {
        let mut all: Vec<&str> = DYNAMODB_READ_ACTIONS.to_vec();
        all.extend(DYNAMODB_WRITE_ACTIONS);
        all.extend([EC2_DESCRIBE_TAGS, EC2_TERMINATE]);
        if job_role {
            all.extend(STS_JOB_ROLE_ACTIONS);
        }
        all.sort_unstable();
        all
    }

    /// Every action a policy allows, sorted.
    pub fn actions(policy: &Value) -> Vec<String> {
        let mut out: Vec<String> = policy["Statement"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| match &s["Action"] {
                Value::String(a) => vec![a.clone()],
                Value::Array(list) => list
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect(),
                _ => vec![],
            })
            .collect();
        out.sort();
        out
    }

    fn any() -> Scope {
        Scope {
            partition: "aws".into(),
            region: "*".into(),
            account: "*".into(),
        }
    }

    fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("no statement {sid}"))
    }

    #[test]
    fn instance_role_lists_exactly_the_agents_calls() {
        let policy = instance_role("acme-pool", &any(), None);
        assert_eq!(actions(&policy), all_actions(false));
        let terminate = statement(&policy, "TerminateSelfWhenTagged");
        assert_eq!(
            terminate["Condition"]["StringEquals"]["ec2:ResourceTag/AllowSelfTermination"],
            "true"
        );
        assert_eq!(terminate["Resource"], "arn:aws:ec2:*:*:instance/*");
        assert_eq!(
            terminate["Condition"]["ArnLike"]["ec2:SourceInstanceARN"],
            "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"
        );
        for sid in ["ReadInstanceRecordsAndToken", "WriteHeartbeatsAndSignals"] {
            assert_eq!(
                statement(&policy, sid)["Resource"],
                "arn:aws:dynamodb:*:*:table/acme-pool"
            );
        }
    }

    #[test]
    fn table_statements_name_their_partitions_only() {
        let policy = instance_role("acme-pool", &any(), None);
        let keys = |sid: &str| {
            let condition = &statement(&policy, sid)["Condition"];
            assert_eq!(condition["Null"]["dynamodb:LeadingKeys"], "false");
            condition["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"].clone()
        };
        assert_eq!(
            keys("WriteHeartbeatsAndSignals"),
            json!(["TYPE#HEARTBEAT", "TYPE#WS"])
        );
        assert_eq!(
            keys("ReadInstanceRecordsAndToken"),
            json!(["TYPE#INSTANCE", "TYPE#METADATA"])
        );
    }

    #[test]
    fn the_job_role_adds_assume_role_on_that_role_only() {
        let role = "arn:aws:iam::123456789012:role/ci-job";
        let policy = instance_role("acme-pool", &any(), Some(role));
        assert_eq!(actions(&policy), all_actions(true));
        let sts = statement(&policy, "AssumeJobRole");
        assert_eq!(sts["Resource"], role);
        assert_eq!(sts["Action"], json!(["sts:AssumeRole", "sts:TagSession"]));
    }

    #[test]
    fn scope_and_role_are_checked() {
        check_role_arn("arn:aws:iam::123456789012:role/runner").unwrap();
        assert!(check_role_arn("arn:aws:iam::1234:role/runner").is_err());
        assert!(check_role_arn("arn:aws:s3:::bucket").is_err());
        let mut scope = any();
        scope.account = "12".into();
        assert!(check_scope(&scope).is_err());
    }
}

//! IAM policies: the instance role's least privilege for the agent (built
//! from the agent's own list of calls), and the control plane's pass-role
//! statement for that role.

use runner_agent_common::permissions::{
    DYNAMODB_TABLE_ACTIONS, EC2_DESCRIBE_TAGS, EC2_TERMINATE, OPERATOR_TABLE_ACTIONS,
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

pub fn instance_role(table: &str, scope: &Scope) -> Value {
    let Scope {
        partition,
        region,
        account,
    } = scope;
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PoolTableItems",
                "Effect": "Allow",
                "Action": DYNAMODB_TABLE_ACTIONS,
                "Resource": table_arn(table, scope),
            },
            {
                "Sid": "ReadSelfTerminationTag",
                "Effect": "Allow",
                "Action": EC2_DESCRIBE_TAGS,
                "Resource": "*",
            },
            {
                "Sid": "SelfTerminateWhenTagged",
                "Effect": "Allow",
                "Action": EC2_TERMINATE,
                "Resource": format!("arn:{partition}:ec2:{region}:{account}:instance/*"),
                "Condition": {
                    "StringEquals": {
                        format!("ec2:ResourceTag/{TAG_ALLOW_SELF_TERMINATION}"): "true"
                    }
                },
            },
        ],
    })
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
    use runner_agent_common::permissions::{
        DYNAMODB_TABLE_ACTIONS, EC2_DESCRIBE_TAGS, EC2_TERMINATE,
    };

    /// Every action the agent calls, sorted.
    fn all_actions() -> Vec<&'static str> {
        let mut all: Vec<&str> = DYNAMODB_TABLE_ACTIONS.to_vec();
        all.extend([EC2_DESCRIBE_TAGS, EC2_TERMINATE]);
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

    #[test]
    fn instance_role_lists_exactly_the_agents_calls() {
        let policy = instance_role("acme-pool", &any());
        assert_eq!(actions(&policy), all_actions());
        let terminate = &policy["Statement"][2];
        assert_eq!(
            terminate["Condition"]["StringEquals"]["ec2:ResourceTag/AllowSelfTermination"],
            "true"
        );
        assert_eq!(
            policy["Statement"][0]["Resource"],
            "arn:aws:dynamodb:*:*:table/acme-pool"
        );
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

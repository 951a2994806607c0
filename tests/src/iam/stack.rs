//! The IAM check on a test stack: every call its proxy recorded, evaluated
//! against a policy as the stack's instance would be.

use super::{authorizations, evaluate, Decision, Origin, Request};
use crate::Stack;
use serde_json::Value;
use std::collections::BTreeMap;

impl Stack {
    /// The stack's instance as IAM sees it, from moto: its ARN (the
    /// account is the reservation's owner) and its tags.
    pub async fn iam_origin(&self) -> Origin {
        let out = self
            .cp
            .ec2
            .describe_instances()
            .instance_ids(&self.instance_id)
            .send()
            .await
            .expect("describe instances");
        let reservation = &out.reservations()[0];
        let account = reservation.owner_id().expect("an owner").to_owned();
        let tags: BTreeMap<String, String> = reservation.instances()[0]
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect();
        Origin {
            instance_arn: format!(
                "arn:aws:ec2:{}:{account}:instance/{}",
                crate::REGION,
                self.instance_id
            ),
            partition: "aws".into(),
            account,
            instance_tags: BTreeMap::from([(self.instance_id.clone(), tags)]),
        }
    }

    /// `runner-userdata iam-policy` for this stack's table, region and
    /// account (the instance role the agent would run with).
    pub async fn instance_role_policy(&self) -> Value {
        self.instance_role_policy_with(None).await
    }

    /// The same with `--job-role-arn`: the policy of an agent configured
    /// with `[job_credentials] role_arn`.
    pub async fn instance_role_policy_with(&self, job_role: Option<&str>) -> Value {
        let origin = self.iam_origin().await;
        let mut command = std::process::Command::new(crate::agent::userdata_binary());
        command
            .args(["iam-policy", "--table", &self.cp.table])
            .args(["--region", crate::REGION, "--account", &origin.account]);
        if let Some(role) = job_role {
            command.args(["--job-role-arn", role]);
        }
        let out = command.output().expect("runner-userdata runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("a JSON policy")
    }

    /// Every call the agent made so far is allowed by the instance role's
    /// policy, condition keys included (`assert_calls_allowed`).
    pub async fn assert_agent_calls_allowed(&self) -> usize {
        let policy = self.instance_role_policy().await;
        self.assert_calls_allowed(&policy).await
    }

    /// Every authorization of the calls the proxy recorded that `policy`
    /// does not allow, with IAM's decision; and how many were checked.
    /// All calls are taken as this instance's: not for a stack whose proxy
    /// a sibling's agent also uses.
    pub async fn denied_calls(&self, policy: &Value) -> (Vec<(Decision, Request)>, usize) {
        let origin = self.iam_origin().await;
        let calls = self.proxy.counts().calls;
        assert!(!calls.is_empty(), "the proxy recorded no calls");
        let mut checked = 0;
        let mut denied = Vec::new();
        for call in &calls {
            for request in authorizations(call, &origin) {
                checked += 1;
                let decision = evaluate(policy, &request);
                if !matches!(decision, Decision::Allowed(_)) {
                    denied.push((decision, request));
                }
            }
        }
        (denied, checked)
    }

    /// Panics, listing the calls denied, unless `policy` allows every call
    /// the proxy recorded (`denied_calls`). Returns how many authorizations
    /// were checked.
    pub async fn assert_calls_allowed(&self, policy: &Value) -> usize {
        let (denied, checked) = self.denied_calls(policy).await;
        let list: Vec<String> = denied.iter().map(|d| format!("{d:?}")).collect();
        assert!(
            denied.is_empty(),
            "{} of {checked} authorizations denied by {policy}:\n{}",
            denied.len(),
            list.join("\n")
        );
        checked
    }
}

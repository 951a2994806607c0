//! From a call the proxy recorded to the authorizations IAM makes for it:
//! which action, on which resource ARN, with which condition keys.

use super::Request;
use crate::proxy::Call;
use std::collections::BTreeMap;

/// Where the calls came from, for what the request alone does not say:
/// the partition and account of the ARNs, the instance whose role signed
/// them (`ec2:SourceInstanceARN`: every call one agent makes is its
/// instance's), and each instance's tags (EC2's `ec2:ResourceTag/*`).
#[derive(Debug, Clone)]
pub struct Origin {
    pub partition: String,
    pub account: String,
    pub instance_arn: String,
    /// Instance id → tag key → value.
    pub instance_tags: BTreeMap<String, BTreeMap<String, String>>,
}

/// Every authorization `call` needs; each must be allowed.
pub fn authorizations(call: &Call, origin: &Origin) -> Vec<Request> {
    let Origin {
        partition, account, ..
    } = origin;
    let region = &call.region;
    let base = |action: &str, resource: &str| {
        Request::new(action, resource)
            .with("ec2:SourceInstanceARN", [origin.instance_arn.as_str()])
            .with("aws:PrincipalAccount", [account.as_str()])
            .with("aws:RequestedRegion", [region.as_str()])
    };
    let action = call.action();
    match call.service.as_str() {
        "dynamodb" if !call.tables.is_empty() => call
            .tables
            .iter()
            .map(|(table, keys)| {
                let arn = match table.starts_with("arn:") {
                    true => table.clone(),
                    false => format!("arn:{partition}:dynamodb:{region}:{account}:table/{table}"),
                };
                base(&action, &arn).with("dynamodb:LeadingKeys", keys.iter().cloned())
            })
            .collect(),
        "ec2" if !call.numbered("InstanceId.", "").is_empty() => call
            .numbered("InstanceId.", "")
            .into_iter()
            .map(|id| {
                let arn = format!("arn:{partition}:ec2:{region}:{account}:instance/{id}");
                let mut request = base(&action, &arn).with("ec2:InstanceID", [id.as_str()]);
                for (key, value) in origin.instance_tags.get(&id).into_iter().flatten() {
                    request = request
                        .with(&format!("ec2:ResourceTag/{key}"), [value.as_str()])
                        .with(&format!("aws:ResourceTag/{key}"), [value.as_str()]);
                }
                request
            })
            .collect(),
        "sts" if call.operation == "AssumeRole" => {
            let role = call.param("RoleArn").unwrap_or_default();
            let tags = session_tags(call);
            let mut assume = base(&action, role);
            for (key, value) in &tags {
                assume = assume.with(&format!("aws:RequestTag/{key}"), [value.as_str()]);
            }
            let keys: Vec<&str> = tags.iter().map(|(k, _)| k.as_str()).collect();
            if keys.is_empty() && call.numbered("TransitiveTagKeys.member.", "").is_empty() {
                return vec![assume];
            }
            // Session tags are authorized as an action of their own.
            let tag = base("sts:TagSession", role).with("aws:TagKeys", keys.iter().copied());
            vec![assume.with("aws:TagKeys", keys), tag]
        }
        // No resource-level permissions (DescribeTags), or not a call the
        // agent makes: IAM asks for `*`.
        _ => vec![base(&action, "*")],
    }
}

/// `Tags.member.N.Key` / `.Value` pairs of an AssumeRole.
fn session_tags(call: &Call) -> Vec<(String, String)> {
    (1..)
        .map_while(|n| {
            let key = call.param(&format!("Tags.member.{n}.Key"))?;
            let value = call
                .param(&format!("Tags.member.{n}.Value"))
                .unwrap_or_default();
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

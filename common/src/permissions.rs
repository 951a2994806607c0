//! Every AWS API action the agent calls, for the instance role's policy
//! (`runner-userdata iam-policy`). The e2e tests record the actions the
//! agent really sends and compare them with this list, both ways.

/// DynamoDB item calls, all on the one pool table: the instance record and
/// token reads (GetItem, and BatchGetItem for the consistent claim check),
/// the heartbeat and signal writes (PutItem).
pub const DYNAMODB_TABLE_ACTIONS: &[&str] = &[
    "dynamodb:BatchGetItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
];

/// `runner-agent pool`, the operator's read-only view: one Query per
/// partition key of the pool table, nothing else.
pub const OPERATOR_TABLE_ACTIONS: &[&str] = &["dynamodb:Query"];

/// Reads the instance's own `AllowSelfTermination` tag when instance
/// metadata tags are off. DescribeTags has no resource-level permissions.
pub const EC2_DESCRIBE_TAGS: &str = "ec2:DescribeTags";

/// Self-termination of an expired instance; the policy allows it only on
/// instances tagged `AllowSelfTermination=true`.
pub const EC2_TERMINATE: &str = "ec2:TerminateInstances";

/// Tag that permits self-termination, in IMDS and in the IAM condition.
pub const TAG_ALLOW_SELF_TERMINATION: &str = "AllowSelfTermination";

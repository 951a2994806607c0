//! Every AWS API action the agent calls, and the table partitions it
//! touches, for the instance role's policy (`runner-userdata iam-policy`).
//! The e2e tests record the calls the agent really sends, compare their
//! actions with these lists both ways, and evaluate each call against the
//! policy, condition keys included (tests/src/iam).

/// DynamoDB reads on the pool table: the instance record and the
/// registration token (GetItem, and BatchGetItem for the consistent claim
/// check).
pub const DYNAMODB_READ_ACTIONS: &[&str] = &["dynamodb:BatchGetItem", "dynamodb:GetItem"];

/// DynamoDB writes on the pool table: the heartbeat and worker signals.
pub const DYNAMODB_WRITE_ACTIONS: &[&str] = &["dynamodb:PutItem"];

/// Partition keys (`PK`) the agent reads: instance records (its own; the
/// sort key holds the instance id) and the registration token's.
pub const PARTITIONS_READ: &[&str] = &["TYPE#INSTANCE", "TYPE#METADATA"];

/// Partition keys the agent writes: heartbeats and worker signals. Never
/// the instance records or the token, which are the control plane's.
pub const PARTITIONS_WRITTEN: &[&str] = &["TYPE#HEARTBEAT", "TYPE#WS"];

/// `runner-agent pool`, the operator's read-only view: one Query per
/// partition key of the pool table, nothing else.
pub const OPERATOR_TABLE_ACTIONS: &[&str] = &["dynamodb:Query"];

/// Reads the instance's own `AllowSelfTermination` tag when instance
/// metadata tags are off. DescribeTags has no resource-level permissions.
pub const EC2_DESCRIBE_TAGS: &str = "ec2:DescribeTags";

/// Self-termination of an expired instance; the policy allows it only on
/// the calling instance itself, and only when it is tagged
/// `AllowSelfTermination=true`.
pub const EC2_TERMINATE: &str = "ec2:TerminateInstances";

/// Per-run job credentials (`[job_credentials] role_arn`): the agent
/// assumes the job role with session tags, which IAM authorizes as
/// sts:TagSession besides sts:AssumeRole.
pub const STS_JOB_ROLE_ACTIONS: &[&str] = &["sts:AssumeRole", "sts:TagSession"];

/// Tag that permits self-termination, in IMDS and in the IAM condition.
pub const TAG_ALLOW_SELF_TERMINATION: &str = "AllowSelfTermination";

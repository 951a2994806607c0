//! What the proxy keeps of each AWS call for the IAM check (tests/src/iam):
//! the service and region it was signed for, the operation, and the parts
//! of the request IAM authorizes by (the tables and partition keys a
//! DynamoDB call names; the parameters of a query-protocol call, EC2's and
//! STS's, which name instances and roles).

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The pool table's partition key (PROTOCOL.md: `PK`, `SK`); its values
/// are what IAM calls `dynamodb:LeadingKeys`.
const PARTITION_KEY: &str = "PK";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    /// The signing name of the SigV4 credential scope (`dynamodb`, `ec2`,
    /// `sts`).
    pub service: String,
    pub region: String,
    pub operation: String,
    /// DynamoDB: each table (name or ARN) the call names → the partition
    /// key values it names there. A key it names in a way not read here
    /// is left out, which the policy's `Null` check then refuses.
    pub tables: BTreeMap<String, BTreeSet<String>>,
    /// Query protocol (EC2, STS): the form parameters, decoded.
    pub params: Vec<(String, String)>,
}

impl Call {
    /// `service:operation`, as IAM names the action.
    pub fn action(&self) -> String {
        format!("{}:{}", self.service, self.operation)
    }

    /// Every value of the query parameters named `name` (exactly), or
    /// matching `prefix` + number (+ `suffix`), e.g. `InstanceId.` → the
    /// `InstanceId.1`, `InstanceId.2`, ... values.
    pub fn numbered(&self, prefix: &str, suffix: &str) -> Vec<String> {
        self.params
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_suffix(suffix))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The call in `head` (the request line and headers) and `body`; `None`
/// when it names no operation.
pub fn parse(head: &[u8], body: &[u8], target: Option<&str>) -> Option<Call> {
    let head = String::from_utf8_lossy(head);
    let scope = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| credential_scope(value))
            .flatten()
    });
    let mut call = Call::default();
    match target {
        Some(op) => {
            call.operation = op.to_owned();
            call.tables = dynamodb_tables(body);
        }
        None => {
            call.params = url::form_urlencoded::parse(body).into_owned().collect();
            call.operation = call.param("Action")?.to_owned();
        }
    }
    // Unsigned or oddly signed: the protocol tells the service, as the
    // proxy did before it read the scope (the agent talks to no other).
    let (service, region) = scope.unwrap_or_else(|| {
        let service = if target.is_some() { "dynamodb" } else { "ec2" };
        (service.to_owned(), String::new())
    });
    call.service = service;
    call.region = region;
    Some(call)
}

/// (service, region) from `AWS4-HMAC-SHA256 Credential=AKID/date/region/
/// service/aws4_request, ...`.
fn credential_scope(authorization: &str) -> Option<(String, String)> {
    let credential = authorization
        .split([' ', ','])
        .find_map(|part| part.trim().strip_prefix("Credential="))?;
    let parts: Vec<&str> = credential.split('/').collect();
    match parts.as_slice() {
        [_, _, region, service, "aws4_request"] => {
            Some(((*service).to_owned(), (*region).to_owned()))
        }
        _ => None,
    }
}

/// Tables and partition keys of a DynamoDB JSON request: `Key` (GetItem,
/// UpdateItem, DeleteItem), `Item` (PutItem), `RequestItems` (BatchGetItem's
/// `Keys`, BatchWriteItem's put and delete requests), and the partition key
/// a Query's `KeyConditionExpression` compares with `=`.
fn dynamodb_tables(body: &[u8]) -> BTreeMap<String, BTreeSet<String>> {
    let mut tables = BTreeMap::new();
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return tables;
    };
    if let Some(table) = json["TableName"].as_str() {
        let keys: &mut BTreeSet<String> = tables.entry(table.to_owned()).or_default();
        for item in [&json["Key"], &json["Item"]] {
            keys.extend(partition_key(item));
        }
        keys.extend(query_partition(&json));
    }
    if let Some(requests) = json["RequestItems"].as_object() {
        for (table, request) in requests {
            let keys = tables.entry(table.clone()).or_default();
            for key in request["Keys"].as_array().into_iter().flatten() {
                keys.extend(partition_key(key));
            }
            for write in request.as_array().into_iter().flatten() {
                keys.extend(partition_key(&write["PutRequest"]["Item"]));
                keys.extend(partition_key(&write["DeleteRequest"]["Key"]));
            }
        }
    }
    tables
}

fn partition_key(item: &Value) -> Option<String> {
    item[PARTITION_KEY]["S"].as_str().map(str::to_owned)
}

/// `PK = :v` (or `#n = :v` with `#n` → `PK`) in a KeyConditionExpression:
/// the value of `:v`.
fn query_partition(json: &Value) -> Option<String> {
    let expression = json["KeyConditionExpression"].as_str()?;
    let names = &json["ExpressionAttributeNames"];
    let words: Vec<&str> = expression.split_whitespace().collect();
    words.windows(3).find_map(|w| {
        let name = match w[0].strip_prefix('#') {
            Some(_) => names[w[0]].as_str()?,
            None => w[0],
        };
        (name == PARTITION_KEY && w[1] == "=")
            .then(|| json["ExpressionAttributeValues"][w[2]]["S"].as_str())
            .flatten()
            .map(str::to_owned)
    })
}

//! The agent's DynamoDB calls, one method per protocol item. (Request
//! counts for the benchmark are taken outside the agent, by the test
//! stack's proxy.)

use crate::metrics::Metrics;
use crate::protocol::{
    instance_sk, now_timestamp, InstanceRecord, RegistrationToken, Signal, ENTITY_HEARTBEAT,
    ENTITY_WORKER_SIGNAL, HEARTBEAT_VALUE, PK_HEARTBEAT, PK_INSTANCE, PK_METADATA,
    PK_WORKER_SIGNAL, SK_REGISTRATION_TOKEN,
};
use crate::status::Status;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type Item = HashMap<String, AttributeValue>;

#[derive(Debug, thiserror::Error)]
#[error("dynamodb {operation} on table {table}: {message}")]
pub struct TableError {
    pub operation: &'static str,
    pub table: String,
    pub kind: ErrorKind,
    pub message: String,
}

/// What a failed call says about the table, for pacing and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// DynamoDB refused the call for want of capacity.
    Throttled,
    /// A 5xx: DynamoDB failed the call.
    Server,
    /// No answer: refused or reset connection, timeout, a cut-off body.
    Unreachable,
    /// The table does not exist (`ResourceNotFoundException`): deleted, or
    /// recreated and not yet active. A definite answer, unlike the others
    /// (orphan detection counts it: `orphan.rs`).
    TableMissing,
    /// Any other refusal (permissions, validation).
    Refused,
}

/// DynamoDB's code for a table (or index) that does not exist or is not
/// active; the agent names no index, so it is always the table.
const TABLE_MISSING_CODE: &str = "ResourceNotFoundException";

/// Error codes DynamoDB and the AWS SDKs use for "slow down".
const THROTTLING_CODES: [&str; 4] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "Throttling",
];

impl ErrorKind {
    /// From the error code and the HTTP status, when there was an answer.
    pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
        if code.is_some_and(|c| THROTTLING_CODES.contains(&c)) || status == Some(429) {
            return ErrorKind::Throttled;
        }
        if code == Some(TABLE_MISSING_CODE) && status.is_some_and(|s| s < 500) {
            return ErrorKind::TableMissing;
        }
        match status {
            Some(s) if s >= 500 => ErrorKind::Server,
            Some(_) => ErrorKind::Refused,
            None => ErrorKind::Unreachable,
        }
    }

    /// Its name in logs and in the metrics' `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Server => "server_error",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::TableMissing => "table_missing",
            ErrorKind::Refused => "refused",
        }
    }
}

fn kind_of<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorKind {
    // A response that could not be read (a truncated body) has a status
    // but says nothing about the table: count it as no answer.
    let status = match err {
        SdkError::ServiceError(_) => err.raw_response().map(|r| r.status().as_u16()),
        _ => None,
    };
    ErrorKind::classify(err.code(), status)
}

#[derive(Clone)]
pub struct Table {
    client: Client,
    name: String,
    instance_id: String,
    /// BatchGetItem was refused by the instance role's policy (one narrowed
    /// to GetItem/PutItem): claims are confirmed with two GetItems.
    batch_denied: Arc<AtomicBool>,
    /// Counts failed calls, when the agent runs (not for `runner-agent pool`).
    metrics: Option<Metrics>,
}

impl Table {
    pub fn new(client: Client, name: &str, instance_id: &str) -> Table {
        Table {
            client,
            name: name.to_owned(),
            batch_denied: Arc::default(),
            instance_id: instance_id.to_owned(),
            metrics: None,
        }
    }

    pub fn with_metrics(self, metrics: Metrics) -> Table {
        Table {
            metrics: Some(metrics),
            ..self
        }
    }

    /// Every failed call's error passes here, to be counted.
    fn failed(&self, operation: &'static str, kind: ErrorKind, message: String) -> TableError {
        if let Some(metrics) = &self.metrics {
            metrics.dynamodb_error(operation, kind.label());
        }
        TableError {
            operation,
            table: self.name.clone(),
            kind,
            message,
        }
    }

    fn error<E>(&self, operation: &'static str, err: SdkError<E, HttpResponse>) -> TableError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.failed(operation, kind_of(&err), crate::sdk_error::describe(&err))
    }

    fn key(pk: &str, sk: &str) -> Item {
        HashMap::from([
            ("PK".to_owned(), AttributeValue::S(pk.to_owned())),
            ("SK".to_owned(), AttributeValue::S(sk.to_owned())),
        ])
    }

    fn instance_key(&self) -> Item {
        Self::key(PK_INSTANCE, &instance_sk(&self.instance_id))
    }

    fn token_key() -> Item {
        Self::key(PK_METADATA, SK_REGISTRATION_TOKEN)
    }

    /// The instance record; `Ok(None)` when the control plane has none.
    pub async fn read_instance(
        &self,
        consistent: bool,
    ) -> Result<Option<InstanceRecord>, TableError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(self.instance_key()))
            .consistent_read(consistent)
            .projection_expression("runId, threshold, #s")
            .expression_attribute_names("#s", "state")
            .send()
            .await
            .map_err(|e| self.error("GetItem(instance)", e))?;
        Ok(out.item.as_ref().map(parse_instance))
    }

    pub async fn read_token(&self) -> Result<Option<RegistrationToken>, TableError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(Self::token_key()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem(registration token)", e))?;
        Ok(out.item.as_ref().and_then(parse_token))
    }

    /// Confirms a claim and fetches the token in one round trip, both
    /// strongly consistent: this is on the claim-to-`UD_REG_OK` path.
    pub async fn read_claim_and_token(
        &self,
    ) -> Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError> {
        if self.batch_denied.load(Ordering::Relaxed) {
            return self.read_claim_and_token_apart().await;
        }
        let keys = KeysAndAttributes::builder()
            .keys(self.instance_key())
            .keys(Self::token_key())
            .consistent_read(true)
            .build()
            .map_err(|e| self.failed("BatchGetItem", ErrorKind::Refused, e.to_string()))?;
        let out = match self
            .client
            .batch_get_item()
            .request_items(&self.name, keys)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.code() == Some("AccessDeniedException") => {
                tracing::warn!(error = %crate::sdk_error::describe(&e), "BatchGetItem denied by the instance role's policy; confirming claims with two GetItems from now on");
                self.batch_denied.store(true, Ordering::Relaxed);
                return self.read_claim_and_token_apart().await;
            }
            Err(e) => return Err(self.error("BatchGetItem", e)),
        };
        let unprocessed = out
            .unprocessed_keys
            .as_ref()
            .is_some_and(|u| u.values().any(|k| !k.keys.is_empty()));
        if unprocessed {
            // DynamoDB leaves keys unprocessed when it throttles part of a
            // batch. Two more reads now would add load to a throttled
            // partition: the caller retries at its next (slowed) poll.
            return Err(self.failed(
                "BatchGetItem",
                ErrorKind::Throttled,
                "keys left unprocessed (throttled)".into(),
            ));
        }
        let mut record = None;
        let mut token = None;
        for item in out
            .responses
            .unwrap_or_default()
            .remove(&self.name)
            .unwrap_or_default()
        {
            match item
                .get("PK")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
            {
                Some(PK_INSTANCE) => record = Some(parse_instance(&item)),
                Some(PK_METADATA) => token = parse_token(&item),
                _ => {}
            }
        }
        Ok((record, token))
    }

    /// The same two items as two strongly consistent GetItems.
    async fn read_claim_and_token_apart(
        &self,
    ) -> Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError> {
        let record = self.read_instance(true).await?;
        let token = self.read_token().await?;
        Ok((record, token))
    }

    fn base_item(&self, pk: &str, entity: &str) -> Item {
        let mut item = Self::key(pk, &instance_sk(&self.instance_id));
        item.insert("entityType".into(), AttributeValue::S(entity.to_owned()));
        item.insert(
            "identifier".into(),
            AttributeValue::S(self.instance_id.clone()),
        );
        item.insert("updatedAt".into(), AttributeValue::S(now_timestamp()));
        item
    }

    async fn put(&self, operation: &'static str, item: Item) -> Result<(), TableError> {
        self.client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error(operation, e))
    }

    /// The heartbeat, with the agent's status as extra attributes (the
    /// control plane reads `updatedAt` only; docs/protocol.md).
    pub async fn put_heartbeat(
        &self,
        status: &Status,
        free_disk: Option<u64>,
    ) -> Result<(), TableError> {
        let mut item = self.base_item(PK_HEARTBEAT, ENTITY_HEARTBEAT);
        item.insert("value".into(), AttributeValue::S(HEARTBEAT_VALUE.into()));
        item.extend(status_attributes(status, free_disk));
        self.put("PutItem(heartbeat)", item).await
    }

    pub async fn put_signal(&self, signal: Signal, run_id: &str) -> Result<(), TableError> {
        let mut item = self.base_item(PK_WORKER_SIGNAL, ENTITY_WORKER_SIGNAL);
        let value = HashMap::from([
            (
                "state".to_owned(),
                AttributeValue::S(signal.as_str().into()),
            ),
            ("runId".to_owned(), AttributeValue::S(run_id.to_owned())),
        ]);
        item.insert("value".into(), AttributeValue::M(value));
        self.put("PutItem(worker signal)", item).await
    }
}

/// The heartbeat's extra attributes; absent values are left out.
fn status_attributes(status: &Status, free_disk: Option<u64>) -> Item {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let mut item = Item::from([
        ("agentVersion".to_owned(), s(env!("CARGO_PKG_VERSION"))),
        (
            "jobActive".to_owned(),
            AttributeValue::Bool(status.job_active),
        ),
    ]);
    let optional = [
        (
            "agentState",
            Some(status.state.as_str()).filter(|v| !v.is_empty()),
        ),
        ("runId", status.run_id.as_deref()),
        ("runnerVersion", status.runner_version.as_deref()),
        ("lastReset", status.last_reset.as_deref()),
        ("lastCheck", status.last_check.as_deref()),
        ("orphaned", status.orphaned.map(|o| o.label())),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            item.insert(name.to_owned(), s(value));
        }
    }
    if let Some(bytes) = free_disk {
        item.insert(
            "freeDiskBytes".to_owned(),
            AttributeValue::N(bytes.to_string()),
        );
    }
    item
}

/// A malformed item stays malformed at every poll: each attribute's
/// problem is a warning once per process, then debug.
fn warn_once(attribute: &'static str, message: &str) {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<&str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first = WARNED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(attribute);
    match first {
        true => tracing::warn!(attribute, "{message} (logged once)"),
        false => tracing::debug!(attribute, "{message}"),
    }
}

fn string_attr(item: &Item, name: &'static str) -> Option<String> {
    match item.get(name)? {
        AttributeValue::S(s) => Some(s.clone()),
        // The type only: the value may be a secret stored the wrong way.
        _ => {
            warn_once(
                name,
                "ignoring an attribute the control plane wrote with a type other than string",
            );
            None
        }
    }
}

fn parse_instance(item: &Item) -> InstanceRecord {
    InstanceRecord {
        run_id: string_attr(item, "runId").filter(|r| !r.trim().is_empty()),
        threshold: string_attr(item, "threshold"),
        state: string_attr(item, "state"),
    }
}

fn parse_token(item: &Item) -> Option<RegistrationToken> {
    let Some(AttributeValue::M(value)) = item.get("value") else {
        warn_once("value", "registration token item has no `value` map");
        return None;
    };
    Some(RegistrationToken {
        token: string_attr(value, "token").unwrap_or_default(),
        expires_at: string_attr(value, "expires_at"),
        timestamp: string_attr(value, "timestamp"),
    })
}

#[cfg(test)]
mod tests;

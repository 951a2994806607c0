//! The control plane's side of the protocol, as
//! fleet-actions/ec2-runner-pool-manager performs it: instance records with
//! `threshold` in `YYYY-MM-DDTHH:MM:SSZ`, claims and releases as conditional
//! updates on `state` and `runId`, the registration token item (its dates
//! with milliseconds, as that project writes them), and reading the agent's
//! signals and heartbeat. Talks to moto directly, not through the proxy.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

pub fn iso(at: OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    at.format(&f).unwrap()
}

pub fn iso_millis(at: OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&f).unwrap()
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalItem {
    pub state: String,
    pub run_id: String,
    pub updated_at: String,
}

#[derive(Clone)]
pub struct ControlPlane {
    pub ddb: aws_sdk_dynamodb::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub table: String,
}

impl ControlPlane {
    pub async fn connect(endpoint: &str, table: &str) -> ControlPlane {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(crate::REGION))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "testing", "testing", None, None, "static",
            ))
            .load()
            .await;
        ControlPlane {
            ddb: aws_sdk_dynamodb::Client::new(&sdk),
            ec2: aws_sdk_ec2::Client::new(&sdk),
            table: table.to_owned(),
        }
    }

    pub async fn create_table(&self) {
        self.ddb
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("PK"))
            .attribute_definitions(attr("SK"))
            .key_schema(key("PK", KeyType::Hash))
            .key_schema(key("SK", KeyType::Range))
            .send()
            .await
            .expect("create table");
    }

    /// The control plane torn down: the pool's table goes.
    pub async fn delete_table(&self) {
        self.ddb
            .delete_table()
            .table_name(&self.table)
            .send()
            .await
            .expect("delete table");
    }

    /// Launches an instance in moto with the control plane's tags; returns
    /// its id.
    pub async fn launch_instance(&self, tags: &[(&str, &str)]) -> String {
        let images = self
            .ec2
            .describe_images()
            .send()
            .await
            .expect("describe images");
        let image = images
            .images()
            .first()
            .and_then(|i| i.image_id())
            .expect("an AMI")
            .to_owned();
        let mut spec = aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(aws_sdk_ec2::types::ResourceType::Instance);
        for (k, v) in tags {
            spec = spec.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build());
        }
        let out = self
            .ec2
            .run_instances()
            .image_id(image)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .tag_specifications(spec.build())
            .send()
            .await
            .expect("run instances");
        out.instances()[0].instance_id().unwrap().to_owned()
    }

    pub async fn instance_state(&self, id: &str) -> String {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .expect("describe instances");
        out.reservations()[0].instances()[0]
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default()
    }

    fn key(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([("PK".into(), s(pk)), ("SK".into(), s(sk))])
    }

    /// The record the control plane writes after creating an instance for
    /// `run_id` (state `created`, claimed by that run from the start).
    pub async fn put_instance(&self, id: &str, state: &str, run_id: &str, threshold: &str) {
        let mut item = Self::key("TYPE#INSTANCE", &format!("ID#{id}"));
        for (k, v) in [
            ("entityType", "INSTANCE"),
            ("identifier", id),
            ("state", state),
            ("runId", run_id),
            ("threshold", threshold),
            ("resourceClass", "large"),
            ("instanceType", "c6i.large"),
            ("usageClass", "on-demand"),
        ] {
            item.insert(k.into(), s(v));
        }
        item.insert("updatedAt".into(), s(&iso(OffsetDateTime::now_utc())));
        self.put(item).await;
    }

    /// The heartbeat and worker signal of an instance run by the bash
    /// agent: items with the protocol's attributes only (PROTOCOL.md's
    /// item table; that agent writes them with `aws dynamodb put-item`).
    pub async fn put_as_bash_agent(&self, id: &str, signal: &str, run_id: &str) {
        let now = s(&iso(OffsetDateTime::now_utc()));
        let mut beat = Self::key("TYPE#HEARTBEAT", &format!("ID#{id}"));
        beat.insert("entityType".into(), s("HEARTBEAT"));
        beat.insert("identifier".into(), s(id));
        beat.insert("value".into(), s("PING"));
        beat.insert("updatedAt".into(), now.clone());
        self.put(beat).await;
        let mut ws = Self::key("TYPE#WS", &format!("ID#{id}"));
        ws.insert("entityType".into(), s("WS"));
        ws.insert("identifier".into(), s(id));
        let value = HashMap::from([
            ("state".to_owned(), s(signal)),
            ("runId".to_owned(), s(run_id)),
        ]);
        ws.insert("value".into(), AttributeValue::M(value));
        ws.insert("updatedAt".into(), now);
        self.put(ws).await;
    }

    async fn put(&self, item: HashMap<String, AttributeValue>) {
        self.ddb
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "put item: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            });
    }

    async fn transition(
        &self,
        id: &str,
        from_state: &str,
        from_run: &str,
        to_state: &str,
        to_run: &str,
        threshold: &str,
    ) {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("TYPE#INSTANCE", &format!("ID#{id}"))))
            .condition_expression("#state = :expectedState AND #runId = :expectedRunID")
            .update_expression(
                "SET #state = :state, #runId = :runId, #threshold = :threshold, updatedAt = :now",
            )
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#runId", "runId")
            .expression_attribute_names("#threshold", "threshold")
            .expression_attribute_values(":expectedState", s(from_state))
            .expression_attribute_values(":expectedRunID", s(from_run))
            .expression_attribute_values(":state", s(to_state))
            .expression_attribute_values(":runId", s(to_run))
            .expression_attribute_values(":threshold", s(threshold))
            .expression_attribute_values(":now", s(&iso(OffsetDateTime::now_utc())))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "transition {from_state}->{to_state}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            });
    }

    /// Claims an idle instance for `run_id` (threshold now + 5 min).
    pub async fn claim(&self, id: &str, run_id: &str) {
        let threshold = iso(OffsetDateTime::now_utc() + Duration::from_secs(300));
        self.transition(id, "idle", "", "claimed", run_id, &threshold)
            .await;
    }

    /// Releases the instance back to idle (threshold now + 10 min).
    pub async fn release(&self, id: &str, run_id: &str, from_state: &str) {
        let threshold = iso(OffsetDateTime::now_utc() + Duration::from_secs(600));
        self.transition(id, from_state, run_id, "idle", "", &threshold)
            .await;
    }

    pub async fn set_threshold(&self, id: &str, threshold: &str) {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("TYPE#INSTANCE", &format!("ID#{id}"))))
            .update_expression("SET #t = :t")
            .expression_attribute_names("#t", "threshold")
            .expression_attribute_values(":t", s(threshold))
            .send()
            .await
            .expect("set threshold");
    }

    /// Writes one attribute of the instance record as given (any type):
    /// a control plane bug or a hand edit, for the malformed-item tests.
    pub async fn set_record_attr(&self, id: &str, name: &str, value: AttributeValue) {
        self.ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("TYPE#INSTANCE", &format!("ID#{id}"))))
            .update_expression("SET #a = :v")
            .expression_attribute_names("#a", name)
            .expression_attribute_values(":v", value)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "set {name}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            });
    }

    /// Removes attributes from the instance record.
    pub async fn remove_record_attrs(&self, id: &str, names: &[&str]) {
        let mut update = self
            .ddb
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("TYPE#INSTANCE", &format!("ID#{id}"))));
        let mut expr = Vec::new();
        for (i, name) in names.iter().enumerate() {
            update = update.expression_attribute_names(format!("#a{i}"), *name);
            expr.push(format!("#a{i}"));
        }
        update
            .update_expression(format!("REMOVE {}", expr.join(", ")))
            .send()
            .await
            .expect("remove attributes");
    }

    /// The registration token item with `value` exactly as given (a
    /// malformed one: not a map, fields of the wrong type).
    pub async fn put_token_value(&self, value: AttributeValue) {
        let mut item = Self::key("TYPE#METADATA", "ID#gh_registration_token");
        item.insert("entityType".into(), s("METADATA"));
        item.insert("identifier".into(), s("gh_registration_token"));
        item.insert("updatedAt".into(), s(&iso(OffsetDateTime::now_utc())));
        item.insert("value".into(), value);
        self.put(item).await;
    }

    /// Deletes the registration token item.
    pub async fn delete_token(&self) {
        self.ddb
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(Self::key("TYPE#METADATA", "ID#gh_registration_token")))
            .send()
            .await
            .expect("delete token");
    }

    /// The registration token item, with `expires_at` `valid_for` from now
    /// (negative durations write an expired token).
    pub async fn put_token(&self, token: &str, valid_for: time::Duration) {
        let now = OffsetDateTime::now_utc();
        let value = HashMap::from([
            ("token".to_owned(), s(token)),
            ("timestamp".to_owned(), s(&iso_millis(now))),
            ("expires_at".to_owned(), s(&iso_millis(now + valid_for))),
        ]);
        let mut item = Self::key("TYPE#METADATA", "ID#gh_registration_token");
        item.insert("entityType".into(), s("METADATA"));
        item.insert("identifier".into(), s("gh_registration_token"));
        item.insert("updatedAt".into(), s(&iso(now)));
        item.insert("value".into(), AttributeValue::M(value));
        self.put(item).await;
    }

    async fn get(&self, pk: &str, id: &str) -> Option<HashMap<String, AttributeValue>> {
        self.ddb
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(pk, &format!("ID#{id}"))))
            .consistent_read(true)
            .send()
            .await
            .expect("get item")
            .item
    }

    pub async fn signal(&self, id: &str) -> Option<SignalItem> {
        let item = self.get("TYPE#WS", id).await?;
        let value = item.get("value")?.as_m().ok()?;
        Some(SignalItem {
            state: value.get("state")?.as_s().ok()?.clone(),
            run_id: value.get("runId")?.as_s().ok()?.clone(),
            updated_at: item.get("updatedAt")?.as_s().ok()?.clone(),
        })
    }

    pub async fn heartbeat(&self, id: &str) -> Option<HashMap<String, AttributeValue>> {
        self.get("TYPE#HEARTBEAT", id).await
    }

    /// Polls (every 20 ms, as fast as a test needs) until the worker signal
    /// is `state` for `run_id`; returns when it was first seen.
    pub async fn wait_signal(
        &self,
        id: &str,
        state: &str,
        run_id: &str,
        timeout: Duration,
    ) -> Result<Instant, Option<SignalItem>> {
        let started = Instant::now();
        let mut last = None;
        while started.elapsed() < timeout {
            last = self.signal(id).await;
            if last
                .as_ref()
                .is_some_and(|s| s.state == state && s.run_id == run_id)
            {
                return Ok(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last)
    }
}

fn attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .unwrap()
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .unwrap()
}

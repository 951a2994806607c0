//! `runner-agent pool`: the pool's table as an operator reads it, one line
//! per instance. Read-only and cheap: one eventually consistent Query per
//! partition key (instance records, heartbeats, worker signals), paged,
//! never a Scan; the only permission it needs is `dynamodb:Query` on the
//! table (`runner-userdata iam-policy --operator`). Items as the bash agent
//! writes them lack our heartbeat attributes: those columns stay empty.

pub mod view;

use crate::protocol::{PK_HEARTBEAT, PK_INSTANCE, PK_WORKER_SIGNAL};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use std::collections::BTreeMap;
use view::{Item, Snapshot};

/// Every item under `pk`, by instance id (the `ID#` sort key's rest).
pub async fn query(
    client: &Client,
    table: &str,
    pk: &str,
) -> anyhow::Result<BTreeMap<String, Item>> {
    let mut items = BTreeMap::new();
    let mut pages = client
        .query()
        .table_name(table)
        .key_condition_expression("PK = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| {
            anyhow::anyhow!(
                "Query {pk} on table {table}: {}",
                crate::sdk_error::describe(&e)
            )
        })?;
        for item in page.items.unwrap_or_default() {
            let id = item
                .get("SK")
                .and_then(|v| v.as_s().ok())
                .and_then(|sk| sk.strip_prefix("ID#"))
                .map(str::to_owned);
            // Other sort keys under these partitions are not instances.
            if let Some(id) = id {
                items.insert(id, item);
            }
        }
    }
    Ok(items)
}

pub async fn snapshot(client: &Client, table: &str) -> anyhow::Result<Snapshot> {
    let (records, heartbeats, signals) = tokio::try_join!(
        query(client, table, PK_INSTANCE),
        query(client, table, PK_HEARTBEAT),
        query(client, table, PK_WORKER_SIGNAL),
    )?;
    Ok(Snapshot {
        records,
        heartbeats,
        signals,
    })
}

//! The expiry watchdog, the last line of defence: when the instance record's
//! `threshold` plus the grace period is past, and the instance is tagged
//! `AllowSelfTermination=true`, terminate this instance. Anything that
//! cannot be read (tag, threshold, record) is a reason *not* to terminate.

use crate::imds::{Imds, TagSource, TAG_ALLOW_SELF_TERMINATION};
use crate::protocol::{judge_expiry, Expiry, InstanceRecord};
use crate::table::Table;
use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::Filter;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The newest read of the instance record made by the lifecycle loop; the
/// watchdog reuses it instead of paying for reads of its own.
#[derive(Debug, Clone)]
pub struct Observation {
    pub at: Instant,
    pub record: Option<InstanceRecord>,
}

pub struct SelfTermination {
    pub imds: Imds,
    pub ec2: aws_sdk_ec2::Client,
    pub instance_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permission {
    Allowed,
    Denied(String),
}

impl SelfTermination {
    /// Reads `AllowSelfTermination` now (tags can change after launch): from
    /// instance metadata, or from `ec2:DescribeTags` when metadata tags are
    /// off.
    pub async fn permission(&self) -> Permission {
        let value = match self.imds.tag_source().await {
            Err(e) => return Permission::Denied(format!("cannot read tags: {e}")),
            Ok(TagSource::Metadata(keys)) => {
                if !keys.iter().any(|k| k == TAG_ALLOW_SELF_TERMINATION) {
                    None
                } else {
                    match self.imds.tag(TAG_ALLOW_SELF_TERMINATION).await {
                        Ok(v) => v,
                        Err(e) => return Permission::Denied(format!("cannot read tag: {e}")),
                    }
                }
            }
            Ok(TagSource::Ec2Api) => match self.describe_tag().await {
                Ok(v) => v,
                Err(e) => return Permission::Denied(e),
            },
        };
        match value.as_deref().map(str::trim) {
            Some("true") => Permission::Allowed,
            Some(other) => Permission::Denied(format!(
                "tag {TAG_ALLOW_SELF_TERMINATION} is {other:?}, not \"true\""
            )),
            None => Permission::Denied(format!("instance has no {TAG_ALLOW_SELF_TERMINATION} tag")),
        }
    }

    async fn describe_tag(&self) -> Result<Option<String>, String> {
        let out = self
            .ec2
            .describe_tags()
            .filters(
                Filter::builder()
                    .name("resource-id")
                    .values(&self.instance_id)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("key")
                    .values(TAG_ALLOW_SELF_TERMINATION)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| format!("ec2 DescribeTags: {}", DisplayErrorContext(e)))?;
        Ok(out
            .tags
            .unwrap_or_default()
            .into_iter()
            .find(|t| t.key.as_deref() == Some(TAG_ALLOW_SELF_TERMINATION))
            .and_then(|t| t.value))
    }

    pub async fn terminate(&self) -> Result<(), String> {
        self.ec2
            .terminate_instances()
            .instance_ids(&self.instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("ec2 TerminateInstances: {}", DisplayErrorContext(e)))
    }
}

pub struct Watchdog {
    pub table: Table,
    pub terminator: SelfTermination,
    pub interval: Duration,
    pub grace: Duration,
    pub observations: watch::Receiver<Option<Observation>>,
}

impl Watchdog {
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut last_reason = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let reason = match self.check().await {
                Ok(()) => {
                    tracing::warn!("instance is past its threshold; TerminateInstances accepted");
                    // Keep going: if the call was accepted but the instance
                    // survives, the next check asks again.
                    continue;
                }
                Err(reason) => reason,
            };
            if let Some(reason) = reason {
                if reason != last_reason {
                    tracing::warn!(reason = %reason, "not terminating this instance");
                    last_reason = reason;
                }
            }
        }
    }

    /// `Ok(())`: terminated. `Err(None)`: not expired. `Err(Some(why))`:
    /// expired or unsure, but not terminating, and why.
    async fn check(&mut self) -> Result<(), Option<String>> {
        let fresh = self
            .observations
            .borrow()
            .clone()
            .filter(|o| o.at.elapsed() < self.interval * 2);
        let record = match fresh {
            Some(o) => o.record,
            None => self
                .table
                .read_instance(false)
                .await
                .map_err(|e| Some(format!("instance record unreadable: {e}")))?,
        };
        self.judge(record.as_ref())?;
        // Expired on a possibly stale read: confirm with a consistent one.
        let record = self
            .table
            .read_instance(true)
            .await
            .map_err(|e| Some(format!("instance record unreadable: {e}")))?;
        self.judge(record.as_ref())?;
        match self.terminator.permission().await {
            Permission::Allowed => self.terminator.terminate().await.map_err(Some),
            Permission::Denied(why) => Err(Some(format!("expired, but {why}"))),
        }
    }

    fn judge(&self, record: Option<&InstanceRecord>) -> Result<(), Option<String>> {
        let Some(record) = record else {
            return Err(Some("no instance record in the table".into()));
        };
        let now = time::OffsetDateTime::now_utc();
        match judge_expiry(record.threshold.as_deref(), now, self.grace) {
            Expiry::Expired { .. } => Ok(()),
            Expiry::NotExpired { .. } => Err(None),
            Expiry::NoThreshold => Err(Some("the instance record has no threshold".into())),
            Expiry::Unparseable(raw) => Err(Some(format!("threshold {raw:?} is not a timestamp"))),
        }
    }
}

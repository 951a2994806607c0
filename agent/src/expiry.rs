//! The expiry watchdog, the last line of defence: when the instance record's
//! `threshold` plus the grace period is past, and the instance is tagged
//! `AllowSelfTermination=true`, terminate this instance. Anything that
//! cannot be read (tag, threshold, record) is a reason *not* to terminate.
//!
//! The same path ends an instance that has left the pool for good (an
//! orphan, or idle past `expiry.max_idle`: `crate::orphan`); the machine
//! decides that, and says so in its status once the instance holds no
//! registration, so the watchdog never ends a run.

use crate::clock::Clock;
use crate::imds::{Imds, TagSource, TAG_ALLOW_SELF_TERMINATION};
use crate::metrics::Metrics;
use crate::orphan::Orphan;
use crate::pace::Pace;
use crate::pool::Pool;
use crate::protocol::{judge_expiry, Expiry, InstanceRecord};
use crate::sdk_error::describe;
use crate::status::Status;
use crate::table::TableError;
use aws_sdk_ec2::types::Filter;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

/// An EC2 call that failed, in a line (`sdk_error`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("ec2 {operation}: {message}")]
pub struct Ec2Error {
    pub operation: &'static str,
    pub message: String,
}

/// Why the watchdog ends the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Past its record's threshold plus the grace.
    Expired,
    /// Out of the pool for good (`crate::orphan`).
    Orphaned(Orphan),
}

impl Reason {
    /// Its name in the metrics' `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Expired => "expired",
            Reason::Orphaned(orphan) => orphan.label(),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Expired => f.write_str("expired"),
            Reason::Orphaned(orphan) => orphan.fmt(f),
        }
    }
}

/// Why the watchdog holds off although the instance may be expired: every
/// reason it could not read counts against terminating.
#[derive(Debug, thiserror::Error)]
pub enum Hold {
    #[error("instance record unreadable: table reads are failing")]
    ReadsFailing,
    #[error("instance record unreadable: {0}")]
    Unreadable(TableError),
    #[error("no instance record in the table")]
    NoRecord,
    #[error("the instance record has no threshold")]
    NoThreshold,
    #[error("threshold {0:?} is not a timestamp")]
    BadThreshold(String),
    #[error("{reason}, but {why}")]
    NotAllowed { reason: Reason, why: String },
    #[error(transparent)]
    Terminate(Ec2Error),
}

/// Asking for, and carrying out, this instance's termination.
pub trait Terminator: Send + Sync + 'static {
    /// Whether the instance may terminate itself, read now.
    fn permission(&self) -> impl Future<Output = Permission> + Send;
    fn terminate(&self) -> impl Future<Output = Result<(), Ec2Error>> + Send;
}

impl Terminator for SelfTermination {
    async fn permission(&self) -> Permission {
        SelfTermination::permission(self).await
    }

    async fn terminate(&self) -> Result<(), Ec2Error> {
        SelfTermination::terminate(self).await
    }
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
                Err(e) => return Permission::Denied(e.to_string()),
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

    async fn describe_tag(&self) -> Result<Option<String>, Ec2Error> {
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
            .map_err(|e| Ec2Error {
                operation: "DescribeTags",
                message: describe(&e),
            })?;
        Ok(out
            .tags
            .unwrap_or_default()
            .into_iter()
            .find(|t| t.key.as_deref() == Some(TAG_ALLOW_SELF_TERMINATION))
            .and_then(|t| t.value))
    }

    pub async fn terminate(&self) -> Result<(), Ec2Error> {
        self.ec2
            .terminate_instances()
            .instance_ids(&self.instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Ec2Error {
                operation: "TerminateInstances",
                message: describe(&e),
            })
    }
}

pub struct Watchdog<P, T, C> {
    pub pool: P,
    pub terminator: T,
    pub clock: C,
    pub interval: Duration,
    pub grace: Duration,
    pub observations: watch::Receiver<Option<Observation>>,
    /// The machine's read pace: while its reads fail, the watchdog does
    /// not add reads of its own to a throttled or failing table (it could
    /// not terminate on an unreadable record anyway).
    pub pace: Pace,
    /// The machine's status: whether it has left the pool for good.
    pub status: watch::Receiver<Status>,
    pub metrics: Metrics,
}

impl<P: Pool, T: Terminator, C: Clock> Watchdog<P, T, C> {
    pub async fn run(mut self, stop: CancellationToken) {
        let mut last_reason = String::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.cancelled() => return,
            }
            let reason = match self.check().await {
                Ok(reason) => {
                    tracing::warn!(reason = %reason, "TerminateInstances accepted");
                    self.metrics.self_terminated(reason.label());
                    // Keep going: if the call was accepted but the instance
                    // survives, the next check asks again.
                    continue;
                }
                Err(hold) => hold,
            };
            if let Some(reason) = reason.map(|hold| hold.to_string()) {
                if reason != last_reason {
                    tracing::warn!(reason = %reason, "not terminating this instance");
                    last_reason = reason;
                }
            }
        }
    }

    /// `Ok(why)`: terminated. `Err(None)`: not expired. `Err(Some(why))`:
    /// expired, orphaned or unsure, but not terminating, and why.
    async fn check(&mut self) -> Result<Reason, Option<Hold>> {
        let orphaned = self.status.borrow().orphaned;
        if let Some(orphan) = orphaned {
            return self.end(Reason::Orphaned(orphan)).await;
        }
        let fresh = self
            .observations
            .borrow()
            .clone()
            .filter(|o| o.at.elapsed() < self.interval * 2);
        let record = match fresh {
            Some(o) => o.record,
            None if self.pace.backing_off() => return Err(Some(Hold::ReadsFailing)),
            None => self
                .pool
                .read_instance(false)
                .await
                .map_err(|e| Some(Hold::Unreadable(e)))?,
        };
        self.judge(record.as_ref())?;
        // Expired on a possibly stale read: confirm with a consistent one.
        let record = self
            .pool
            .read_instance(true)
            .await
            .map_err(|e| Some(Hold::Unreadable(e)))?;
        self.judge(record.as_ref())?;
        self.end(Reason::Expired).await
    }

    /// Terminates for `reason` if the tag, read now, allows it.
    async fn end(&self, reason: Reason) -> Result<Reason, Option<Hold>> {
        match self.terminator.permission().await {
            Permission::Allowed => match self.terminator.terminate().await {
                Ok(()) => Ok(reason),
                Err(e) => Err(Some(Hold::Terminate(e))),
            },
            Permission::Denied(why) => Err(Some(Hold::NotAllowed { reason, why })),
        }
    }

    fn judge(&self, record: Option<&InstanceRecord>) -> Result<(), Option<Hold>> {
        let Some(record) = record else {
            return Err(Some(Hold::NoRecord));
        };
        let now = self.clock.now_utc();
        match judge_expiry(record.threshold.as_deref(), now, self.grace) {
            Expiry::Expired { .. } => Ok(()),
            Expiry::NotExpired { .. } => Err(None),
            Expiry::NoThreshold => Err(Some(Hold::NoThreshold)),
            Expiry::Unparseable(raw) => Err(Some(Hold::BadThreshold(raw))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::tests::fakes::{FakePool, FakeTerminator, TestClock};

    const INTERVAL: Duration = Duration::from_secs(30);
    const GRACE: Duration = Duration::from_secs(60);

    /// Runs a watchdog for five minutes of virtual time over `pool`;
    /// returns how often it called TerminateInstances.
    async fn terminations(pool: &FakePool, clock: TestClock, permission: Permission) -> usize {
        terminations_with(pool, clock, permission, Status::default()).await
    }

    /// The same, with the machine reporting `status`.
    async fn terminations_with(
        pool: &FakePool,
        clock: TestClock,
        permission: Permission,
        status: Status,
    ) -> usize {
        let terminator = FakeTerminator::new(permission);
        let (_obs_tx, observations) = watch::channel(None);
        let (_status_tx, status) = watch::channel(status);
        let metrics = Metrics::new();
        let watchdog = Watchdog {
            pool: pool.clone(),
            terminator: terminator.clone(),
            clock,
            interval: INTERVAL,
            grace: GRACE,
            observations,
            pace: Pace::new(),
            status,
            metrics: metrics.clone(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(watchdog.run(stop.clone()));
        tokio::time::sleep(Duration::from_secs(300)).await;
        stop.cancel();
        task.await.unwrap();
        let calls = terminator.calls();
        let counted = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("runner_agent_self_terminations_total{"))
            .count();
        assert_eq!(counted > 0, calls > 0, "every accepted call is counted");
        calls
    }

    fn pool_with_threshold(threshold: Option<String>) -> FakePool {
        let pool = FakePool::new();
        pool.claim("1");
        pool.set_threshold(threshold.as_deref());
        pool
    }

    #[tokio::test(start_paused = true)]
    async fn expired_past_the_grace_with_the_tag_terminates() {
        let clock = TestClock::new();
        let pool = pool_with_threshold(Some(clock.stamp(-120)));
        assert!(terminations(&pool, clock, Permission::Allowed).await >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_without_the_tag_never_terminates() {
        let clock = TestClock::new();
        let pool = pool_with_threshold(Some(clock.stamp(-3600)));
        let denied = Permission::Denied("instance has no AllowSelfTermination tag".into());
        assert_eq!(terminations(&pool, clock, denied).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn within_the_grace_minute_nothing_happens_then_it_terminates() {
        let clock = TestClock::new();
        // Expired 30 s ago: the grace ends 30 s from now, inside the run.
        let pool = pool_with_threshold(Some(clock.stamp(-30)));
        assert!(terminations(&pool, clock, Permission::Allowed).await >= 1);
        let clock = TestClock::new();
        let pool = pool_with_threshold(Some(clock.stamp(3600)));
        assert_eq!(terminations(&pool, clock, Permission::Allowed).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_missing_or_unreadable_thresholds_never_terminate() {
        for threshold in [Some("soon".to_owned()), Some(String::new()), None] {
            let clock = TestClock::new();
            let pool = pool_with_threshold(threshold.clone());
            assert_eq!(
                terminations(&pool, clock, Permission::Allowed).await,
                0,
                "{threshold:?}"
            );
        }
        let clock = TestClock::new();
        let pool = pool_with_threshold(Some(clock.stamp(-3600)));
        pool.fail_reads(true);
        assert_eq!(terminations(&pool, clock, Permission::Allowed).await, 0);
        let clock = TestClock::new();
        assert_eq!(
            terminations(&FakePool::new(), clock, Permission::Allowed).await,
            0,
            "no record"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_expired_read_is_confirmed_before_terminating() {
        let clock = TestClock::new();
        let pool = pool_with_threshold(Some(clock.stamp(3600)));
        // Lagging reads show the expired threshold the control plane has
        // since moved forward.
        let mut stale = pool.lock().record.clone().unwrap();
        stale.threshold = Some(clock.stamp(-3600));
        pool.lock().stale = Some(Some(stale));
        assert_eq!(terminations(&pool, clock, Permission::Allowed).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_orphaned_machine_is_ended_only_with_the_tag_and_without_reads() {
        for reason in [Orphan::TableGone, Orphan::RecordGone, Orphan::MaxIdle] {
            let orphaned = Status {
                state: "orphaned".into(),
                orphaned: Some(reason),
                ..Status::default()
            };
            let pool = FakePool::new();
            pool.table_gone(true);
            let clock = TestClock::new();
            let ended = terminations_with(&pool, clock, Permission::Allowed, orphaned.clone());
            assert!(ended.await >= 1, "{reason}");
            assert_eq!(pool.reads(), 0, "no read of a table it has left");
            let denied = Permission::Denied("instance has no AllowSelfTermination tag".into());
            let clock = TestClock::new();
            assert_eq!(terminations_with(&pool, clock, denied, orphaned).await, 0);
        }
        // Not orphaned (idle, the table gone): the watchdog has no reason.
        let pool = FakePool::new();
        pool.table_gone(true);
        let idle = Status {
            state: "idle".into(),
            ..Status::default()
        };
        let clock = TestClock::new();
        assert_eq!(
            terminations_with(&pool, clock, Permission::Allowed, idle).await,
            0
        );
    }
}

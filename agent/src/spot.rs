//! What EC2 says about the instance's future, read from IMDS:
//! `spot/instance-action` (404 until EC2 schedules a stop, hibernation or
//! termination, about two minutes ahead) and
//! `events/recommendations/rebalance` (404 until the instance is at
//! elevated risk of interruption; no deadline). Either makes the instance
//! leave the pool; how soon depends on whether a job runs
//! (`machine/serve.rs`).

use crate::imds::{Imds, MetadataError};
use crate::metrics::Metrics;
use crate::protocol::parse_timestamp;
use std::future::Future;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The lead time EC2 documents for a spot interruption notice: the time
/// assumed when a notice's own `time` cannot be read.
const SPOT_NOTICE_LEAD: Duration = Duration::from_secs(120);

/// A notice, as the machine acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// EC2 interrupts the instance (`action`: terminate, stop, hibernate)
    /// at `at`.
    Interruption { action: String, at: OffsetDateTime },
    /// EC2 recommends moving work off this instance.
    Rebalance,
}

impl Notice {
    /// Reads a `spot/instance-action` body, `{"action": .., "time": ..}`,
    /// seen at `now`. The endpoint answers only when a notice exists, so a
    /// body that cannot be read is still a notice: its time is taken as the
    /// documented two minutes from now, and that is logged.
    pub fn interruption(body: &str, now: OffsetDateTime) -> Notice {
        #[derive(serde::Deserialize)]
        struct Action {
            action: Option<String>,
            time: Option<String>,
        }
        let parsed: Option<Action> = serde_json::from_str(body).ok();
        let action = parsed
            .as_ref()
            .and_then(|a| a.action.clone())
            .unwrap_or_else(|| "unknown".into());
        let at = parsed
            .as_ref()
            .and_then(|a| a.time.as_deref())
            .and_then(parse_timestamp);
        let at = at.unwrap_or_else(|| {
            tracing::warn!(
                body,
                "spot notice without a readable time; assuming two minutes from now"
            );
            now + SPOT_NOTICE_LEAD
        });
        Notice::Interruption { action, at }
    }

    /// The time left before the interruption, seen at `now` (zero once
    /// past); `None` for a rebalance recommendation.
    pub fn time_left(&self, now: OffsetDateTime) -> Option<Duration> {
        match self {
            Notice::Interruption { at, .. } => Some((*at - now).try_into().unwrap_or_default()),
            Notice::Rebalance => None,
        }
    }

    /// How the notice is logged and shown.
    pub fn describe(&self) -> String {
        match self {
            Notice::Interruption { action, at } => format!(
                "spot interruption ({action} at {})",
                crate::protocol::format_timestamp(*at)
            ),
            Notice::Rebalance => "rebalance recommendation".into(),
        }
    }
}

/// Where notices come from: IMDS, or a fake in the tests.
pub trait NoticeSource: Send + Sync + 'static {
    /// The interruption notice's JSON, or `None` while there is none.
    fn instance_action(&self)
        -> impl Future<Output = Result<Option<String>, MetadataError>> + Send;
    /// The rebalance recommendation's JSON, or `None` while there is none.
    fn rebalance(&self) -> impl Future<Output = Result<Option<String>, MetadataError>> + Send;
}

impl NoticeSource for Imds {
    async fn instance_action(&self) -> Result<Option<String>, MetadataError> {
        self.spot_instance_action().await
    }

    async fn rebalance(&self) -> Result<Option<String>, MetadataError> {
        self.rebalance_recommendation().await
    }
}

/// Polls until an interruption notice appears or the agent stops. A
/// rebalance recommendation is passed on and polling goes on: an
/// interruption may follow, and it supersedes the recommendation.
pub async fn watch_for_notices<S: NoticeSource>(
    source: S,
    interval: Duration,
    notices: watch::Sender<Option<Notice>>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut rebalance_seen = false;
    loop {
        match source.instance_action().await {
            Ok(Some(body)) => {
                let notice = Notice::interruption(&body, OffsetDateTime::now_utc());
                tracing::warn!(notice = %body, "{}", notice.describe());
                metrics.notice("spot_interruption");
                let _ = notices.send(Some(notice));
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading spot/instance-action"),
        }
        if !rebalance_seen {
            match source.rebalance().await {
                Ok(Some(body)) => {
                    tracing::warn!(notice = %body.trim(), "rebalance recommendation");
                    rebalance_seen = true;
                    metrics.notice("rebalance");
                    let _ = notices.send(Some(Notice::Rebalance));
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "reading events/recommendations/rebalance"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Answer = Result<Option<String>, MetadataError>;

    /// Gives its answers last first, then "no notice" for ever.
    #[derive(Clone, Default)]
    struct Scripted {
        actions: Arc<Mutex<Vec<Answer>>>,
        rebalance: Arc<Mutex<Vec<Answer>>>,
    }

    impl NoticeSource for Scripted {
        async fn instance_action(&self) -> Result<Option<String>, MetadataError> {
            self.actions.lock().unwrap().pop().unwrap_or(Ok(None))
        }

        async fn rebalance(&self) -> Result<Option<String>, MetadataError> {
            let mut answers = self.rebalance.lock().unwrap();
            match answers.len() {
                // The recommendation stays once made.
                1 => answers[0]
                    .as_ref()
                    .map_err(|_| MetadataError::Missing {
                        path: "events/recommendations/rebalance".into(),
                    })
                    .cloned(),
                _ => answers.pop().unwrap_or(Ok(None)),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_after_errors_is_passed_on_once_with_its_time() {
        let answers = vec![
            Ok(Some(
                r#"{"action":"terminate","time":"2026-11-28T10:02:00Z"}"#.to_owned(),
            )),
            Ok(None),
            Err(MetadataError::Missing {
                path: "spot/instance-action".into(),
            }),
        ];
        let source = Scripted {
            actions: Arc::new(Mutex::new(answers)),
            ..Default::default()
        };
        let (tx, mut rx) = watch::channel(None);
        let metrics = Metrics::new();
        let task = tokio::spawn(watch_for_notices(
            source,
            Duration::from_secs(5),
            tx,
            metrics.clone(),
            CancellationToken::new(),
        ));
        rx.wait_for(Option::is_some).await.unwrap();
        let notice = rx.borrow().clone().unwrap();
        assert_eq!(
            notice,
            Notice::Interruption {
                action: "terminate".into(),
                at: parse_timestamp("2026-11-28T10:02:00Z").unwrap()
            }
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_rebalance_recommendation_is_superseded_by_an_interruption() {
        let source = Scripted {
            actions: Arc::new(Mutex::new(vec![
                Ok(Some(
                    r#"{"action":"stop","time":"2026-11-28T10:02:00Z"}"#.into(),
                )),
                Ok(None),
                Ok(None),
            ])),
            rebalance: Arc::new(Mutex::new(vec![Ok(Some(
                r#"{"noticeTime":"2026-11-28T09:58:00Z"}"#.into(),
            ))])),
        };
        let (tx, mut rx) = watch::channel(None);
        let metrics = Metrics::new();
        let task = tokio::spawn(watch_for_notices(
            source,
            Duration::from_secs(5),
            tx,
            metrics.clone(),
            CancellationToken::new(),
        ));
        rx.wait_for(|n| n == &Some(Notice::Rebalance))
            .await
            .unwrap();
        rx.wait_for(|n| matches!(n, Some(Notice::Interruption { .. })))
            .await
            .unwrap();
        task.await.unwrap();
        let text = metrics.render();
        for kind in ["rebalance", "spot_interruption"] {
            let series = format!("runner_agent_notices_total{{kind=\"{kind}\"}}");
            assert_eq!(crate::metrics::sample(&text, &series), Some(1.0), "{text}");
        }
    }

    #[test]
    fn an_unreadable_notice_is_two_minutes_away() {
        let now = parse_timestamp("2026-11-28T10:00:00Z").unwrap();
        for body in [
            "",
            "{}",
            r#"{"action":"terminate","time":"soon"}"#,
            "<html>",
        ] {
            let notice = Notice::interruption(body, now);
            assert_eq!(notice.time_left(now), Some(SPOT_NOTICE_LEAD), "{body}");
        }
        let past = Notice::interruption(
            r#"{"action":"terminate","time":"2026-11-28T09:00:00Z"}"#,
            now,
        );
        assert_eq!(past.time_left(now), Some(Duration::ZERO));
        assert_eq!(Notice::Rebalance.time_left(now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_told() {
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(watch_for_notices(
            Scripted::default(),
            Duration::from_secs(5),
            tx,
            Metrics::new(),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop.cancel();
        task.await.unwrap();
        assert!(rx.borrow().is_none());
    }
}

//! Spot interruption notices: IMDS `spot/instance-action` is 404 until EC2
//! schedules the interruption, about two minutes ahead.

use crate::imds::{Imds, MetadataError};
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where notices come from: IMDS, or a fake in the tests.
pub trait NoticeSource: Send + Sync + 'static {
    /// The notice's JSON, or `None` while there is none.
    fn instance_action(&self)
        -> impl Future<Output = Result<Option<String>, MetadataError>> + Send;
}

impl NoticeSource for Imds {
    async fn instance_action(&self) -> Result<Option<String>, MetadataError> {
        self.spot_instance_action().await
    }
}

/// Polls until a notice appears or the agent stops; the notice's JSON goes
/// to `notices`.
pub async fn watch_for_interruption<S: NoticeSource>(
    source: S,
    interval: Duration,
    notices: watch::Sender<Option<String>>,
    stop: CancellationToken,
) {
    loop {
        match source.instance_action().await {
            Ok(Some(notice)) => {
                tracing::warn!(notice = %notice, "spot interruption notice");
                let _ = notices.send(Some(notice));
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "reading spot/instance-action"),
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
    struct Scripted(Arc<Mutex<Vec<Answer>>>);

    impl NoticeSource for Scripted {
        async fn instance_action(&self) -> Result<Option<String>, MetadataError> {
            self.0.lock().unwrap().pop().unwrap_or(Ok(None))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_after_errors_is_passed_on_once() {
        let answers = vec![
            Ok(Some(r#"{"action":"terminate"}"#.to_owned())),
            Ok(None),
            Err(MetadataError::Missing {
                path: "spot/instance-action".into(),
            }),
        ];
        let source = Scripted(Arc::new(Mutex::new(answers)));
        let (tx, mut rx) = watch::channel(None);
        let task = tokio::spawn(watch_for_interruption(
            source,
            Duration::from_secs(5),
            tx,
            CancellationToken::new(),
        ));
        rx.wait_for(Option::is_some).await.unwrap();
        assert!(rx.borrow().as_deref().unwrap().contains("terminate"));
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_told() {
        let stop = CancellationToken::new();
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(watch_for_interruption(
            Scripted::default(),
            Duration::from_secs(5),
            tx,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(60)).await;
        stop.cancel();
        task.await.unwrap();
        assert!(rx.borrow().is_none());
    }
}

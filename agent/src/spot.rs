//! Spot interruption notices: IMDS `spot/instance-action` is 404 until EC2
//! schedules the interruption, about two minutes ahead.

use crate::imds::Imds;
use std::time::Duration;
use tokio::sync::watch;

/// Polls until a notice appears or the agent stops; the notice's JSON goes
/// to `notices`.
pub async fn watch_for_interruption(
    imds: Imds,
    interval: Duration,
    notices: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        match imds.spot_instance_action().await {
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
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

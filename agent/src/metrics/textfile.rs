//! The node_exporter textfile: the metrics rewritten (atomically: the
//! collector must never read half a file) whenever they changed, checked
//! every `CHECK_EVERY`, and once more at stop. An idle agent's figures do
//! not change, so an idle agent does not write.

use super::Metrics;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Keeps `path` up to date until `stop`. A failed write is logged once per
/// run of failures (a missing directory, a full disk) and tried again.
pub async fn keep_written(path: PathBuf, metrics: Metrics, stop: CancellationToken) {
    let mut written = String::new();
    let mut failing = false;
    loop {
        let text = metrics.render();
        if text != written {
            // 0644: node_exporter runs as its own user.
            match runner_agent_common::fs::write_atomically(&path, text.as_bytes(), 0o644) {
                Ok(()) => {
                    if failing {
                        tracing::info!(path = %path.display(), "metrics textfile written again");
                    }
                    failing = false;
                    written = text;
                }
                Err(e) if !failing => {
                    tracing::warn!(path = %path.display(), error = %e, "writing the metrics textfile; retrying every 5 s");
                    failing = true;
                }
                Err(_) => {}
            }
        }
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            // One more pass after stop: the final figures.
            _ = stop.cancelled() => {}
        }
    }
}

//! The heartbeat: `TYPE#HEARTBEAT` written every interval (±10 %) on its
//! own task; nothing waits on it, so DynamoDB trouble never blocks the
//! lifecycle. The control plane counts a heartbeat older than 15 s as
//! stale, so a failed write is retried well inside that window (after 1 s,
//! then every 2 s) rather than at the next interval: while the table takes
//! any writes at all, one gets through in time. A run of failures is
//! logged when it starts and when it ends. Each beat carries the agent's
//! newest status and the free space on the runner's volume (`status.rs`).

use crate::metrics::Metrics;
use crate::pace::jitter;
use crate::pool::Pool;
use crate::status::Status;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the heartbeat reports on, besides being alive.
pub struct Report {
    pub status: watch::Receiver<Status>,
    /// A path on the volume jobs write to (the runner's directory).
    pub disk: PathBuf,
    pub metrics: Metrics,
}

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(2);

pub async fn run<P: Pool>(pool: P, interval: Duration, report: Report, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let status = report.status.borrow().clone();
        let free_disk = crate::reset::health::room(&report.disk)
            .ok()
            .map(|room| room.free_bytes);
        let wait = match pool.put_heartbeat(&status, free_disk).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failed_writes = failures, "heartbeat writes work again");
                    failures = 0;
                }
                interval
            }
            Err(e) => {
                report.metrics.heartbeat_failed();
                if failures == 0 {
                    tracing::warn!(error = %e, kind = e.kind.label(), "heartbeat write failed; retrying every 2 s until one is stored");
                } else {
                    tracing::debug!(error = %e, "heartbeat write failed again");
                }
                failures += 1;
                (RETRY_FIRST * failures).min(RETRY_CAP).min(interval)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(jitter(wait)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::tests::fakes::FakePool;

    fn report() -> (watch::Sender<Status>, Report) {
        let (tx, status) = watch::channel(Status::default());
        let disk = std::env::temp_dir();
        let metrics = Metrics::new();
        (
            tx,
            Report {
                status,
                disk,
                metrics,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn beats_every_interval_retries_failures_soon_and_stops() {
        let pool = FakePool::new();
        let stop = CancellationToken::new();
        let (status, report) = report();
        let task = tokio::spawn(run(
            pool.clone(),
            Duration::from_secs(5),
            report,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(12_000)).await;
        assert_eq!(pool.heartbeats(), 3, "at 0, ~5 and ~10 s (±10 %)");
        pool.fail_writes(true);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(pool.heartbeats(), 3, "failed writes are not stored");
        pool.fail_writes(false);
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        assert_eq!(
            pool.heartbeats(),
            4,
            "retried within 2 s, not at the next interval"
        );
        // The next beat carries the newest status and the volume's room.
        status.send_modify(|s| {
            s.state = "registered".into();
            s.job_active = true;
        });
        tokio::time::sleep(Duration::from_millis(5_600)).await;
        let (beat, free_disk) = pool.lock().last_beat.clone().unwrap();
        assert_eq!((beat.state.as_str(), beat.job_active), ("registered", true));
        assert!(free_disk.is_some_and(|b| b > 0));
        stop.cancel();
        task.await.unwrap();
    }

    /// A table that refuses most writes: every 15 s window still holds a
    /// stored heartbeat (the control plane's freshness).
    #[tokio::test(start_paused = true)]
    async fn stays_fresh_while_most_writes_are_refused() {
        let pool = FakePool::new();
        pool.refuse_writes_except_every(4);
        let stop = CancellationToken::new();
        let (_status, report) = report();
        let task = tokio::spawn(run(
            pool.clone(),
            Duration::from_secs(5),
            report,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(120)).await;
        stop.cancel();
        task.await.unwrap();
        let times = pool.heartbeat_times();
        assert!(times.len() >= 8, "{times:?}");
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap < Duration::from_secs(15), "stale for {gap:?}");
        }
    }
}

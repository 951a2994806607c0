//! The heartbeat: `TYPE#HEARTBEAT` written every interval on its own task.
//! A failed write is logged and the next tick is the retry; nothing waits
//! on it, so DynamoDB trouble never blocks the lifecycle.

use crate::machine::Pool;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

pub async fn run<P: Pool>(pool: P, interval: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        match pool.put_heartbeat().await {
            Ok(()) if failing => {
                tracing::info!("heartbeat writes work again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat write failed; retrying next tick");
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::tests::fakes::FakePool;

    #[tokio::test(start_paused = true)]
    async fn beats_every_interval_through_failures_and_stops() {
        let pool = FakePool::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(pool.clone(), Duration::from_secs(5), stop.clone()));
        tokio::time::sleep(Duration::from_millis(12_500)).await;
        assert_eq!(pool.heartbeats(), 3, "at 0, 5 and 10 s");
        pool.fail_writes(true);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(pool.heartbeats(), 3, "failed writes are not stored");
        pool.fail_writes(false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pool.heartbeats(), 4, "the next tick is the retry");
        stop.cancel();
        task.await.unwrap();
    }
}

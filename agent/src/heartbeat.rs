//! The heartbeat: `TYPE#HEARTBEAT` written every interval on its own task.
//! A failed write is logged and the next tick is the retry; nothing waits
//! on it, so DynamoDB trouble never blocks the lifecycle.

use crate::table::Table;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

pub async fn run(table: Table, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match table.put_heartbeat().await {
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

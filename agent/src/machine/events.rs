//! The two things that end a wait early: shutdown (SIGTERM/SIGINT) and a
//! spot interruption notice. Shutdown is a `CancellationToken`, the one
//! mechanism the agent uses to stop anything; the spot notice is a value.

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a wait ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Shutdown,
    Spot,
}

/// Cheap to clone; every clone sees the same events.
#[derive(Clone)]
pub struct Events {
    shutdown: CancellationToken,
    spot: watch::Receiver<Option<String>>,
}

impl Events {
    pub fn new(shutdown: CancellationToken, spot: watch::Receiver<Option<String>>) -> Events {
        Events { shutdown, spot }
    }

    /// Resolves at the first event.
    pub async fn wait(&self) -> Interrupt {
        let mut spot = self.spot.clone();
        // `wait_for`'s guard is not Send: reduce it to a bool at once.
        let notice = async move { spot.wait_for(Option::is_some).await.is_ok() };
        tokio::select! {
            _ = self.shutdown.cancelled() => Interrupt::Shutdown,
            true = notice => Interrupt::Spot,
            // The spot watcher is gone without a notice: only shutdown is
            // left to wait for.
            else => {
                self.shutdown.cancelled().await;
                Interrupt::Shutdown
            }
        }
    }

    /// Waits for shutdown alone (a spot notice has been handled already).
    pub async fn shutdown(&self) {
        self.shutdown.cancelled().await
    }

    /// Runs `work` unless an event comes first.
    pub async fn guard<F: Future>(&self, work: F) -> Result<F::Output, Interrupt> {
        tokio::select! {
            out = work => Ok(out),
            i = self.wait() => Err(i),
        }
    }

    /// Sleeps for `duration` unless an event comes first.
    pub async fn sleep(&self, duration: Duration) -> Result<(), Interrupt> {
        self.guard(tokio::time::sleep(duration)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_and_spot_end_waits() {
        let token = CancellationToken::new();
        let (spot_tx, spot_rx) = watch::channel(None);
        let events = Events::new(token.clone(), spot_rx);
        assert_eq!(events.sleep(Duration::from_secs(1)).await, Ok(()));
        spot_tx.send_replace(Some("{}".into()));
        assert_eq!(
            events.sleep(Duration::from_secs(3600)).await,
            Err(Interrupt::Spot)
        );
        let (_tx, quiet) = watch::channel(None);
        let events = Events::new(token.clone(), quiet);
        token.cancel();
        assert_eq!(events.wait().await, Interrupt::Shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_spot_watcher_leaves_shutdown() {
        let token = CancellationToken::new();
        let (spot_tx, spot_rx) = watch::channel(None);
        drop(spot_tx);
        let events = Events::new(token.clone(), spot_rx);
        assert_eq!(
            events.sleep(Duration::from_secs(60)).await,
            Ok(()),
            "no event without a notice"
        );
        token.cancel();
        assert_eq!(events.wait().await, Interrupt::Shutdown);
    }
}

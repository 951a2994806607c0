//! The two things that end a wait early: shutdown (SIGTERM/SIGINT) and a
//! notice from EC2 (spot interruption, rebalance recommendation). Shutdown
//! is a `CancellationToken`, the one mechanism the agent uses to stop
//! anything; a notice is a value, since how soon it ends the current work
//! depends on whether a job runs (`serve.rs`).

use crate::orphan::Orphan;
use crate::spot::Notice;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a wait ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Shutdown,
    /// A notice from EC2: the instance leaves the pool.
    Notice,
    /// The idle poll's own notice (`leave.rs`, `crate::orphan`): the control
    /// plane has forgotten the instance, or it sat idle too long; it leaves
    /// the pool for good. Never raised by a wait here: only an idle machine
    /// raises it, so no run is ever cut short by it.
    Orphaned(Orphan),
}

/// Cheap to clone; every clone sees the same events.
#[derive(Clone)]
pub struct Events {
    shutdown: CancellationToken,
    notices: watch::Receiver<Option<Notice>>,
}

impl Events {
    pub fn new(shutdown: CancellationToken, notices: watch::Receiver<Option<Notice>>) -> Events {
        Events { shutdown, notices }
    }

    /// The newest notice, if any.
    pub fn notice(&self) -> Option<Notice> {
        self.notices.borrow().clone()
    }

    /// Resolves at the first event.
    pub async fn wait(&self) -> Interrupt {
        let mut notices = self.notices.clone();
        // `wait_for`'s guard is not Send: reduce it to a bool at once.
        let notice = async move { notices.wait_for(Option::is_some).await.is_ok() };
        tokio::select! {
            _ = self.shutdown.cancelled() => Interrupt::Shutdown,
            true = notice => Interrupt::Notice,
            // The notice watcher is gone without a notice: only shutdown is
            // left to wait for.
            else => {
                self.shutdown.cancelled().await;
                Interrupt::Shutdown
            }
        }
    }

    /// Resolves when the notice changes (a rebalance recommendation
    /// followed by an interruption), never if the watcher is gone.
    pub async fn notice_changed(&self) {
        let mut notices = self.notices.clone();
        notices.mark_unchanged();
        if notices.changed().await.is_err() {
            std::future::pending::<()>().await
        }
    }

    /// Runs `work` unless an event comes first.
    pub async fn guard<F: Future>(&self, work: F) -> Result<F::Output, Interrupt> {
        tokio::select! {
            out = work => Ok(out),
            i = self.wait() => Err(i),
        }
    }

    /// Runs `work` unless shutdown comes first: for waits a notice must not
    /// cut short (a job running under one).
    pub async fn guard_shutdown<F: Future>(&self, work: F) -> Result<F::Output, Interrupt> {
        tokio::select! {
            out = work => Ok(out),
            _ = self.shutdown.cancelled() => Err(Interrupt::Shutdown),
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
    async fn shutdown_and_notices_end_waits() {
        let token = CancellationToken::new();
        let (notice_tx, notice_rx) = watch::channel(None);
        let events = Events::new(token.clone(), notice_rx);
        assert_eq!(events.sleep(Duration::from_secs(1)).await, Ok(()));
        notice_tx.send_replace(Some(Notice::Rebalance));
        assert_eq!(
            events.sleep(Duration::from_secs(3600)).await,
            Err(Interrupt::Notice)
        );
        assert_eq!(
            events
                .guard_shutdown(tokio::time::sleep(Duration::from_secs(5)))
                .await,
            Ok(()),
            "a notice does not end a shutdown-only wait"
        );
        let (_tx, quiet) = watch::channel(None);
        let events = Events::new(token.clone(), quiet);
        token.cancel();
        assert_eq!(events.wait().await, Interrupt::Shutdown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_notice_watcher_leaves_shutdown() {
        let token = CancellationToken::new();
        let (notice_tx, notice_rx) = watch::channel(None);
        drop(notice_tx);
        let events = Events::new(token.clone(), notice_rx);
        assert_eq!(
            events.sleep(Duration::from_secs(60)).await,
            Ok(()),
            "no event without a notice"
        );
        token.cancel();
        assert_eq!(events.wait().await, Interrupt::Shutdown);
    }
}

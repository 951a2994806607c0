//! Wall-clock time, behind a trait the in-process tests replace. Time for
//! waits is tokio's, which the tests pause.

use time::OffsetDateTime;

/// Wall-clock time, for what the control plane writes as timestamps
/// (thresholds, token expiry, our own `updatedAt`-style stamps).
pub trait Clock: Clone + Send + Sync + 'static {
    fn now_utc(&self) -> OffsetDateTime;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

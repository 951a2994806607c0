//! How fast the agent reads the table. One DynamoDB partition serves a
//! whole pool (every instance record shares `TYPE#INSTANCE`), so a fleet
//! must never poll in lockstep and must slow down together when DynamoDB
//! throttles or fails, then come back without a thundering herd:
//!
//! - every interval varies by ±10 %, and the first idle poll starts at a
//!   random phase, so agents booted together drift apart at once;
//! - the first failed read (throttled, 5xx, no answer) stretches every poll
//!   4×, each further failure doubles that, up to 16× or a 4 s interval,
//!   whichever is shorter; each successful read halves it. The idle poll
//!   (250 ms) is at most 4 s apart while reads fail and back to 250 ms
//!   within 8 s of the first success (4 + 2 + 1 + 0.5 s, jittered);
//! - an episode is logged twice: when it starts and when reads are back at
//!   the normal rate, with how many failed.
//!
//! The SDK's own retries are off for DynamoDB (`agent.rs`): with them, each
//! throttled poll cost three requests. Writes are not paced here: signals
//! retry on their own back-off until stored (`machine/signal.rs`), the
//! heartbeat retries within its freshness window (`heartbeat.rs`).

use crate::pool::Pool;
use crate::protocol::{InstanceRecord, RegistrationToken, Signal};
use crate::status::Status;
use crate::table::{ErrorKind, TableError};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Intervals vary this much either way.
const JITTER: f64 = 0.10;
/// The stretch after the first failed read: the read rate drops at least
/// this many times at once.
const FIRST_STRETCH: u32 = 4;
const MAX_STRETCH: u32 = 16;
/// No poll is stretched beyond this (or its own base, if longer): the
/// longest a fleet waits to see that DynamoDB is back.
const STRETCH_CAP: Duration = Duration::from_secs(4);

/// `base` varied uniformly by ±10 %.
pub fn jitter(base: Duration) -> Duration {
    base.mul_f64(1.0 + JITTER * (2.0 * fastrand::f64() - 1.0))
}

/// Shared by every clone: the machine and its table wrapper.
#[derive(Clone, Default)]
pub struct Pace(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    /// 1 while reads succeed; 4..=16 while they fail.
    stretch: u32,
    episode: Option<Episode>,
    phased: bool,
}

struct Episode {
    started: Instant,
    failed_reads: u64,
}

impl Pace {
    pub fn new() -> Pace {
        Pace::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a counter and a timestamp: a panic elsewhere cannot
        // leave it half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long to wait before the next read of a poll whose normal
    /// interval is `base`.
    pub fn interval(&self, base: Duration) -> Duration {
        jitter(self.stretched(base))
    }

    /// `interval`, but never shorter than `base`: for a poll whose interval
    /// is a ceiling on the rate (a job's: at most one read per
    /// `job_poll_interval`), the jitter only lengthens it.
    pub fn interval_at_least(&self, base: Duration) -> Duration {
        self.stretched(base).mul_f64(1.0 + JITTER * fastrand::f64())
    }

    /// `base`, slowed while reads fail.
    fn stretched(&self, base: Duration) -> Duration {
        let stretch = self.lock().stretch.max(1);
        (base * stretch).min(base.max(STRETCH_CAP))
    }

    /// A random fraction of `base` the first time it is asked, zero after:
    /// the first idle poll's phase.
    pub fn phase(&self, base: Duration) -> Duration {
        let mut state = self.lock();
        if std::mem::replace(&mut state.phased, true) {
            return Duration::ZERO;
        }
        base.mul_f64(fastrand::f64())
    }

    /// Whether reads are being slowed now.
    pub fn backing_off(&self) -> bool {
        self.lock().stretch > 1
    }

    pub fn read_failed(&self, error: &TableError) {
        let mut state = self.lock();
        state.stretch = match state.stretch {
            0 | 1 => FIRST_STRETCH,
            s => (s * 2).min(MAX_STRETCH),
        };
        match &mut state.episode {
            Some(episode) => {
                episode.failed_reads += 1;
                tracing::debug!(error = %error, stretch = state.stretch, "table read failed");
            }
            None => {
                state.episode = Some(Episode {
                    started: Instant::now(),
                    failed_reads: 1,
                });
                let what = match error.kind {
                    ErrorKind::Throttled => "DynamoDB is throttling reads",
                    ErrorKind::Server => "DynamoDB answers reads with server errors",
                    ErrorKind::Unreachable => "DynamoDB does not answer",
                    ErrorKind::Refused => "DynamoDB refuses reads",
                    ErrorKind::TableMissing => "the pool's table does not exist",
                };
                tracing::warn!(error = %error, kind = error.kind.label(), max_interval_s = STRETCH_CAP.as_secs(), "{what}: polls slowed until reads succeed (logged again when they do)");
            }
        }
    }

    pub fn read_ok(&self) {
        let mut state = self.lock();
        state.stretch = (state.stretch / 2).max(1);
        if state.stretch == 1 {
            if let Some(episode) = state.episode.take() {
                tracing::info!(
                    failed_reads = episode.failed_reads,
                    lasted_s = episode.started.elapsed().as_secs(),
                    "DynamoDB reads succeed again; polling at the normal rate"
                );
            }
        }
    }

    fn record<T>(&self, result: Result<T, TableError>) -> Result<T, TableError> {
        match &result {
            Ok(_) => self.read_ok(),
            Err(e) => self.read_failed(e),
        }
        result
    }
}

/// A pool whose reads feed a `Pace`; writes pass through.
#[derive(Clone)]
pub struct Paced<P> {
    pool: P,
    pace: Pace,
}

impl<P> Paced<P> {
    pub fn new(pool: P, pace: Pace) -> Paced<P> {
        Paced { pool, pace }
    }
}

impl<P: Pool> Pool for Paced<P> {
    async fn read_instance(&self, consistent: bool) -> Result<Option<InstanceRecord>, TableError> {
        self.pace.record(self.pool.read_instance(consistent).await)
    }

    async fn read_claim_and_token(
        &self,
    ) -> Result<(Option<InstanceRecord>, Option<RegistrationToken>), TableError> {
        self.pace.record(self.pool.read_claim_and_token().await)
    }

    async fn read_token(&self) -> Result<Option<RegistrationToken>, TableError> {
        self.pace.record(self.pool.read_token().await)
    }

    async fn put_signal(&self, signal: Signal, run_id: &str) -> Result<(), TableError> {
        self.pool.put_signal(signal, run_id).await
    }

    async fn put_heartbeat(
        &self,
        status: &Status,
        free_disk: Option<u64>,
    ) -> Result<(), TableError> {
        self.pool.put_heartbeat(status, free_disk).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled() -> TableError {
        TableError {
            operation: "GetItem(instance)",
            table: "t".into(),
            kind: ErrorKind::Throttled,
            message: "ProvisionedThroughputExceededException".into(),
        }
    }

    #[test]
    fn a_rate_ceiling_is_only_lengthened() {
        let pace = Pace::new();
        let base = Duration::from_secs(10);
        let samples: Vec<_> = (0..1000).map(|_| pace.interval_at_least(base)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= base && *d <= Duration::from_secs(11)));
        assert!(samples.iter().any(|d| *d > Duration::from_millis(10_500)));
        assert!(samples.iter().any(|d| *d < Duration::from_millis(10_500)));
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let base = Duration::from_millis(1000);
        let samples: Vec<_> = (0..1000).map(|_| jitter(base)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_millis(900) && *d <= Duration::from_millis(1100)));
        let low = samples
            .iter()
            .filter(|d| **d < Duration::from_millis(950))
            .count();
        let high = samples
            .iter()
            .filter(|d| **d > Duration::from_millis(1050))
            .count();
        assert!(
            low > 100 && high > 100,
            "spread both ways: {low} low, {high} high"
        );
    }

    #[test]
    fn stretch_grows_on_failures_is_capped_and_halves_back() {
        let pace = Pace::new();
        let idle = Duration::from_millis(250);
        let around = |d: Duration, ms: u64| {
            let ms = ms as f64;
            (d.as_millis() as f64) >= ms * 0.9 - 1.0 && (d.as_millis() as f64) <= ms * 1.1 + 1.0
        };
        assert!(around(pace.interval(idle), 250));
        pace.read_failed(&throttled());
        assert!(around(pace.interval(idle), 1000), "4× at the first failure");
        pace.read_failed(&throttled());
        pace.read_failed(&throttled());
        pace.read_failed(&throttled());
        assert!(around(pace.interval(idle), 4000), "16× at most");
        // A poll already past the cap is not stretched; one below it is
        // stretched up to the cap only.
        assert!(around(pace.interval(Duration::from_secs(10)), 10_000));
        assert!(around(pace.interval(Duration::from_secs(1)), 4000));
        assert!(pace.backing_off());
        for expected in [2000, 1000, 500, 250] {
            pace.read_ok();
            assert!(
                around(pace.interval(idle), expected),
                "halved to {expected}"
            );
        }
        assert!(!pace.backing_off());
    }

    #[test]
    fn the_phase_is_random_once() {
        let pace = Pace::new();
        let base = Duration::from_millis(250);
        assert!(pace.phase(base) < base);
        assert_eq!(pace.phase(base), Duration::ZERO);
        let phases: std::collections::HashSet<_> =
            (0..20).map(|_| Pace::new().phase(base)).collect();
        assert!(phases.len() > 10, "phases differ between agents");
    }
}

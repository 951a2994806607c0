//! Orphans (`crate::orphan`): an idle instance whose table is gone, or
//! whose record (seen before) is gone, for the whole `orphan_grace` leaves
//! the pool for good; with the tag the watchdog then ends it, without it
//! the instance stays out, says why, and never registers again. Nothing
//! but those two answers counts, a run is never cut short, and
//! `max_idle` ends an instance left idle.

use super::*;
use crate::expiry::{Permission, Watchdog};
use crate::orphan::Orphan;
use crate::pace::Pace;
use crate::protocol::InstanceRecord;
use crate::table::ErrorKind;
use fakes::FakeTerminator;

const GRACE: Duration = Duration::from_secs(900);

impl Harness {
    /// The expiry watchdog over this machine (as `agent.rs` wires it), with
    /// the tag answering `permission`; stopped by `self.shutdown`'s end.
    fn watchdog(&self, permission: Permission) -> FakeTerminator {
        let terminator = FakeTerminator::new(permission);
        let watchdog = Watchdog {
            pool: self.pool.clone(),
            terminator: terminator.clone(),
            clock: self.clock.clone(),
            interval: Duration::from_secs(30),
            grace: Duration::from_secs(60),
            observations: self.observations.clone(),
            pace: Pace::new(),
            status: self.status.clone(),
            metrics: self.metrics.clone(),
        };
        tokio::spawn(watchdog.run(self.shutdown.clone()));
        terminator
    }

    fn phase(&self) -> &'static str {
        self.saved().phase.name()
    }

    fn counted(&self, series: &str) -> Option<f64> {
        crate::metrics::sample(&self.metrics.render(), series)
    }
}

fn denied() -> Permission {
    Permission::Denied("instance has no AllowSelfTermination tag".into())
}

#[tokio::test(start_paused = true)]
async fn a_table_gone_for_less_than_the_grace_then_back_changes_nothing() {
    let mut h = Harness::started_and_idle().await;
    let terminator = h.watchdog(Permission::Allowed);
    h.pool.table_gone(true);
    h.idle_for(GRACE - Duration::from_secs(1)).await;
    // The control plane is back, with the record and a token.
    h.pool.table_gone(false);
    h.pool.release();
    h.pool.set_token(Some(fakes::token(&h.clock, "TOKEN-2")));
    h.idle_for(GRACE * 2).await;
    assert_eq!(h.phase(), "idle");
    assert_eq!(terminator.calls(), 0);
    h.pool.claim("2000");
    h.wait_signal(Signal::RegOk, "2000").await;
    assert_eq!(h.stop().await, Interrupt::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn a_table_gone_for_the_whole_grace_ends_a_tagged_instance() {
    let mut h = Harness::started_and_idle().await;
    let terminator = h.watchdog(Permission::Allowed);
    let configures = h.host.lock().configures.len();
    h.pool.table_gone(true);
    h.idle_for(GRACE - Duration::from_secs(5)).await;
    assert_eq!(h.phase(), "idle", "not before the grace");
    h.wait_phase("orphaned").await;
    h.wait_until("TerminateInstances", |_| terminator.calls() > 0)
        .await;
    let saved = h.saved().phase;
    assert_eq!(
        saved,
        Phase::Orphaned {
            reason: Orphan::TableGone
        }
    );
    assert_eq!(
        h.counted("runner_agent_left_pool_total{reason=\"table_gone\"}"),
        Some(1.0)
    );
    assert_eq!(
        h.counted("runner_agent_self_terminations_total{reason=\"table_gone\"}"),
        Some(terminator.calls() as f64)
    );
    assert_eq!(h.host.lock().configures.len(), configures);
    assert_eq!(h.stop().await, Interrupt::Orphaned(Orphan::TableGone));
}

#[tokio::test(start_paused = true)]
async fn untagged_it_stops_serving_for_good_and_says_why() {
    let mut h = Harness::started_and_idle().await;
    let terminator = h.watchdog(denied());
    h.pool.delete_record();
    h.idle_for(GRACE - Duration::from_secs(5)).await;
    assert_eq!(h.phase(), "idle", "not before the grace");
    h.wait_phase("orphaned").await;
    assert_eq!(h.status.borrow().orphaned, Some(Orphan::RecordGone));
    assert_eq!(h.status.borrow().state, "orphaned");
    // The heartbeat it can still write says so.
    let (report_metrics, stop) = (h.metrics.clone(), CancellationToken::new());
    let report = crate::heartbeat::Report {
        status: h.status.clone(),
        disk: std::env::temp_dir(),
        metrics: report_metrics,
    };
    let beat = tokio::spawn(crate::heartbeat::run(
        h.pool.clone(),
        Duration::from_secs(5),
        report,
        stop.clone(),
    ));
    h.wait_until("a heartbeat", |h| h.pool.heartbeats() > 0)
        .await;
    let (status, _) = h.pool.lock().last_beat.clone().unwrap();
    assert_eq!(status.orphaned, Some(Orphan::RecordGone));
    stop.cancel();
    beat.await.unwrap();
    h.idle_for(GRACE).await;
    assert_eq!(terminator.calls(), 0, "never without the tag");
    // A claim after all: refused, and never registered, also after a
    // restart.
    let configures = h.host.lock().configures.len();
    h.pool.claim("2000");
    h.wait_signal(Signal::RegFailed, "2000").await;
    h.stop().await;
    h.start();
    h.idle_for(Duration::from_secs(60)).await;
    h.pool.claim("3000");
    h.wait_signal(Signal::RegFailed, "3000").await;
    assert_eq!(h.phase(), "orphaned");
    assert_eq!(h.status.borrow().orphaned, Some(Orphan::RecordGone));
    assert_eq!(h.host.lock().configures.len(), configures);
    assert_eq!(h.stop().await, Interrupt::Orphaned(Orphan::RecordGone));
}

/// The record goes while a job runs: the machine reads that as the run's
/// release (the protocol), deregisters and resets; the grace counts from
/// idle, never during the run.
#[tokio::test(start_paused = true)]
async fn a_record_deleted_during_a_run_counts_only_from_idle() {
    let mut h = Harness::started_and_serving().await;
    h.host.lock().reset_delay = Duration::from_secs(300);
    h.host.lock().job_active = true;
    h.pool.delete_record();
    h.wait_phase("resetting").await;
    h.wait_phase("idle").await;
    let idle_at = tokio::time::Instant::now();
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    h.idle_for(GRACE - Duration::from_secs(5)).await;
    assert_eq!(h.phase(), "idle", "the run and its reset did not count");
    h.wait_phase("orphaned").await;
    assert!(idle_at.elapsed() >= GRACE);
    assert_eq!(h.stop().await, Interrupt::Orphaned(Orphan::RecordGone));
}

/// The table goes under a running job: the run is never cut short, the
/// registration stays, and the instance never leaves while it holds it.
#[tokio::test(start_paused = true)]
async fn a_table_gone_under_a_job_never_ends_the_run() {
    let mut h = Harness::started_and_serving().await;
    let terminator = h.watchdog(Permission::Allowed);
    h.host.lock().job_active = true;
    h.pool.table_gone(true);
    h.idle_for(GRACE * 2).await;
    assert_eq!(h.phase(), "registered");
    assert_eq!(h.host.running().len(), 1);
    assert_eq!(terminator.calls(), 0);
    h.host.lock().job_active = false;
    h.idle_for(GRACE * 2).await;
    assert_eq!(h.phase(), "registered", "the claim is held");
    assert_eq!(terminator.calls(), 0);
    assert_eq!(h.stop().await, Interrupt::Shutdown);
}

/// Throttling, 5xx, no answer, access denied and a malformed item for
/// twice the grace: none of them says the control plane is gone.
#[tokio::test(start_paused = true)]
async fn answers_that_are_not_definite_never_count() {
    for kind in [
        ErrorKind::Throttled,
        ErrorKind::Server,
        ErrorKind::Unreachable,
        ErrorKind::Refused,
    ] {
        let mut h = Harness::started_and_idle().await;
        let terminator = h.watchdog(Permission::Allowed);
        h.pool.fail_reads_as(kind);
        h.idle_for(GRACE * 2).await;
        assert_eq!(h.phase(), "idle", "{kind:?}");
        assert_eq!(terminator.calls(), 0, "{kind:?}");
        assert_eq!(h.stop().await, Interrupt::Shutdown);
    }
    // What `table.rs` reads from an item whose attributes have the wrong
    // types: a record with nothing in it, which is still a record.
    let mut h = Harness::started_and_idle().await;
    h.pool.lock().record = Some(InstanceRecord::default());
    h.idle_for(GRACE * 2).await;
    assert_eq!(h.phase(), "idle");
    assert_eq!(h.stop().await, Interrupt::Shutdown);
}

/// At boot the grace starts only once the record was seen: the control
/// plane writes it right after the launch, and a slow write (or none, or
/// no table yet) is not an orphan.
#[tokio::test(start_paused = true)]
async fn before_the_record_is_first_seen_nothing_counts() {
    let mut h = Harness::new();
    h.initial_run_id = None;
    h.pool.set_token(None);
    h.start();
    h.wait_phase("idle").await;
    h.idle_for(GRACE * 2).await;
    h.pool.table_gone(true);
    h.idle_for(GRACE * 2).await;
    assert_eq!(h.phase(), "idle");
    assert!(!h.saved().record_seen);
    // Written at last, then deleted: now it counts.
    h.pool.table_gone(false);
    h.pool.release();
    h.wait_until("record seen", |h| h.saved().record_seen).await;
    h.pool.delete_record();
    h.idle_for(GRACE).await;
    h.wait_phase("orphaned").await;
    assert_eq!(h.stop().await, Interrupt::Orphaned(Orphan::RecordGone));
}

#[tokio::test(start_paused = true)]
async fn idle_past_max_idle_leaves_even_with_orphans_off() {
    let mut h = Harness::new();
    h.timing.orphan_grace = Duration::ZERO;
    h.timing.max_idle = Some(Duration::from_secs(3600));
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    // A run longer than max_idle is not idle.
    h.idle_for(Duration::from_secs(5400)).await;
    h.pool.release();
    h.wait_phase("idle").await;
    // The record gone with orphans off: only max_idle ends it.
    h.pool.delete_record();
    h.idle_for(Duration::from_secs(3500)).await;
    assert_eq!(h.phase(), "idle");
    h.wait_phase("orphaned").await;
    assert_eq!(
        h.saved().phase,
        Phase::Orphaned {
            reason: Orphan::MaxIdle
        }
    );
    assert_eq!(h.stop().await, Interrupt::Orphaned(Orphan::MaxIdle));
}

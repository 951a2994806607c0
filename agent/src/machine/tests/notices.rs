//! Notices from EC2: an idle instance leaves the pool at once; a job is let
//! run (until it ends under a rebalance recommendation, until the spot
//! notice's time minus the margin under an interruption); out of the pool,
//! claims fail at once and the left run's release is answered as failed.

use super::*;
use crate::machine::Clock;

impl Harness {
    /// A spot interruption `seconds` from now.
    fn spot_in(&self, seconds: i64) {
        let at = self.clock.now_utc() + time::Duration::seconds(seconds);
        self.notices.send_replace(Some(Notice::Interruption {
            action: "terminate".into(),
            at,
        }));
    }

    fn rebalance(&self) {
        self.notices.send_replace(Some(Notice::Rebalance));
    }

    fn job(&self, active: bool) {
        self.host.lock().job_active = active;
    }
}

#[tokio::test(start_paused = true)]
async fn idle_leaves_at_once_and_fails_later_claims_without_registering() {
    let mut h = Harness::started_and_idle().await;
    h.spot_in(120);
    h.wait_phase("spot-interrupted").await;
    assert_eq!(h.pool.count(Signal::SpotInterrupted, ""), 1);
    assert!(h.heartbeat.is_cancelled());
    let configures = h.host.lock().configures.len();
    h.pool.claim("2000");
    h.wait_signal(Signal::RegFailed, "2000").await;
    h.idle_for(Duration::from_secs(30)).await;
    assert_eq!(h.pool.count(Signal::RegFailed, "2000"), 1, "answered once");
    assert_eq!(h.host.lock().configures.len(), configures);
    assert_eq!(h.stop().await, Interrupt::Notice);
}

#[tokio::test(start_paused = true)]
async fn a_claim_in_flight_when_the_notice_comes_fails_at_once() {
    let mut h = Harness::started_and_idle().await;
    h.host.lock().configure_delay = Duration::from_secs(30);
    h.pool.claim("2000");
    h.wait_phase("registering").await;
    h.rebalance();
    h.wait_signal(Signal::SpotInterrupted, "2000").await;
    h.stop().await;
    assert!(!h.host.lock().configured, "deregistered");
}

#[tokio::test(start_paused = true)]
async fn serving_without_a_job_deregisters_at_once_and_fails_the_release() {
    let mut h = Harness::started_and_serving().await;
    let pgid = h.host.running()[0];
    h.spot_in(120);
    h.wait_signal(Signal::SpotInterrupted, INITIAL_RUN).await;
    assert!(h.host.lock().stops.contains(&pgid));
    assert_eq!(h.host.lock().resets, 0, "a leaving instance is not reset");
    assert_eq!(h.saved().registration(), None);
    // The control plane releases the run: the instance must not be pooled.
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunFailed, INITIAL_RUN)
        .await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 0);
    // Re-claimed by the same run: refused like any claim.
    h.pool.claim(INITIAL_RUN);
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    assert_eq!(h.stop().await, Interrupt::Notice);
}

#[tokio::test(start_paused = true)]
async fn a_job_runs_until_the_spot_notice_time_minus_the_margin() {
    let h = Harness::started_and_serving().await;
    h.job(true);
    h.spot_in(120);
    h.idle_for(Duration::from_secs(95)).await;
    assert!(!h.host.running().is_empty(), "the job still runs at +95 s");
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 0);
    h.idle_for(Duration::from_secs(6)).await;
    assert!(
        h.host.running().is_empty(),
        "stopped by +101 s (120 s - 20 s)"
    );
    h.wait_signal(Signal::SpotInterrupted, INITIAL_RUN).await;
}

#[tokio::test(start_paused = true)]
async fn a_job_that_ends_under_a_spot_notice_leaves_when_it_ends() {
    let h = Harness::started_and_serving().await;
    h.job(true);
    h.spot_in(120);
    h.idle_for(Duration::from_secs(30)).await;
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 0);
    h.job(false);
    h.idle_for(Duration::from_secs(2)).await;
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 1);
}

#[tokio::test(start_paused = true)]
async fn a_live_worker_counts_as_a_job_without_the_hook() {
    let h = Harness::started_and_serving().await;
    h.host.lock().worker_running = true;
    h.spot_in(120);
    h.idle_for(Duration::from_secs(60)).await;
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 0);
    h.host.lock().worker_running = false;
    h.wait_signal(Signal::SpotInterrupted, INITIAL_RUN).await;
}

#[tokio::test(start_paused = true)]
async fn a_past_notice_time_stops_the_job_at_once() {
    let h = Harness::started_and_serving().await;
    h.job(true);
    h.spot_in(10);
    h.idle_for(Duration::from_secs(1)).await;
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rebalance_lets_the_job_finish_then_leaves() {
    let h = Harness::started_and_serving().await;
    h.job(true);
    h.rebalance();
    h.idle_for(Duration::from_secs(600)).await;
    assert!(
        !h.host.running().is_empty(),
        "no deadline under a rebalance"
    );
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 0);
    h.job(false);
    h.wait_signal(Signal::SpotInterrupted, INITIAL_RUN).await;
    assert!(h.heartbeat.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn an_interruption_after_a_rebalance_sets_the_deadline() {
    let h = Harness::started_and_serving().await;
    h.job(true);
    h.rebalance();
    h.idle_for(Duration::from_secs(300)).await;
    h.spot_in(120);
    h.idle_for(Duration::from_secs(95)).await;
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 0);
    h.idle_for(Duration::from_secs(6)).await;
    assert_eq!(h.pool.count(Signal::SpotInterrupted, INITIAL_RUN), 1);
}

#[tokio::test(start_paused = true)]
async fn released_during_a_job_under_a_notice_is_answered_as_failed() {
    let h = Harness::started_and_serving().await;
    h.job(true);
    h.rebalance();
    h.idle_for(Duration::from_secs(5)).await;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunFailed, INITIAL_RUN)
        .await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 0);
    assert!(h.host.running().is_empty());
    assert!(!h.host.lock().configured, "deregistered");
    h.wait_phase("spot-interrupted").await;
}

#[tokio::test(start_paused = true)]
async fn sigterm_under_a_deferred_notice_deregisters_as_today() {
    let mut h = Harness::started_and_serving().await;
    h.job(true);
    h.spot_in(120);
    h.idle_for(Duration::from_secs(5)).await;
    assert_eq!(h.stop().await, Interrupt::Shutdown);
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    assert!(h.host.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_notice_during_a_failing_registration_fails_the_claim_at_once() {
    let mut h = Harness::new();
    h.pool.set_token(None);
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    h.spot_in(120);
    h.wait_signal(Signal::SpotInterrupted, INITIAL_RUN).await;
    h.stop().await;
}

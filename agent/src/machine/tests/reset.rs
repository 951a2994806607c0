//! The reset between runs: after deregistration, before the release's
//! signal; a failed reset is signalled and refuses every later claim;
//! a reset cut short (SIGKILL, SIGTERM) is finished before any signal.

use super::*;
use crate::reset::ResetError;

const NEXT_RUN: &str = "2000";

#[tokio::test(start_paused = true)]
async fn the_release_resets_after_deregistration_and_signals_after_the_reset() {
    let h = Harness::started_and_serving().await;
    assert_eq!(
        h.host.lock().baselines,
        1,
        "baseline taken before the first claim"
    );
    h.host.lock().reset_delay = Duration::from_secs(30);
    h.pool.release();
    h.wait_until("reset running", |h| h.host.lock().resets == 1)
        .await;
    assert_eq!(h.saved().phase.name(), "resetting");
    // Deregistered and the runner stopped before the reset began.
    assert_eq!(h.host.lock().reset_saw, vec![(1, 0)]);
    h.idle_for(Duration::from_secs(20)).await;
    assert_eq!(
        h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN),
        0,
        "no signal before the reset ends"
    );
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.wait_phase("idle").await;
    assert_eq!(h.saved().unclean, None);
    // The next claim registers as usual.
    h.pool.claim(NEXT_RUN);
    h.wait_signal(Signal::RegOk, NEXT_RUN).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_reset_is_signalled_and_every_later_claim_is_refused() {
    let mut h = Harness::started_and_serving().await;
    h.host
        .lock()
        .reset_results
        .push_back(Err(ResetError::TimedOut(Duration::from_secs(600))));
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunFailed, INITIAL_RUN)
        .await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 0);
    h.wait_phase("idle").await;
    assert_eq!(
        h.saved().unclean.as_deref(),
        Some("the reset did not finish within 600s")
    );
    let configures = h.host.lock().configures.len();
    h.pool.claim(NEXT_RUN);
    h.wait_signal(Signal::RegFailed, NEXT_RUN).await;
    assert_eq!(
        h.host.lock().configures.len(),
        configures,
        "config.sh never ran"
    );
    assert!(h.host.running().is_empty());
    // A fresh token changes nothing, and neither does a restart.
    h.pool.set_token(Some(token(&h.clock, "TOKEN-2")));
    h.idle_for(Duration::from_secs(30)).await;
    assert_eq!(h.host.lock().configures.len(), configures);
    h.pool.release();
    h.idle_for(Duration::from_secs(10)).await;
    h.stop().await;
    h.start();
    h.pool.claim("3000");
    h.wait_signal(Signal::RegFailed, "3000").await;
    assert_eq!(h.host.lock().configures.len(), configures);
}

#[tokio::test(start_paused = true)]
async fn sigkill_during_a_reset_resets_again_on_restart_before_signalling() {
    let mut h = Harness::started_and_serving().await;
    h.host.lock().reset_delay = Duration::from_secs(3600);
    h.pool.release();
    h.wait_until("reset running", |h| h.host.lock().resets == 1)
        .await;
    h.kill();
    assert_eq!(h.saved().phase.name(), "resetting");
    h.host.lock().reset_delay = Duration::from_secs(5);
    h.start();
    h.wait_until("second reset", |h| h.host.lock().resets == 2)
        .await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 0);
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.wait_phase("idle").await;
    assert_eq!(h.host.lock().install_calls, 2, "installed once per start");
}

#[tokio::test(start_paused = true)]
async fn sigterm_while_serving_resets_before_the_final_signal() {
    let mut h = Harness::started_and_serving().await;
    h.stop().await;
    assert_eq!(h.host.lock().resets, 1);
    assert_eq!(h.host.lock().reset_saw, vec![(1, 0)]);
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    assert_eq!(h.saved().phase.name(), "stopping");
}

#[tokio::test(start_paused = true)]
async fn sigterm_during_a_reset_finishes_it_within_the_stop_budget() {
    let mut h = Harness::started_and_serving().await;
    h.host.lock().reset_delay = Duration::from_secs(3);
    h.pool.release();
    h.wait_until("reset running", |h| h.host.lock().resets == 1)
        .await;
    h.stop().await;
    assert_eq!(h.host.lock().resets, 2, "started over within the budget");
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    assert_eq!(h.saved().phase.name(), "stopping");
}

#[tokio::test(start_paused = true)]
async fn a_reset_longer_than_the_stop_budget_stays_owed_without_a_signal() {
    let mut h = Harness::started_and_serving().await;
    h.host.lock().reset_delay = Duration::from_secs(60);
    let started = tokio::time::Instant::now();
    h.stop().await;
    assert!(
        started.elapsed() <= Duration::from_secs(27),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        h.pool
            .signals()
            .iter()
            .filter(|(s, _)| *s == Signal::RemoveRegRemoveRunOk)
            .count(),
        0
    );
    assert_eq!(h.saved().phase.name(), "resetting");
    h.host.lock().reset_delay = Duration::ZERO;
    h.start();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert_eq!(h.host.lock().resets, 2);
}

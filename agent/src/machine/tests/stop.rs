use super::*;

#[tokio::test(start_paused = true)]
async fn sigterm_while_idle_stops_without_a_signal() {
    let mut h = Harness::started_and_idle().await;
    let signals = h.pool.signals().len();
    assert_eq!(h.stop().await, Interrupt::Shutdown);
    assert_eq!(h.pool.signals().len(), signals);
    assert_eq!(h.saved().phase.name(), "stopping");
}

#[tokio::test(start_paused = true)]
async fn sigterm_while_serving_deregisters_and_signals_for_the_run() {
    let mut h = Harness::started_and_serving().await;
    let pgid = h.host.running()[0];
    assert_eq!(h.stop().await, Interrupt::Shutdown);
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    assert!(h.host.lock().stops.contains(&pgid));
    assert!(!h.host.lock().configured);
    let saved = h.saved();
    assert_eq!(saved.phase.name(), "stopping");
    assert_eq!(saved.registration(), None);
}

#[tokio::test(start_paused = true)]
async fn sigterm_with_dynamodb_down_gives_up_within_the_budget_and_keeps_the_debt() {
    let mut h = Harness::started_and_serving().await;
    h.pool.fail_writes(true);
    let started = tokio::time::Instant::now();
    h.stop().await;
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(27), "{took:?}");
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 0);
    // The next start finds the release's signal owed (after a reset).
    let saved = h.saved();
    assert_eq!(saved.phase, owed_release(INITIAL_RUN));
}

#[tokio::test(start_paused = true)]
async fn sigterm_during_config_sh_removes_what_it_wrote() {
    let mut h = Harness::new();
    h.host.lock().configure_delay = Duration::from_secs(3600);
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_until("config.sh running", |h| {
        !h.host.lock().configures.is_empty()
    })
    .await;
    assert_eq!(h.saved().phase.name(), "registering");
    assert!(h.saved().registration().is_some(), "a crash now cleans up");
    h.stop().await;
    assert!(!h.host.lock().removes.is_empty());
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    assert_eq!(h.pool.count(Signal::RegOk, INITIAL_RUN), 0);
}

#[tokio::test(start_paused = true)]
async fn sigterm_while_the_release_signal_is_retried_writes_it_in_the_final_steps() {
    let mut h = Harness::started_and_serving().await;
    h.pool.fail_writes(true);
    h.pool.release();
    h.wait_phase("resetting").await;
    h.idle_for(Duration::from_secs(30)).await;
    h.pool.fail_writes(false);
    h.stop().await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 1);
    assert_eq!(h.host.lock().removes.len(), 1, "deregistered once");
    // The owed signal follows a reset: the final steps reset again (a
    // reset is idempotent) rather than trust one that may be stale.
    assert_eq!(h.host.lock().resets, 2);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_going_through_a_sigterm_until_the_agent_stops_it() {
    let mut h = Harness::started_and_serving().await;
    h.stop().await;
    assert!(
        !h.heartbeat.is_cancelled(),
        "the agent stops it after the final steps"
    );
}

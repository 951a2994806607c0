use super::*;
use crate::machine::InstallFailure;
use crate::protocol::InstanceRecord;

#[tokio::test(start_paused = true)]
async fn release_stops_the_runner_deregisters_with_the_token_and_signals() {
    let h = Harness::started_and_serving().await;
    let pgid = h.host.running()[0];
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    {
        let host = h.host.lock();
        assert!(host.stops.contains(&pgid));
        assert_eq!(host.removes, vec![Some("TOKEN-1".to_owned())]);
        assert!(host.stray_sweeps >= 1, "double-forked job processes too");
    }
    h.wait_phase("idle").await;
    let saved = h.saved();
    assert_eq!(saved.registration(), None);
    assert_eq!(
        saved.last_signal.unwrap().signal,
        Signal::RemoveRegRemoveRunOk
    );
}

#[tokio::test(start_paused = true)]
async fn the_runner_pgid_is_saved_while_serving() {
    let h = Harness::started_and_serving().await;
    let pgid = h.host.running()[0];
    h.wait_until("pgid saved", |h| {
        h.saved().registration().and_then(|r| r.runner_pgid) == Some(pgid)
    })
    .await;
    assert_eq!(h.saved().phase.name(), "registered");
}

#[tokio::test(start_paused = true)]
async fn a_release_is_confirmed_by_a_consistent_read() {
    let h = Harness::started_and_serving().await;
    // A lagging read says released; the consistent one says claimed.
    h.pool.lock().stale = Some(Some(InstanceRecord::default()));
    h.idle_for(Duration::from_secs(20)).await;
    assert_eq!(h.pool.count(Signal::RemoveRegRemoveRunOk, INITIAL_RUN), 0);
    assert_eq!(h.host.running().len(), 1);
    h.pool.lock().stale = None;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_runner_exiting_while_claimed_is_restarted_with_back_off() {
    let h = Harness::started_and_serving().await;
    // The loop wakes every 250 ms at least: a restart is due 1 s after
    // the exit, then 2 s, and comes within one wake-up of that.
    h.host.runner_exits(1);
    h.idle_for(Duration::from_millis(900)).await;
    assert_eq!(h.host.lock().starts, 1, "not before 1 s");
    h.idle_for(Duration::from_millis(400)).await;
    assert_eq!(h.host.lock().starts, 2);
    h.host.runner_exits(2);
    h.idle_for(Duration::from_millis(1900)).await;
    assert_eq!(h.host.lock().starts, 2, "then 2 s");
    h.idle_for(Duration::from_millis(400)).await;
    assert_eq!(h.host.lock().starts, 3);
    assert_eq!(h.pool.signals().len(), 2, "no signal for a restart");
}

#[tokio::test(start_paused = true)]
async fn a_runner_exit_clears_the_job_marker() {
    let h = Harness::started_and_serving().await;
    h.host.lock().job_active = true;
    h.host.runner_exits(0);
    h.idle_for(Duration::from_millis(100)).await;
    assert!(!h.host.lock().job_active);
}

#[tokio::test(start_paused = true)]
async fn a_release_is_seen_while_the_runner_cannot_start() {
    let h = Harness::started_and_serving().await;
    h.host.lock().start_failures = 100;
    h.host.runner_exits(1);
    h.idle_for(Duration::from_secs(10)).await;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
}

#[tokio::test(start_paused = true)]
async fn reads_slow_down_while_a_job_runs_and_the_job_end_brings_the_next_read_forward() {
    let h = Harness::started_and_serving().await;
    h.idle_for(Duration::from_secs(1)).await;
    let before = h.pool.reads();
    h.idle_for(Duration::from_secs(60)).await;
    let claimed = h.pool.reads() - before;
    h.host.lock().job_active = true;
    h.idle_for(Duration::from_secs(3)).await;
    let before = h.pool.reads();
    h.idle_for(Duration::from_secs(60)).await;
    let during_job = h.pool.reads() - before;
    assert!((29..=31).contains(&claimed), "{claimed} reads claimed");
    assert!((5..=7).contains(&during_job), "{during_job} reads in a job");
    // The job ends and the run is released at once: seen within 0.5 s.
    h.host.lock().job_active = false;
    h.pool.release();
    let started = tokio::time::Instant::now();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert!(started.elapsed() <= Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn read_errors_while_serving_keep_the_runner_and_the_registration() {
    let h = Harness::started_and_serving().await;
    h.pool.fail_reads(true);
    h.pool.release();
    h.idle_for(Duration::from_secs(120)).await;
    assert_eq!(h.host.running().len(), 1);
    assert_eq!(h.saved().phase.name(), "registered");
    h.pool.fail_reads(false);
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_release_signal_failing_for_minutes_is_retried_until_stored() {
    let h = Harness::started_and_serving().await;
    h.pool.fail_writes(true);
    h.pool.release();
    h.wait_phase("resetting").await;
    h.idle_for(Duration::from_secs(300)).await;
    // Still owed, and still on record as owed.
    let saved = h.saved();
    assert_eq!(saved.phase, owed_release(INITIAL_RUN));
    assert_eq!(h.host.lock().removes.len(), 1, "deregistered once");
    h.pool.fail_writes(false);
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.wait_phase("idle").await;
}

#[tokio::test(start_paused = true)]
async fn deregistration_goes_on_locally_when_the_token_cannot_be_read() {
    let h = Harness::started_and_serving().await;
    h.pool.set_token(None);
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert_eq!(h.host.lock().removes, vec![None]);
}

#[tokio::test(start_paused = true)]
async fn a_runner_dying_as_the_run_is_released_is_still_deregistered() {
    let h = Harness::started_and_serving().await;
    h.host.lock().job_active = true;
    h.host.runner_exits(1);
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert_eq!(h.host.lock().removes.len(), 1);
    assert!(!h.host.lock().job_active);
    assert!(h.host.running().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_session_conflict_registers_again_under_a_new_name() {
    let h = Harness::started_and_serving().await;
    h.host.runner_exits(5);
    h.wait_until("registered again", |h| h.host.lock().configures.len() == 2)
        .await;
    h.wait_until("runner started again", |h| h.host.running().len() == 1)
        .await;
    {
        let s = h.host.lock();
        assert_eq!(s.removes.len(), 1, "the old registration went first");
        assert_eq!(s.configures[1].0, format!("{INSTANCE}-2"));
        assert_eq!(s.configures[1].1, INITIAL_RUN);
    }
    assert_eq!(h.pool.count(Signal::RegOk, INITIAL_RUN), 2);
    assert_eq!(h.saved().phase.name(), "registered");
}

#[tokio::test(start_paused = true)]
async fn a_deprecated_version_is_upgraded_and_the_claim_registered_again() {
    let h = Harness::started_and_serving().await;
    h.host.runner_exits(7);
    h.wait_until("registered again", |h| h.host.lock().configures.len() == 2)
        .await;
    assert_eq!(h.host.lock().upgrade_calls, 1);
    assert_eq!(h.host.lock().removes.len(), 1, "deregistered before");
    h.wait_until("runner started again", |h| h.host.running().len() == 1)
        .await;
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_upgrade_refuses_claims_until_a_retry_succeeds() {
    let h = Harness::started_and_serving().await;
    h.host.lock().upgrades.push_back(Err(InstallFailure {
        retryable: true,
        message: "release API: HTTP 503".into(),
    }));
    h.host.runner_exits(7);
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    assert_eq!(h.host.lock().configures.len(), 1, "no registration");
    // The retry (5 min later) succeeds: the claim, still held with the
    // same token, registers.
    h.idle_for(Duration::from_secs(290)).await;
    assert_eq!(h.host.lock().upgrade_calls, 1);
    h.wait_until("registered after the retry", |h| {
        h.host.lock().configures.len() == 2
    })
    .await;
    assert_eq!(h.host.lock().upgrade_calls, 2);
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
}

/// What the heartbeat reports follows the lifecycle: state, run, job,
/// runner version, the reset's outcome.
#[tokio::test(start_paused = true)]
async fn the_reported_status_follows_the_lifecycle() {
    let h = Harness::started_and_serving().await;
    let status = h.status.borrow().clone();
    assert_eq!(status.state, "registered");
    assert_eq!(status.run_id.as_deref(), Some(INITIAL_RUN));
    assert_eq!(status.runner_version.as_deref(), Some("2.330.0"));
    assert!(!status.job_active);
    h.host.lock().job_active = true;
    h.wait_until("job reported", |h| h.status.borrow().job_active)
        .await;
    h.host.lock().job_active = false;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.wait_phase("idle").await;
    let status = h.status.borrow().clone();
    assert_eq!(status.state, "idle");
    assert_eq!(status.run_id, None);
    assert!(!status.job_active);
    assert_eq!(status.last_reset.as_deref(), Some("ok"));
}

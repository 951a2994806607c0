use super::*;
use crate::state::{Phase, Registration};

fn registration(pgid: Option<i32>) -> Registration {
    Registration {
        run_id: INITIAL_RUN.into(),
        runner_name: format!("{INSTANCE}-1"),
        runner_pgid: pgid,
    }
}

fn serving(pgid: Option<i32>, signal: Signal) -> AgentState {
    AgentState {
        registration_counter: 1,
        phase: Phase::Serving {
            registration: registration(pgid),
        },
        ..booted_state(signal, INITIAL_RUN)
    }
}

/// Restarted while claimed, with the runner of the earlier agent process
/// (pgid 4242) alive and taken over.
async fn reattached() -> Harness {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    h.host.lock().configured = true;
    h.host.lock().alive.insert(4242);
    h.start_with(serving(Some(4242), Signal::RegOk));
    h.wait_until("adopted", |h| h.host.lock().adopted == [4242])
        .await;
    h
}

#[tokio::test(start_paused = true)]
async fn restart_while_claimed_reattaches_the_runner_without_a_second_registration() {
    let h = reattached().await;
    h.idle_for(Duration::from_secs(10)).await;
    assert!(h.host.lock().configures.is_empty());
    assert_eq!(h.host.lock().starts, 0, "the old runner serves on");
    assert!(h.pool.signals().is_empty(), "UD_REG_OK was stored already");
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert!(h.host.lock().stops.contains(&4242));
}

#[tokio::test(start_paused = true)]
async fn restart_while_claimed_with_the_runner_gone_starts_a_new_one() {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    h.host.lock().configured = true;
    h.start_with(serving(Some(4242), Signal::RegOk));
    h.wait_until("runner started", |h| h.host.lock().starts == 1)
        .await;
    assert!(h.host.lock().configures.is_empty());
    assert!(h.host.lock().stray_sweeps >= 1);
}

#[tokio::test(start_paused = true)]
async fn an_owed_ud_reg_ok_is_written_on_resume() {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    h.host.lock().configured = true;
    h.start_with(serving(None, Signal::Ok));
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    assert!(h.host.lock().configures.is_empty());
}

#[tokio::test(start_paused = true)]
async fn released_while_down_is_deregistered_and_signalled() {
    let mut h = Harness::new();
    h.pool.release();
    h.host.lock().configured = true;
    h.host.lock().alive.insert(4242);
    h.start_with(serving(Some(4242), Signal::RegOk));
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert!(h.host.lock().stops.contains(&4242));
    assert!(!h.host.lock().configured);
    h.wait_phase("idle").await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_during_config_sh_is_cleaned_up_and_the_claim_registered_again() {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    let state = AgentState {
        registration_counter: 1,
        phase: Phase::Registering {
            run_id: INITIAL_RUN.into(),
            runner_name: Some(format!("{INSTANCE}-1")),
        },
        ..booted_state(Signal::Ok, INITIAL_RUN)
    };
    h.start_with(state);
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    let host = h.host.lock();
    assert!(!host.removes.is_empty(), "leftovers removed first");
    assert_eq!(host.configures[0].0, format!("{INSTANCE}-2"), "a new name");
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_record_on_resume_is_retried_never_guessed() {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    h.pool.fail_reads(true);
    h.host.lock().configured = true;
    h.start_with(serving(None, Signal::RegOk));
    h.idle_for(Duration::from_secs(120)).await;
    assert!(h.host.lock().removes.is_empty(), "nothing torn down");
    assert_eq!(h.host.lock().starts, 0);
    h.pool.fail_reads(false);
    h.wait_until("runner started", |h| h.host.lock().starts == 1)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_registration_nobody_knows_of_is_removed_at_start() {
    let mut h = Harness::new();
    h.host.lock().configured = true;
    h.start_with(booted_state(Signal::Ok, INITIAL_RUN));
    h.wait_phase("idle").await;
    assert_eq!(h.host.lock().removes, vec![None]);
    assert!(h.host.lock().stray_sweeps >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_sigkill_mid_claim_then_restart_serves_on_with_one_registration() {
    let mut h = Harness::started_and_serving().await;
    let pgid = h.host.running()[0];
    h.wait_until("pgid saved", |h| {
        h.saved().registration().and_then(|r| r.runner_pgid) == Some(pgid)
    })
    .await;
    h.kill();
    h.host.lock().alive.insert(pgid);
    h.start();
    h.wait_until("adopted", |h| h.host.lock().adopted == [pgid])
        .await;
    h.idle_for(Duration::from_secs(5)).await;
    assert_eq!(h.host.lock().configures.len(), 1);
    assert_eq!(h.pool.count(Signal::RegOk, INITIAL_RUN), 1);
    assert_eq!(h.pool.count(Signal::Ok, INITIAL_RUN), 1, "boot not redone");
}

#[tokio::test(start_paused = true)]
async fn a_state_file_from_before_states_were_data_resumes() {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    h.host.lock().configured = true;
    h.host.lock().alive.insert(5150);
    let legacy = format!(
        r#"{{"instance_id":"{INSTANCE}","boot":"ok","registration_counter":1,
        "registration":{{"run_id":"{INITIAL_RUN}","runner_name":"{INSTANCE}-1","runner_pgid":5150}},
        "phase":"registered","phase_since":"2025-04-24T18:31:04Z",
        "last_signal":{{"signal":"UD_REG_OK","run_id":"{INITIAL_RUN}","at":"2025-04-24T18:31:05Z"}},"pid":977}}"#
    );
    std::fs::write(h.store().path(), legacy).unwrap();
    h.start();
    h.wait_until("adopted", |h| h.host.lock().adopted == [5150])
        .await;
    assert!(h.pool.signals().is_empty());
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_debt_left_by_a_stop_is_paid_on_the_next_start() {
    let mut h = Harness::started_and_serving().await;
    h.pool.fail_writes(true);
    h.pool.release();
    h.stop().await;
    assert_eq!(h.saved().phase, owed_release(INITIAL_RUN));
    h.pool.fail_writes(false);
    h.start();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.wait_phase("idle").await;
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_state_dir_does_not_stop_the_lifecycle() {
    let mut h = Harness::new();
    // The state dir is a file: every save fails and is logged.
    let blocked = h.dir.path().join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    h.dir = tempfile::tempdir().unwrap();
    let store_dir = blocked.clone();
    h.pool.claim(INITIAL_RUN);
    let state = AgentState::default();
    // Start against the blocked dir by hand.
    let (spot_tx, spot_rx) = watch::channel(None);
    let (obs_tx, _obs_rx) = watch::channel(None);
    let shutdown = CancellationToken::new();
    let setup = Setup {
        instance_id: INSTANCE.into(),
        initial_run_id: Some(INITIAL_RUN.into()),
        timing: super::TIMING,
        store: StateStore::new(&store_dir),
        events: Events::new(shutdown.clone(), spot_rx),
        observations: obs_tx,
        heartbeat: CancellationToken::new(),
        status: watch::channel(Default::default()).0,
        metrics: Default::default(),
    };
    let world = World {
        pool: h.pool.clone(),
        host: h.host.clone(),
        clock: h.clock.clone(),
    };
    let task = tokio::spawn(Machine::new(world, setup, state).run());
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    shutdown.cancel();
    task.await.unwrap();
    drop(spot_tx);
}

#[tokio::test(start_paused = true)]
async fn an_adopted_runner_that_dies_is_replaced_by_a_new_one() {
    let h = reattached().await;
    h.host.runner_exits(137);
    h.wait_until("restarted", |h| h.host.lock().starts == 1)
        .await;
    let pgid = h.host.running()[0];
    h.wait_until("new pgid saved", |h| {
        h.saved().registration().and_then(|r| r.runner_pgid) == Some(pgid)
    })
    .await;
    assert!(h.host.lock().configures.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_saved_pgid_of_zero_is_never_adopted() {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    h.host.lock().configured = true;
    h.start_with(serving(Some(0), Signal::RegOk));
    h.wait_until("runner started", |h| h.host.lock().starts == 1)
        .await;
    assert!(h.host.lock().adopted.is_empty());
}

use super::*;
use crate::machine::InstallFailure;

#[tokio::test(start_paused = true)]
async fn boot_signals_ud_ok_then_registers_the_initial_claim() {
    let mut h = Harness::new();
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    assert_eq!(
        h.pool.signals(),
        vec![
            (Signal::Ok, INITIAL_RUN.into()),
            (Signal::RegOk, INITIAL_RUN.into())
        ]
    );
    let host = h.host.lock();
    assert_eq!(host.pre_runner_runs, 1);
    assert!(host.hooks_written);
    assert_eq!(
        host.configures,
        vec![(
            format!("{INSTANCE}-1"),
            INITIAL_RUN.to_owned(),
            "TOKEN-1".to_owned()
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn failing_pre_runner_signals_ud_failed_never_registers_and_stops_the_heartbeat() {
    let mut h = Harness::new();
    h.host.lock().pre_runner = Some(Err(3));
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::Failed, INITIAL_RUN).await;
    h.wait_phase("failed").await;
    assert!(h.heartbeat.is_cancelled());
    h.idle_for(Duration::from_secs(120)).await;
    assert!(h.host.lock().configures.is_empty());
    assert_eq!(h.host.lock().install_calls, 0, "nothing installed");
    assert_eq!(h.pool.signals().len(), 1);
    assert_eq!(h.saved().boot, Some(BootOutcome::Failed));
    assert_eq!(h.stop().await, Interrupt::Shutdown);
}

#[tokio::test(start_paused = true)]
async fn an_owed_boot_signal_is_written_after_a_restart_without_running_the_script_again() {
    let mut h = Harness::new();
    let state = AgentState {
        boot: Some(BootOutcome::Ok),
        ..AgentState::default()
    };
    h.start_with(state);
    h.wait_signal(Signal::Ok, INITIAL_RUN).await;
    assert_eq!(h.host.lock().pre_runner_runs, 0);
}

#[tokio::test(start_paused = true)]
async fn boot_signal_write_failing_is_retried_until_stored() {
    let mut h = Harness::new();
    h.pool.fail_writes(true);
    h.start();
    h.idle_for(Duration::from_secs(180)).await;
    assert!(h.pool.signals().is_empty());
    h.pool.fail_writes(false);
    h.wait_signal(Signal::Ok, INITIAL_RUN).await;
    assert_eq!(h.saved().last_signal.unwrap().signal, Signal::Ok);
}

#[tokio::test(start_paused = true)]
async fn without_the_initial_run_tag_no_boot_signal_but_claims_are_served() {
    let mut h = Harness::new();
    h.initial_run_id = None;
    h.start();
    h.wait_phase("idle").await;
    h.pool.claim("2001");
    h.wait_signal(Signal::RegOk, "2001").await;
    assert_eq!(h.pool.signals(), vec![(Signal::RegOk, "2001".into())]);
}

#[tokio::test(start_paused = true)]
async fn download_failures_are_retried_then_the_claim_registers() {
    let mut h = Harness::new();
    let failure = || {
        Err(InstallFailure {
            retryable: true,
            message: "download: connection reset".into(),
        })
    };
    h.host.lock().installs = [failure(), failure()].into();
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    assert_eq!(h.host.lock().install_calls, 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_install_answers_claims_with_ud_reg_failed_once_per_claim() {
    let mut h = Harness::new();
    h.host.lock().installs = [Err(InstallFailure {
        retryable: false,
        message: "digest mismatch".into(),
    })]
    .into();
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    h.idle_for(Duration::from_secs(60)).await;
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 1);
    assert_eq!(h.host.lock().install_calls, 1, "a digest mismatch is final");
    assert!(h.host.lock().configures.is_empty());
    // A fresh token changes nothing: the runner is still not there.
    h.pool.set_token(Some(token(&h.clock, "TOKEN-2")));
    h.idle_for(Duration::from_secs(10)).await;
    assert!(h.host.lock().configures.is_empty());
    h.pool.release();
    h.wait_phase("idle").await;
    h.pool.claim("2002");
    h.wait_signal(Signal::RegFailed, "2002").await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_the_pre_runner_script_stops_at_once() {
    let mut h = Harness::new();
    h.host.lock().pre_runner_delay = Duration::from_secs(3600);
    h.start();
    h.idle_for(Duration::from_secs(5)).await;
    assert_eq!(h.stop().await, Interrupt::Shutdown);
    assert!(h.pool.signals().is_empty());
    assert_eq!(h.saved().boot, None, "the script runs again next boot");
}

#[tokio::test(start_paused = true)]
async fn a_runner_that_will_not_start_is_retried_with_back_off() {
    let mut h = Harness::new();
    h.host.lock().start_failures = 3;
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    h.idle_for(Duration::from_millis(500)).await;
    assert_eq!(h.host.lock().starts, 1);
    // 1 s, 2 s, 4 s after the failures.
    h.idle_for(Duration::from_secs(8)).await;
    assert_eq!(h.host.lock().starts, 4);
    assert_eq!(h.host.running().len(), 1);
}

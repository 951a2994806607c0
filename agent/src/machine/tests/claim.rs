use super::fakes::failed;
use super::*;
use crate::protocol::{InstanceRecord, RegistrationToken};

#[tokio::test(start_paused = true)]
async fn each_claim_registers_a_new_runner_name() {
    let h = Harness::started_and_idle().await;
    for run in ["2001", "2002", "2003"] {
        h.pool.claim(run);
        h.wait_signal(Signal::RegOk, run).await;
        h.pool.release();
        h.wait_signal(Signal::RemoveRegRemoveRunOk, run).await;
    }
    let names: Vec<_> = h
        .host
        .lock()
        .configures
        .iter()
        .map(|(name, run, _)| format!("{name}@{run}"))
        .collect();
    assert_eq!(
        names,
        [
            format!("{INSTANCE}-1@{INITIAL_RUN}"),
            format!("{INSTANCE}-2@2001"),
            format!("{INSTANCE}-3@2002"),
            format!("{INSTANCE}-4@2003"),
        ]
    );
    assert_eq!(h.saved().registration_counter, 4);
}

#[tokio::test(start_paused = true)]
async fn a_missing_token_fails_once_then_a_published_token_registers() {
    let mut h = Harness::new();
    h.pool.set_token(None);
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    h.idle_for(Duration::from_secs(30)).await;
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 1);
    h.pool.set_token(Some(token(&h.clock, "TOKEN-2")));
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    assert_eq!(h.host.lock().configures[0].2, "TOKEN-2");
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_is_refused_then_a_fresh_one_registers() {
    let mut h = Harness::new();
    h.pool.set_token(Some(RegistrationToken {
        token: "OLD".into(),
        expires_at: Some(h.clock.stamp(-60)),
        timestamp: None,
    }));
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    assert!(
        h.host.lock().configures.is_empty(),
        "never given to config.sh"
    );
    h.pool.set_token(Some(token(&h.clock, "NEW")));
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
}

#[tokio::test(start_paused = true)]
async fn a_token_expiring_within_the_margin_or_unreadable_is_refused() {
    for case in ["in 10 s", "garbage", "no expiry", "empty"] {
        let mut h = Harness::new();
        let (text, expires_at) = match case {
            "in 10 s" => ("T", Some(h.clock.stamp(10))),
            "garbage" => ("T", Some("tomorrow".to_owned())),
            "empty" => ("", Some(h.clock.stamp(3600))),
            _ => ("T", None),
        };
        h.pool.set_token(Some(RegistrationToken {
            token: text.into(),
            expires_at,
            timestamp: None,
        }));
        h.pool.claim(INITIAL_RUN);
        h.start();
        h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
        assert!(h.host.lock().configures.is_empty(), "{case}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_expiring_while_registration_waits_is_judged_by_the_clock() {
    let mut h = Harness::new();
    // Valid for 100 s; the first attempt fails, so it is reused at 60 s.
    h.pool.set_token(Some(RegistrationToken {
        token: "T".into(),
        expires_at: Some(h.clock.stamp(100)),
        timestamp: None,
    }));
    h.host.lock().configure_results = [
        Err(failed("config.sh", 1)),
        Err(failed("config.sh", 1)),
        Err(failed("config.sh", 1)),
    ]
    .into();
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    h.idle_for(Duration::from_secs(90)).await;
    // The same token again: refused now (within the margin), not reused.
    assert_eq!(h.host.lock().configures.len(), 3);
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 1);
}

#[tokio::test(start_paused = true)]
async fn config_sh_failing_twice_is_retried_without_a_failure_signal() {
    let mut h = Harness::new();
    h.host.lock().configure_results =
        [Err(failed("config.sh", 1)), Err(failed("config.sh", 1))].into();
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 0);
    let host = h.host.lock();
    assert_eq!(host.configures.len(), 3);
    assert_eq!(host.removes.len(), 2, "local cleanup between attempts");
    assert!(
        host.configures
            .iter()
            .all(|(n, _, _)| n == &format!("{INSTANCE}-1")),
        "one name per registration"
    );
}

#[tokio::test(start_paused = true)]
async fn config_sh_failing_every_attempt_signals_ud_reg_failed_once_per_token() {
    let mut h = Harness::new();
    h.host.lock().configure_results = (0..6).map(|_| Err(failed("config.sh", 1))).collect();
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    h.idle_for(Duration::from_secs(30)).await;
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 1);
    assert_eq!(h.host.lock().configures.len(), 3);
    assert_eq!(h.saved().registration(), None, "nothing left registered");
    // The control plane refreshes the token: three more tries, one signal.
    h.pool.set_token(Some(token(&h.clock, "TOKEN-2")));
    h.wait_until("second round", |h| h.host.lock().configures.len() == 6)
        .await;
    h.wait_until("second failure", |h| {
        h.pool.count(Signal::RegFailed, INITIAL_RUN) == 2
    })
    .await;
    h.pool.set_token(Some(token(&h.clock, "TOKEN-3")));
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
}

#[tokio::test(start_paused = true)]
async fn released_while_registration_fails_goes_back_to_idle_without_a_signal() {
    let mut h = Harness::new();
    h.pool.set_token(None);
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    h.pool.release();
    h.wait_phase("idle").await;
    h.idle_for(Duration::from_secs(10)).await;
    assert_eq!(h.pool.signals().len(), 2, "{:?}", h.pool.signals());
    h.pool.set_token(Some(token(&h.clock, "TOKEN-2")));
    h.pool.claim("2001");
    h.wait_signal(Signal::RegOk, "2001").await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_read_of_a_claim_is_not_a_claim_until_confirmed() {
    let h = Harness::started_and_idle().await;
    // Eventually consistent reads say claimed; the consistent read not.
    h.pool.lock().stale = Some(Some(InstanceRecord {
        run_id: Some("ghost".into()),
        ..Default::default()
    }));
    h.idle_for(Duration::from_secs(10)).await;
    assert_eq!(h.host.lock().configures.len(), 1);
    assert_eq!(h.saved().phase.name(), "idle");
}

#[tokio::test(start_paused = true)]
async fn lagging_reads_of_the_released_run_are_not_a_new_claim() {
    let h = Harness::started_and_serving().await;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    // Eventually consistent reads lag: they still name the released run;
    // the confirming read does not.
    h.pool.lock().stale = Some(Some(InstanceRecord {
        run_id: Some(INITIAL_RUN.into()),
        ..Default::default()
    }));
    let confirms = h.pool.lock().consistent_reads;
    h.idle_for(Duration::from_secs(3)).await;
    assert!(
        h.pool.lock().consistent_reads > confirms,
        "each one confirmed"
    );
    assert_eq!(h.host.lock().configures.len(), 1);
    assert_eq!(h.saved().phase.name(), "idle");
}

/// Provision jobs of one workflow run, and re-runs, share its run id: the
/// run just released claims again at once, and registers as fast as any
/// claim (the control plane waits 10 s).
#[tokio::test(start_paused = true)]
async fn the_run_just_released_claiming_again_at_once_registers_within_300_ms() {
    let h = Harness::started_and_serving().await;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.pool.claim(INITIAL_RUN);
    let claimed = tokio::time::Instant::now();
    h.wait_until("second UD_REG_OK", |h| {
        h.pool.count(Signal::RegOk, INITIAL_RUN) == 2
    })
    .await;
    let took = claimed.elapsed();
    assert!(took <= Duration::from_millis(300), "{took:?}");
}

/// A claimed record whose threshold is already past (the control plane
/// expired it on a stale heartbeat and left the claim): no registration,
/// so no runner takes a job on an instance about to go; a renewed
/// threshold registers at once.
#[tokio::test(start_paused = true)]
async fn an_expired_claim_is_not_registered_until_renewed() {
    let h = Harness::started_and_idle().await;
    h.pool.set_threshold(Some(&h.clock.stamp(-300)));
    h.pool.claim("2001");
    h.idle_for(Duration::from_secs(30)).await;
    assert_eq!(h.pool.count(Signal::RegOk, "2001"), 0);
    assert_eq!(h.pool.count(Signal::RegFailed, "2001"), 0);
    assert_eq!(h.host.lock().configures.len(), 1);
    // Checked again at the claimed poll (2 s), not every idle poll.
    let confirms = h.pool.lock().consistent_reads;
    h.idle_for(Duration::from_secs(10)).await;
    let again = h.pool.lock().consistent_reads - confirms;
    assert!((4..=6).contains(&again), "{again} confirming reads in 10 s");
    h.pool.set_threshold(Some(&h.clock.stamp(300)));
    h.wait_signal(Signal::RegOk, "2001").await;
}

#[tokio::test(start_paused = true)]
async fn the_same_run_claiming_again_registers_again() {
    let h = Harness::started_and_serving().await;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.pool.claim(INITIAL_RUN);
    h.wait_until("second registration", |h| {
        h.pool.count(Signal::RegOk, INITIAL_RUN) == 2
    })
    .await;
    assert_eq!(h.host.lock().configures.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn read_errors_while_idle_keep_the_machine_polling_until_they_pass() {
    let h = Harness::started_and_idle().await;
    h.pool.fail_reads(true);
    h.pool.claim("2001");
    h.idle_for(Duration::from_secs(300)).await;
    assert_eq!(h.pool.count(Signal::RegOk, "2001"), 0);
    assert_eq!(h.saved().phase.name(), "idle");
    h.pool.fail_reads(false);
    h.wait_signal(Signal::RegOk, "2001").await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_instance_record_is_waited_for() {
    let mut h = Harness::new();
    h.start();
    h.wait_phase("idle").await;
    h.idle_for(Duration::from_secs(30)).await;
    assert!(h.pool.lock().record.is_none());
    h.pool.claim(INITIAL_RUN);
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
}

#[tokio::test(start_paused = true)]
async fn idle_polls_at_the_idle_interval() {
    let h = Harness::started_and_idle().await;
    let before = h.pool.reads();
    h.idle_for(Duration::from_secs(60)).await;
    let reads = h.pool.reads() - before;
    // One eventually consistent read per 250 ms.
    assert!((235..=245).contains(&reads), "{reads} reads in 60 s");
}

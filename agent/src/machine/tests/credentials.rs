//! Job credentials follow the run (`RunnerHost::run_claimed`, `run_over`):
//! every runner starts with its run's session live, the release ends it
//! before the runner is stopped, and a resumed run gets one again.

use super::*;
use crate::machine::RunnerHost;

fn runs(h: &Harness) -> Vec<Option<String>> {
    h.host.lock().run_changes.clone()
}

fn some(run: &str) -> Option<String> {
    Some(run.to_owned())
}

#[tokio::test(start_paused = true)]
async fn each_run_has_a_session_from_its_claim_to_its_release() {
    let h = Harness::started_and_idle().await;
    for run in ["2001", "2002"] {
        h.pool.claim(run);
        h.wait_signal(Signal::RegOk, run).await;
        h.wait_until("runner started", |h| !h.host.running().is_empty())
            .await;
        assert_eq!(h.host.lock().current_run, some(run));
        h.pool.release();
        h.wait_signal(Signal::RemoveRegRemoveRunOk, run).await;
        assert_eq!(h.host.lock().current_run, None);
    }
    assert_eq!(
        runs(&h),
        [
            some(INITIAL_RUN),
            None,
            some("2001"),
            None,
            some("2002"),
            None
        ]
    );
    let s = h.host.lock();
    // Each runner started inside its run's session; no reset ran inside
    // one (the release ended it first).
    assert_eq!(
        s.started_for,
        [some(INITIAL_RUN), some("2001"), some("2002")]
    );
    assert!(!s.reset_for.is_empty());
    assert!(s.reset_for.iter().all(Option::is_none), "{:?}", s.reset_for);
}

#[tokio::test(start_paused = true)]
async fn a_runner_restart_keeps_the_session_and_a_stop_ends_it() {
    let mut h = Harness::started_and_serving().await;
    h.host.runner_exits(2);
    h.wait_until("runner restarted", |h| h.host.lock().starts == 2)
        .await;
    assert_eq!(runs(&h), [some(INITIAL_RUN)], "one session for the run");
    h.stop().await;
    assert_eq!(runs(&h), [some(INITIAL_RUN), None]);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_agent_resuming_a_run_starts_its_session_again() {
    let mut h = Harness::started_and_serving().await;
    h.kill();
    // The killed agent's session died with it (its memory); the fake
    // keeps the record, so forget it as the process would.
    h.host.run_over();
    h.start();
    h.wait_phase("registered").await;
    h.wait_until("session resumed", |h| {
        h.host.lock().current_run.as_deref() == Some(INITIAL_RUN)
    })
    .await;
}

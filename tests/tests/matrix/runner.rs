//! The runner process.

use super::*;

/// The listener crashes at every start with a code the runner does not
/// define: restarted with back-off, never registered again, and the
/// release is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_crash_loop_is_restarted_with_back_off_and_the_release_answered() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let jobs = stack.jobs_dir();
    std::fs::write(jobs.join(format!("{INITIAL_RUN_ID}.crash")), "42").unwrap();
    std::fs::write(jobs.join(format!("{INITIAL_RUN_ID}.exit")), "42").unwrap();
    // Exit, then restarts after 1 s, 2 s, 4 s: four exits within ~9 s.
    let started = Instant::now();
    stack.wait_events("LISTENER_EXIT", 4).await;
    assert!(started.elapsed() >= Duration::from_secs(6), "no back-off");
    let log = agent.log_text();
    assert!(
        log.contains("runner exited 42 while claimed; restarting"),
        "{log}"
    );
    assert_eq!(stack.count_events("CONFIGURE "), 1);
    std::fs::remove_file(jobs.join(format!("{INITIAL_RUN_ID}.crash"))).unwrap();
    stack.release_initial().await;
    assert!(stack.live_listeners().is_empty());
    stack.assert_invariants(&agent, &[]).await;
}

/// A listener that ignores SIGTERM: stopping it (at the release, and at the
/// agent's own stop) kills its process group after `stop_timeout` (5 s
/// here), and both finish with their signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_ignoring_sigterm_is_killed_and_release_and_stop_complete() {
    let stack = Stack::start(StackOptions::default()).await;
    let jobs = stack.jobs_dir();
    for run in [INITIAL_RUN_ID, "3000-1"] {
        std::fs::write(jobs.join(format!("{run}.ignore-term")), "").unwrap();
    }
    let mut agent = stack.boot_agent(&AgentSpec::default()).await;
    let released = Instant::now();
    stack.release_initial().await;
    assert!(
        released.elapsed() >= Duration::from_secs(5),
        "not the SIGKILL path"
    );
    assert!(stack.live_listeners().is_empty(), "listener survived");
    let id = &stack.instance_id;
    stack.cp.claim(id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    while stack.live_listeners().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill(libc::SIGTERM);
    let status = agent.wait_exit(WAIT).await.expect("stops");
    assert!(status.success(), "{status:?}");
    assert!(
        stack.live_listeners().is_empty(),
        "listener survived the stop"
    );
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", "3000-1", WAIT)
        .await;
    stack.assert_invariants(&agent, &[]).await;
}

//! The state dir.

use super::*;
use stack::mount::Mount;

/// A read-only state dir at start: the lock (which keeps a second agent
/// off the runner) cannot be taken; the agent refuses to start with the
/// reason, registers nothing, and systemd's restart tries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_dir_at_start_is_refused_with_the_reason() {
    let stack = Stack::start(StackOptions::default()).await;
    let _mount = Mount::tmpfs(&state_dir(&stack), "ro,size=1m");
    let mut agent = stack.spawn_agent(&AgentSpec::default());
    let status = agent.wait_exit(WAIT).await.expect("exits");
    assert!(!status.success());
    let log = agent.log_text();
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(stack.count_events("CONFIGURE"), 0);
    stack.assert_invariants(&agent, &[]).await;
}

/// The state dir turns read-only while serving: every save fails and is
/// logged, the lifecycle goes on, and no signal is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_turning_read_only_while_serving_loses_no_signal() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let _read_only = Mount::read_only_over(&state_dir(&stack));
    stack.release_initial().await;
    stack.cp.claim(&stack.instance_id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    let log = agent.log_text();
    assert!(log.contains("saving state"), "{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    stack.assert_invariants(&agent, &[]).await;
}

/// The state dir's volume is full: saves fail and are logged, signals are
/// still written; once there is room again the state is saved again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_dir_loses_no_signal_and_saving_resumes_when_space_returns() {
    let stack = Stack::start(StackOptions::default()).await;
    let dir = state_dir(&stack);
    let _mount = Mount::tmpfs(&dir, "size=256k");
    let agent = stack.boot_agent(&AgentSpec::default()).await;
    let filler = dir.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
    }
    stack.release_initial().await;
    let log = agent.log_text();
    assert!(log.contains("No space left on device"), "{log}");
    std::fs::remove_file(&filler).unwrap();
    stack.cp.claim(&stack.instance_id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    // (`phase` in the file keeps the older agents' names: "registered".)
    wait_phase(&stack, &agent, "registered").await;
    let saved = std::fs::read_to_string(dir.join("state.json")).unwrap();
    assert!(saved.contains("3000-1"), "{saved}");
    stack.assert_invariants(&agent, &[]).await;
}

/// A crash leaves the runner registered and running, and `state.json`
/// is then found corrupt: the agent starts afresh, stops the orphaned
/// runner, drops the old registration and registers once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_after_a_crash_starts_afresh_with_one_runner() {
    let stack = Stack::start(StackOptions::default()).await;
    let mut first = stack.boot_agent(&AgentSpec::default()).await;
    first.kill(libc::SIGKILL);
    first.wait_exit(WAIT).await.expect("killed");
    std::fs::write(state_dir(&stack).join("state.json"), b"{\"phase\": \"serv").unwrap();
    let agent = stack.spawn_agent(&AgentSpec::default());
    agent.assert_log("ignoring unreadable state", WAIT).await;
    let started = Instant::now();
    while stack.count_events("CONFIGURE ") < 2 || stack.live_listeners().is_empty() {
        assert!(started.elapsed() < WAIT, "{}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    assert_eq!(stack.count_events("CONFIGURE_REFUSED"), 0);
    assert_eq!(
        stack.live_listeners().len(),
        1,
        "{:#?}",
        stack.runner_events()
    );
    assert!(agent.log_text().contains("is corrupt"));
    stack.release_initial().await;
    stack.assert_invariants(&agent, &[]).await;
}

//! Signals to the agent.

use super::*;

const HUP_LOG: &str =
    "SIGHUP: configuration reload is not supported; restart the service to apply changes";

fn hups(agent: &AgentProcess) -> usize {
    agent.log_text().matches(HUP_LOG).count()
}

/// Waits until the agent has logged `count` SIGHUPs.
async fn wait_hups(agent: &AgentProcess, count: usize) {
    let started = Instant::now();
    while hups(agent) < count {
        assert!(
            started.elapsed() < WAIT,
            "SIGHUP not logged:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends SIGHUP and waits until the agent has logged it.
async fn hup(agent: &AgentProcess) {
    let before = hups(agent);
    agent.kill(libc::SIGHUP);
    wait_hups(agent, before + 1).await;
}

/// SIGHUP is not a reload: logged, and nothing changes, in every state
/// (booting, registering, serving, releasing, resetting, idle); the agent
/// then stops cleanly on SIGTERM. GitHub is slow (2 s per config.sh) so
/// that registering and releasing last long enough to be hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_in_every_state_is_logged_and_changes_nothing() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = &stack.instance_id;
    stack.imds.set_down(true);
    let mut agent = stack.spawn_agent(&AgentSpec {
        env: vec![("FAKE_GITHUB_LATENCY".into(), "2".into())],
        ..Default::default()
    });
    // Booting: IMDS not there yet. The signal is held until the agent
    // knows its instance, then logged.
    agent
        .assert_log("instance metadata not ready; retrying", WAIT)
        .await;
    agent.kill(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.imds.set_down(false);
    wait_hups(&agent, 1).await;
    // Registering: config.sh takes 2 s.
    wait_phase(&stack, &agent, "registering").await;
    hup(&agent).await;
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    // Serving ("registered" in the file): the listener keeps running.
    while stack.live_listeners().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hup(&agent).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.live_listeners().len(), 1);
    assert_eq!(stack.count_events("LISTENER_START"), 1);
    // A job leaves many files in _work, so that the reset takes a moment.
    stack.queue_steps(
        INITIAL_RUN_ID,
        "mkdir junk && cd junk && seq 1 20000 | xargs touch && echo steps done\n",
    );
    stack.wait_steps(INITIAL_RUN_ID).await;
    // Releasing (config.sh remove takes 2 s), then resetting: SIGHUP every
    // few ms, noting the phase each one hit.
    stack.cp.release(id, INITIAL_RUN_ID, "created").await;
    let mut hit = std::collections::BTreeSet::new();
    let started = Instant::now();
    while stack
        .cp
        .signal(id)
        .await
        .is_none_or(|s| s.state != "UD_REMOVE_REG_REMOVE_RUN_OK")
    {
        assert!(started.elapsed() < WAIT, "{}", agent.log_text());
        let now = phase(&stack);
        agent.kill(libc::SIGHUP);
        hit.insert(now);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    // The file's older names: "deregistering" is releasing.
    for name in ["deregistering", "resetting"] {
        assert!(hit.contains(name), "no SIGHUP while {name}: {hit:?}");
    }
    wait_phase(&stack, &agent, "idle").await;
    hup(&agent).await;
    // Still alive and serving claims.
    stack.cp.claim(id, "3000-1").await;
    stack.assert_signal("UD_REG_OK", "3000-1", CLAIM_WAIT).await;
    agent.kill(libc::SIGTERM);
    let status = agent.wait_exit(WAIT).await.expect("stops");
    assert!(status.success(), "{status:?}");
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", "3000-1", WAIT)
        .await;
    stack.assert_invariants(&agent, &[]).await;
}

//! End to end: the release binary against moto + fakes, the control plane's
//! side played by the driver.

use stack::agent::AgentSpec;
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::time::Duration;

/// boot → UD_OK → (created for the initial run) UD_REG_OK → release →
/// UD_REMOVE_REG_REMOVE_RUN_OK, then five claim/release cycles from idle,
/// one with a job; heartbeat in the protocol's shape; token never on argv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_and_five_more_cycles() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.instance_id.clone();
    let mut agent = stack.spawn_agent(&AgentSpec {
        pre_runner: Some("echo preparing the instance\n".into()),
        ..Default::default()
    });
    let cp = &stack.cp;
    stack
        .assert_signal("UD_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    // The control plane created the instance for the initial run: claimed.
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    agent
        .assert_log("preparing the instance", Duration::from_secs(5))
        .await;
    stack.release_initial().await;

    for cycle in 1..=5 {
        let run_id = format!("2000-{cycle}");
        cp.claim(&id, &run_id).await;
        stack.assert_signal("UD_REG_OK", &run_id, SIGNAL_WAIT).await;
        if cycle == 3 {
            stack.queue_job(&run_id, 2);
            assert!(agent.wait_log("", Duration::from_millis(1)).await);
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        stack.release_run(&run_id, "claimed").await;
    }

    let configures = stack.events("CONFIGURE ");
    assert_eq!(configures.len(), 6, "{configures:#?}");
    for (n, line) in configures.iter().enumerate() {
        assert!(line.contains(&format!("name={id}-{}", n + 1)), "{line}");
        assert!(line.contains("unattended=true"), "{line}");
        assert!(
            line.contains("url=https://github.com/acme/widgets"),
            "{line}"
        );
    }
    assert!(
        configures[1].contains("labels=2000-1 "),
        "{}",
        configures[1]
    );
    assert_eq!(stack.count_events("TOKEN_ON_ARGV"), 0);
    assert_eq!(stack.count_events("JOB_START"), 1);
    assert_eq!(stack.count_events("JOB_END"), 1);
    // Jobs see what the control plane's bash agent gave them.
    let job_env = format!(
        "JOB_ENV instance={id} table={} owner=acme repo=widgets",
        cp.table
    );
    assert_eq!(
        stack.count_events(&job_env),
        1,
        "{:?}",
        stack.runner_events()
    );
    assert!(
        !stack.runner_dir().join(".runner").exists(),
        "left registered"
    );
    assert!(
        !agent.log_text().contains("AAAAFAKEREGISTRATIONTOKEN"),
        "token in the log"
    );

    let hb = cp.heartbeat(&id).await.expect("heartbeat item");
    assert_eq!(hb["value"].as_s().unwrap(), "PING");
    assert_eq!(hb["entityType"].as_s().unwrap(), "HEARTBEAT");
    assert_eq!(hb["identifier"].as_s().unwrap(), &id);
    let updated = hb["updatedAt"].as_s().unwrap();
    assert_eq!(updated.len(), 20, "{updated}");
    assert!(
        updated.ends_with('Z') && !updated.contains('.'),
        "{updated}"
    );
    // Our extra attributes (the control plane reads `updatedAt` only).
    assert_eq!(
        hb["agentVersion"].as_s().unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        hb["runnerVersion"].as_s().unwrap().starts_with("2."),
        "{hb:?}"
    );
    assert!(hb["agentState"].as_s().is_ok(), "{hb:?}");
    assert!(hb["jobActive"].as_bool().is_ok(), "{hb:?}");
    let free: u64 = hb["freeDiskBytes"].as_n().unwrap().parse().unwrap();
    assert!(free > 0);

    agent.kill(libc::SIGTERM);
    let status = agent
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("exits");
    assert!(status.success(), "{status:?}");
}

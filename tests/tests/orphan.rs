//! Orphans end to end: the pool's table deleted under an idle agent (the
//! control plane torn down). With a short `expiry.orphan_grace`, a tagged
//! instance is terminated in moto; an untagged one keeps running, out of
//! the pool, and `runner-agent status` says why.

use stack::agent::{AgentProcess, AgentSpec};
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::time::Duration;

/// Short enough for a test, long next to the idle poll's stretched 4 s
/// while reads fail.
fn short_grace() -> AgentSpec {
    AgentSpec {
        extra: vec!["[expiry]".into(), "orphan_grace = \"6s\"".into()],
        ..Default::default()
    }
}

/// Booted with `spec`, registered for the initial run, released: idle,
/// the record seen. Then the table goes.
async fn idle_then_table_deleted(stack: &Stack, spec: &AgentSpec) -> AgentProcess {
    let agent = stack.boot_agent(spec).await;
    stack.release_initial().await;
    stack.cp.delete_table().await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_table_ends_an_idle_tagged_instance_after_the_grace() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = idle_then_table_deleted(&stack, &short_grace()).await;
    // Not before the grace: a few failed reads are no orphan.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stack.cp.instance_state(&stack.instance_id).await, "running");
    assert!(
        stack.wait_terminated(Duration::from_secs(40)).await,
        "not terminated:\n{}",
        agent.log_text()
    );
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 1);
    // Every call, the self-termination included, within the instance
    // role's policy.
    stack.assert_agent_calls_allowed().await;
    let log = agent.log_text();
    assert!(log.contains("leaving the pool for good"), "{log}");
    assert!(log.contains("the pool's table does not exist"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_it_keeps_running_out_of_the_pool_and_status_says_why() {
    let stack = Stack::start(StackOptions {
        tags: vec![("InitialRunId", INITIAL_RUN_ID)],
        tags_in_metadata: true,
    })
    .await;
    let spec = short_grace();
    let agent = idle_then_table_deleted(&stack, &spec).await;
    agent
        .assert_log("leaving the pool for good", Duration::from_secs(40))
        .await;
    agent
        .assert_log("no AllowSelfTermination tag", Duration::from_secs(10))
        .await;
    assert!(!stack.wait_terminated(Duration::from_secs(3)).await);
    assert_eq!(stack.proxy.counts().get("TerminateInstances"), 0);
    let out = stack
        .agent_command(&["status"], &spec)
        .output()
        .await
        .unwrap();
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains("phase:        orphaned"), "{human}");
    assert!(
        human.contains("orphan: the pool's table does not exist"),
        "{human}"
    );
    let out = stack
        .agent_command(&["status", "--json"], &spec)
        .output()
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"]["name"], "orphaned");
    assert_eq!(json["state"]["reason"], "table_gone");
    drop(agent);
}

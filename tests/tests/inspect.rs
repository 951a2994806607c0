//! `runner-agent pool` against a table two agents of ours and a bash-agent
//! instance (items with the protocol's attributes only) populate, after a
//! claim/release cycle driven by the control-plane driver: one agent idle
//! after its reset, the other running a job. `RA_UPDATE_GOLDEN=1`
//! rewrites the golden output (tests/golden/pool.txt).

use stack::agent::{userdata_binary, AgentSpec};
use stack::github::FAKE_RUNNER_VERSION;
use stack::golden;
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::time::Duration;

/// Sorts after any EC2 instance id moto makes (`i-` and 17 hex digits).
const BASH_INSTANCE: &str = "i-ffffffffffffffffff";

/// Times, sizes, ids and the agent's version replaced, runs of spaces
/// squeezed, instance lines sorted (moto's instance ids are random): what
/// is left is the shape and the content that must not move.
fn normalise(text: &str, names: &[(&str, &str)]) -> String {
    let mut lines = Vec::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| {
                let mut w = w.replace(FAKE_RUNNER_VERSION, "<runner>");
                for (id, name) in names {
                    w = w.replace(id, name);
                }
                let w = w.replace(&format!("v{}", env!("CARGO_PKG_VERSION")), "v<version>");
                let trimmed = w.trim_end_matches(',').trim_end_matches(')');
                let is_time = !trimmed.is_empty()
                    && trimmed.chars().next().unwrap().is_ascii_digit()
                    && trimmed.ends_with(['s', 'm', 'h'])
                    && trimmed
                        .chars()
                        .all(|c| c.is_ascii_digit() || "smhd".contains(c));
                if is_time {
                    return w.replace(trimmed, "<t>");
                }
                if w.starts_with("20") && w.ends_with("Z)") {
                    return "<at>)".to_owned();
                }
                if w.contains('.') && w.chars().next().unwrap().is_ascii_digit() {
                    return "<n>".to_owned();
                }
                w
            })
            .collect();
        lines.push(words.join(" "));
    }
    if lines.len() > 2 {
        let last = lines.len() - 1;
        lines[1..last].sort();
    }
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_inspector_shows_two_agents_and_a_bash_agent_json_and_needs_only_query() {
    let stack = Stack::start(StackOptions::default()).await;
    let spec = AgentSpec::default();
    let agent = stack.boot_agent(&spec).await;
    let id = stack.instance_id.clone();
    stack.release_initial().await;
    // Another instance of the pool, our agent too, registered for the
    // initial run (the control plane marks it running) and in a job.
    let sibling = stack.sibling().await;
    let other = sibling.boot_agent(&spec).await;
    let other_id = sibling.instance_id.clone();
    let running = aws_sdk_dynamodb::types::AttributeValue::S("running".into());
    stack.cp.set_record_attr(&other_id, "state", running).await;
    sibling.queue_job(INITIAL_RUN_ID, 300);
    let threshold = stack::control::iso(time::OffsetDateTime::now_utc() + Duration::from_secs(300));
    stack
        .cp
        .put_instance(BASH_INSTANCE, "claimed", "2000-1", &threshold)
        .await;
    stack
        .cp
        .put_as_bash_agent(BASH_INSTANCE, "UD_REG_OK", "2000-1")
        .await;
    // The heartbeats report the idle state after a reset, and the job,
    // within one interval.
    let started = std::time::Instant::now();
    loop {
        let attr = |beat: &Option<std::collections::HashMap<_, _>>, name: &str| {
            beat.as_ref()
                .and_then(|b| b.get(name))
                .map(|v: &aws_sdk_dynamodb::types::AttributeValue| format!("{v:?}"))
        };
        let ours = stack.cp.heartbeat(&id).await;
        let theirs = stack.cp.heartbeat(&other_id).await;
        if attr(&ours, "agentState").is_some_and(|s| s.contains("\"idle\""))
            && attr(&ours, "lastReset").is_some()
            && attr(&theirs, "jobActive").is_some_and(|s| s.contains("true"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{ours:?}\n{theirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let table = stack.cp.table.clone();
    let pool = |extra: &[&str]| {
        let mut args = vec!["pool", "--table", &table, "--region", stack::REGION];
        args.extend(extra);
        let mut command = stack.agent_command(&args, &spec);
        command.env_remove("FAKE_RUNNER_LOG");
        command
    };
    let out = pool(&[]).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let names = [(id.as_str(), "<ours>"), (other_id.as_str(), "<sibling>")];
    golden::assert_text("pool.txt", &normalise(&text, &names), &text);

    let out = pool(&["--json"]).output().await.unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{json}");
    let row = |instance: &str| {
        rows.iter()
            .find(|r| r["instance_id"] == instance)
            .unwrap_or_else(|| panic!("no {instance} in {json}"))
    };
    let ours = row(&id);
    assert_eq!(ours["agent"]["state"], "idle");
    assert_eq!(ours["agent"]["last_reset"], "ok");
    assert_eq!(ours["signal"], "UD_REMOVE_REG_REMOVE_RUN_OK");
    assert!(ours["agent"]["free_disk_bytes"].as_u64().unwrap() > 0);
    let theirs = row(&other_id);
    assert_eq!(theirs["state"], "running");
    assert_eq!(theirs["run_id"], INITIAL_RUN_ID);
    assert_eq!(theirs["agent"]["state"], "registered");
    assert_eq!(theirs["agent"]["job_active"], true);
    assert_eq!(theirs["agent"]["runner_version"], FAKE_RUNNER_VERSION);
    assert_eq!(theirs["signal"], "UD_REG_OK");
    let bash = row(BASH_INSTANCE);
    assert_eq!(bash["agent"], serde_json::Value::Null);
    assert_eq!(bash["run_id"], "2000-1");
    for (state, count) in [("idle", 1), ("claimed", 1), ("running", 1), ("stale", 0)] {
        assert_eq!(json["summary"][state], count, "{state}: {json}");
    }

    // --watch refreshes until stopped.
    let mut watch = pool(&["--watch", "300ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    watch.start_kill().unwrap();
    let out = watch.wait_with_output().await.unwrap();
    let refreshes = String::from_utf8_lossy(&out.stdout)
        .matches(" instances: ")
        .count();
    assert!(refreshes >= 2, "{refreshes} refreshes");

    // Both agents stopped, so that the proxy sees the inspector's calls
    // alone; the operator policy allows exactly those.
    let (mut agent, mut other) = (agent, other);
    for process in [&mut agent, &mut other] {
        process.kill(libc::SIGTERM);
        process
            .wait_exit(Duration::from_secs(30))
            .await
            .expect("agent exits");
    }
    stack.proxy.reset();
    assert!(pool(&[]).output().await.unwrap().status.success());
    let called: Vec<String> = stack.proxy.counts().iam_actions.into_iter().collect();
    let out = std::process::Command::new(userdata_binary())
        .args(["iam-policy", "--operator", "--table", &table])
        .output()
        .unwrap();
    assert!(out.status.success());
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let allowed: Vec<String> = policy["Statement"][0]["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(called, allowed);
    assert_eq!(policy["Statement"].as_array().unwrap().len(), 1);
    stack.assert_invariants(&agent, &[]).await;
    sibling.assert_invariants(&other, &[]).await;
}

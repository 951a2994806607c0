//! `runner-agent pool` against a table an agent of ours and a bash-agent
//! instance (items with the protocol's attributes only) populate, after a
//! claim/release cycle driven by the control-plane driver.

use stack::agent::{userdata_binary, AgentSpec};
use stack::github::FAKE_RUNNER_VERSION;
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::time::Duration;

/// Sorts after any EC2 instance id moto makes (`i-` and 17 hex digits).
const BASH_INSTANCE: &str = "i-ffffffffffffffffff";

/// Times, sizes, ids and the agent's version replaced, runs of spaces
/// squeezed: what is left is the shape and the content that must not move.
fn normalise(text: &str, ours: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| {
                let w = w
                    .replace(ours, "<ours>")
                    .replace(FAKE_RUNNER_VERSION, "<runner>");
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
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_inspector_shows_both_agents_json_and_needs_only_query() {
    let stack = Stack::start(StackOptions::default()).await;
    let spec = AgentSpec::default();
    let agent = stack.boot_agent(&spec).await;
    let id = stack.instance_id.clone();
    stack.cp.release(&id, INITIAL_RUN_ID, "created").await;
    stack
        .expect_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID)
        .await;
    let threshold = stack::control::iso(time::OffsetDateTime::now_utc() + Duration::from_secs(300));
    stack
        .cp
        .put_instance(BASH_INSTANCE, "claimed", "2000-1", &threshold)
        .await;
    stack
        .cp
        .put_as_bash_agent(BASH_INSTANCE, "UD_REG_OK", "2000-1")
        .await;
    // Our heartbeat reports the idle state within one interval.
    let started = std::time::Instant::now();
    loop {
        let beat = stack.cp.heartbeat(&id).await.unwrap();
        if beat
            .get("agentState")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str)
            == Some("idle")
            && beat.contains_key("lastReset")
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{beat:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stopped, so that the proxy sees the inspector's calls alone.
    let mut agent = agent;
    agent.kill(libc::SIGTERM);
    agent
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("agent exits");
    stack.proxy.reset();
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
    let golden = include_str!("../golden/pool.txt");
    assert_eq!(normalise(&text, &id), golden, "\n{text}");

    let out = pool(&["--json"]).output().await.unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = json["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    assert_eq!(rows[0]["instance_id"], id.as_str());
    assert_eq!(rows[0]["agent"]["state"], "idle");
    assert_eq!(rows[0]["agent"]["last_reset"], "ok");
    assert_eq!(rows[0]["signal"], "UD_REMOVE_REG_REMOVE_RUN_OK");
    assert!(rows[0]["agent"]["free_disk_bytes"].as_u64().unwrap() > 0);
    assert_eq!(rows[1]["agent"], serde_json::Value::Null);
    assert_eq!(rows[1]["run_id"], "2000-1");
    assert_eq!(json["summary"]["idle"], 1);
    assert_eq!(json["summary"]["claimed"], 1);
    assert_eq!(json["summary"]["stale"], 0);

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

    // The operator policy allows exactly what the inspector called.
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
}

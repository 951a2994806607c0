//! The binary's other faces: `check`, `status --json`, systemd's
//! notification socket, and running the runner as another user.

use stack::agent::AgentSpec;
use stack::users::{ensure_user, root_or_skip};
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// `runner-agent check` against the stack: the process output and stdout.
async fn run_check(stack: &Stack, spec: &AgentSpec) -> (std::process::Output, String) {
    let out = stack
        .agent_command(&["check"], spec)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_instance_and_names_what_fails() {
    let stack = Stack::start(StackOptions::default()).await;
    let spec = AgentSpec::default();
    stack.write_config(&spec);
    let (out, text) = run_check(&stack, &spec).await;
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ok    config",
        "ok    imds: instance",
        "ok    tag InitialRunId",
        "ok    table",
        "ok    runner dir",
        "ok    state dir",
        "ok    tag AllowSelfTermination: true",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(text.contains("checksum from the release API"), "{text}");

    // A table that does not exist and no InitialRunId tag: two failures.
    let config = std::fs::read_to_string(stack.config_path()).unwrap();
    std::fs::write(
        stack.config_path(),
        config.replace(&stack.cp.table, "no-such-table"),
    )
    .unwrap();
    stack.imds.state.lock().unwrap().tags.remove("InitialRunId");
    let (out, text) = run_check(&stack, &spec).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  table"), "{text}");
    assert!(text.contains("FAIL  tag InitialRunId"), "{text}");
    assert!(text.contains("2 check(s) failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_phase_and_registration() {
    let stack = Stack::start(StackOptions::default()).await;
    let spec = AgentSpec::default();
    let agent = stack.spawn_agent(&spec);
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    // The agent stores the signal, then its state file: `status` may still
    // say "registering" for a moment after the signal is visible.
    let started = Instant::now();
    let status = loop {
        let out = stack
            .agent_command(&["status", "--json"], &spec)
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        if status["phase"] != "registering" || started.elapsed() > Duration::from_secs(5) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["running"], true);
    assert_eq!(status["phase"], "registered", "{status}");
    assert_eq!(status["registration"]["run_id"], INITIAL_RUN_ID);
    assert_eq!(status["last_signal"]["signal"], "UD_REG_OK");
    assert_eq!(status["instance_id"], stack.instance_id.as_str());
    let human = stack
        .agent_command(&["status"], &spec)
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&human.stdout).contains("phase:        registered"));
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_systemd_ready_and_status() {
    let stack = Stack::start(StackOptions::default()).await;
    let socket_path = stack.dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let spec = AgentSpec {
        env: vec![
            ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
            ("WATCHDOG_USEC".into(), "2000000".into()),
        ],
        ..Default::default()
    };
    let mut agent = stack.spawn_agent(&spec);
    let mut seen = String::new();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    while !(seen.contains("READY=1")
        && seen.contains("WATCHDOG=1")
        && seen.contains("STATUS=registered"))
    {
        assert!(started.elapsed() < WAIT, "got only:\n{seen}");
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    agent.kill(libc::SIGTERM);
    agent.wait_exit(WAIT).await.expect("exits");
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await
    {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("STOPPING=1"), "{seen}");
}

/// The runner and its jobs run as `runner.user`, not as the (root) agent,
/// and cannot change the install: config.sh runs as root and its files are
/// root's (the user's group reads them); the user owns only `_work` and
/// `_diag`. Needs root to create the user and switch to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_runs_as_the_configured_user() {
    if !root_or_skip("switching users needs root") {
        return;
    }
    const USER: &str = "ra-runner";
    ensure_user(USER);
    let stack = Stack::start(StackOptions::default()).await;
    stack.open_to_runner_user();
    let _agent = stack.spawn_agent(&AgentSpec {
        user: Some(USER.into()),
        ..Default::default()
    });
    stack.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
    let id_of = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, USER])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (uid, gid) = (id_of("-u"), id_of("-g"));
    let runner = std::fs::metadata(stack.runner_dir().join(".runner")).unwrap();
    assert_eq!(
        (runner.uid(), runner.gid()),
        (0, gid),
        ".runner root's, the user's group"
    );
    assert_eq!(runner.mode() & 0o777, 0o640);
    for path in [
        "",
        "config.sh",
        "bin",
        "bin/Runner.Listener",
        ".runner-agent",
    ] {
        let meta = std::fs::metadata(stack.runner_dir().join(path)).unwrap();
        assert_eq!(meta.uid(), 0, "{path} is root's");
        assert_eq!(meta.mode() & 0o022, 0, "{path} is writable by others");
    }
    for path in ["_work", "_diag", ".runner-agent/job"] {
        let meta = std::fs::metadata(stack.runner_dir().join(path)).unwrap();
        assert_eq!(meta.uid(), uid, "{path} is the user's");
    }
    let started = Instant::now();
    let listener_pid = loop {
        if let Some(pid) = stack.runner_events().iter().find_map(|(_, e)| {
            e.strip_prefix("LISTENER_START ")
                .and_then(|r| r.split("pid=").nth(1))
                .map(str::to_owned)
        }) {
            break pid;
        }
        assert!(started.elapsed() < WAIT, "listener never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let listener_uid = std::fs::metadata(format!("/proc/{listener_pid}"))
        .unwrap()
        .uid();
    assert_eq!(listener_uid, uid, "listener not running as {USER}");
    stack.release_initial().await;
    assert!(!stack.runner_dir().join(".runner").exists());
}

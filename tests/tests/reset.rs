//! The reset between runs, end to end: the shipped agent, a real dockerd
//! (tests/src/docker.rs), the fake runner running a job's steps as a child
//! of its listener (as Runner.Worker does), and the control plane's driver.

use stack::agent::AgentSpec;
use stack::docker::{alive, Dockerd, IMAGE};
use stack::mount::Mount;
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// This file's patience (signals after a reset, a job's steps): twice
/// `stack::SIGNAL_WAIT`.
const RESET_WAIT: Duration = Duration::from_secs(60);

/// A job that leaves everything a reset must take: containers (running and
/// stopped, one with a volume), a named volume, a network, files in the
/// workspace and in `_tool` (kept), credentials in the home, and a daemon
/// double-forked with setsid from /tmp whose pid lands in `pidfile`.
fn messy_job(docker_host: &str, home: &Path, run: &str, pidfile: &Path) -> String {
    format!(
        r#"d() {{ docker --host '{docker_host}' "$@"; }}
d run -d --network none {IMAGE} sleep 1000 >/dev/null
d run -d --network none {IMAGE} sleep 1000 >/dev/null
d run --network none {IMAGE} echo done >/dev/null
d volume create job-vol-{run} >/dev/null
d run -d --network none -v job-vol-{run}:/data {IMAGE} sleep 1000 >/dev/null
d network create --internal job-net-{run} >/dev/null
echo build > build.out
mkdir -p ../../_tool/node && echo cached > ../../_tool/node/{run}
mkdir -p ../../_temp && echo secret > ../../_temp/token
mkdir -p '{home}/.docker' '{home}/.aws' '{home}/.ssh'
echo '{{"auths":{{}}}}' > '{home}/.docker/config.json'
echo key > '{home}/.aws/credentials'
echo job-key > '{home}/.ssh/id_job'
cd /tmp && setsid sh -c 'echo $$ > {pidfile}; exec sleep 1000' < /dev/null > /dev/null 2>&1 &
sleep 0.2
echo steps done
"#,
        home = home.display(),
        pidfile = pidfile.display(),
    )
}

/// The initial run's release fails its reset, and the claim of `next` is
/// refused.
async fn expect_unclean(stack: &Stack, next: &str) {
    stack
        .cp
        .release(&stack.instance_id, INITIAL_RUN_ID, "created")
        .await;
    stack
        .assert_signal(
            "UD_REMOVE_REG_REMOVE_RUN_FAILED",
            INITIAL_RUN_ID,
            RESET_WAIT,
        )
        .await;
    stack.cp.claim(&stack.instance_id, next).await;
    stack.assert_signal("UD_REG_FAILED", next, RESET_WAIT).await;
}

fn set(lines: Vec<String>) -> BTreeSet<String> {
    lines.into_iter().collect()
}

/// Ten runs, each leaving the mess above: after every release, nothing of
/// it is left but the image and `_tool`, what the instance held before its
/// first run is untouched, and the next claim registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_runs_leave_nothing_behind_but_the_caches() {
    let dockerd = Dockerd::start();
    // What the operator had before the first run: kept.
    dockerd.lines(&["volume", "create", "operator-cache"]);
    let sidecar = dockerd.lines(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "sidecar",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let stack = Stack::start(StackOptions::default()).await;
    let home = stack.home_dir();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/authorized_keys"), "operator").unwrap();
    let host = dockerd.host();
    let agent = stack.spawn_agent(&AgentSpec {
        reset: vec![
            "docker = \"required\"".into(),
            format!("docker_host = \"{host}\""),
        ],
        ..Default::default()
    });
    let baseline_volumes = set(dockerd.lines(&["volume", "ls", "-q"]));
    let baseline_networks = set(dockerd.lines(&["network", "ls", "-q"]));
    let id = stack.instance_id.clone();
    let cp = &stack.cp;
    let mut previous = (INITIAL_RUN_ID.to_owned(), "created");
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    for n in 1..=10 {
        let (run_id, from) = &previous;
        let pidfile = stack.dir.path().join(format!("daemon-{n}.pid"));
        stack.queue_steps(run_id, &messy_job(&host, &home, &n.to_string(), &pidfile));
        stack.wait_steps(run_id).await;
        let daemon: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(daemon));
        assert!(
            dockerd.lines(&["ps", "-q"]).len() >= 4,
            "run {n}: the job's containers run"
        );
        cp.release(&id, run_id, from).await;
        stack
            .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", run_id, RESET_WAIT)
            .await;

        assert!(!alive(daemon), "run {n}: the setsid daemon survived");
        assert_eq!(
            dockerd.lines(&["ps", "-aq", "--no-trunc"]),
            sidecar,
            "run {n}: only the operator's container is left"
        );
        assert_eq!(
            set(dockerd.lines(&["volume", "ls", "-q"])),
            baseline_volumes,
            "run {n}"
        );
        assert_eq!(
            set(dockerd.lines(&["network", "ls", "-q"])),
            baseline_networks,
            "run {n}"
        );
        assert_eq!(
            dockerd.lines(&["image", "ls", "-q", IMAGE]).len(),
            1,
            "run {n}: image kept"
        );
        let work = stack.runner_dir().join("_work");
        let left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["_tool"], "run {n}: _work holds only the tool cache");
        assert_eq!(
            std::fs::read_dir(work.join("_tool/node")).unwrap().count(),
            n,
            "run {n}: _tool kept"
        );
        assert!(!home.join(".docker/config.json").exists(), "run {n}");
        assert!(!home.join(".aws").exists(), "run {n}");
        assert!(!home.join(".ssh/id_job").exists(), "run {n}");
        assert!(
            home.join(".ssh/authorized_keys").exists(),
            "run {n}: kept from before"
        );

        let next = format!("3000-{n}");
        cp.claim(&id, &next).await;
        stack.assert_signal("UD_REG_OK", &next, SIGNAL_WAIT).await;
        previous = (next, "claimed");
    }
    assert!(
        agent
            .log_text()
            .contains("runner processes tracked by cgroup"),
        "{}",
        agent.log_text()
    );
}

/// A reset that cannot finish is never hidden: the docker daemon gone
/// before the release (the reset cannot remove the job's containers) →
/// UD_REMOVE_REG_REMOVE_RUN_FAILED, and the next claim is refused with
/// UD_REG_FAILED without registering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_gone_fails_the_reset_and_refuses_the_next_claim() {
    let mut dockerd = Dockerd::start();
    let stack = Stack::start(StackOptions::default()).await;
    let host = dockerd.host();
    let agent = stack.spawn_agent(&AgentSpec {
        reset: vec![
            format!("docker_host = \"{host}\""),
            "docker = \"auto\"".into(),
        ],
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    dockerd.lines(&["run", "-d", "--network", "none", IMAGE, "sleep", "1000"]);
    dockerd.stop();
    expect_unclean(&stack, "4000").await;
    assert_eq!(
        stack.count_events("CONFIGURE "),
        1,
        "no registration for the refused claim"
    );
    assert!(
        agent.log_text().contains("docker does not answer"),
        "{}",
        agent.log_text()
    );
}

/// The runner's volume below the configured minimum after the reset (a
/// 64 MiB tmpfs the test mounts on `_work`, `_tool` filling it): the
/// instance is not pooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_fails_the_health_check() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.spawn_agent(&AgentSpec {
        reset: vec!["min_free_space = \"32MiB\"".into()],
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, RESET_WAIT)
        .await;
    // Installed: _work becomes a small volume of its own.
    let volume = stack.runner_dir().join("_work");
    let _unmount = Mount::tmpfs(&volume, "size=64m");
    // The tool cache is kept, and here it leaves too little room.
    stack.queue_steps(
        INITIAL_RUN_ID,
        "mkdir -p ../../_tool && head -c 40000000 /dev/zero > ../../_tool/big\necho steps done\n",
    );
    stack.wait_steps(INITIAL_RUN_ID).await;
    expect_unclean(&stack, "5000").await;
    assert!(
        agent.log_text().contains("free on the runner's volume"),
        "{}",
        agent.log_text()
    );
    drop(agent);
}

/// SIGKILL in the middle of a reset (a workspace of 30,000 files takes a
/// while to remove): the restarted agent finishes the reset, then signals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_reset_then_restart_finishes_it_before_the_signal() {
    let stack = Stack::start(StackOptions::default()).await;
    let spec = AgentSpec::default();
    let agent = stack.spawn_agent(&spec);
    let id = stack.instance_id.clone();
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    stack.queue_steps(
        INITIAL_RUN_ID,
        "for d in $(seq 1 300); do mkdir -p many/$d; (cd many/$d && touch $(seq 1 100)); done\necho steps done\n",
    );
    stack.wait_steps(INITIAL_RUN_ID).await;
    stack.cp.release(&id, INITIAL_RUN_ID, "created").await;
    let state = stack.dir.path().join("state/state.json");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&state)
        .unwrap_or_default()
        .contains("\"resetting\"")
    {
        assert!(
            started.elapsed() < RESET_WAIT,
            "no reset seen\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    agent.kill(libc::SIGKILL);
    let signal = stack.cp.signal(&id).await.map(|s| s.state);
    assert_ne!(
        signal.as_deref(),
        Some("UD_REMOVE_REG_REMOVE_RUN_OK"),
        "signalled before the reset ended"
    );
    let again = stack.spawn_agent(&spec);
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID, RESET_WAIT)
        .await;
    assert!(
        again.log_text().contains("resuming a reset"),
        "{}",
        again.log_text()
    );
    let left: Vec<_> = std::fs::read_dir(stack.runner_dir().join("_work"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

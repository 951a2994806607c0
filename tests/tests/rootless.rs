//! Rootless Docker for jobs in hardened mode, end to end: the shipped
//! agent, hardened, with a dedicated runner user that has subordinate
//! ids, starts Debian's real `dockerd-rootless.sh` (rootlesskit,
//! slirp4netns) as that user; the fake runner's jobs use it through the
//! `DOCKER_HOST` the agent gives them. The firewall is real nft, so each
//! test that runs the agent hardened re-runs itself under `unshare --net`
//! (as tests/tests/hardened.rs does), with a moto of its own in there.

use crate::hardened::{netns, refused_start, sh};
use stack::agent::AgentSpec;
use stack::docker::{import_busybox, IMAGE};
use stack::users::TestUser;
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Set in the inner run; its value is the outer run's network namespace.
const INNER_ENV: &str = "RA_ROOTLESS_OUTER_NETNS";
/// A reset restarts the daemon: twice `stack::SIGNAL_WAIT`.
const RESET_WAIT: Duration = Duration::from_secs(60);
/// The metadata address the runner user may not reach, and one it may.
const METADATA: &str = "169.254.169.254";
const OPEN: &str = "169.254.169.253";

/// Runs `test` again in a new network namespace and asserts it passed
/// there; true when this *is* the inner run. The inner run starts its own
/// moto: the outer one's loopback is not in the namespace.
fn in_private_netns(test: &str) -> bool {
    if let Ok(outer) = std::env::var(INNER_ENV) {
        assert_ne!(netns(), outer, "not in a private network namespace");
        sh(&["ip", "link", "set", "lo", "up"]);
        return true;
    }
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER_ENV, netns())
        .env_remove("RA_MOTO_ENDPOINT")
        .output()
        .expect("running unshare (util-linux)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inner run failed:\n{text}");
    assert!(text.contains("1 passed"), "inner run ran nothing:\n{text}");
    // What the inner run measured, for the outer run's output.
    for line in text.lines().filter(|l| l.starts_with("measured:")) {
        eprintln!("{line}");
    }
    false
}

/// A listener on `addr` that answers every connection with "hello".
fn listen(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut stream, b"hello\n");
        }
    });
    local
}

/// The docker CLI as root against the runner user's daemon.
fn docker(host: &str, args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(["--host", host])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The pids of the runner user's rootlesskit (the daemon's top process).
fn rootlesskit_of(user: &TestUser) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-u", &user.uid.to_string(), "-x", "rootlesskit"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A dedicated runner user with a home and subordinate uids and gids, as
/// `useradd` gives a regular user (the test users are system users).
fn runner_user(name: &'static str, home: &Path) -> TestUser {
    let user = TestUser::with_home(name, home);
    sh(&[
        "usermod",
        "--add-subuids",
        "400000-465535",
        "--add-subgids",
        "400000-465535",
        name,
    ]);
    user
}

/// A job's steps (run as the runner user by the fake runner): what it
/// finds in DOCKER_HOST, a container left running with a volume, and from
/// a bridge and a host-network container, a connection to the metadata
/// address and to one that is not blocked.
fn job(run: &str) -> String {
    format!(
        r#"echo "DOCKER_HOST=$DOCKER_HOST"
docker run -d --name left-{run} {IMAGE} sleep 1000 >/dev/null
docker volume create vol-{run} >/dev/null
docker run -d -v vol-{run}:/data {IMAGE} sleep 1000 >/dev/null
for net in bridge host; do
  docker run --rm --network $net {IMAGE} sh -c 'for a in {METADATA} {OPEN}; do
    if out=$(nc -w 5 $a 80 </dev/null 2>&1); then echo "$0 $a: $out"; else echo "$0 $a: failed: $out"; fi
  done' $net
done
echo steps done
"#
    )
}

/// The steps' verdicts, as `job` prints them.
fn assert_blocked(log: &str, host: &str) {
    assert!(log.contains(&format!("DOCKER_HOST={host}")), "{log}");
    for net in ["bridge", "host"] {
        let refused = format!(
            "{net} {METADATA}: failed: nc: can't connect to remote host ({METADATA}): Connection refused"
        );
        assert!(log.contains(&refused), "{net}: {log}");
        // The container's network works: only the metadata is refused.
        assert!(
            log.contains(&format!("{net} {OPEN}: hello")),
            "{net}: {log}"
        );
    }
}

/// The agent, hardened: it starts the runner user's rootless daemon
/// before registering; jobs run containers in it (bridge and host network)
/// that cannot reach the metadata address, while the agent reads its
/// IMDS; each release kills and restarts the daemon and leaves none of the
/// run's containers or volumes; the agent's stop stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_get_a_rootless_docker_that_cannot_reach_metadata_and_is_fresh_after_each_release() {
    if !in_private_netns(
        "rootless::jobs_get_a_rootless_docker_that_cannot_reach_metadata_and_is_fresh_after_each_release",
    ) {
        return;
    }
    for address in [METADATA, OPEN] {
        sh(&["ip", "addr", "add", &format!("{address}/32"), "dev", "lo"]);
        listen(&format!("{address}:80"));
    }
    let stack = Stack::start(StackOptions::default()).await;
    let user = runner_user("ra-test-rootless", &stack.home_dir());
    stack.open_to_runner_user();
    let runtime = stack.dir.path().join("rl");
    let host = format!("unix://{}/docker.sock", runtime.display());
    let mut agent = stack.spawn_agent(&AgentSpec {
        user: Some(user.name.into()),
        // The image is imported after the baseline: kept as a cache.
        reset: vec!["images = \"keep\"".into()],
        extra: vec![format!(
            "[hardening]\nenabled = true\nmetadata_addresses = [\"{METADATA}\"]\n\
             docker = \"rootless\"\ndocker_data_root = \"{data}\"\ndocker_runtime_dir = \"{runtime}\"\n",
            data = stack.dir.path().join("docker-data").display(),
            runtime = runtime.display(),
        )],
        ..Default::default()
    });
    // Registered: the agent read its identity from the fake IMDS, which
    // its runner user cannot reach.
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert!(
        agent
            .log_text()
            .contains("rootless docker started for the runner user"),
        "{}",
        agent.log_text()
    );
    let security = docker(&host, &["info", "--format", "{{json .SecurityOptions}}"]);
    assert!(security.concat().contains("rootless"), "{security:?}");
    import_busybox(&host, stack.dir.path());

    let id = stack.instance_id.clone();
    let mut previous = (INITIAL_RUN_ID.to_owned(), "created");
    for n in 1..=2 {
        let (run_id, from) = previous.clone();
        let daemon = rootlesskit_of(&user);
        assert_eq!(daemon.len(), 1, "run {n}: one daemon: {daemon:?}");
        stack.queue_steps(&run_id, &job(&n.to_string()));
        stack.wait_steps(&run_id).await;
        assert_blocked(&stack.steps_log(&run_id), &host);
        assert_eq!(docker(&host, &["ps", "-q"]).len(), 2, "run {n}");

        stack.cp.release(&id, &run_id, from).await;
        stack
            .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", &run_id, RESET_WAIT)
            .await;
        // A fresh daemon, answering, without the run's containers and
        // volume; the image cache kept.
        let fresh = rootlesskit_of(&user);
        assert_eq!(fresh.len(), 1, "run {n}: {fresh:?}");
        assert_ne!(fresh, daemon, "run {n}: the daemon was not restarted");
        assert_eq!(
            docker(&host, &["ps", "-aq"]),
            Vec::<String>::new(),
            "run {n}"
        );
        let volumes = docker(&host, &["volume", "ls", "-q"]);
        assert!(volumes.is_empty(), "run {n}: {volumes:?}");
        assert_eq!(docker(&host, &["image", "ls", "-q", IMAGE]).len(), 1);

        let next = format!("5000-{n}");
        stack.cp.claim(&id, &next).await;
        stack.assert_signal("UD_REG_OK", &next, SIGNAL_WAIT).await;
        previous = (next, "claimed");
    }
    let log = agent.log_text();
    let restarts: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("rootless docker restarted in ").nth(1))
        .filter_map(|rest| rest.split(" ms").next())
        .collect();
    assert_eq!(restarts.len(), 2, "{log}");
    eprintln!("measured: rootless docker restart in the reset (ms): {restarts:?}");
    // The release's own lines, with their timestamps, for the report.
    for line in log
        .lines()
        .filter(|l| l.contains("\"deregistered\"") || l.contains("\"instance reset\""))
    {
        eprintln!("measured: {line}");
    }

    agent.kill(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(60)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(
        rootlesskit_of(&user).is_empty(),
        "the daemon outlived the agent"
    );
}

/// `docker = "rootless"` with a runner user that has no subordinate ids:
/// the start fails at once, naming what is missing, before the firewall
/// (no `nft` on PATH either: nothing on the host may change).
#[test]
fn a_required_rootless_docker_that_cannot_run_fails_the_start() {
    let user = TestUser::create("ra-test-nosubid", &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "table = \"acme-widgets-pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n\
             [runner]\nversion = \"2.331.0\"\nuser = \"{user}\"\ninstall_dir = \"{runner}\"\n\
             [agent]\nstate_dir = \"{state}\"\n[hardening]\nenabled = true\ndocker = \"rootless\"\n",
            user = user.name,
            runner = dir.path().join("runner").display(),
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let stderr = refused_start(&config, dir.path());
    assert!(stderr.contains("hardening.docker"), "{stderr}");
    for missing in [
        "docker (package docker.io)",
        "rootlesskit (package rootlesskit)",
        "slirp4netns (package slirp4netns)",
        "newuidmap (package uidmap)",
        "a subuid range for ra-test-nosubid",
    ] {
        assert!(stderr.contains(missing), "{missing}: {stderr}");
    }
    assert!(!stderr.contains("nftables"), "{stderr}");
}

/// `check` in hardened mode: "docker: rootless" for a runner user that
/// can have it, what is missing for one that cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_rootless_docker_or_what_it_lacks() {
    let stack = Stack::start(StackOptions::default()).await;
    let with = runner_user("ra-test-rl-check", &stack.dir.path().join("home-check"));
    let without = TestUser::create("ra-test-rl-none", &[]);
    for (user, mode, expected) in [
        (with.name, "auto", "ok    docker: rootless ("),
        (
            without.name,
            "auto",
            "ok    docker: none: rootless docker needs a subuid range for ra-test-rl-none",
        ),
        (
            without.name,
            "rootless",
            "FAIL  docker: rootless required (hardening.docker = \"rootless\"), but missing: a subuid range for ra-test-rl-none",
        ),
        (with.name, "off", "ok    docker: off (hardening.docker = \"off\")"),
    ] {
        let spec = AgentSpec {
            user: Some(user.into()),
            env: vec![
                ("RUNNER_AGENT_HARDENING__ENABLED".into(), "true".into()),
                ("RUNNER_AGENT_HARDENING__DOCKER".into(), mode.into()),
            ],
            ..Default::default()
        };
        stack.write_config(&spec);
        let out = stack
            .agent_command(&["check"], &spec)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text
            .lines()
            .find(|l| l.contains(" docker: "))
            .unwrap_or_else(|| panic!("no docker line in\n{text}"));
        assert!(line.starts_with(expected), "{user} {mode}: {line}");
    }
}

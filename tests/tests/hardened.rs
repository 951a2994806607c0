//! Hardened mode. The firewall tests change nftables only inside a network
//! namespace of their own: each re-runs itself (this test binary, one exact
//! test) under `unshare --net`, where loopback is the only network, and
//! refuses to touch nft unless its namespace differs from the outer run's.
//! `check`'s isolation levels are read for users the tests create.

use stack::agent::{agent_binary, AgentSpec};
use stack::users::TestUser;
use stack::{Stack, StackOptions, REGION};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Set in the inner run; its value is the outer run's network namespace.
const INNER_ENV: &str = "RA_HARDENED_OUTER_NETNS";

pub(crate) fn netns() -> String {
    let link = std::fs::read_link("/proc/self/ns/net").expect("reading /proc/self/ns/net");
    link.to_string_lossy().into_owned()
}

/// Runs `test` (its full name in this binary) again in a new network
/// namespace and asserts it passed there. Returns true when this *is* the
/// inner run, which then does the work.
pub(crate) fn in_private_netns(test: &str) -> bool {
    if let Ok(outer) = std::env::var(INNER_ENV) {
        // The guard on which everything below relies.
        assert_ne!(netns(), outer, "not in a private network namespace");
        sh(&["ip", "link", "set", "lo", "up"]);
        return true;
    }
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER_ENV, netns())
        .output()
        .expect("running unshare (util-linux)");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inner run failed:\n{text}");
    assert!(text.contains("1 passed"), "inner run ran nothing:\n{text}");
    false
}

pub(crate) fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    out
}

/// A loopback listener that accepts (and drops) connections for ever.
pub(crate) fn listen(addr: &str) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let local = listener.local_addr().unwrap();
    std::thread::spawn(move || for _ in listener.incoming() {});
    local
}

/// Whether a TCP connection to `addr` succeeds, as root or as `user`
/// (uid, gid and no other groups, as the runner gets them).
pub(crate) fn connects(addr: SocketAddr, user: Option<&TestUser>) -> Result<(), String> {
    let mut command = Command::new("timeout");
    command.arg("5");
    if let Some(u) = user {
        command.args([
            "setpriv".to_owned(),
            format!("--reuid={}", u.uid),
            format!("--regid={}", u.gid),
            "--clear-groups".to_owned(),
        ]);
    }
    let script = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
    let out = command.args(["bash", "-c", &script]).output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub(crate) fn nft_tables() -> String {
    String::from_utf8(sh(&["nft", "list", "tables"]).stdout).unwrap()
}

pub(crate) fn config(dir: &std::path::Path, user: &str, addresses: &[&str]) -> std::path::PathBuf {
    let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        "table = \"acme-widgets-pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n\
         [runner]\nversion = \"2.331.0\"\nuser = \"{user}\"\ninstall_dir = \"{runner}\"\n\
         [agent]\nstate_dir = \"{state}\"\n[hardening]\nenabled = true\nmetadata_addresses = [{list}]\n",
        runner = dir.join("runner").display(),
        state = dir.join("state").display(),
        list = list.join(", "),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

pub(crate) fn firewall(config: &std::path::Path, action: &str, endpoint: &str) -> Output {
    let out = Command::new(agent_binary())
        .args(["firewall", action, "--config"])
        .arg(config)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "firewall {action}: {out:?}");
    out
}

#[test]
fn firewall_rejects_only_the_runner_user_and_goes_away() {
    if !in_private_netns("hardened::firewall_rejects_only_the_runner_user_and_goes_away") {
        return;
    }
    let user = TestUser::create("ra-test-fw", &[]);
    let listed = listen("127.0.0.2:0");
    let listed_v6 = listen("[::1]:0");
    let endpoint = listen("127.0.0.3:0");
    let other = listen("127.0.0.4:0");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), user.name, &["127.0.0.2", "::1"]);
    let endpoint_url = format!("http://{endpoint}/");
    assert!(connects(listed, Some(&user)).is_ok(), "no firewall yet");

    // Twice: the second replaces the first, no rule doubles.
    firewall(&config, "apply", &endpoint_url);
    let out = firewall(&config, "apply", &endpoint_url);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("127.0.0.3"),
        "{out:?}"
    );
    let table = sh(&["nft", "list", "table", "inet", "runner_agent"]);
    // Two per family; the endpoint, on loopback, by its port only.
    let listing = String::from_utf8_lossy(&table.stdout);
    assert_eq!(listing.matches("skuid").count(), 5, "{listing}");
    let port_rule = format!("ip daddr 127.0.0.3 tcp dport {}", endpoint.port());
    assert!(listing.contains(&port_rule), "{listing}");

    for blocked in [listed, listed_v6, endpoint] {
        let err = connects(blocked, Some(&user)).expect_err(&format!("{blocked} reachable"));
        // A reset, not a timeout: jobs fail at once.
        assert!(err.contains("refused"), "{blocked}: {err}");
        connects(blocked, None).unwrap_or_else(|e| panic!("root to {blocked}: {e}"));
    }
    connects(other, Some(&user)).expect("an address not listed stays reachable");

    firewall(&config, "remove", &endpoint_url);
    assert!(!nft_tables().contains("runner_agent"), "{}", nft_tables());
    connects(listed, Some(&user)).expect("reachable again after removal");
    // Removing what is not there is no error.
    firewall(&config, "remove", &endpoint_url);
}

/// The whole agent in the namespace: the fake IMDS is the endpoint
/// override, on loopback; DynamoDB is unreachable there (moto is on the
/// host's loopback), which the agent survives until it is stopped. The
/// table stays after it stops, until removed by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reads_imds_that_its_runner_user_cannot_even_after_it_stops() {
    if !in_private_netns(
        "hardened::the_agent_reads_imds_that_its_runner_user_cannot_even_after_it_stops",
    ) {
        return;
    }
    let user = TestUser::create("ra-test-agent", &[]);
    let imds = stack::imds::FakeImds::start("i-0123456789abcdef0", REGION, &[], true).await;
    let imds_addr: SocketAddr = imds.endpoint.trim_start_matches("http://").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Only the endpoint override: the defaults are not on this loopback.
    let config = config(dir.path(), user.name, &["169.254.169.254"]);
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = tokio::process::Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(&config)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", dir.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .env("RUST_LOG", "info")
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let started = Instant::now();
    // "starting" comes after the agent read its identity from the fake.
    while !log_text().contains("starting") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(log_text().contains("i-0123456789abcdef0"), "{}", log_text());
    assert!(nft_tables().contains("runner_agent"), "{}", nft_tables());
    let err = connects(imds_addr, Some(&user)).expect_err("the runner user reached IMDS");
    assert!(err.contains("refused"), "{err}");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config), 0o600, "the config is tightened");
    assert_eq!(mode(&dir.path().join("state")), 0o700);

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(agent.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(60), agent.wait())
        .await
        .expect("the agent stops within 60 s")
        .unwrap();
    assert!(status.success(), "{status:?}\n{}", log_text());
    // The table outlives the agent: no gap before the next one starts.
    assert!(nft_tables().contains("runner_agent"), "{}", nft_tables());
    let err = connects(imds_addr, Some(&user)).expect_err("reachable after the agent stopped");
    assert!(err.contains("refused"), "{err}");
    firewall(&config, "remove", &imds.endpoint);
    connects(imds_addr, Some(&user)).expect("reachable once the table is removed");
}

/// No `nft` on PATH: the agent must not serve without its firewall.
/// `runner-agent run` with `config`, a PATH of `dir` only (no `nft`, no
/// docker) and an unreachable IMDS: it must exit 1; its stderr.
pub(crate) fn refused_start(config: &std::path::Path, dir: &std::path::Path) -> String {
    let out = Command::new(agent_binary())
        .args(["run", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", dir)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

#[test]
fn the_agent_refuses_to_start_without_its_firewall() {
    let user = TestUser::create("ra-test-nonft", &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), user.name, &["169.254.169.254"]);
    let stderr = refused_start(&config, dir.path());
    assert!(stderr.contains("refusing to run without it"), "{stderr}");
    assert!(stderr.contains("nftables"), "{stderr}");
}

/// Group `name`, created for the test if the host has none (and then
/// removed when dropped).
pub(crate) struct TestGroup(Option<&'static str>);

impl TestGroup {
    pub(crate) fn ensure(name: &'static str) -> TestGroup {
        if Command::new("getent")
            .args(["group", name])
            .output()
            .unwrap()
            .status
            .success()
        {
            return TestGroup(None);
        }
        sh(&["groupadd", "--system", name]);
        TestGroup(Some(name))
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        if let Some(name) = self.0 {
            let _ = Command::new("groupdel").arg(name).output();
        }
    }
}

/// A sudoers rule for the test, removed when dropped.
struct SudoersRule(std::path::PathBuf);

impl Drop for SudoersRule {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn isolation_line(stack: &Stack, user: Option<&str>, hardened: bool) -> String {
    let mut spec = AgentSpec {
        user: user.map(str::to_owned),
        ..Default::default()
    };
    if hardened {
        spec.env
            .push(("RUNNER_AGENT_HARDENING__ENABLED".into(), "true".into()));
    }
    stack.write_config(&spec);
    let out = stack
        .agent_command(&["check"], &spec)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains(" isolation: "))
        .unwrap_or_else(|| {
            panic!(
                "no isolation line in\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_isolation_level() {
    assert!(
        Command::new("sudo").arg("--version").output().is_ok(),
        "sudo is not installed (scripts/setup.sh installs it)"
    );
    let stack = Stack::start(StackOptions::default()).await;
    let _docker = TestGroup::ensure("docker");
    let isolated = TestUser::create("ra-test-iso", &[]);
    let docker = TestUser::create("ra-test-docker", &["docker"]);
    let sudoer = TestUser::create("ra-test-sudoer", &[]);
    let rule = SudoersRule("/etc/sudoers.d/ra-test-sudoer".into());
    std::fs::write(&rule.0, "ra-test-sudoer ALL=(ALL) NOPASSWD:ALL\n").unwrap();
    std::fs::set_permissions(&rule.0, std::fs::Permissions::from_mode(0o440)).unwrap();

    let cases = [
        (None, false, "ok    isolation: jobs run as root"),
        (Some("root"), false, "ok    isolation: jobs run as root"),
        (Some(isolated.name), false, "ok    isolation: isolated"),
        (Some(isolated.name), true, "ok    isolation: isolated"),
        (
            Some(docker.name),
            false,
            "ok    isolation: the runner user is in the docker group: jobs can become root",
        ),
        (
            Some(sudoer.name),
            false,
            "ok    isolation: the runner user can sudo: jobs can become root",
        ),
        // Hardened mode with a user who can become root protects nothing.
        (
            Some(docker.name),
            true,
            "FAIL  isolation: the runner user is in the docker group: jobs can become root, which hardened mode cannot allow",
        ),
    ];
    for (user, hardened, expected) in cases {
        let line = isolation_line(&stack, user, hardened).await;
        assert_eq!(line, expected, "user {user:?}, hardened {hardened}");
    }
}

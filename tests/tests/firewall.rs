//! Hardened mode's block, complete: forwarded traffic (containers on a
//! bridge) rejected too, a loopback IMDS override blocked by its port
//! only, the endpoint from the AWS config file, the rules put back while
//! the agent runs and kept across a restart, and the runner users that
//! hardened mode refuses. Every test that touches nft runs in a network
//! namespace of its own (`hardened::in_private_netns`).

use crate::hardened::{config, connects, in_private_netns, listen, nft_tables, sh, TestGroup};
use stack::agent::agent_binary;
use stack::users::TestUser;
use stack::REGION;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `runner-agent firewall <action>` with `env`.
fn firewall_with(config: &Path, action: &str, env: &[(&str, &str)]) -> Output {
    let out = Command::new(agent_binary())
        .args(["firewall", action, "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "firewall {action}: {out:?}");
    out
}

fn table() -> String {
    String::from_utf8(sh(&["nft", "list", "table", "inet", "runner_agent"]).stdout).unwrap()
}

fn refused(addr: SocketAddr, user: Option<&TestUser>) {
    let err = connects(addr, user).expect_err(&format!("{addr} reachable"));
    assert!(err.contains("refused"), "{addr}: {err}");
}

/// A process holding a network namespace of its own, killed when dropped.
struct Netns(Child);

impl Netns {
    /// `command` (a server, or `sleep`) in a new network namespace.
    fn spawn(command: &[&str]) -> Netns {
        let child = Command::new("unshare")
            .args(["--net", "--"])
            .args(command)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // unshare execs the command: its pid holds the namespace once
        // /proc shows a namespace other than ours.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let path = format!("/proc/{}/ns/net", child.id());
        let started = Instant::now();
        while std::fs::read_link(&path).ok().is_none_or(|ns| ns == ours) {
            assert!(started.elapsed() < Duration::from_secs(10), "{command:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Netns(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    /// `args` run inside this namespace.
    fn sh(&self, args: &[&str]) -> Output {
        let mut all = vec!["nsenter", "--net", "--target"];
        let pid = self.pid();
        all.push(&pid);
        all.push("--");
        all.extend(args);
        sh(&all)
    }

    /// Whether a TCP connection from inside this namespace succeeds.
    fn connects(&self, addr: SocketAddr) -> Result<(), String> {
        let script = format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port());
        let out = Command::new("nsenter")
            .args(["--net", "--target", &self.pid(), "--"])
            .args(["timeout", "5", "bash", "-c", &script])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A container's traffic is forwarded by the host (no socket here, so no
/// uid to match): a "container" namespace routed through this one to a
/// "metadata" namespace. The metadata address is refused to it, another
/// address of the same namespace is not, and the host itself (root, the
/// agent) still reaches both.
#[test]
fn forwarded_traffic_to_the_metadata_addresses_is_rejected() {
    if !in_private_netns("firewall::forwarded_traffic_to_the_metadata_addresses_is_rejected") {
        return;
    }
    let user = TestUser::create("ra-test-fwd", &[]);
    let web = tempfile::tempdir().unwrap();
    let metadata = Netns::spawn(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        &web.path().to_string_lossy(),
    ]);
    let container = Netns::spawn(&["sleep", "600"]);
    // The host side: one link to each, forwarding on (per namespace).
    sh(&[
        "ip",
        "link",
        "add",
        "ra-m",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &metadata.pid(),
    ]);
    sh(&[
        "ip",
        "link",
        "add",
        "ra-c",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &container.pid(),
    ]);
    sh(&["ip", "addr", "add", "169.254.0.1/16", "dev", "ra-m"]);
    sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", "ra-c"]);
    sh(&["ip", "link", "set", "ra-m", "up"]);
    sh(&["ip", "link", "set", "ra-c", "up"]);
    sh(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    for address in ["169.254.169.254/16", "169.254.7.7/16"] {
        metadata.sh(&["ip", "addr", "add", address, "dev", "eth0"]);
    }
    metadata.sh(&["ip", "link", "set", "eth0", "up"]);
    metadata.sh(&["ip", "route", "add", "10.77.0.0/24", "via", "169.254.0.1"]);
    container.sh(&["ip", "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    container.sh(&["ip", "link", "set", "eth0", "up"]);
    container.sh(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    let imds: SocketAddr = "169.254.169.254:80".parse().unwrap();
    let other: SocketAddr = "169.254.7.7:80".parse().unwrap();
    let started = Instant::now();
    while let Err(e) = container.connects(imds) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no route without the firewall: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), user.name, &["169.254.169.254"]);
    firewall_with(&config, "apply", &[]);
    assert!(table().contains("hook forward"), "{}", table());
    refused(imds, Some(&user));
    let err = container
        .connects(imds)
        .expect_err("a container reached the metadata address");
    assert!(err.contains("refused"), "{err}");
    container
        .connects(other)
        .expect("another address stays reachable");
    connects(imds, None).expect("the host (root) still reaches it");
}

/// An override on loopback blocks its port, not the loopback host; the
/// endpoint named in the AWS config file is blocked too.
#[test]
fn a_loopback_override_is_blocked_by_port_and_the_config_file_endpoint_too() {
    if !in_private_netns(
        "firewall::a_loopback_override_is_blocked_by_port_and_the_config_file_endpoint_too",
    ) {
        return;
    }
    let user = TestUser::create("ra-test-port", &[]);
    let override_at = listen("127.0.0.3:0");
    let same_host = listen("127.0.0.3:0");
    let in_file = listen("127.0.0.5:0");
    let beside_file = listen("127.0.0.5:0");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), user.name, &["169.254.169.254"]);
    let aws_config = dir.path().join("aws-config");
    std::fs::write(
        &aws_config,
        format!("[default]\nec2_metadata_service_endpoint = http://{in_file}/\n"),
    )
    .unwrap();
    let env_url = format!("http://{override_at}");
    let out = firewall_with(
        &config,
        "apply",
        &[
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", env_url.as_str()),
            ("AWS_CONFIG_FILE", &aws_config.to_string_lossy()),
        ],
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("tcp {override_at}")), "{said}");
    assert!(said.contains(&format!("tcp {in_file}")), "{said}");

    refused(override_at, Some(&user));
    refused(in_file, Some(&user));
    for open in [same_host, beside_file] {
        connects(open, Some(&user)).unwrap_or_else(|e| panic!("{open} blocked: {e}"));
    }
    connects(override_at, None).expect("root reaches the override");
}

/// Hardened mode refuses to start for a runner user in a group that is
/// root in all but name (or reads the logs); before any rule is written.
#[test]
fn hardened_mode_refuses_a_runner_user_in_a_root_group() {
    if !in_private_netns("firewall::hardened_mode_refuses_a_runner_user_in_a_root_group") {
        return;
    }
    let cases: [(&'static str, &'static str); 4] = [
        ("docker", "ra-test-g-docker"),
        ("lxd", "ra-test-g-lxd"),
        ("disk", "ra-test-g-disk"),
        ("adm", "ra-test-g-adm"),
    ];
    for (group, name) in cases {
        let _group = TestGroup::ensure(group);
        let user = TestUser::create(name, &[group]);
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), user.name, &["169.254.169.254"]);
        let out = Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(&config)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
            .env("AWS_CONFIG_FILE", dir.path().join("none"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{group}: {stderr}");
        assert!(stderr.contains("refusing to run"), "{group}: {stderr}");
        assert!(
            stderr.contains(&format!("in the {group} group")),
            "{stderr}"
        );
        assert!(
            !nft_tables().contains("runner_agent"),
            "{group}: {}",
            nft_tables()
        );
    }
}

/// The agent under test, in the namespace, logging to a file.
struct Agent {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Agent {
    fn start(config: &Path, imds: &str, dir: &Path, log_name: &str) -> Agent {
        let log = dir.join(log_name);
        let child = tokio::process::Command::new(agent_binary())
            .args(["run", "--config"])
            .arg(config)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds)
            .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", dir.join("none"))
            .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("none"))
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (30 s at most) until `done` holds of the log.
    async fn wait_for(&self, what: &str, done: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while !done(&self.log()) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{what}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id().unwrap() as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the agent stops within 60 s")
            .unwrap();
        assert!(status.success(), "{status:?}\n{}", self.log());
    }
}

/// `runner_agent_firewall_restores_total{result="ok"}` in the textfile.
fn restores(textfile: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(textfile).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("runner_agent_firewall_restores_total{result=\"ok\"} "))
        .and_then(|v| v.trim().parse().ok())
}

async fn until_restores(textfile: &Path, count: f64) {
    let started = Instant::now();
    // The textfile is rewritten within 5 s of a change.
    while restores(textfile) != Some(count) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "restores {:?}, wanted {count}",
            restores(textfile)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// While the agent idles its table is deleted, then the whole ruleset
/// flushed (what `systemctl restart nftables` does): each time the rules
/// are back within a heartbeat interval, logged and counted. A restart
/// keeps them in place; a start with hardened mode off removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_puts_its_rules_back_and_keeps_them_over_a_restart() {
    if !in_private_netns("firewall::the_agent_puts_its_rules_back_and_keeps_them_over_a_restart") {
        return;
    }
    let user = TestUser::create("ra-test-guard", &[]);
    let imds = stack::imds::FakeImds::start("i-0123456789abcdef0", REGION, &[], true).await;
    let imds_addr: SocketAddr = imds.endpoint.trim_start_matches("http://").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), user.name, &["169.254.169.254"]);
    let textfile = dir.path().join("agent.prom");
    let extra = format!(
        "[timing]\nheartbeat_interval = \"1s\"\n[metrics]\ntextfile = \"{}\"\n",
        textfile.display()
    );
    let hardened = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{hardened}{extra}")).unwrap();

    let agent = Agent::start(&config, &imds.endpoint, dir.path(), "agent-1.log");
    agent.wait_for("started", |l| l.contains("starting")).await;
    refused(imds_addr, Some(&user));
    until_restores(&textfile, 0.0).await;

    sh(&["nft", "delete", "table", "inet", "runner_agent"]);
    until_restores(&textfile, 1.0).await;
    refused(imds_addr, Some(&user));
    sh(&["nft", "flush", "ruleset"]);
    until_restores(&textfile, 2.0).await;
    refused(imds_addr, Some(&user));
    agent
        .wait_for("restores logged", |l| {
            l.matches("installed it again").count() == 2
        })
        .await;
    let listed = table();
    agent.stop().await;

    // Between two agents the rules stay as they were.
    assert_eq!(table(), listed);
    refused(imds_addr, Some(&user));
    let agent = Agent::start(&config, &imds.endpoint, dir.path(), "agent-2.log");
    agent
        .wait_for("started again", |l| l.contains("starting"))
        .await;
    assert_eq!(table(), listed);
    refused(imds_addr, Some(&user));
    agent.stop().await;

    // Hardened mode turned off: its table goes at the next start.
    let plain = hardened.replace(
        "[hardening]\nenabled = true",
        "[hardening]\nenabled = false",
    );
    assert_ne!(plain, hardened);
    std::fs::write(&config, format!("{plain}{extra}")).unwrap();
    let agent = Agent::start(&config, &imds.endpoint, dir.path(), "agent-3.log");
    agent
        .wait_for("started unhardened", |l| l.contains("starting"))
        .await;
    assert!(
        agent.log().contains("removed the firewall table"),
        "{}",
        agent.log()
    );
    assert!(!nft_tables().contains("runner_agent"), "{}", nft_tables());
    connects(imds_addr, Some(&user)).expect("reachable with hardened mode off");
    agent.stop().await;
}

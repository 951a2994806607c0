//! runner-userdata's output, run for real: the rendered shell user data in a
//! throwaway root (tests/src/sandbox.rs) downloads the shipped agent from a
//! loopback server, verifies it, writes config and unit, starts it through
//! `systemctl`, and the agent then serves the control plane; the
//! pool-manager script under a copy of fleet-actions' bash wrapper; and the
//! IAM policy against the calls the agent really makes.
//!
//! Package installation is switched off with the script's own
//! RUNNER_USERDATA_SKIP_PACKAGES=1 (logged by the script, checked here):
//! there is no package mirror on loopback.

use stack::agent::{agent_binary, userdata_binary};
use stack::github::{sha256_hex, FAKE_RUNNER_VERSION};
use stack::sandbox::Sandbox;
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const SIGNAL_WAIT: Duration = Duration::from_secs(30);
const AGENT_TARBALL: &str =
    "/runner-agent/releases/download/v0.1.0/runner-agent-0.1.0-x86_64-linux-musl.tar.gz";

/// Serves the shipped agent as a release tarball (the layout scripts/dist
/// makes) from the stack's loopback HTTP server; returns URL and SHA-256.
fn serve_agent_tarball(stack: &Stack) -> (String, String) {
    let binary = std::fs::read(agent_binary()).unwrap();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    tar.append_data(
        &mut header,
        "runner-agent-0.1.0-x86_64-linux-musl/runner-agent",
        binary.as_slice(),
    )
    .unwrap();
    let tarball = tar.into_inner().unwrap().finish().unwrap();
    let sha = sha256_hex(&tarball);
    stack
        .github
        .state
        .lock()
        .unwrap()
        .files
        .insert(AGENT_TARBALL.into(), tarball);
    (format!("{}{AGENT_TARBALL}", stack.github.base), sha)
}

/// The agent's settings for the stack, as an input file's [agent_config].
fn agent_config(stack: &Stack, runner_lines: &str) -> String {
    format!(
        "[agent_config]\ntable = \"{table}\"\n[agent_config.github]\nurl = \"https://github.com/acme/widgets\"\n[agent_config.runner]\nversion = \"{FAKE_RUNNER_VERSION}\"\nrelease_base_url = \"{base}\"\nrelease_api_url = \"{api}\"\nstop_timeout = \"5s\"\n{runner_lines}[agent_config.timing]\nexpiry_check_interval = \"1s\"\n",
        table = stack.cp.table,
        base = stack.github.release_base_url(),
        api = stack.github.api_url(),
    )
}

/// Renders `input` with the shipped runner-userdata into the sandbox at
/// `dest` (a path inside it).
fn render(stack: &Stack, sandbox: &Sandbox, input: &str, format: &str, dest: &str) -> String {
    let input_path = stack.dir.path().join(format!("{format}.toml"));
    std::fs::write(&input_path, input).unwrap();
    std::fs::write(
        stack.dir.path().join("pre-runner.sh"),
        "#!/bin/bash\necho \"pre-runner ran as $(id -un)\" >/var/log/pre-runner.out\n",
    )
    .unwrap();
    let out = std::process::Command::new(userdata_binary())
        .args(["render", "--format", format, "--output"])
        .arg(sandbox.path(dest))
        .arg(&input_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(sandbox.path(dest)).unwrap()
}

/// The environment the instance would give the agent, pointed at the
/// loopback stack (inherited through the systemctl stub), plus the fake
/// runner's log inside the sandbox.
fn instance_env(stack: &Stack, sandbox: &Sandbox) -> Vec<(String, String)> {
    let log = sandbox.path("/var/log/fake-runner.log");
    std::fs::write(&log, "").unwrap();
    set_mode(&log, 0o666);
    std::fs::create_dir_all(sandbox.path("/tmp/jobs")).unwrap();
    [
        ("AWS_ENDPOINT_URL", stack.proxy.endpoint.as_str()),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            stack.imds.endpoint.as_str(),
        ),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("RUST_LOG", "info"),
        ("FAKE_RUNNER_LOG", "/var/log/fake-runner.log"),
        ("FAKE_JOBS_DIR", "/tmp/jobs"),
        ("RUNNER_USERDATA_SKIP_PACKAGES", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn runner_events(sandbox: &Sandbox, prefix: &str) -> usize {
    sandbox
        .read("/var/log/fake-runner.log")
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .is_some_and(|(_, e)| e.starts_with(prefix))
        })
        .count()
}

async fn expect_signal(stack: &Stack, sandbox: &Sandbox, state: &str, run_id: &str) {
    if let Err(last) = stack
        .cp
        .wait_signal(&stack.instance_id, state, run_id, SIGNAL_WAIT)
        .await
    {
        panic!(
            "no {state} for {run_id}: last {last:?}\nagent log:\n{}\nsystemctl calls:\n{}",
            sandbox.read("/var/log/runner-agent.service.log"),
            sandbox.read("/var/log/systemctl.calls"),
        );
    }
}

/// UD_OK for the InitialRunId, written by the agent after the operator's
/// script. The worker signal item holds one signal, and UD_REG_OK for the
/// same run follows within milliseconds (the instance was created for it),
/// so the agent's log says it rather than a poll that may come too late.
async fn expect_ud_ok(sandbox: &Sandbox) {
    let needle = format!("signal written signal=UD_OK run_id=\"{INITIAL_RUN_ID}\"");
    let started = std::time::Instant::now();
    while !sandbox
        .read("/var/log/runner-agent.service.log")
        .contains(&needle)
    {
        assert!(
            started.elapsed() < SIGNAL_WAIT,
            "no UD_OK; agent log:\n{}",
            sandbox.read("/var/log/runner-agent.service.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Claim, register, release, deregister: the agent the user data started
/// serves the pool.
async fn claim_and_release(stack: &Stack, sandbox: &Sandbox, run_id: &str, from_state: &str) {
    if run_id != INITIAL_RUN_ID {
        stack.cp.claim(&stack.instance_id, run_id).await;
    }
    expect_signal(stack, sandbox, "UD_REG_OK", run_id).await;
    stack
        .cp
        .release(&stack.instance_id, run_id, from_state)
        .await;
    expect_signal(stack, sandbox, "UD_REMOVE_REG_REMOVE_RUN_OK", run_id).await;
}

fn mtime(sandbox: &Sandbox, path: &str) -> (i64, i64) {
    let m = std::fs::metadata(sandbox.path(path)).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// A stock AMI's first boot: cloud-init runs the rendered shell user data
/// as root. It finds no agent, downloads and verifies it, creates the
/// runner user, writes config, pre-runner script and unit, enables and
/// starts the agent, which signals UD_OK (after the operator's script) and
/// then registers and deregisters on claim and release. A second run (a
/// re-run by hand, or cloud-init's per-boot scripts) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_user_data_installs_and_starts_the_agent_then_changes_nothing_on_a_second_run() {
    let stack = Stack::start(StackOptions::default()).await;
    let sandbox = Sandbox::new(stack.dir.path(), "ubuntu-24.04");
    let (url, sha) = serve_agent_tarball(&stack);
    let input = format!(
        "os = \"auto\"\npre_runner_script = \"pre-runner.sh\"\nrunner_user_sudo = true\n[agent.download.x86_64]\nurl = \"{url}\"\nsha256 = \"{sha}\"\n{}",
        agent_config(&stack, "user = \"runner\"\n")
    );
    let script_path = "/var/lib/cloud/instance/scripts/part-001";
    render(&stack, &sandbox, &input, "shell", script_path);
    set_mode(&sandbox.path(script_path), 0o700);
    let env = instance_env(&stack, &sandbox);

    let first = sandbox.run(&[script_path], &env, SCRIPT_TIMEOUT).await;
    let log = text(&first);
    assert!(first.status.success(), "{log}");
    assert!(
        log.contains(
            "RUNNER_USERDATA_SKIP_PACKAGES=1: not installing ca-certificates curl docker.io"
        ),
        "{log}"
    );
    assert!(log.contains("created user runner"), "{log}");

    expect_ud_ok(&sandbox).await;
    assert_eq!(
        sandbox.read("/var/log/pre-runner.out"),
        "pre-runner ran as root\n"
    );
    claim_and_release(&stack, &sandbox, INITIAL_RUN_ID, "created").await;
    claim_and_release(&stack, &sandbox, "3000-1", "claimed").await;
    assert_eq!(runner_events(&sandbox, "CONFIGURE "), 2);

    // What the script left on the instance.
    let agent = sandbox.path("/usr/local/bin/runner-agent");
    assert_eq!(
        std::fs::read(&agent).unwrap(),
        std::fs::read(agent_binary()).unwrap()
    );
    let config = std::fs::metadata(sandbox.path("/etc/runner-agent/config.toml")).unwrap();
    assert_eq!(config.mode() & 0o777, 0o600);
    let unit = sandbox.read("/etc/systemd/system/runner-agent.service");
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/runner-agent run\n"),
        "{unit}"
    );
    let wants = sandbox.path("/etc/systemd/system/multi-user.target.wants/runner-agent.service");
    assert_eq!(
        std::fs::read_link(wants).unwrap(),
        Path::new("/etc/systemd/system/runner-agent.service"),
        "not enabled"
    );
    assert!(sandbox.read("/etc/passwd").contains("\nrunner:"));
    assert_eq!(
        sandbox.read("/etc/sudoers.d/90-runner-agent"),
        "runner ALL=(ALL) NOPASSWD:ALL\n"
    );

    // Second run: nothing rewritten, the agent neither restarted nor
    // started again.
    let files = [
        "/usr/local/bin/runner-agent",
        "/etc/runner-agent/config.toml",
        "/etc/runner-agent/pre-runner.sh",
        "/etc/systemd/system/runner-agent.service",
    ];
    let before: Vec<_> = files.iter().map(|f| mtime(&sandbox, f)).collect();
    let pid = sandbox
        .service_pid("runner-agent.service")
        .expect("agent running");
    let calls_before = sandbox.read("/var/log/systemctl.calls");
    let second = sandbox.run(&[script_path], &env, SCRIPT_TIMEOUT).await;
    let log = text(&second);
    assert!(second.status.success(), "{log}");
    assert!(
        log.contains("nothing changed; runner-agent is started if it was not"),
        "{log}"
    );
    assert!(
        !log.contains("wrote ") && !log.contains("removed "),
        "{log}"
    );
    let after: Vec<_> = files.iter().map(|f| mtime(&sandbox, f)).collect();
    assert_eq!(before, after, "a second run rewrote files");
    assert_eq!(sandbox.service_pid("runner-agent.service"), Some(pid));
    let new_calls = sandbox.read("/var/log/systemctl.calls")[calls_before.len()..].to_owned();
    assert_eq!(
        new_calls,
        "systemctl enable runner-agent.service\nsystemctl start --no-block runner-agent.service\n"
    );
    // And the pool is still served.
    claim_and_release(&stack, &sandbox, "3000-2", "claimed").await;

    // Third run, re-rendered with another config (a label more, no sudo):
    // the config is rewritten, the sudoers line removed, the agent
    // restarted with it; the unit, unchanged, is not reloaded.
    let changed = input.replace("runner_user_sudo = true\n", "").replace(
        "user = \"runner\"\n",
        "user = \"runner\"\nextra_labels = [\"gpu\"]\n",
    );
    render(&stack, &sandbox, &changed, "shell", script_path);
    set_mode(&sandbox.path(script_path), 0o700);
    let calls_before = sandbox.read("/var/log/systemctl.calls");
    let third = sandbox.run(&[script_path], &env, SCRIPT_TIMEOUT).await;
    let log = text(&third);
    assert!(third.status.success(), "{log}");
    assert!(log.contains("wrote /etc/runner-agent/config.toml"), "{log}");
    assert!(
        log.contains("removed /etc/sudoers.d/90-runner-agent"),
        "{log}"
    );
    assert!(!log.contains("changed on disk"), "{log}");
    let new_calls = sandbox.read("/var/log/systemctl.calls")[calls_before.len()..].to_owned();
    assert_eq!(
        new_calls,
        "systemctl enable runner-agent.service\nsystemctl restart --no-block runner-agent.service\n"
    );
    let restarted = sandbox
        .service_pid("runner-agent.service")
        .expect("agent running");
    assert_ne!(restarted, pid);
    stack.cp.claim(&stack.instance_id, "3000-3").await;
    expect_signal(&stack, &sandbox, "UD_REG_OK", "3000-3").await;
    let configures = sandbox.read("/var/log/fake-runner.log");
    assert!(
        configures
            .lines()
            .rfind(|l| l.contains("CONFIGURE "))
            .is_some_and(|l| l.contains("labels=3000-3,gpu")),
        "{configures}"
    );
}

/// A download that does not match its pinned SHA-256 is not installed and
/// nothing is started; the script says why and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_user_data_refuses_an_agent_whose_checksum_differs() {
    let stack = Stack::start(StackOptions::default()).await;
    let sandbox = Sandbox::new(stack.dir.path(), "debian-12");
    let (url, sha) = serve_agent_tarball(&stack);
    let wrong: String = sha.chars().rev().collect();
    let input = format!(
        "os = \"debian-12\"\n[agent.download.x86_64]\nurl = \"{url}\"\nsha256 = \"{wrong}\"\n{}",
        agent_config(&stack, "allow_run_as_root = true\n")
    );
    render(&stack, &sandbox, &input, "shell", "/root/user-data.sh");
    let out = sandbox
        .run(
            &["bash", "/root/user-data.sh"],
            &instance_env(&stack, &sandbox),
            SCRIPT_TIMEOUT,
        )
        .await;
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("SHA-256 {sha}, expected {wrong}; not installed")),
        "{log}"
    );
    assert!(!sandbox.path("/usr/local/bin/runner-agent").exists());
    assert!(!sandbox.path("/etc/runner-agent/config.toml").exists());
    assert_eq!(sandbox.read("/var/log/systemctl.calls"), "");
}

/// fleet-actions/ec2-runner-pool-manager's user data, reduced to its
/// structure (src/refresh/manage-lt/userdata-v2/main-script.ts at 78af40a):
/// output through tee, a working directory `actions-runner`, its helpers as
/// shell functions and as scripts there (each written with `cat <<'EOF'>`),
/// the operator's pre-runner-script embedded the same way as
/// `user-script.sh` and run as a child (failure: UD_FAILED, exit 1); then
/// UD_OK, the runner download, heartbeat and self-termination loops in the
/// background and the registration loop for ever. The helpers here only
/// record that they ran; the instance id and InitialRunId, which the real
/// one reads from IMDS at 169.254.169.254, are given.
fn pool_manager_wrapper(stack: &Stack, pre_runner_script: &str) -> String {
    let heredoc =
        |name: &str, body: &str| format!("cat <<'EOF'> {name}\n{body}\nEOF\nchmod +x {name}\n");
    let mut w = format!(
        r#"#!/bin/bash
exec > >(tee /var/log/user-data.log) 2>&1
mkdir -p actions-runner && cd actions-runner || exit
export TABLE_NAME="{table}"
export GH_OWNER="acme"
export GH_REPO="widgets"
INSTANCE_ID="{instance}"
INITIAL_RUN_ID="{INITIAL_RUN_ID}"
export INSTANCE_ID
step() {{ echo "$*" >>/var/log/wrapper-steps.log; }}
emitSignal() {{ step "emitSignal $*"; }}
fetchGHToken() {{ step fetchGHToken; }}
blockRegistration() {{ step "blockRegistration $*"; echo 1 >"$1"; }}
blockInvalidation() {{ step "blockInvalidation $*"; sleep 1; }}
tokenlessDeregistration() {{ step tokenlessDeregistration; }}
"#,
        table = stack.cp.table,
        instance = stack.instance_id,
    );
    for script in [
        "heartbeat.sh",
        "self-termination.sh",
        "download-runner-artifact.sh",
    ] {
        w.push_str(&heredoc(
            script,
            &format!("#!/bin/bash\necho \"{script}\" >>/var/log/wrapper-steps.log"),
        ));
    }
    w.push_str(&heredoc(
        "user-script.sh",
        &format!("{pre_runner_script}\n\necho \"UserData execution completed successfully at $(date)\" >> /var/log/user-data-completion.log\ncat /var/log/user-data-completion.log\n"),
    ));
    w.push_str(
        r#"if ! ./user-script.sh; then
  >&2 echo "user-defined userdata unable to execute correctly. emitting signal..."
  emitSignal "$INITIAL_RUN_ID" "UD_FAILED"
  exit 1
fi
emitSignal "$INITIAL_RUN_ID" "UD_OK"
./download-runner-artifact.sh
./heartbeat.sh &
./self-termination.sh &
while true; do
  blockRegistration /tmp/runid 1
  fetchGHToken
  step "config.sh --url https://github.com/$GH_OWNER/$GH_REPO"
  emitSignal "$(cat /tmp/runid)" "UD_REG_OK"
  blockInvalidation "$(cat /tmp/runid)" 1
  tokenlessDeregistration
done
"#,
    );
    w
}

/// Renders `input` as a pool-manager script, wraps it as the control plane
/// would and runs the result as cloud-init runs a user-data script.
async fn run_under_pool_manager(stack: &Stack, sandbox: &Sandbox, input: &str) -> (Output, String) {
    let script = render(
        stack,
        sandbox,
        input,
        "pool-manager",
        "/root/pre-runner-script.sh",
    );
    let part = "/var/lib/cloud/instance/scripts/part-001";
    std::fs::write(sandbox.path(part), pool_manager_wrapper(stack, &script)).unwrap();
    set_mode(&sandbox.path(part), 0o700);
    let out = sandbox
        .run(&[part], &instance_env(stack, sandbox), SCRIPT_TIMEOUT)
        .await;
    let log = format!(
        "{}\nuser-data.log:\n{}\nwrapper steps:\n{}",
        text(&out),
        sandbox.read("/var/log/user-data.log"),
        sandbox.read("/var/log/wrapper-steps.log")
    );
    (out, log)
}

/// The pool-manager script run the way that control plane runs a
/// pre-runner-script: it installs and starts runner-agent and ends the
/// wrapper before the wrapper's own agent starts, so cloud-init's script
/// returns, none of the wrapper's loops ever run, and only our agent
/// registers, with every signal the control plane waits for (UD_OK
/// included) arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_manager_script_takes_over_from_the_control_planes_bash_agent() {
    let stack = Stack::start(StackOptions::default()).await;
    let sandbox = Sandbox::new(stack.dir.path(), "ubuntu-22.04");
    let (url, sha) = serve_agent_tarball(&stack);
    let input = format!(
        "os = \"ubuntu-22.04\"\npackages = false\npre_runner_script = \"pre-runner.sh\"\n[agent.download.x86_64]\nurl = \"{url}\"\nsha256 = \"{sha}\"\n{}",
        agent_config(&stack, "allow_run_as_root = true\n")
    );
    let (out, log) = run_under_pool_manager(&stack, &sandbox, &input).await;
    // cloud-init gets its script back (ended by SIGTERM) instead of a
    // process that loops for ever.
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{log}");
    assert!(
        log.contains("runner-agent started\nrunner-userdata: ending the pool manager's bash agent"),
        "{log}"
    );

    expect_ud_ok(&sandbox).await;
    assert_eq!(
        sandbox.read("/var/log/pre-runner.out"),
        "pre-runner ran as root\n"
    );
    claim_and_release(&stack, &sandbox, INITIAL_RUN_ID, "created").await;
    claim_and_release(&stack, &sandbox, "4000-1", "claimed").await;
    assert_eq!(runner_events(&sandbox, "CONFIGURE "), 2);
    // None of the wrapper's own steps ran, before or after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sandbox.read("/var/log/wrapper-steps.log"), "", "{log}");
}

/// `runner-userdata iam-policy` allows exactly what the agent calls: an
/// agent through boot, a claim/release cycle, and self-termination (with
/// metadata tags off, so it reads its tag through ec2:DescribeTags) makes
/// every call it has; the proxy records them by IAM name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_policy_allows_exactly_the_calls_the_agent_makes() {
    let stack = Stack::start(StackOptions {
        tags_in_metadata: false,
        ..Default::default()
    })
    .await;
    let agent = stack.spawn_agent(&Default::default());
    stack.expect_signal("UD_REG_OK", INITIAL_RUN_ID).await;
    stack
        .cp
        .release(&stack.instance_id, INITIAL_RUN_ID, "created")
        .await;
    stack
        .expect_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID)
        .await;
    stack
        .cp
        .set_threshold(&stack.instance_id, "2020-01-01T00:00:00Z")
        .await;
    assert!(
        stack.wait_terminated(Duration::from_secs(20)).await,
        "{}",
        agent.log_text()
    );

    let out = std::process::Command::new(userdata_binary())
        .args(["iam-policy", "--table", &stack.cp.table])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let policy: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut allowed: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            list => list
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect(),
        })
        .collect();
    allowed.sort();
    let called: Vec<String> = stack.proxy.counts().iam_actions.into_iter().collect();
    assert_eq!(called, allowed, "calls seen at the proxy vs the policy");
    // The table statement names this table, and termination needs the tag.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(":table/{}\"", stack.cp.table)),
        "{text}"
    );
    assert!(
        text.contains("\"ec2:ResourceTag/AllowSelfTermination\": \"true\""),
        "{text}"
    );
}

/// When the pool-manager script fails, the wrapper reports it exactly as
/// for any failed pre-runner-script: UD_FAILED for the InitialRunId, and no
/// agent starts. Here: a download that does not match its checksum, and a
/// script rendered for another pool's table. Run outside the wrapper but
/// with its TABLE_NAME, it refuses to start a second agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pool_manager_script_leaves_the_wrapper_to_signal_ud_failed() {
    let stack = Stack::start(StackOptions::default()).await;
    let (url, sha) = serve_agent_tarball(&stack);
    let wrong: String = sha.chars().rev().collect();
    let input = |sha: &str| {
        format!(
            "os = \"ubuntu-24.04\"\npackages = false\n[agent.download.x86_64]\nurl = \"{url}\"\nsha256 = \"{sha}\"\n{}",
            agent_config(&stack, "allow_run_as_root = true\n")
        )
    };
    let other_table = input(&sha).replace(
        &format!("table = \"{}\"", stack.cp.table),
        "table = \"someone-elses-ci-table\"",
    );
    let cases = [
        ("checksum", input(&wrong), "SHA-256 differs"),
        (
            "table",
            other_table,
            "the pool manager's table is acme-widgets-",
        ),
    ];
    for (name, input, expected) in cases {
        let sandbox = Sandbox::new(&stack.dir.path().join(name), "ubuntu-24.04");
        let (out, log) = run_under_pool_manager(&stack, &sandbox, &input).await;
        assert_eq!(out.status.code(), Some(1), "{name}: {log}");
        assert!(log.contains(expected), "{name}: {log}");
        assert_eq!(
            sandbox.read("/var/log/wrapper-steps.log"),
            format!("emitSignal {INITIAL_RUN_ID} UD_FAILED\n"),
            "{name}: {log}"
        );
        assert_eq!(sandbox.read("/var/log/systemctl.calls"), "", "{name}");
    }

    let sandbox = Sandbox::new(&stack.dir.path().join("no-wrapper"), "ubuntu-24.04");
    render(
        &stack,
        &sandbox,
        &input(&sha),
        "pool-manager",
        "/root/pre-runner-script.sh",
    );
    let mut env = instance_env(&stack, &sandbox);
    env.push(("TABLE_NAME".into(), stack.cp.table.clone()));
    let out = sandbox
        .run(
            &["bash", "/root/pre-runner-script.sh"],
            &env,
            SCRIPT_TIMEOUT,
        )
        .await;
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains("TABLE_NAME is set but pid")
            && log.contains("is not the pool manager's bash agent"),
        "{log}"
    );
    assert_eq!(sandbox.read("/var/log/systemctl.calls"), "");
}

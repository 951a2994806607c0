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

mod iam_policy;
mod pool_manager;
mod shell;

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
        "[agent_config]\ntable = \"{table}\"\n[agent_config.github]\nurl = \"https://github.com/acme/widgets\"\n[agent_config.runner]\nversion = \"{FAKE_RUNNER_VERSION}\"\nrelease_base_url = \"{base}\"\nrelease_api_url = \"{api}\"\nstop_timeout = \"5s\"\n{runner_lines}[agent_config.timing]\nexpiry_check_interval = \"1s\"\n[agent_config.reset]\ndocker = \"off\"\n",
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

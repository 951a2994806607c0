//! The pool-manager script under a copy of fleet-actions' bash wrapper.

use super::*;

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

//! The shell user data on a stock AMI's first boot, in a throwaway root.

use super::*;

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

//! The shipped non-Rust artifacts, checked with the tools that own their
//! formats: the systemd unit with `systemd-analyze verify`, shell scripts
//! with `bash -n` and `shellcheck`, the binary's CLI contract.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command) -> (bool, String) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (scripts/setup.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn systemd_unit_verifies() {
    // verify insists that ExecStart exists: point it at the binary we ship.
    let unit = std::fs::read_to_string(workspace().join("systemd/runner-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/runner-agent run"));
    let bin = stack::agent::agent_binary();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("runner-agent.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/runner-agent", bin.to_str().unwrap()),
    )
    .unwrap();
    let (ok, text) = run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    for required in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "TimeoutStopSec=",
        "StateDirectory=runner-agent",
    ] {
        assert!(unit.contains(required), "unit lacks {required}");
    }
}

fn shell_scripts() -> Vec<PathBuf> {
    let root = workspace();
    let mut scripts: Vec<PathBuf> = [
        "tests/fake-runner/config.sh",
        "tests/fake-runner/run.sh",
        "tests/fake-runner/bin/Runner.Listener",
        "tests/fake-runner/bin/Runner.Worker",
        "scripts/test",
        "scripts/demo",
        "scripts/bench",
        "scripts/setup.sh",
        "scripts/dist",
        "scripts/check-dist",
        "scripts/test-aarch64",
        "packaging/deb/postinst",
        "packaging/deb/prerm",
        "packaging/deb/postrm",
        "packaging/rpm/post",
        "packaging/rpm/preun",
        "packaging/rpm/postun",
        "packaging/packer/provision.sh",
        ".ci/run",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    scripts.retain(|p| Path::new(p).exists());
    assert!(scripts.len() >= 7, "{scripts:?}");
    scripts
}

#[test]
fn shell_scripts_parse_and_pass_shellcheck() {
    for script in shell_scripts() {
        let (ok, text) = run(Command::new("bash").arg("-n").arg(&script));
        assert!(ok, "bash -n {}: {text}", script.display());
        let (ok, text) = run(Command::new("shellcheck")
            .args(["-s", "bash", "-x"])
            .arg(&script)
            .current_dir(workspace()));
        assert!(ok, "shellcheck {}:\n{text}", script.display());
    }
}

#[test]
fn cli_contract() {
    let bin = stack::agent::agent_binary();
    let (ok, text) = run(Command::new(&bin).arg("--version"));
    assert!(ok && text.starts_with("runner-agent "), "{text}");
    let out = Command::new(&bin).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
    let out = Command::new(&bin)
        .args(["status", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/config.toml"), "{err}");
    // Static: no program interpreter (dynamic loader) named in the ELF, so
    // it runs on any Linux of its arch.
    let bytes = std::fs::read(&bin).unwrap();
    for loader in [&b"ld-linux"[..], b"/lib/ld-musl"] {
        assert!(
            !bytes.windows(loader.len()).any(|w| w == loader),
            "dynamically linked"
        );
    }
}

//! Which runner version the install dir holds: the marker runner-agent
//! writes after a verified unpack, or else what the runner itself says
//! (`bin/Runner.Listener --version`), for a runner unpacked by something
//! else, e.g. an image bake that did not use `runner-agent install`.

use crate::config::parse_runner_version;
use crate::runner::pid::Pgid;
use crate::runner::process::GroupKillGuard;
use crate::runner::user::{self, RunnerUser};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// Written into the install dir after a verified unpack; its content is the
/// runner version. It asserts that runner-agent checked the tarball's
/// digest, so nothing else writes it.
pub const VERSION_MARKER: &str = ".runner-agent-version";

/// Written beside `VERSION_MARKER` by an upgrade away from a pinned
/// version GitHub deprecated; its content is that pinned version. While
/// `runner.version` still names it, the upgrade is kept across restarts
/// instead of the refused version being installed (and upgraded) again.
pub const UPGRADED_FROM_MARKER: &str = ".runner-agent-upgraded-from";

/// The pinned version an upgrade replaced, if the install dir holds one.
pub fn upgraded_from(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(UPGRADED_FROM_MARKER))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The listener is a .NET program that answers `--version` in about a
/// second; a slow disk or a cold page cache may take longer, a hung one
/// must not hold the boot.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// A runner found in the install dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub version: String,
    /// `true`: runner-agent unpacked it from a tarball whose digest it
    /// checked (the marker); `false`: only the listener's own answer.
    pub verified: bool,
}

/// The version the marker names, if there is one.
pub fn installed_version(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(VERSION_MARKER))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The runner in `dir`: the marker's version, or without a marker the
/// version the listener reports, run as `owner` when one is given.
pub async fn find(dir: &Path, owner: Option<&RunnerUser>) -> Option<Found> {
    if let Some(version) = installed_version(dir) {
        return Some(Found {
            version,
            verified: true,
        });
    }
    match probe_version(dir, owner, PROBE_TIMEOUT).await {
        Ok(Some(version)) => Some(Found {
            version,
            verified: false,
        }),
        Ok(None) => None,
        Err(reason) => {
            tracing::info!(dir = %dir.display(), %reason, "no usable runner found in the install dir");
            None
        }
    }
}

/// Why an existing listener gave no version.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("starting {}: {source}", path.display())]
    Start {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Wait {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("Runner.Listener --version: no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("Runner.Listener --version: {status}: {stderr}")]
    Failed { status: ExitStatus, stderr: String },
    #[error("Runner.Listener --version answered {0:?}, not a version")]
    NotAVersion(String),
}

/// Runs `<dir>/bin/Runner.Listener --version` (which prints the bare
/// version and needs no configuration). `Ok(None)` when there is no
/// listener; `Err` says why an existing one gave no version.
///
/// The listener's HostContext creates `<dir>/_diag` and a log file in it
/// before it answers, so it runs as the runner user: a root-owned `_diag`
/// would stop the runner from logging later. Its traces go to stdout when
/// `ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT` is set, so that is left out.
pub async fn probe_version(
    dir: &Path,
    owner: Option<&RunnerUser>,
    timeout: Duration,
) -> Result<Option<String>, ProbeError> {
    let listener = dir.join("bin/Runner.Listener");
    if !listener.is_file() {
        return Ok(None);
    }
    let mut command = Command::new(&listener);
    command
        .arg("--version")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .env_remove("ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT");
    crate::runner::process::scrub_env(&mut command);
    user::confine(command.as_std_mut(), owner, Vec::new());
    let child = command.spawn().map_err(|source| ProbeError::Start {
        path: listener.clone(),
        source,
    })?;
    // Whatever the listener leaves running, on time or not, dies here.
    let _guard = GroupKillGuard(Pgid::of_child(&child));
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.map_err(|source| ProbeError::Wait {
            path: listener.clone(),
            source,
        })?,
        Err(_) => return Err(ProbeError::NoAnswer(timeout)),
    };
    if !output.status.success() {
        return Err(ProbeError::Failed {
            status: output.status,
            stderr: excerpt(&output.stderr),
        });
    }
    parse_version_output(&output.stdout)
        .map(Some)
        .ok_or_else(|| ProbeError::NotAVersion(excerpt(&output.stdout)))
}

/// The version in the listener's answer: its one line that is a bare
/// version. Trace lines (`[2025-... INFO HostContext] ...`), should a
/// `.env` turn them on, are never one; two different versions are no
/// answer.
fn parse_version_output(stdout: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(stdout).ok()?;
    let mut versions = text
        .lines()
        .map(str::trim)
        .filter(|line| parse_runner_version(line).is_some());
    let version = versions.next()?;
    versions.all(|v| v == version).then(|| version.to_owned())
}

/// The start of what a process printed, for a log line.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim()
        .chars()
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_answer_is_its_one_bare_version() {
        for (stdout, want) in [
            ("2.336.0\n", Some("2.336.0")),
            ("2.336.0", Some("2.336.0")),
            ("\r\n2.336.0\r\n", Some("2.336.0")),
            (
                "[2025-11-02 10:00:00Z INFO HostContext] Well known directory 'Bin': '/opt/actions-runner/bin'\n2.336.0\n[2025-11-02 10:00:00Z INFO HostContext] disposed\n",
                Some("2.336.0"),
            ),
            ("2.336.0\n2.336.0\n", Some("2.336.0")),
            ("2.336.0\n2.335.0\n", None),
            ("", None),
            ("v2.336.0\n", None),
            ("2.336\n", None),
            ("Runner.Listener 2.336.0\n", None),
            ("Not configured. Run config.(sh/cmd) to configure the runner.\n", None),
        ] {
            assert_eq!(
                parse_version_output(stdout.as_bytes()).as_deref(),
                want,
                "{stdout:?}"
            );
        }
        assert_eq!(parse_version_output(b"\xff2.336.0\n"), None);
    }

    /// A runner dir whose listener is `body` (a bash script).
    fn runner_dir(body: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let listener = bin.join("Runner.Listener");
        std::fs::write(&listener, format!("#!/bin/bash\n{body}\n")).unwrap();
        std::fs::set_permissions(&listener, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[tokio::test]
    async fn the_listener_is_asked_in_its_directory() {
        let dir = runner_dir("[ \"$1\" = --version ] && [ -d bin ] && echo 2.336.0");
        let got = probe_version(dir.path(), None, PROBE_TIMEOUT).await;
        assert_eq!(got.unwrap(), Some("2.336.0".into()));
        assert_eq!(
            find(dir.path(), None).await,
            Some(Found {
                version: "2.336.0".into(),
                verified: false
            })
        );
        // The marker wins over the listener: it is what runner-agent checked.
        std::fs::write(dir.path().join(VERSION_MARKER), "2.335.0\n").unwrap();
        assert_eq!(
            find(dir.path(), None).await,
            Some(Found {
                version: "2.335.0".into(),
                verified: true
            })
        );
    }

    #[tokio::test]
    async fn no_listener_a_failing_one_or_a_wrong_answer_is_no_version() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            probe_version(empty.path(), None, PROBE_TIMEOUT)
                .await
                .unwrap(),
            None
        );
        assert_eq!(find(empty.path(), None).await, None);
        for (body, why) in [
            (
                "echo 'Unhandled exception' >&2; exit 134",
                "Unhandled exception",
            ),
            ("echo 'Usage: Runner.Listener'", "not a version"),
        ] {
            let dir = runner_dir(body);
            let err = probe_version(dir.path(), None, PROBE_TIMEOUT)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{body}: {err}");
            assert_eq!(find(dir.path(), None).await, None);
        }
    }

    #[tokio::test]
    async fn a_hung_listener_is_killed_at_the_timeout() {
        let dir = runner_dir("echo $$ > pid; sleep 60 & wait");
        let started = std::time::Instant::now();
        let err = probe_version(dir.path(), None, Duration::from_millis(500))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no answer within"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Its group (the sleep included) is gone, or dying.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while crate::runner::tree::tree_alive(Pgid::new(pid).unwrap()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the listener's group lives on"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

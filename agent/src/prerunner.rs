//! The operator's pre-runner script: run once at first boot, with a
//! timeout, its output forwarded line by line into the agent's log.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum PreRunnerError {
    #[error("pre-runner script {path}: cannot start: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("pre-runner script {path}: {status}")]
    Failed {
        path: String,
        status: std::process::ExitStatus,
    },
    #[error("pre-runner script {path}: still running after {timeout:?}; killed")]
    TimedOut { path: String, timeout: Duration },
}

fn has_shebang(script: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 2];
    std::fs::File::open(script)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

fn is_executable(script: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(script).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// Runs `script` in its own process group and kills the whole group on
/// timeout.
pub async fn run(script: &Path, timeout: Duration) -> Result<(), PreRunnerError> {
    let path = script.display().to_string();
    // A script with a shebang that may be executed runs as itself (python,
    // sh, ...); anything else through bash, as the control plane's agent
    // runs scripts written without one.
    let mut command = if has_shebang(script) && is_executable(script) {
        Command::new(script)
    } else {
        let mut c = Command::new("/bin/bash");
        c.arg(script);
        c
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If the agent is stopped meanwhile, the script goes with it; it
        // runs again on the next start, as the boot never finished.
        .kill_on_drop(true)
        .process_group(0);
    for name in crate::notify::PRIVATE_ENV {
        command.env_remove(name);
    }
    // A script just written (by cloud-init, or another thread's fork still
    // holding the write descriptor) can be briefly "text file busy".
    let mut busy_retries = 5;
    let mut child = loop {
        match command.spawn() {
            Ok(child) => break child,
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && busy_retries > 0 => {
                busy_retries -= 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => {
                return Err(PreRunnerError::Spawn {
                    path: path.clone(),
                    source,
                })
            }
        }
    };
    let pgid = crate::runner::pid::Pgid::of_child(&child);
    crate::runner::forward_output("pre-runner stdout", child.stdout.take());
    crate::runner::forward_output("pre-runner stderr", child.stderr.take());
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(PreRunnerError::Failed { path, status }),
        Ok(Err(source)) => Err(PreRunnerError::Spawn { path, source }),
        Err(_) => {
            if let Some(pgid) = pgid {
                crate::runner::tree::stop_tree(pgid, Duration::from_secs(5)).await;
            }
            let _ = child.wait().await;
            Err(PreRunnerError::TimedOut { path, timeout })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Script {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
    }

    impl Script {
        fn path(&self) -> &Path {
            &self.path
        }
    }

    /// A script in a file that is closed once written (an open descriptor
    /// would make executing it fail with ETXTBSY).
    fn script(body: &str) -> Script {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("script");
        std::fs::write(&path, body).unwrap();
        Script { _dir: dir, path }
    }

    #[tokio::test]
    async fn success_failure_and_timeout() {
        let ok = script("echo hello\n");
        run(ok.path(), Duration::from_secs(5)).await.unwrap();
        let bad = script("exit 3\n");
        assert!(matches!(
            run(bad.path(), Duration::from_secs(5)).await,
            Err(PreRunnerError::Failed { .. })
        ));
        let slow = script("sleep 30\n");
        let started = std::time::Instant::now();
        assert!(matches!(
            run(slow.path(), Duration::from_millis(200)).await,
            Err(PreRunnerError::TimedOut { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn shebang_scripts_run_as_themselves() {
        use std::os::unix::fs::PermissionsExt;
        // `shopt` exists only in bash: run by sh, this fails.
        let sh = script("#!/bin/sh\nif command -v shopt >/dev/null 2>&1 && shopt -q extglob 2>/dev/null; then exit 9; fi\nexit 0\n");
        std::fs::set_permissions(sh.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        run(sh.path(), Duration::from_secs(5)).await.unwrap();
        assert!(has_shebang(sh.path()) && is_executable(sh.path()));
        let plain = script("echo no shebang\n");
        assert!(!has_shebang(plain.path()));
        run(plain.path(), Duration::from_secs(5)).await.unwrap();
    }
}

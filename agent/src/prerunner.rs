//! The operator's pre-runner script: run once at first boot, with a
//! timeout, its output forwarded line by line into the agent's log.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
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

/// Runs `script` (through bash when it is not executable, as the control
/// plane's agent writes scripts without a shebang) in its own process group
/// and kills the whole group on timeout.
pub async fn run(script: &Path, timeout: Duration) -> Result<(), PreRunnerError> {
    let path = script.display().to_string();
    let mut command = Command::new("/bin/bash");
    command
        .arg(script)
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
    let mut child = command.spawn().map_err(|source| PreRunnerError::Spawn {
        path: path.clone(),
        source,
    })?;
    let pgid = child.id().map(|p| p as i32);
    for (stream, reader) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ),
    ] {
        if let Some(reader) = reader {
            tokio::spawn(async move {
                let mut lines = BufReader::new(reader).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "pre_runner", stream, "{line}");
                }
            });
        }
    }
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

    fn script(body: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        file
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
}

//! The runner's processes once started: a listener we supervise (our
//! child, or one adopted after a crash), a guard that kills a process
//! group left behind, and a child's output forwarded into the agent's log.

use super::pid::Pgid;
use super::tree;
use nix::sys::signal::{killpg, Signal};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tracing::Instrument;

/// Kills a process group when dropped before the group is done.
pub(crate) struct GroupKillGuard(pub(crate) Option<Pgid>);

impl Drop for GroupKillGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            if tree::tree_alive(pgid) {
                // Gone in between (ESRCH) is as good as killed.
                let _ = killpg(pgid.as_pid(), Signal::SIGKILL);
            }
        }
    }
}

/// A running listener: our child, or one adopted from an earlier agent
/// process (after a crash) that we can watch and stop but not wait on.
pub struct RunningRunner {
    pub(super) child: Option<Child>,
    pub(super) pgid: Pgid,
    pub(super) stop_timeout: Duration,
}

/// How often an adopted runner's process group is checked for life.
const ADOPTED_POLL: Duration = Duration::from_millis(250);

impl RunningRunner {
    pub fn pgid(&self) -> Pgid {
        self.pgid
    }

    /// Resolves when the listener exits (with its status when it is our
    /// child).
    pub async fn exited(&mut self) -> Option<ExitStatus> {
        match &mut self.child {
            Some(child) => child.wait().await.ok(),
            None => loop {
                if !tree::tree_alive(self.pgid) {
                    return None;
                }
                tokio::time::sleep(ADOPTED_POLL).await;
            },
        }
    }

    /// Stops the listener and every job process under it.
    pub async fn stop(mut self) {
        let clean = tree::stop_tree(self.pgid, self.stop_timeout).await;
        let status = match &mut self.child {
            Some(child) => child.wait().await.ok(),
            None => None,
        };
        tracing::info!(status = ?status, clean, "runner stopped");
    }
}

pub(super) fn dup_stderr() -> std::io::Result<Stdio> {
    use std::os::fd::AsFd;
    Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
}

/// Sends a child's output into the agent's log, line by line. Bytes that
/// are not UTF-8 (dpkg, compilers in odd locales) are replaced, never a
/// reason to stop reading: a reader that stops would kill the child with
/// SIGPIPE on its next write.
pub fn forward_output(
    source: &'static str,
    stream: Option<impl AsyncRead + Unpin + Send + 'static>,
) {
    let Some(stream) = stream else { return };
    tokio::spawn(
        async move {
            let mut reader = BufReader::new(stream);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        tracing::info!(target: "child_output", source, "{}", text.trim_end());
                    }
                }
            }
        }
        .in_current_span(),
    );
}

/// Leaves out of a runner command's environment what belongs to the agent
/// (systemd's notify socket and watchdog) and any `ACTIONS_RUNNER_INPUT_*`
/// the agent was started with (config.sh reads its answers from them).
pub(crate) fn scrub_env(command: &mut tokio::process::Command) {
    for name in crate::notify::PRIVATE_ENV {
        command.env_remove(name);
    }
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.to_ascii_uppercase().starts_with("ACTIONS_RUNNER_INPUT_"))
        {
            command.env_remove(name);
        }
    }
}

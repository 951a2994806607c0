//! Rootless Docker for the runner user (`[hardening] docker`): hardened
//! mode keeps the runner user out of the docker group (docker group =
//! root), so the agent runs a Docker daemon *as* that user instead:
//! Docker's `dockerd-rootless.sh` (rootlesskit, slirp4netns). Jobs reach it
//! through `DOCKER_HOST`; its containers' traffic leaves through
//! slirp4netns, a process of the runner's uid, so the firewall's
//! per-uid rule covers it, host-network containers included.
//!
//! The daemon is born into the runner's cgroup: the reset's kill takes it
//! with every container process, whatever subordinate uid it runs as. The
//! reset then starts it afresh (a job had its uid: it could have changed
//! the old one), before cleaning its containers and volumes
//! (`reset/mod.rs`). Between resets a supervisor starts it again when it
//! dies.

mod dirs;
pub mod needs;

use crate::config::{RootlessMode, Settings};
use crate::reset::cgroup::RunnerCgroup;
use crate::runner::user::RunnerUser;
use dirs::owned_dir;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Up in about a second on an idle machine; a loaded one at boot, which
/// copies /etc and /run into the daemon's namespace, takes longer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Readiness is polled this often (a connect to the socket, then the CLI).
const READY_POLL: Duration = Duration::from_millis(50);
/// One `docker version`; the daemon answers in milliseconds when up.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks; a dead daemon is started again at the
/// next look, a start that failed is tried again at the one after.
const SUPERVISE_EVERY: Duration = Duration::from_secs(10);
/// A stop: SIGTERM, dockerd stops its containers (10 s each by default,
/// in parallel), then SIGKILL to what is left.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The daemon's last lines kept for an error message.
const TAIL_LINES: usize = 20;
/// The daemon's PATH when the agent has none (systemd gives one).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    #[error("rootless docker needs what is missing: {}", .0.join("; "))]
    Missing(Vec<String>),
    #[error("preparing {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("preparing {path}: {source}")]
    DirIo {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the runner's cgroup: {0}")]
    Cgroup(#[from] crate::reset::cgroup::CgroupError),
    #[error("starting {script}: {source}")]
    Spawn {
        script: PathBuf,
        source: std::io::Error,
    },
    #[error("dockerd-rootless.sh exited ({status}) before it answered; its last lines: {tail}")]
    Exited {
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("no answer at {host} within {START_TIMEOUT:?}; its last lines: {tail}")]
    NoAnswer { host: String, tail: String },
}

/// What the agent will start, decided before the firewall and the first
/// registration; `None` from [`plan`]: no rootless Docker.
#[derive(Debug, Clone)]
pub struct Plan {
    script: PathBuf,
    user: RunnerUser,
    data_root: PathBuf,
    runtime_dir: PathBuf,
    host: String,
    path: OsString,
    cli: PathBuf,
    required: bool,
}

/// Whether hardened mode runs a rootless daemon: with `docker = "auto"`,
/// when everything it needs is there (else one warning); with
/// `"rootless"`, an error names what is missing.
pub fn plan(settings: &Settings, user: Option<&RunnerUser>) -> Result<Option<Plan>, RootlessError> {
    let docker = &settings.hardening.docker;
    let (true, Some(user)) = (settings.hardening.enabled, user) else {
        return Ok(None);
    };
    if docker.mode == RootlessMode::Off {
        return Ok(None);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    match needs::find(&needs::Places::host(&path), user) {
        Ok(script) => Ok(Some(Plan {
            script,
            user: user.clone(),
            data_root: docker.data_root.clone(),
            runtime_dir: docker.runtime_dir.clone(),
            host: docker.docker_host(),
            path,
            cli: settings.reset.docker_cli.clone(),
            required: docker.mode == RootlessMode::Rootless,
        })),
        Err(missing) if docker.mode == RootlessMode::Rootless => {
            Err(RootlessError::Missing(missing))
        }
        Err(missing) => {
            tracing::warn!(missing = %missing.join("; "), "hardened mode without docker for jobs: rootless docker is not installed (hardening.docker = \"auto\")");
            Ok(None)
        }
    }
}

/// `runner-agent check`'s line: what `run` would start, or what is
/// missing (an error only when `docker = "rootless"` requires it).
pub fn describe(settings: &Settings) -> Result<String, String> {
    let docker = &settings.hardening.docker;
    if docker.mode == RootlessMode::Off {
        return Ok("off (hardening.docker = \"off\"): jobs have no docker".into());
    }
    let user = RunnerUser::resolve(settings.runner.user.as_deref())
        .ok()
        .flatten()
        .ok_or("no dedicated runner user to run rootless docker as")?;
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    match needs::find(&needs::Places::host(&path), &user) {
        Ok(script) => Ok(format!(
            "rootless ({} as {}; jobs get DOCKER_HOST={})",
            script.display(),
            user.name,
            docker.docker_host()
        )),
        Err(missing) if docker.mode == RootlessMode::Rootless => Err(format!(
            "rootless required (hardening.docker = \"rootless\"), but missing: {}",
            missing.join("; ")
        )),
        Err(missing) => Ok(format!(
            "none: rootless docker needs {}; jobs have no docker (hardening.docker = \"auto\")",
            missing.join("; ")
        )),
    }
}

impl Plan {
    /// Starts the daemon in the runner's cgroup (or adopts the one an
    /// earlier agent left, if it answers) and waits until it answers.
    /// `Ok(None)`: it could not come up and `docker = "auto"` lets the
    /// agent serve without it (logged).
    pub async fn start(
        self,
        cgroup: Option<Arc<RunnerCgroup>>,
    ) -> Result<Option<Arc<RootlessDocker>>, RootlessError> {
        let required = self.required;
        let docker = RootlessDocker {
            plan: self,
            cgroup,
            child: tokio::sync::Mutex::new(None),
            pid: AtomicI32::new(0),
            tail: Default::default(),
        };
        let mut child = docker.child.lock().await;
        if docker.ping().await.is_ok() {
            // A crashed agent's daemon, maybe serving an adopted runner's
            // job: kept; the next reset replaces it.
            tracing::info!(host = %docker.plan.host, "rootless docker already answers; adopted");
        } else {
            match docker.spawn_and_wait(&mut child).await {
                Ok(took) => {
                    tracing::info!(host = %docker.plan.host, millis = took.as_millis() as u64, "rootless docker started for the runner user")
                }
                Err(e) if !required => {
                    tracing::error!(error = %e, "rootless docker did not come up; jobs have no docker (hardening.docker = \"auto\")");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        drop(child);
        Ok(Some(Arc::new(docker)))
    }
}

pub struct RootlessDocker {
    plan: Plan,
    cgroup: Option<Arc<RunnerCgroup>>,
    /// `None`: adopted, or not running. Held across a reset (`hold`), so
    /// the supervisor does not start it between the sweep and the check.
    child: tokio::sync::Mutex<Option<Child>>,
    /// The running child's pid, 0 when none: for the reset's process
    /// check, which must not wait for the lock.
    pid: AtomicI32,
    tail: Arc<std::sync::Mutex<VecDeque<String>>>,
}

/// The daemon held for a reset: the supervisor leaves it alone until the
/// reset restarts it or gives up (dropped: the supervisor takes over).
pub struct Held<'a> {
    docker: &'a RootlessDocker,
    child: tokio::sync::MutexGuard<'a, Option<Child>>,
}

impl Held<'_> {
    /// A fresh daemon, after the reset killed the old one with the rest
    /// of the runner user's processes. Returns how long it took to answer.
    pub async fn restart(mut self) -> Result<Duration, RootlessError> {
        if let Some(mut old) = self.child.take() {
            // Killed by the sweep already; this only reaps it.
            let _ = old.start_kill();
            let _ = old.wait().await;
        }
        self.docker.remove_pid_files();
        self.docker.spawn_and_wait(&mut self.child).await
    }
}

impl RootlessDocker {
    pub fn host(&self) -> &str {
        &self.plan.host
    }

    /// The pid of the daemon the agent started (rootlesskit), if any.
    pub fn pid(&self) -> Option<i32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|&p| p > 0)
    }

    /// For the reset, before its sweep kills the daemon.
    pub async fn hold(&self) -> Held<'_> {
        Held {
            docker: self,
            child: self.child.lock().await,
        }
    }

    /// Starts the daemon again when it died between resets (a job may
    /// kill it: it has the daemon's uid). Ends at `stop`.
    pub async fn supervise(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SUPERVISE_EVERY) => {}
            }
            // Held by a reset or a start: not ours to judge now.
            let Ok(mut child) = self.child.try_lock() else {
                continue;
            };
            let alive = match child.as_mut() {
                Some(c) => match c.try_wait() {
                    Ok(None) => true,
                    Ok(Some(status)) => {
                        tracing::warn!(%status, "rootless docker exited; starting it again");
                        false
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot tell whether rootless docker runs");
                        true
                    }
                },
                None => self.ping().await.is_ok(),
            };
            if alive {
                continue;
            }
            match self.spawn_and_wait(&mut child).await {
                Ok(took) => tracing::info!(
                    millis = took.as_millis() as u64,
                    "rootless docker started again"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "rootless docker did not come back; trying again in {SUPERVISE_EVERY:?}")
                }
            }
        }
    }

    /// At the agent's stop, after the runner's: SIGTERM, then SIGKILL to
    /// its process group. An adopted daemon is not ours to wait for: the
    /// next start adopts it again.
    pub async fn stop(&self) {
        let mut guard = self.child.lock().await;
        let Some(child) = guard.as_mut() else { return };
        let pid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(_) => tracing::info!("rootless docker stopped"),
            Err(_) => {
                tracing::warn!("rootless docker did not stop within {STOP_TIMEOUT:?}; killed");
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.kill().await;
            }
        }
        *guard = None;
        self.pid.store(0, Ordering::SeqCst);
    }

    /// `docker version` against the daemon: its version when it answers.
    pub async fn ping(&self) -> Result<String, String> {
        let mut command = Command::new(&self.plan.cli);
        command
            .args(["--host", &self.plan.host])
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(PING_TIMEOUT, command.output())
            .await
            .map_err(|_| format!("no answer in {PING_TIMEOUT:?}"))?
            .map_err(|e| format!("{}: {e}", self.plan.cli.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    async fn spawn_and_wait(&self, slot: &mut Option<Child>) -> Result<Duration, RootlessError> {
        let started = Instant::now();
        self.pid.store(0, Ordering::SeqCst);
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut child = self.spawn()?;
        let socket = self.plan.runtime_dir.join("docker.sock");
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                return Err(RootlessError::Exited {
                    status,
                    tail: self.tail(),
                });
            }
            // The socket accepts before the API is up; the CLI tells.
            if tokio::net::UnixStream::connect(&socket).await.is_ok() && self.ping().await.is_ok() {
                let pid = child.id().map_or(0, |p| p as i32);
                self.pid.store(pid, Ordering::SeqCst);
                *slot = Some(child);
                return Ok(started.elapsed());
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(RootlessError::NoAnswer {
                    host: self.plan.host.clone(),
                    tail: self.tail(),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The killed dockerd's and containerd's pid files. A pid in them
    /// that is still taken (reused, or a zombie its new parent has not
    /// reaped yet) makes the new dockerd refuse to start, or wait for a
    /// containerd that is not there until it gives up. No process of the
    /// user is left to own them. The runtime dir is the user's: walked
    /// without following links (`nofollow`).
    fn remove_pid_files(&self) {
        let dir = &self.plan.runtime_dir;
        let removed = crate::nofollow::DirFd::open(dir).and_then(|root| {
            let Some(root) = root else { return Ok(0) };
            let mut n = 0;
            for file in ["docker.pid", "docker/containerd/containerd.pid"] {
                n += root.remove_path(Path::new(file))?;
            }
            Ok(n)
        });
        if let Err(e) = removed {
            tracing::warn!(path = %dir.display(), error = %e, "removing the old daemon's pid files");
        }
    }

    fn tail(&self) -> String {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// The script as the runner user (uid, gid, groups), in the runner's
    /// cgroup, with an environment of its own: nothing of the agent's
    /// (its AWS endpoints, systemd's sockets) reaches the daemon.
    fn spawn(&self) -> Result<Child, RootlessError> {
        let plan = &self.plan;
        let uid = plan.user.uid.as_raw();
        let gid = plan.user.gid.as_raw();
        owned_dir(&plan.runtime_dir, uid, gid)?;
        owned_dir(&plan.data_root, uid, gid)?;
        let mut command = Command::new(&plan.script);
        command
            .arg("--data-root")
            .arg(&plan.data_root)
            .env_clear()
            .env("PATH", &plan.path)
            .env("XDG_RUNTIME_DIR", &plan.runtime_dir)
            .current_dir(&plan.runtime_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Not in the agent's group: a Ctrl-C at a terminal is the
            // agent's to handle, and it stops the daemon in order.
            .process_group(0);
        let procs = match &self.cgroup {
            Some(cgroup) => cgroup.procs_files()?,
            None => Vec::new(),
        };
        crate::runner::user::confine(command.as_std_mut(), Some(&plan.user), procs);
        let mut child = command.spawn().map_err(|source| RootlessError::Spawn {
            script: plan.script.clone(),
            source,
        })?;
        keep_tail(child.stdout.take(), self.tail.clone());
        keep_tail(child.stderr.take(), self.tail.clone());
        Ok(child)
    }
}

/// The daemon's output (rootlesskit's `set -x` trace, dockerd's log) at
/// debug level; its last lines kept for an error.
fn keep_tail(
    stream: Option<impl AsyncRead + Unpin + Send + 'static>,
    tail: Arc<std::sync::Mutex<VecDeque<String>>>,
) {
    let Some(stream) = stream else { return };
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::debug!(target: "child_output", source = "dockerd-rootless", "{line}");
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    });
}

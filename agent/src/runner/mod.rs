//! Driving `actions/runner`: `config.sh` to register and deregister, and
//! `bin/Runner.Listener run` as a supervised child in its own process
//! group (`exit.rs` says why not `run.sh`).

pub mod exit;
pub mod install;
pub mod layout;
pub mod manifest;
pub mod pid;
mod process;
pub mod tree;
pub mod user;

use crate::config::{GithubRepo, RunnerSettings};
use crate::credentials::RunEnv;
use crate::reset::cgroup::RunnerCgroup;
use pid::Pgid;
use process::{dup_stderr, GroupKillGuard};
pub use process::{forward_output, RunningRunner};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};
use user::RunnerUser;

/// Files the runner writes when configured; all of them must be gone
/// before it can be configured again.
pub(crate) const REGISTRATION_FILES: &[&str] = &[
    ".runner",
    ".credentials",
    ".credentials_rsaparams",
    ".runner_migrated",
    ".credentials_migrated",
];

/// `config.sh remove` talks to GitHub; past this, only the local
/// registration is removed.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(15);
/// `config.sh` (configure) talks to GitHub: seconds normally. A hung one
/// is killed (its whole process group) past this, and counts as a failed
/// attempt: the machine's three attempts then fit in the control plane's
/// 180 s wait for `UD_REG_OK` after a launch, and `UD_REG_FAILED` is
/// written instead of nothing.
pub const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(30);
/// `config.sh remove --local` touches only files.
const LOCAL_REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the agent keeps its job hooks inside the runner directory (root's
/// with a dedicated runner user: see `layout.rs`)...
pub(crate) const HOOK_DIR: &str = ".runner-agent";
/// ...and, below it, the directory the hooks (run as the runner user)
/// write their marker into.
pub(crate) const JOB_DIR: &str = "job";
const JOB_MARKER: &str = "job-active";

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    /// Reaped before we saw it: without a group id there is nothing we
    /// could stop later.
    #[error("started {program} but it has no process id")]
    NoPid { program: PathBuf },
    #[error("{what} failed: {status}")]
    Failed {
        what: &'static str,
        status: ExitStatus,
    },
    #[error("{what} did not finish within {timeout:?}; killed")]
    TimedOut {
        what: &'static str,
        timeout: Duration,
    },
    #[error("the runner's cgroup cannot be joined: {0}; set reset.allow_weaker = true to run it outside")]
    Cgroup(crate::reset::cgroup::CgroupError),
    #[error("giving the registration to root: {0}")]
    Layout(crate::nofollow::FsError),
    #[error("writing job hooks in {path}: {source}")]
    Hooks {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct RunnerControl {
    dir: PathBuf,
    user: Option<RunnerUser>,
    allow_root: bool,
    github_url: String,
    stop_timeout: Duration,
    extra_labels: Vec<String>,
    /// Where every process the runner starts is born, when the host has
    /// cgroups the agent can use.
    cgroup: Option<Arc<RunnerCgroup>>,
    /// `reset.allow_weaker`: a cgroup that cannot be joined is only logged.
    allow_weaker: bool,
    /// What jobs find in their environment, as under the control plane's
    /// bash agent: INSTANCE_ID, TABLE_NAME, GH_OWNER, GH_REPO.
    job_env: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveOutcome {
    /// GitHub deleted the runner.
    Server,
    /// Only the local registration files were removed; the runner stays
    /// offline on GitHub until GitHub drops it, as with the bash agent.
    LocalOnly,
}

impl RunnerControl {
    /// The runner installed as `runner` says, registered with `github`.
    /// Its jobs find `GH_OWNER` and `GH_REPO` in their environment, and
    /// the pool's names too with `for_pool`.
    pub fn new(
        runner: &RunnerSettings,
        github: &GithubRepo,
        user: Option<RunnerUser>,
        cgroup: Option<Arc<RunnerCgroup>>,
    ) -> RunnerControl {
        RunnerControl {
            cgroup,
            allow_weaker: false,
            job_env: vec![
                ("GH_OWNER", github.owner.clone()),
                ("GH_REPO", github.repo.clone()),
            ],
            dir: runner.install_dir.clone(),
            user,
            allow_root: runner.allow_run_as_root,
            github_url: github.url(),
            stop_timeout: runner.stop_timeout,
            extra_labels: runner.labels_extra.clone(),
        }
    }

    /// Jobs also find `INSTANCE_ID` and `TABLE_NAME`, as under the control
    /// plane's bash agent.
    pub fn for_pool(mut self, instance_id: &str, table: &str) -> RunnerControl {
        self.job_env.splice(
            0..0,
            [
                ("INSTANCE_ID", instance_id.to_owned()),
                ("TABLE_NAME", table.to_owned()),
            ],
        );
        self
    }

    /// Jobs also find `name=value` (`DOCKER_HOST` of the rootless daemon).
    pub fn with_env(mut self, name: &'static str, value: &str) -> RunnerControl {
        self.job_env.push((name, value.to_owned()));
        self
    }

    /// `reset.allow_weaker`: a cgroup that cannot be joined is only logged.
    pub fn allow_weaker(mut self, allow: bool) -> RunnerControl {
        self.allow_weaker = allow;
        self
    }

    pub fn is_configured(&self) -> bool {
        self.dir.join(".runner").exists()
    }

    fn hook_dir(&self) -> PathBuf {
        self.dir.join(HOOK_DIR)
    }

    fn job_marker(&self) -> PathBuf {
        self.hook_dir().join(JOB_DIR).join(JOB_MARKER)
    }

    /// Whether a job is running, as told by the runner's job hooks.
    pub fn job_active(&self) -> bool {
        self.job_marker().symlink_metadata().is_ok()
    }

    /// Whether a job's `Runner.Worker` process lives (the listener starts
    /// one per job from `bin/`). An unreadable /proc says yes: the agent
    /// then waits as for a job, rather than cut one short.
    pub fn worker_running(&self) -> bool {
        tree::runs_program(&self.dir.join("bin").join("Runner.Worker")).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot tell whether a job runs; taking it as running");
            true
        })
    }

    pub fn clear_job_marker(&self) {
        let _ = std::fs::remove_file(self.job_marker());
    }

    /// Writes the job-started / job-completed hook scripts the runner runs
    /// around each job (`ACTIONS_RUNNER_HOOK_JOB_*`).
    pub fn write_hooks(&self) -> Result<(), RunnerError> {
        let dir = self.hook_dir();
        let err = |source| RunnerError::Hooks {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir.join(JOB_DIR)).map_err(err)?;
        let marker = self.job_marker();
        let started = format!(
            "#!/bin/bash\n# Written by runner-agent: a job runs, so the agent polls DynamoDB slowly.\ndate -u +%s > '{}'\n",
            marker.display()
        );
        let completed = format!(
            "#!/bin/bash\n# Written by runner-agent: the job is over, so the agent watches for release closely.\nrm -f '{}'\n",
            marker.display()
        );
        for (name, body) in [("job-started.sh", started), ("job-completed.sh", completed)] {
            runner_agent_common::fs::write_atomically(&dir.join(name), body.as_bytes(), 0o755)
                .map_err(err)?;
        }
        // The scripts stay root's (a job could otherwise rewrite them for
        // the next run); only the marker directory is the user's.
        if let Some(user) = &self.user {
            layout::user_dirs(&self.dir, user)
                .map_err(|e| err(std::io::Error::other(e.to_string())))?;
        }
        Ok(())
    }

    /// `config.sh` (register, remove): as root when the runner has a user
    /// of its own, so that it runs the verified root-owned install and
    /// writes files the user cannot change.
    fn config_command(&self) -> Result<Command, RunnerError> {
        let mut command = self.command("config.sh", None)?;
        if self.user.is_some() {
            command.env("RUNNER_ALLOW_RUNASROOT", "1");
        }
        Ok(command)
    }

    /// A runner command, born into the runner's cgroup. A cgroup that
    /// cannot be joined fails the command (a process outside it would
    /// survive the reset), unless `reset.allow_weaker` says otherwise.
    fn command(&self, script: &str, user: Option<&RunnerUser>) -> Result<Command, RunnerError> {
        let mut command = Command::new(self.dir.join(script));
        command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        process::scrub_env(&mut command);
        if self.user.is_none() && self.allow_root && user::running_as_root() {
            command.env("RUNNER_ALLOW_RUNASROOT", "1");
        }
        let procs = match self.cgroup.as_ref().map(|cgroup| cgroup.procs_files()) {
            None => Vec::new(),
            Some(Ok(procs)) => procs,
            Some(Err(e)) if self.allow_weaker => {
                tracing::error!(error = %e, "the runner starts outside its cgroup (reset.allow_weaker)");
                Vec::new()
            }
            Some(Err(e)) => return Err(RunnerError::Cgroup(e)),
        };
        user::confine(command.as_std_mut(), user, procs);
        Ok(command)
    }

    fn spawn(&self, mut command: Command, script: &'static str) -> Result<Child, RunnerError> {
        let mut child = command.spawn().map_err(|source| RunnerError::Spawn {
            program: self.dir.join(script),
            source,
        })?;
        forward_output(script, child.stdout.take());
        forward_output(script, child.stderr.take());
        Ok(child)
    }

    async fn run_to_end(
        &self,
        command: Command,
        script: &'static str,
        what: &'static str,
    ) -> Result<(), RunnerError> {
        let mut child = self.spawn(command, script)?;
        // If the caller gives up (the agent is stopping), kill the script's
        // whole group: an orphaned `Runner.Listener configure` could write
        // `.runner` after the agent cleaned up.
        let _guard = GroupKillGuard(Pgid::of_child(&child));
        let status = child.wait().await.map_err(|source| RunnerError::Spawn {
            program: self.dir.join(script),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(RunnerError::Failed { what, status })
        }
    }

    /// `config.sh` for one registration. The token travels in
    /// `ACTIONS_RUNNER_INPUT_TOKEN`, never on the command line.
    pub async fn configure(
        &self,
        token: &str,
        name: &str,
        run_id: &str,
    ) -> Result<(), RunnerError> {
        let mut labels = run_id.to_owned();
        for extra in &self.extra_labels {
            labels.push(',');
            labels.push_str(extra);
        }
        let mut command = self.config_command()?;
        command
            .args([
                "--url",
                &self.github_url,
                "--name",
                name,
                "--labels",
                &labels,
            ])
            // --replace: after lost state the name can come again, and the
            // old registration may still be on GitHub (removal is often
            // local only); the instance id in the name keeps it ours.
            .args([
                "--no-default-labels",
                "--disableupdate",
                "--unattended",
                "--replace",
            ])
            .env("ACTIONS_RUNNER_INPUT_TOKEN", token);
        // On timeout the dropped future's guard kills the script's group.
        tokio::time::timeout(
            CONFIGURE_TIMEOUT,
            self.run_to_end(command, "config.sh", "config.sh"),
        )
        .await
        .unwrap_or(Err(RunnerError::TimedOut {
            what: "config.sh",
            timeout: CONFIGURE_TIMEOUT,
        }))?;
        if let Some(user) = &self.user {
            layout::registration_readable(&self.dir, user).map_err(RunnerError::Layout)?;
        }
        Ok(())
    }

    /// Deregisters: `config.sh remove` with the token when there is one (the
    /// control plane only publishes registration tokens; GitHub may refuse
    /// them for removal), else or then `config.sh remove --local`, so the
    /// next registration starts clean whatever GitHub said. Each is bounded
    /// (a slow GitHub must not hold the release signal past the control
    /// plane's 120 s); the script's process group dies with its timeout.
    pub async fn remove(&self, token: Option<&str>) -> Result<RemoveOutcome, RunnerError> {
        if let Some(token) = token {
            let server = async {
                let mut command = self.config_command()?;
                command
                    .args(["remove", "--unattended"])
                    .env("ACTIONS_RUNNER_INPUT_TOKEN", token);
                self.run_to_end(command, "config.sh", "config.sh remove")
                    .await
            };
            match tokio::time::timeout(REMOVE_TIMEOUT, server).await {
                Ok(Ok(())) if !self.is_configured() => return Ok(RemoveOutcome::Server),
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "removing the runner from GitHub failed; removing the local registration only")
                }
                Err(_) => tracing::warn!(
                    timeout = ?REMOVE_TIMEOUT,
                    "GitHub did not answer the runner's removal in time; removing the local registration only"
                ),
            }
        }
        let local = async {
            let mut command = self.config_command()?;
            command.args(["remove", "--local"]);
            self.run_to_end(command, "config.sh", "config.sh remove --local")
                .await
        };
        let local = match tokio::time::timeout(LOCAL_REMOVE_TIMEOUT, local).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no exit within {LOCAL_REMOVE_TIMEOUT:?}")),
        };
        // Older runners lack --local; the files are all it removes anyway.
        for file in REGISTRATION_FILES {
            let _ = std::fs::remove_file(self.dir.join(file));
        }
        if let Err(e) = local {
            tracing::warn!(error = %e, "config.sh remove --local failed; deleted the registration files directly");
        }
        Ok(RemoveOutcome::LocalOnly)
    }

    /// Starts `bin/Runner.Listener run` in its own process group with the
    /// job hooks set, as `run.sh` and `run-helper.sh` would: from the runner
    /// directory, refused as root unless allowed (`command`), but without
    /// their exit-code masking and restart loop; the machine acts on the
    /// code (`exit.rs`). SIGINT and SIGTERM both make the listener shut
    /// down gracefully (its CtrlC and Unloading handlers).
    pub fn start(&self) -> Result<RunningRunner, RunnerError> {
        self.start_with(&RunEnv::default())
    }

    /// `start`, with the environment changes of the run's job credentials
    /// (`crate::credentials`): its endpoint and token set, the credential
    /// sources that would shadow them removed.
    pub fn start_with(&self, run_env: &RunEnv) -> Result<RunningRunner, RunnerError> {
        self.clear_job_marker();
        let listener = "bin/Runner.Listener";
        let mut command = self.command(listener, self.user.as_ref())?;
        let hooks = self.hook_dir();
        command.arg("run");
        command.envs(self.job_env.iter().map(|(k, v)| (k, v)));
        for name in run_env.remove {
            command.env_remove(name);
        }
        command.envs(run_env.set.iter().map(|(k, v)| (k, v)));
        command
            .env(exit::DEPRECATED_EXIT_CODE_ENV, "1")
            .env(
                "ACTIONS_RUNNER_HOOK_JOB_STARTED",
                hooks.join("job-started.sh"),
            )
            .env(
                "ACTIONS_RUNNER_HOOK_JOB_COMPLETED",
                hooks.join("job-completed.sh"),
            );
        // The runner writes straight to the agent's stderr (the journal under
        // systemd), not through a pipe: a pipe breaks when the agent dies,
        // and the runner would die of SIGPIPE instead of being re-attached.
        if let (Ok(out), Ok(err)) = (dup_stderr(), dup_stderr()) {
            command.stdout(out).stderr(err);
        }
        let child = self.spawn(command, listener)?;
        let pgid = Pgid::of_child(&child).ok_or_else(|| RunnerError::NoPid {
            program: self.dir.join(listener),
        })?;
        tracing::info!(%pgid, "runner started");
        Ok(RunningRunner {
            child: Some(child),
            pgid,
            stop_timeout: self.stop_timeout,
        })
    }

    /// Takes over a runner left by an earlier agent process, if its process
    /// group is alive and still works in the runner directory.
    pub fn adopt(&self, pgid: Pgid) -> Option<RunningRunner> {
        let belongs = tree::group_belongs_to(pgid, &self.dir).unwrap_or_else(|e| {
            tracing::warn!(%pgid, error = %e, "cannot tell whether the runner lives; not adopting it");
            false
        });
        belongs.then(|| RunningRunner {
            child: None,
            pgid,
            stop_timeout: self.stop_timeout,
        })
    }

    /// Stops every process working in the runner directory: runners left by
    /// an earlier agent process whose state was lost.
    pub async fn stop_strays(&self) {
        if let Err(e) = tree::stop_groups_in(&self.dir, self.stop_timeout).await {
            // The reset's own sweep fails on the same error, so nothing
            // unseen is pooled.
            tracing::error!(error = %e, "looking for stray runner processes");
        }
    }
}

#[cfg(test)]
mod tests;

//! The agent under test: the shipped release binary (static musl build),
//! run as a process with a config file and an environment that points every
//! AWS call at loopback.

use crate::{Stack, INITIAL_RUN_ID};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The binary to test: `RA_AGENT_BIN`, else the musl release build in the
/// cargo target dir.
pub fn agent_binary() -> PathBuf {
    release_binary("runner-agent", "RA_AGENT_BIN")
}

/// The generator as shipped: `RA_USERDATA_BIN`, else the musl release build.
pub fn userdata_binary() -> PathBuf {
    release_binary("runner-userdata", "RA_USERDATA_BIN")
}

fn release_binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("x86_64-unknown-linux-musl/release").join(name);
    assert!(
        bin.exists(),
        "{} missing: cargo build --release --target x86_64-unknown-linux-musl -p runner-agent -p runner-userdata (scripts/test does it)",
        bin.display()
    );
    bin
}

#[derive(Debug, Clone, Default)]
pub struct AgentSpec {
    /// Body of the pre-runner script, if any.
    pub pre_runner: Option<String>,
    /// Pin this digest instead of asking the (fake) release API.
    pub sha256: Option<String>,
    /// `runner.version` instead of the fake's first release (`latest`, or
    /// another release the fake GitHub publishes).
    pub runner_version: Option<String>,
    /// `runner.user`: the runner runs as this user.
    pub user: Option<String>,
    /// Keep the agent's own timing defaults instead of the stack's quick
    /// expiry checks (the benchmark measures what ships).
    pub production_timing: bool,
    /// TOML lines appended to the `[timing]` table.
    pub timing: Vec<String>,
    /// TOML lines for the `[reset]` table; a key given here replaces the
    /// stack's default for it (home and temp dirs inside the stack dir,
    /// docker off), so no test cleans the machine's own home or /tmp.
    pub reset: Vec<String>,
    /// TOML appended after everything else (whole tables: `[metrics]`).
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
}

pub struct AgentProcess {
    child: Child,
    pub log: PathBuf,
}

impl Stack {
    /// The runner user's home as the reset sees it.
    pub fn home_dir(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// Where `spawn_agent` appends every agent's stderr: one log a stack.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// The agent log's text, "" before any agent wrote to it.
    pub fn agent_log_text(&self) -> String {
        std::fs::read_to_string(self.agent_log()).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn write_config(&self, spec: &AgentSpec) {
        let dir = self.dir.path();
        let mut toml = format!(
            "table = \"{table}\"\n\n[github]\nurl = \"https://github.com/acme/widgets\"\n\n[runner]\nversion = \"{version}\"\ninstall_dir = \"{runner}\"\nrelease_base_url = \"{base}\"\nrelease_api_url = \"{api}\"\nallow_run_as_root = true\nstop_timeout = \"5s\"\n",
            table = self.cp.table,
            version = spec
                .runner_version
                .as_deref()
                .unwrap_or(crate::github::FAKE_RUNNER_VERSION),
            runner = self.runner_dir().display(),
            base = self.github.release_base_url(),
            api = self.github.api_url(),
        );
        if let Some(user) = &spec.user {
            toml.push_str(&format!("user = \"{user}\"\n"));
        }
        if let Some(sha) = &spec.sha256 {
            toml.push_str(&format!("sha256 = \"{sha}\"\n"));
        }
        toml.push_str(&format!(
            "\n[agent]\nstate_dir = \"{}\"\n",
            dir.join("state").display()
        ));
        if let Some(body) = &spec.pre_runner {
            let script = dir.join("pre-runner.sh");
            std::fs::write(&script, body).unwrap();
            toml.push_str(&format!(
                "pre_runner_script = \"{}\"\npre_runner_timeout = \"10s\"\n",
                script.display()
            ));
        }
        toml.push_str("\n[timing]\n");
        if !spec.production_timing {
            toml.push_str("expiry_check_interval = \"1s\"\nself_termination_grace = \"0s\"\n");
        }
        for line in &spec.timing {
            toml.push_str(line);
            toml.push('\n');
        }
        toml.push_str("\n[reset]\n");
        let defaults = [
            format!("home = \"{}\"", self.home_dir().display()),
            format!("temp_dirs = [\"{}\"]", dir.join("tmp").display()),
            "docker = \"off\"".to_owned(),
        ];
        let key = |line: &str| line.split('=').next().unwrap_or_default().trim().to_owned();
        for line in &defaults {
            if !spec.reset.iter().any(|l| key(l) == key(line)) {
                toml.push_str(line);
                toml.push('\n');
            }
        }
        for line in spec.reset.iter().chain(&spec.extra) {
            toml.push_str(line);
            toml.push('\n');
        }
        std::fs::create_dir_all(self.home_dir()).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        if let Err(e) = runner_agent::config::Settings::from_toml(&self.config_path(), &toml, []) {
            panic!("the stack wrote an invalid agent config: {e}\n{toml}");
        }
        std::fs::write(self.config_path(), toml).unwrap();
    }

    /// The environment every agent process gets: AWS at the proxy in front
    /// of moto, IMDS at the fake, static test credentials, no shared AWS
    /// config files, the fake runner's logs and job queue.
    pub fn agent_command(&self, args: &[&str], spec: &AgentSpec) -> Command {
        let mut command = Command::new(agent_binary());
        command
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_ENDPOINT_URL", &self.proxy.endpoint)
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &self.imds.endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_CONFIG_FILE", self.dir.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-aws-credentials"),
            )
            .env("RUNNER_AGENT_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("FAKE_RUNNER_LOG", self.runner_log())
            .env("FAKE_JOBS_DIR", self.jobs_dir());
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        command
    }

    /// Writes the config and starts `runner-agent run`, its stderr appended
    /// to `agent.log` in the stack dir.
    pub fn spawn_agent(&self, spec: &AgentSpec) -> AgentProcess {
        self.write_config(spec);
        let log = self.agent_log();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = self
            .agent_command(&["run"], spec)
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn runner-agent");
        AgentProcess { child, log }
    }

    /// Starts the agent and waits until it is registered for the initial
    /// run and its listener runs.
    pub async fn boot_agent(&self, spec: &AgentSpec) -> AgentProcess {
        const WAIT: Duration = Duration::from_secs(30);
        let agent = self.spawn_agent(spec);
        self.assert_signal("UD_REG_OK", INITIAL_RUN_ID, WAIT).await;
        let started = std::time::Instant::now();
        while self.count_events("LISTENER_START") == 0 {
            assert!(
                started.elapsed() < WAIT,
                "runner never started\n{}",
                agent.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        agent
    }

    /// Installs the runner the way an image bake does (`runner-agent
    /// install`), so the agent finds it already unpacked.
    pub async fn preinstall_runner(&self, spec: &AgentSpec) {
        self.write_config(spec);
        let out = self
            .agent_command(&["install"], spec)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl AgentProcess {
    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn kill(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `within` until a log line contains `needle`; panics
    /// with the log if none does.
    pub async fn assert_log(&self, needle: &str, within: Duration) {
        assert!(
            self.wait_log(needle, within).await,
            "no {needle:?} in the agent's log:\n{}",
            self.log_text()
        );
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if self.log_text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

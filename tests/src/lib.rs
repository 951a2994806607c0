//! The local test stack for runner-agent: moto (DynamoDB + EC2) behind a
//! counting proxy, a fake IMDSv2, a fake GitHub serving a fake runner, and a
//! driver doing the control plane's side of the pool protocol.

pub mod agent;
pub mod control;
pub mod docker;
pub mod fleet;
pub mod github;
pub mod golden;
pub mod http;
pub mod iam;
pub mod imds;
pub mod invariants;
pub mod moto;
pub mod mount;
pub mod proxy;
pub mod sandbox;
pub mod signals;
pub mod users;

pub use signals::{CLAIM_WAIT, SIGNAL_WAIT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const REGION: &str = "us-east-1";
pub const INITIAL_RUN_ID: &str = "1000-1";

pub struct StackOptions {
    pub tags: Vec<(&'static str, &'static str)>,
    pub tags_in_metadata: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            tags: vec![
                ("InitialRunId", INITIAL_RUN_ID),
                ("AllowSelfTermination", "true"),
            ],
            tags_in_metadata: true,
        }
    }
}

pub struct Stack {
    pub moto: moto::Moto,
    pub proxy: proxy::Proxy,
    pub imds: imds::FakeImds,
    pub github: github::FakeGithub,
    pub cp: control::ControlPlane,
    pub instance_id: String,
    pub dir: tempfile::TempDir,
}

static TABLES: AtomicU32 = AtomicU32::new(0);

/// A stack's directory: the jobs dir the fake runner reads, and empty AWS
/// config files, so nothing from the developer's ~/.aws leaks in.
fn stack_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ra-stack-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::write(dir.path().join("no-aws-config"), "").unwrap();
    std::fs::write(dir.path().join("no-aws-credentials"), "").unwrap();
    dir
}

impl Stack {
    /// A fresh table and instance; the instance record says `created` for
    /// `INITIAL_RUN_ID`, as right after the control plane launched it, and
    /// a registration token valid for an hour is in place.
    pub async fn start(options: StackOptions) -> Stack {
        let moto = moto::Moto::start().await;
        let proxy = proxy::Proxy::start(&moto.endpoint).await;
        let table = format!(
            "acme-widgets-{}-{}",
            std::process::id(),
            TABLES.fetch_add(1, Ordering::SeqCst)
        );
        let cp = control::ControlPlane::connect(&moto.endpoint, &table).await;
        cp.create_table().await;
        let instance_id = cp.launch_instance(&options.tags).await;
        let imds = imds::FakeImds::start(
            &instance_id,
            REGION,
            &options.tags,
            options.tags_in_metadata,
        )
        .await;
        let github = github::FakeGithub::start().await;
        let threshold = control::iso(time::OffsetDateTime::now_utc() + Duration::from_secs(600));
        cp.put_instance(&instance_id, "created", INITIAL_RUN_ID, &threshold)
            .await;
        cp.put_token(invariants::STACK_TOKEN, time::Duration::hours(1))
            .await;
        Stack {
            moto,
            proxy,
            imds,
            github,
            cp,
            instance_id,
            dir: stack_dir(),
        }
    }

    /// Another instance of the same pool: this stack's moto, proxy, fake
    /// GitHub and table, with its own EC2 instance (created for
    /// `INITIAL_RUN_ID`), fake IMDS and directory. For the fleet
    /// simulation.
    pub async fn sibling(&self) -> Stack {
        let options = StackOptions::default();
        let instance_id = self.cp.launch_instance(&options.tags).await;
        let imds = imds::FakeImds::start(&instance_id, REGION, &options.tags, true).await;
        let threshold = control::iso(time::OffsetDateTime::now_utc() + Duration::from_secs(600));
        self.cp
            .put_instance(&instance_id, "created", INITIAL_RUN_ID, &threshold)
            .await;
        Stack {
            moto: moto::Moto::at(&self.moto.endpoint),
            proxy: self.proxy.clone(),
            imds,
            github: self.github.clone(),
            cp: self.cp.clone(),
            instance_id,
            dir: stack_dir(),
        }
    }

    pub fn runner_dir(&self) -> PathBuf {
        self.dir.path().join("runner")
    }

    pub fn runner_log(&self) -> PathBuf {
        self.dir.path().join("runner-events.log")
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    /// Queues a job of `seconds` for the runner labelled `run_id`.
    pub fn queue_job(&self, run_id: &str, seconds: u32) {
        std::fs::write(self.jobs_dir().join(run_id), seconds.to_string()).unwrap();
    }

    /// Queues a job with steps (a bash script the fake runner runs in the
    /// job's workspace) for the runner labelled `run_id`.
    pub fn queue_steps(&self, run_id: &str, script: &str) {
        let steps = self.jobs_dir().join(format!("{run_id}.steps"));
        std::fs::write(steps, script).unwrap();
        self.queue_job(run_id, 0);
    }

    /// What the steps of `run_id`'s job printed.
    pub fn steps_log(&self, run_id: &str) -> String {
        std::fs::read_to_string(self.jobs_dir().join(format!("{run_id}.steps.log")))
            .unwrap_or_default()
    }

    /// Waits (up to 60 s) until the steps of `run_id`'s job printed `steps
    /// done`; panics with what they printed.
    pub async fn wait_steps(&self, run_id: &str) {
        let started = std::time::Instant::now();
        while !self.steps_log(run_id).contains("steps done") {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the steps of {run_id} did not finish: {}",
                self.steps_log(run_id)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The fake runner's event log: (unix time, event line).
    pub fn runner_events(&self) -> Vec<(f64, String)> {
        std::fs::read_to_string(self.runner_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (t, rest) = l.split_once(' ')?;
                Some((t.parse().ok()?, rest.to_owned()))
            })
            .collect()
    }

    /// The fake runner's log lines that start with `prefix`, in order.
    pub fn events(&self, prefix: &str) -> Vec<String> {
        self.runner_events()
            .into_iter()
            .filter(|(_, e)| e.starts_with(prefix))
            .map(|(_, e)| e)
            .collect()
    }

    /// Listener processes the fake runner started that are still running:
    /// a process check, independent of whether the fake got to log its
    /// exit.
    pub fn live_listeners(&self) -> Vec<i32> {
        self.runner_events()
            .iter()
            .filter_map(|(_, e)| {
                e.strip_prefix("LISTENER_START ")?
                    .split("pid=")
                    .nth(1)?
                    .parse()
                    .ok()
            })
            .filter(|pid: &i32| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next());
                !matches!(state, None | Some("Z") | Some("X"))
                    && String::from_utf8_lossy(&cmdline).contains("Runner.Listener")
            })
            .collect()
    }

    /// Waits until moto says the instance is terminated.
    pub async fn wait_terminated(&self, within: Duration) -> bool {
        let started = std::time::Instant::now();
        while started.elapsed() < within {
            if self.cp.instance_state(&self.instance_id).await == "terminated" {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    /// Waits (up to 30 s) until the fake runner logged `count` events that
    /// start with `prefix`; panics with its events and the agent's log.
    pub async fn wait_events(&self, prefix: &str, count: usize) {
        let started = std::time::Instant::now();
        while self.count_events(prefix) < count {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no {count}x {prefix}: {:#?}\n{}",
                self.runner_events(),
                self.agent_log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn count_events(&self, prefix: &str) -> usize {
        self.runner_events()
            .iter()
            .filter(|(_, e)| e.starts_with(prefix))
            .count()
    }
}

impl Drop for Stack {
    /// A test that ends without stopping its agent (or that kills it) must
    /// not leave the fake runner behind: kill whatever still works in the
    /// stack's directory.
    fn drop(&mut self) {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let in_stack = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(self.dir.path()));
            if in_stack {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

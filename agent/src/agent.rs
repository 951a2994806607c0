//! `runner-agent run`: the wiring. Identity from IMDS, the AWS clients,
//! the background tasks (heartbeat, expiry watchdog, spot notices, OS
//! signals, systemd watchdog, in hardened mode the firewall's guard), then
//! the state machine until it stops; in hardened mode the firewall first.

use crate::config::Settings;
use crate::expiry::{SelfTermination, Watchdog};
use crate::hardening::guard::{Installed, Nft};
use crate::host::LocalHost;
use crate::imds::{Imds, TAG_INITIAL_RUN_ID};
use crate::machine::{Events, Machine, Setup, SystemClock, Timing, World};
use crate::os_signals::{forward_os_signals, OsSignals};
use crate::reset::cgroup::RunnerCgroup;
use crate::reset::Resetter;
use crate::runner::user::RunnerUser;
use crate::runner::RunnerControl;
use crate::state::{AgentState, StateStore};
use crate::table::Table;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// IMDS can lag the first seconds of boot; retry identity this long:
/// every 1 s (the IMDS client itself retries 3 times per call).
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    pub region: String,
    pub initial_run_id: Option<String>,
}

/// One attempt at the instance's identity.
pub async fn identity_once(imds: &Imds) -> Result<Identity, crate::imds::MetadataError> {
    let instance_id = imds.instance_id().await?;
    let region = imds.region().await?;
    let initial_run_id = imds.tag(TAG_INITIAL_RUN_ID).await?;
    Ok(Identity {
        instance_id,
        region,
        initial_run_id: initial_run_id
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty()),
    })
}

pub async fn identity(imds: &Imds) -> anyhow::Result<Identity> {
    let started = tokio::time::Instant::now();
    loop {
        match identity_once(imds).await {
            Ok(identity) => return Ok(identity),
            Err(e) if started.elapsed() < IDENTITY_TIMEOUT => {
                tracing::warn!(error = %e, "instance metadata not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("reading instance identity from IMDS"),
        }
    }
}

/// DynamoDB answers in milliseconds; a call that hangs must not hold up the
/// lifecycle (or a stop). The SDK's standard retry (3 attempts, jittered
/// exponential back-off) runs inside the operation timeout.
const AWS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
const AWS_OPERATION_TIMEOUT: Duration = Duration::from_secs(8);

pub async fn aws_config(region: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(AWS_ATTEMPT_TIMEOUT)
                .operation_timeout(AWS_OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// The DynamoDB client without the SDK's retries: the agent retries every
/// call itself (polls at their next paced interval, signals until stored,
/// the heartbeat within its window), so that a throttled table sees one
/// request per decision, not three (`pace.rs`).
pub fn dynamodb_client(sdk: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    // First thing: the signals' default actions would kill the agent
    // before it can clean up (SIGTERM or SIGINT during the start would
    // end it mid-step instead of at a clean point, and SIGHUP, an operator's
    // `kill -HUP` or a `systemctl reload` mapped to it, must not take the
    // runner down mid-job). Once tokio listens, a signal is only queued
    // until `forward_os_signals` reads it.
    let mut signals = OsSignals::listen();
    let _lock = crate::lockfile::lock_state_dir(&settings.state_dir)?;
    let store = StateStore::new(&settings.state_dir);
    let state = match store.load() {
        Ok(state) => state,
        Err(e) => {
            // A corrupt state file must not stop the agent: start afresh,
            // and the machine removes any registration left on disk.
            tracing::error!(error = %e, "ignoring unreadable state");
            Default::default()
        }
    };
    let user = RunnerUser::resolve(settings.runner.user.as_deref()).context("runner user")?;
    // Decided first: a required rootless Docker that cannot run ends the
    // start before anything changes on the host.
    let rootless = crate::hardening::rootless::plan(&settings, user.as_ref())
        .context("hardened mode: rootless docker (hardening.docker)")?;
    // Before anything can start the runner; an error here ends the start.
    // The firewall stays after the agent exits (hardening/mod.rs).
    let firewall = crate::hardening::start(&settings, user.as_ref()).await?;
    let imds = Imds::from_env();
    // IMDS may take long to answer at boot: a stop meanwhile ends the start.
    let id = tokio::select! {
        id = identity(&imds) => id?,
        () = signals.stopping() => return Ok(()),
    };
    let span = tracing::info_span!("agent", instance_id = %id.instance_id);
    let prepared = Prepared {
        store,
        state,
        user,
        firewall,
        rootless,
    };
    run_instance(settings, prepared, imds, id, signals)
        .instrument(span)
        .await
}

/// What the start prepared before the instance was known.
struct Prepared {
    store: StateStore,
    state: AgentState,
    user: Option<RunnerUser>,
    /// Hardened mode's table, installed.
    firewall: Option<Installed<Nft>>,
    /// Hardened mode's rootless Docker, when it is to run.
    rootless: Option<crate::hardening::rootless::Plan>,
}

/// Everything after the instance is known, inside the `agent` span (so
/// every log line carries `instance_id`): the background tasks, then the
/// machine until it stops; the tasks are joined before returning.
async fn run_instance(
    settings: Settings,
    prepared: Prepared,
    imds: Imds,
    id: Identity,
    signals: OsSignals,
) -> anyhow::Result<()> {
    let Prepared {
        store,
        mut state,
        user,
        firewall,
        rootless,
    } = prepared;
    tracing::info!(region = %id.region, initial_run_id = ?id.initial_run_id, table = %settings.table, "starting");
    if state
        .instance_id
        .as_deref()
        .is_some_and(|i| i != id.instance_id)
    {
        // A state dir baked into an image belongs to another instance.
        tracing::warn!(previous = ?state.instance_id, "state belongs to another instance; starting afresh");
        state = Default::default();
    }
    state.instance_id = Some(id.instance_id.clone());
    state.pid = Some(std::process::id());

    let sdk = aws_config(&id.region).await;
    let metrics = crate::metrics::Metrics::new();
    let table = Table::new(dynamodb_client(&sdk), &settings.table, &id.instance_id)
        .with_metrics(metrics.clone());
    // `shutdown`: SIGTERM/SIGINT, the machine's cue to leave. `stop`: the
    // background tasks' end, after the machine's final steps (the
    // heartbeat must go on while it deregisters); `heartbeat` ends earlier
    // on a spot notice.
    let shutdown = CancellationToken::new();
    let stop = CancellationToken::new();
    let heartbeat_stop = stop.child_token();
    let (spot_tx, spot_rx) = watch::channel(None);
    let (obs_tx, obs_rx) = watch::channel(None);
    let mut status = crate::status::Status::default();
    status.set_phase(&state.phase);
    let (status_tx, status_rx) = watch::channel(status);
    let pace = crate::pace::Pace::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(forward_os_signals(shutdown.clone(), stop.clone(), signals).in_current_span());
    tasks.spawn(crate::notify::watchdog_loop(stop.clone()));
    tasks.spawn(
        crate::heartbeat::run(
            table.clone(),
            settings.timing.heartbeat_interval,
            crate::heartbeat::Report {
                status: status_rx.clone(),
                disk: settings.runner.install_dir.clone(),
                metrics: metrics.clone(),
            },
            heartbeat_stop.clone(),
        )
        .in_current_span(),
    );
    let watchdog = Watchdog {
        pool: table.clone(),
        terminator: SelfTermination {
            imds: imds.clone(),
            ec2: aws_sdk_ec2::Client::new(&sdk),
            instance_id: id.instance_id.clone(),
        },
        clock: SystemClock,
        interval: settings.timing.expiry_check_interval,
        grace: settings.timing.self_termination_grace,
        observations: obs_rx,
        pace: pace.clone(),
        status: status_rx,
        metrics: metrics.clone(),
    };
    tasks.spawn(watchdog.run(stop.clone()).in_current_span());
    tasks.spawn(
        crate::spot::watch_for_notices(
            imds,
            settings.timing.spot_poll_interval,
            spot_tx,
            metrics.clone(),
            stop.clone(),
        )
        .in_current_span(),
    );
    if let Some(firewall) = firewall {
        // Checked as often as the heartbeat is written.
        let guard = crate::hardening::guard::run(
            firewall,
            settings.timing.heartbeat_interval,
            metrics.clone(),
            stop.clone(),
        );
        tasks.spawn(guard.in_current_span());
    }
    export_metrics(&settings.metrics, &metrics, &stop, &mut tasks).await;
    let credentials =
        serve_job_credentials(&settings, &sdk, &id, &metrics, &stop, &mut tasks).await;
    crate::notify::ready("booting");

    let events = Events::new(shutdown, spot_rx);
    let setup = Setup {
        instance_id: id.instance_id.clone(),
        initial_run_id: id.initial_run_id.clone(),
        timing: Timing {
            idle_poll: settings.timing.idle_poll_interval,
            claimed_poll: settings.timing.claimed_poll_interval,
            job_poll: settings.timing.job_poll_interval,
            spot_job_margin: settings.timing.spot_job_margin,
            orphan_grace: settings.expiry.orphan_grace,
            max_idle: settings.expiry.max_idle,
        },
        store,
        events,
        observations: obs_tx,
        heartbeat: heartbeat_stop,
        status: status_tx,
        metrics,
    };
    let (cgroup, refusal) = runner_cgroup(&settings, &id.instance_id);
    // Before the first registration (and the reset's baseline): jobs find
    // it from their first step.
    let docker = match rootless {
        Some(plan) => plan
            .start(cgroup.clone())
            .await
            .context("hardened mode: starting rootless docker for the runner user")?,
        None => None,
    };
    if let Some(docker) = &docker {
        tasks.spawn(docker.clone().supervise(stop.clone()).in_current_span());
    }
    let mut control = RunnerControl::new(
        &settings.runner,
        &settings.github,
        user.clone(),
        cgroup.clone(),
    )
    .for_pool(&id.instance_id, &settings.table)
    .allow_weaker(settings.reset.allow_weaker);
    if let Some(docker) = &docker {
        control = control.with_env("DOCKER_HOST", docker.host());
    }
    let resetter = Resetter::new(
        &settings.reset,
        &settings.runner,
        &settings.state_dir,
        user.clone(),
        cgroup.clone(),
    )
    .with_rootless(docker.clone());
    let host = LocalHost {
        refusal,
        control,
        resetter,
        manifest_path: settings.state_dir.join(crate::reset::INSTALL_MANIFEST),
        runner: settings.runner,
        pre_runner: settings.pre_runner,
        user,
        installed: Default::default(),
        credentials,
    };
    let world = World {
        pool: table,
        host,
        clock: SystemClock,
    };
    // Returns at shutdown (also after a notice: the machine stays out of
    // the pool until then).
    Machine::with_pace(world, setup, state, pace).run().await;
    crate::notify::stopping();
    stop.cancel();
    join_all(tasks).await;
    // After the runner (the machine stopped it), before its cgroup goes.
    if let Some(docker) = docker {
        docker.stop().await;
    }
    if let Some(cgroup) = cgroup {
        cgroup.remove();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts the outlets `[metrics]` asks for. One that cannot start (the
/// port taken) is logged; the agent runs on without it.
async fn export_metrics(
    config: &crate::config::MetricsSettings,
    metrics: &crate::metrics::Metrics,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    if let Some(address) = config.listen {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => {
                let bound = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::info!(address = %bound, "serving metrics at GET /metrics");
                let serve = crate::metrics::serve(listener, metrics.clone(), stop.clone());
                tasks.spawn(serve.in_current_span());
            }
            Err(e) => {
                tracing::error!(%address, error = %e, "cannot serve metrics; running without the endpoint")
            }
        }
    }
    if let Some(path) = &config.textfile {
        tracing::info!(path = %path.display(), "writing metrics for node_exporter's textfile collector");
        let write = crate::metrics::keep_written(path.clone(), metrics.clone(), stop.clone());
        tasks.spawn(write.in_current_span());
    }
}

/// Starts the job credentials endpoint when `[job_credentials]` names a
/// role. One that cannot start (the port taken) is logged and counted; the
/// agent runs on, and jobs find no credentials of the agent's.
async fn serve_job_credentials(
    settings: &Settings,
    sdk: &aws_config::SdkConfig,
    id: &Identity,
    metrics: &crate::metrics::Metrics,
    stop: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Option<crate::credentials::JobCredentials> {
    let config = settings.job_credentials.clone()?;
    let listen = config.listen;
    let sts = crate::credentials::Sts(aws_sdk_sts::Client::new(sdk));
    let github = &settings.github;
    let repository = format!("{}/{}", github.owner, github.repo);
    let started = crate::credentials::JobCredentials::start(
        config,
        sts,
        &id.instance_id,
        &repository,
        metrics.clone(),
        stop.clone(),
    )
    .await;
    match started {
        Ok((credentials, serve)) => {
            tasks.spawn(serve.in_current_span());
            Some(credentials)
        }
        Err(e) => {
            metrics.assume_role(false);
            tracing::error!(%listen, error = %e, "cannot serve job credentials; jobs run without them");
            None
        }
    }
}

/// The cgroup every runner process is born into, so that the reset can
/// kill all of them. Without one, process groups are all the reset has,
/// and a job that leaves its group survives it: the agent then refuses to
/// serve (the reason comes back), unless `reset.allow_weaker` accepts
/// that. The mechanism is logged: it decides what the reset can promise.
fn runner_cgroup(
    settings: &Settings,
    instance_id: &str,
) -> (Option<Arc<RunnerCgroup>>, Option<String>) {
    if !settings.reset.enabled {
        return (None, None);
    }
    let reset = &settings.reset;
    let limits = crate::reset::cgroup::Limits {
        pids: (reset.runner_pids_max > 0).then_some(reset.runner_pids_max),
        memory: match reset.runner_memory_max {
            None => crate::reset::cgroup::default_memory_max(),
            Some(0) => None,
            Some(bytes) => Some(bytes),
        },
    };
    match RunnerCgroup::create(&format!("runner-agent-{instance_id}"), limits) {
        Ok(cgroup) => {
            tracing::info!(mechanism = %cgroup.describe(), "runner processes tracked by cgroup");
            (Some(Arc::new(cgroup)), None)
        }
        Err(e) if settings.reset.allow_weaker => {
            tracing::warn!(error = %e, "no cgroup for the runner: process groups only (a job that leaves its group survives the reset; reset.allow_weaker)");
            (None, None)
        }
        Err(e) => {
            let reason = format!("no cgroup for the runner ({e}): a job could outlive its run; set reset.allow_weaker = true to serve with process groups only");
            tracing::error!("{reason}");
            (None, Some(reason))
        }
    }
}

/// Background tasks end within this of `stop`; one still running then (a
/// DynamoDB call inside its own timeout) is abandoned.
const TASK_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

async fn join_all(mut tasks: JoinSet<()>) {
    let joined = tokio::time::timeout(TASK_JOIN_TIMEOUT, async {
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "background task failed");
            }
        }
    })
    .await;
    if joined.is_err() {
        tracing::warn!(left = tasks.len(), "background tasks still running at exit");
    }
}

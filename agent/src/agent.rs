//! `runner-agent run`: boot (identity, AWS clients, background tasks,
//! pre-runner script, runner install), then the lifecycle until stopped.

use crate::config::Settings;
use crate::expiry::{SelfTermination, Watchdog};
use crate::imds::{Imds, TAG_INITIAL_RUN_ID};
use crate::lifecycle::{Events, Interrupt, Lifecycle, Timing};
use crate::protocol::Signal;
use crate::runner::install::{self, InstallOutcome};
use crate::runner::user::RunnerUser;
use crate::runner::RunnerControl;
use crate::state::{BootOutcome, StateStore};
use crate::table::Table;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

/// IMDS can lag the first seconds of boot; retry identity this long:
/// every 1 s (the IMDS client itself retries 3 times per call).
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(60);
/// Download errors (not digest mismatches) are retried: 5 s, doubling, at
/// most `INSTALL_ATTEMPTS` tries.
const INSTALL_ATTEMPTS: u32 = 4;
const INSTALL_RETRY_FIRST: Duration = Duration::from_secs(5);

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

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let _lock = crate::lockfile::lock_state_dir(&settings.state_dir)?;
    let store = StateStore::new(&settings.state_dir);
    let state = match store.load() {
        Ok(state) => state,
        Err(e) => {
            // A corrupt state file must not stop the agent: start afresh,
            // and the lifecycle removes any registration left on disk.
            tracing::error!(error = %e, "ignoring unreadable state");
            Default::default()
        }
    };
    let user = RunnerUser::resolve(settings.runner.user.as_deref()).context("runner user")?;
    let imds = Imds::from_env();
    let id = identity(&imds).await?;
    let span = tracing::info_span!("agent", instance_id = %id.instance_id);
    run_instance(settings, store, state, user, imds, id)
        .instrument(span)
        .await
}

/// Everything after the instance is known, inside the `agent` span (so
/// every log line carries `instance_id`).
async fn run_instance(
    settings: Settings,
    store: StateStore,
    mut state: crate::state::AgentState,
    user: Option<RunnerUser>,
    imds: Imds,
    id: Identity,
) -> anyhow::Result<()> {
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
    let table = Table::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &settings.table,
        &id.instance_id,
    );
    let ec2 = aws_sdk_ec2::Client::new(&sdk);

    let (stop_tx, stop_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (spot_tx, spot_rx) = watch::channel(None);
    let (obs_tx, obs_rx) = watch::channel(None);
    tokio::spawn(forward_os_signals(shutdown_tx).in_current_span());
    tokio::spawn(crate::notify::watchdog_loop());
    let heartbeat = tokio::spawn(
        crate::heartbeat::run(
            table.clone(),
            settings.timing.heartbeat_interval,
            stop_rx.clone(),
        )
        .in_current_span(),
    );
    let watchdog = Watchdog {
        table: table.clone(),
        terminator: SelfTermination {
            imds: imds.clone(),
            ec2,
            instance_id: id.instance_id.clone(),
        },
        interval: settings.timing.expiry_check_interval,
        grace: settings.timing.self_termination_grace,
        observations: obs_rx,
    };
    tokio::spawn(watchdog.run(stop_rx.clone()).in_current_span());
    tokio::spawn(
        crate::spot::watch_for_interruption(
            imds.clone(),
            settings.timing.spot_poll_interval,
            spot_tx,
            stop_rx.clone(),
        )
        .in_current_span(),
    );
    crate::notify::ready("booting");

    let control = RunnerControl::new(&settings, user.clone());
    let events = Events {
        shutdown: shutdown_rx,
        spot: spot_rx,
    };
    let timing = Timing {
        idle_poll: settings.timing.idle_poll_interval,
        claimed_poll: settings.timing.claimed_poll_interval,
        job_poll: settings.timing.job_poll_interval,
    };
    let mut lifecycle = Lifecycle::new(
        id.instance_id.clone(),
        table.clone(),
        control,
        store,
        state,
        events.clone(),
        obs_tx,
        timing,
        Ok(()),
    );

    if let Err(interrupt) = boot(&settings, &id, &mut lifecycle, &events).await {
        tracing::info!(?interrupt, "stopped during boot");
        crate::notify::stopping();
        let _ = stop_tx.send(true);
        return Ok(());
    }

    let interrupt = if lifecycle.state.boot == Some(BootOutcome::Failed) {
        // The control plane fails this instance on UD_FAILED; keep only the
        // expiry watchdog running until the instance goes away.
        lifecycle.set_phase("failed");
        heartbeat.abort();
        events.wait().await
    } else {
        lifecycle.set_phase("installing");
        lifecycle.runner_ready = install_runner(&settings, user.as_ref(), &events).await;
        if lifecycle.runner_ready.is_ok() {
            if let Err(e) = lifecycle.control.write_hooks() {
                tracing::error!(error = %e, "job hooks: polling will not slow down during jobs");
            }
        }
        lifecycle.run().await
    };
    if interrupt == Interrupt::Spot {
        // The instance goes away within two minutes; stop the heartbeat so
        // the control plane stops counting on it, and wait to be stopped.
        heartbeat.abort();
        let mut shutdown = events.shutdown.clone();
        let _ = shutdown.wait_for(|s| *s).await;
    }
    crate::notify::stopping();
    let _ = stop_tx.send(true);
    tracing::info!("stopped");
    Ok(())
}

/// Runs the pre-runner script once per instance and writes `UD_OK` or
/// `UD_FAILED` for the initial run. The outcome is saved before the signal
/// is written, so a restart does not run the script again but still writes
/// a signal that never made it (the boot signal is the first the agent
/// writes, so "no signal yet" means it is owed).
async fn boot(
    settings: &Settings,
    id: &Identity,
    lifecycle: &mut Lifecycle,
    events: &Events,
) -> Result<(), Interrupt> {
    if lifecycle.state.boot.is_none() {
        lifecycle.set_phase("pre-runner");
        let outcome = match &settings.pre_runner {
            None => Ok(()),
            Some(pre) => tokio::select! {
                r = crate::prerunner::run(&pre.script, pre.timeout) => r,
                i = events.wait() => return Err(i),
            },
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "pre-runner script failed");
        }
        lifecycle.state.boot = Some(if outcome.is_ok() {
            BootOutcome::Ok
        } else {
            BootOutcome::Failed
        });
        lifecycle.set_phase("booted");
    }
    if lifecycle.state.last_signal.is_none() {
        let signal = match lifecycle.state.boot {
            Some(BootOutcome::Failed) => Signal::Failed,
            _ => Signal::Ok,
        };
        match &id.initial_run_id {
            Some(run_id) => lifecycle.signal(signal, run_id).await?,
            None => tracing::error!(
                signal = %signal,
                "instance has no {TAG_INITIAL_RUN_ID} tag: cannot write the boot signal"
            ),
        }
    }
    Ok(())
}

async fn install_runner(
    settings: &Settings,
    user: Option<&RunnerUser>,
    events: &Events,
) -> Result<(), Arc<str>> {
    let mut delay = INSTALL_RETRY_FIRST;
    for attempt in 1..=INSTALL_ATTEMPTS {
        let result = tokio::select! {
            r = install::ensure_installed(&settings.runner, user) => r,
            _ = events.wait() => return Err("stopped during install".into()),
        };
        match result {
            Ok(InstallOutcome::AlreadyPresent) => {
                tracing::info!(version = %settings.runner.version, dir = %settings.runner.install_dir.display(), "runner already installed");
                return Ok(());
            }
            Ok(InstallOutcome::Installed { sha256 }) => {
                tracing::info!(version = %settings.runner.version, sha256 = %sha256, "runner installed");
                return Ok(());
            }
            Err(e @ install::InstallError::Download { .. })
            | Err(e @ install::InstallError::ReleaseApi { .. })
                if attempt < INSTALL_ATTEMPTS =>
            {
                tracing::warn!(error = %e, attempt, "runner download failed; retrying");
                if events.sleep(delay).await.is_err() {
                    return Err("stopped during install".into());
                }
                delay *= 2;
            }
            Err(e) => {
                tracing::error!(error = %e, "runner install failed; claims will be answered with UD_REG_FAILED");
                return Err(e.to_string().into());
            }
        }
    }
    unreachable!("the last attempt returns")
}

async fn forward_os_signals(shutdown: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    let _ = shutdown.send(true);
}

//! The lifecycle as a state machine: boot, install, then for ever
//! idle → registering → serving → releasing → resetting → idle, until
//! shutdown, a notice from EC2 (spot interruption, rebalance) or the idle
//! poll's finding that the control plane has forgotten the instance
//! (`leave.rs`). Each state has one short async function that returns the
//! next state (`claim.rs`, `serve.rs`, `release.rs`); this file drives them
//! and owns what every state shares: the persisted state, signals,
//! observations for the expiry watchdog.
//!
//! The machine sees the world only through traits (`crate::pool::Pool`,
//! `crate::clock::Clock`, `world.rs`'s `RunnerHost`), so
//! every transition runs in-process against fakes with tokio's clock
//! paused (`tests/`).

mod boot;
mod claim;
pub mod events;
mod leave;
mod release;
mod reset;
mod resume;
mod serve;
mod shutdown;
mod signal;
mod upgrade;
pub mod world;

#[cfg(test)]
pub(crate) mod tests;

pub use crate::clock::{Clock, SystemClock};
use crate::expiry::Observation;
use crate::metrics::Metrics;
use crate::orphan::OrphanWatch;
use crate::pace::{Pace, Paced};
pub use crate::pool::Pool;
use crate::protocol::{format_timestamp, InstanceRecord, RegistrationToken, Signal};
use crate::state::{AgentState, BootOutcome, LastSignal, Phase, StateStore};
use crate::status::Status;
pub use events::{Events, Interrupt};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
pub use world::{InstallFailure, RunnerHost, RunnerProcess};

/// How often the table is read in each state.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub idle_poll: Duration,
    pub claimed_poll: Duration,
    pub job_poll: Duration,
    /// What a job under a spot notice leaves of the notice's two minutes.
    pub spot_job_margin: Duration,
    /// How long the control plane must have definitely forgotten an idle
    /// instance before it leaves the pool for good (zero: never).
    pub orphan_grace: Duration,
    /// How long an instance may be idle before it leaves the same way.
    pub max_idle: Option<Duration>,
}

/// The parts of the world the machine talks to.
pub struct World<P, H, C> {
    pub pool: P,
    pub host: H,
    pub clock: C,
}

/// What the machine is told at start and does not change.
pub struct Setup {
    pub instance_id: String,
    /// The `InitialRunId` tag: the run the boot signal is for.
    pub initial_run_id: Option<String>,
    pub timing: Timing,
    pub store: StateStore,
    pub events: Events,
    /// The newest read of the instance record, for the expiry watchdog.
    pub observations: watch::Sender<Option<Observation>>,
    /// Stops the heartbeat: once the control plane should stop counting on
    /// this instance (after `UD_FAILED`, after a notice).
    pub heartbeat: CancellationToken,
    /// What the heartbeat reports (`status.rs`), published on every save.
    pub status: watch::Sender<Status>,
    pub metrics: Metrics,
}

pub struct Machine<P, H: RunnerHost, C> {
    /// The pool's reads feed `pace`, which sets every poll's interval.
    world: World<Paced<P>, H, C>,
    pace: Pace,
    setup: Setup,
    state: AgentState,
    /// The listener we supervise, while serving.
    runner: Option<H::Runner>,
    /// `Err` when the runner could not be installed: claims are answered
    /// with `UD_REG_FAILED` and nothing runs.
    runner_ready: Result<(), Arc<str>>,
    /// The token read with the claim, for the registration that follows.
    claim_token: Option<RegistrationToken>,
    /// A claim seen expired, and when it was last checked: checked again
    /// at the claimed poll, not at every idle poll.
    declined: Option<(String, Instant)>,
    /// The run whose registration a notice ended: its release is answered
    /// while out of the pool.
    left_run: Option<String>,
    /// When the next runner upgrade is owed (after the listener reported
    /// its version deprecated and an upgrade has not yet succeeded).
    upgrade_due: Option<Instant>,
    /// For the metrics: when the claim being registered was read, the
    /// release being answered seen, the running job started.
    claimed_at: Option<Instant>,
    released_at: Option<Instant>,
    job_since: Option<Instant>,
    /// How long the idle poll's answers have said "forgotten", and how long
    /// the instance has been idle.
    orphans: OrphanWatch,
}

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// The machine with a pace of its own (the tests'); the agent shares
    /// its pace with the expiry watchdog (`with_pace`).
    #[cfg(test)]
    pub fn new(world: World<P, H, C>, setup: Setup, state: AgentState) -> Self {
        Self::with_pace(world, setup, state, Pace::new())
    }

    /// The machine, with a read pace shared with others (the expiry
    /// watchdog).
    pub fn with_pace(world: World<P, H, C>, setup: Setup, state: AgentState, pace: Pace) -> Self {
        let world = World {
            pool: Paced::new(world.pool, pace.clone()),
            host: world.host,
            clock: world.clock,
        };
        setup.metrics.state(None, state.phase.name());
        let orphans = OrphanWatch::new(setup.timing.orphan_grace, setup.timing.max_idle);
        Machine {
            world,
            pace,
            setup,
            state,
            runner: None,
            runner_ready: Ok(()),
            claim_token: None,
            declined: None,
            left_run: None,
            upgrade_due: None,
            claimed_at: None,
            released_at: None,
            job_since: None,
            orphans,
        }
    }

    /// Runs until shutdown, does what leaving requires, and returns what
    /// ended the lifecycle. After a notice from EC2 the instance is out of
    /// the pool: it answers claims with `UD_REG_FAILED` until shutdown.
    ///
    /// Orphaned (`leave.rs`), it is out of the pool for good: the state
    /// says so across restarts, and the heartbeat goes on saying why.
    pub async fn run(mut self) -> Interrupt {
        let interrupt = match self.state.phase {
            Phase::Orphaned { reason } => {
                tracing::warn!(reason = %reason, "out of the pool for good since an earlier start; not serving");
                self.save();
                Interrupt::Orphaned(reason)
            }
            _ => {
                let Err(interrupt) = self.drive().await;
                self.finish(interrupt).await;
                interrupt
            }
        };
        match interrupt {
            Interrupt::Notice => {
                // The control plane should stop counting on this instance.
                self.setup.heartbeat.cancel();
                self.out_of_pool().await;
            }
            Interrupt::Orphaned(_) => self.out_of_pool().await,
            Interrupt::Shutdown => {}
        }
        interrupt
    }

    async fn drive(&mut self) -> Result<Infallible, Interrupt> {
        self.boot().await?;
        if self.state.boot == Some(BootOutcome::Failed) {
            // The control plane fails this instance on UD_FAILED; only the
            // expiry watchdog has work left until the instance goes away.
            self.enter(Phase::BootFailed);
            self.setup.heartbeat.cancel();
            return Err(self.setup.events.wait().await);
        }
        self.install().await?;
        let events = self.setup.events.clone();
        events.guard(self.world.host.take_baseline()).await?;
        let next = self.resume().await?;
        self.enter(next);
        loop {
            let next = match self.state.phase.clone() {
                Phase::Idle => self.wait_for_claim().await?,
                Phase::Registering { run_id, .. } => self.register(&run_id).await?,
                Phase::Serving { registration } => self.serve(&registration.run_id).await?,
                Phase::Releasing {
                    registration,
                    signal,
                } => self.release(registration, signal).await?,
                Phase::Resetting { run_id, signal } => self.reset(run_id, signal).await?,
                other => {
                    tracing::error!(phase = other.name(), "no transition from this state");
                    Phase::Idle
                }
            };
            self.enter(next);
        }
    }

    /// Moves to `phase` and persists it (also when only its data changed).
    fn enter(&mut self, phase: Phase) {
        // A claim confirmed but not yet named resumes exactly as idle does
        // (`resume.rs`: no registration to pick up), so it is not worth a
        // synchronous write on the claim's way to `UD_REG_OK`: the named
        // registration is persisted next, before config.sh runs.
        let resumes_as_saved = self.state.phase == Phase::Idle
            && matches!(
                phase,
                Phase::Registering {
                    runner_name: None,
                    ..
                }
            );
        if self.state.phase.name() != phase.name() {
            self.state.phase_since = self.timestamp();
            self.setup
                .metrics
                .state(Some(self.state.phase.name()), phase.name());
            crate::notify::status(phase.name());
            tracing::debug!(phase = phase.name(), "state");
        }
        // Job credentials follow the run: a run's phases keep (or start)
        // its session, any other phase ends it, the release first of all.
        match &phase {
            Phase::Registering { run_id, .. } => self.world.host.run_claimed(run_id),
            Phase::Serving { registration } => self.world.host.run_claimed(&registration.run_id),
            _ => self.world.host.run_over(),
        }
        self.state.phase = phase;
        if resumes_as_saved {
            self.publish_state();
        } else {
            self.save();
        }
    }

    fn save(&self) {
        if let Err(e) = self.setup.store.save(&self.state) {
            tracing::error!(error = %e, "saving state");
        }
        self.publish_state();
    }

    /// Tells the heartbeat's status what the state says.
    fn publish_state(&self) {
        self.publish(|status| {
            status.set_phase(&self.state.phase);
            status.runner_version = self.world.host.runner_version();
            // The job hooks are read while serving only.
            if !matches!(self.state.phase, Phase::Serving { .. }) {
                status.job_active = false;
            }
        });
    }

    /// Updates the status the heartbeat reports.
    fn publish(&self, change: impl FnOnce(&mut Status)) {
        self.setup.status.send_if_modified(|status| {
            let before = status.clone();
            change(status);
            *status != before
        });
    }

    fn timestamp(&self) -> String {
        format_timestamp(self.world.clock.now_utc())
    }

    /// A failed read, for the debug log: the pace logs each episode of
    /// failures once, when it starts and when it ends.
    fn read_failed(&self, what: &str, error: &dyn std::fmt::Display) {
        tracing::debug!(error = %error, "{what}; retrying");
    }

    /// Waits one interval of a poll whose normal interval is `base`
    /// (jittered, stretched while reads fail) unless an event comes first.
    async fn pause(&self, base: Duration) -> Result<(), Interrupt> {
        self.setup.events.sleep(self.pace.interval(base)).await
    }

    fn observe(&mut self, record: &Option<InstanceRecord>) {
        if record.is_some() && !self.state.record_seen {
            // From now on, its absence is an answer (`crate::orphan`).
            self.state.record_seen = true;
            self.save();
        }
        self.setup.observations.send_replace(Some(Observation {
            at: Instant::now(),
            record: record.clone(),
        }));
    }

    /// Why claims are refused, if they are: no runner, or an instance a
    /// reset could not clean.
    fn refusal(&self) -> Option<String> {
        if let Some(why) = &self.state.unclean {
            return Some(format!("instance not clean after an earlier run: {why}"));
        }
        self.runner_ready
            .as_ref()
            .err()
            .map(|why| format!("runner not installed: {why}"))
    }

    fn record_signal(&mut self, signal: Signal, run_id: &str) {
        self.setup.metrics.signal_stored(signal);
        self.state.last_signal = Some(LastSignal {
            signal,
            run_id: run_id.to_owned(),
            at: self.timestamp(),
        });
        self.save();
    }
}

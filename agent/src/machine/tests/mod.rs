//! The lifecycle in-process: the machine against fakes of its world, with
//! tokio's clock paused (hours of polling take milliseconds, and no test
//! depends on the machine's speed).

pub mod fakes;

mod backoff;
mod boot;
mod claim;
mod credentials;
mod faults;
mod metrics;
mod notices;
mod orphan;
mod reset;
mod resume;
mod serve;
mod stop;

use super::{Events, Interrupt, Machine, Setup, Timing, World};
use crate::expiry::Observation;
use crate::protocol::Signal;
use crate::spot::Notice;
use crate::state::{AgentState, BootOutcome, LastSignal, Phase, StateStore};
use crate::status::Status;
use fakes::{token, FakeHost, FakePool, TestClock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const INSTANCE: &str = "i-0123456789abcdef0";
pub const INITIAL_RUN: &str = "1000";
/// Virtual time a test waits for something before it fails.
const PATIENCE: Duration = Duration::from_secs(600);

/// The shipped defaults (packaging/config.example.toml).
const TIMING: Timing = Timing {
    idle_poll: Duration::from_millis(250),
    claimed_poll: Duration::from_secs(2),
    job_poll: Duration::from_secs(10),
    spot_job_margin: Duration::from_secs(20),
    orphan_grace: Duration::from_secs(900),
    max_idle: None,
};

/// One machine and its fake world.
pub struct Harness {
    pub pool: FakePool,
    pub host: FakeHost,
    pub clock: TestClock,
    pub shutdown: CancellationToken,
    pub heartbeat: CancellationToken,
    pub notices: watch::Sender<Option<Notice>>,
    pub observations: watch::Receiver<Option<Observation>>,
    /// What the heartbeat would report.
    pub status: watch::Receiver<Status>,
    pub initial_run_id: Option<String>,
    /// The machine's timing (the shipped defaults unless a test changes it).
    pub timing: Timing,
    /// Shared with every machine the harness starts (restarts included).
    pub metrics: crate::metrics::Metrics,
    pub dir: tempfile::TempDir,
    task: Option<JoinHandle<Interrupt>>,
}

impl Harness {
    /// A fresh instance: the control plane created it for `INITIAL_RUN`
    /// and published a valid token.
    pub fn new() -> Harness {
        let pool = FakePool::new();
        let clock = TestClock::new();
        pool.set_token(Some(token(&clock, "TOKEN-1")));
        let (notices, _) = watch::channel(None);
        let (_, observations) = watch::channel(None);
        let (_, status) = watch::channel(Status::default());
        Harness {
            pool,
            host: FakeHost::new(),
            clock,
            shutdown: CancellationToken::new(),
            heartbeat: CancellationToken::new(),
            metrics: Default::default(),
            notices,
            observations,
            status,
            initial_run_id: Some(INITIAL_RUN.into()),
            timing: TIMING,
            dir: tempfile::tempdir().unwrap(),
            task: None,
        }
    }

    pub fn store(&self) -> StateStore {
        StateStore::new(self.dir.path())
    }

    /// The state as the machine last saved it.
    pub fn saved(&self) -> AgentState {
        self.store().load().unwrap()
    }

    /// Starts the machine with the state in the store (fresh if none).
    pub fn start(&mut self) {
        let state = self.store().load().unwrap();
        self.start_with(state);
    }

    pub fn start_with(&mut self, state: AgentState) {
        let (notices, notices_rx) = watch::channel(None);
        let (obs_tx, obs_rx) = watch::channel(None);
        let (status_tx, status_rx) = watch::channel(Status::default());
        self.notices = notices;
        self.observations = obs_rx;
        self.status = status_rx;
        self.shutdown = CancellationToken::new();
        self.heartbeat = CancellationToken::new();
        let setup = Setup {
            instance_id: INSTANCE.into(),
            initial_run_id: self.initial_run_id.clone(),
            timing: self.timing,
            store: self.store(),
            events: Events::new(self.shutdown.clone(), notices_rx),
            observations: obs_tx,
            heartbeat: self.heartbeat.clone(),
            status: status_tx,
            metrics: self.metrics.clone(),
        };
        let world = World {
            pool: self.pool.clone(),
            host: self.host.clone(),
            clock: self.clock.clone(),
        };
        let machine = Machine::new(world, setup, state);
        self.task = Some(tokio::spawn(machine.run()));
    }

    /// Booted, registered for the initial run, runner started.
    pub async fn started_and_serving() -> Harness {
        let mut h = Harness::new();
        h.pool.claim(INITIAL_RUN);
        h.start();
        h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
        h.wait_until("runner started", |h| !h.host.running().is_empty())
            .await;
        h
    }

    /// Booted and idle (the initial run released).
    pub async fn started_and_idle() -> Harness {
        let h = Harness::started_and_serving().await;
        h.pool.release();
        h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
            .await;
        h.wait_phase("idle").await;
        h
    }

    /// Waits (in virtual time) for `done`.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&Harness) -> bool) {
        let started = tokio::time::Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < PATIENCE,
                "gave up waiting for {what}; signals {:?}, state {:?}",
                self.pool.signals(),
                self.store().load().map(|s| s.phase)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_signal(&self, signal: Signal, run_id: &str) {
        self.wait_until(&format!("{signal} for {run_id:?}"), |h| {
            h.pool.count(signal, run_id) > 0
        })
        .await
    }

    pub async fn wait_phase(&self, name: &str) {
        self.wait_until(&format!("phase {name}"), |h| {
            h.store().load().is_ok_and(|s| s.phase.name() == name)
        })
        .await
    }

    /// Lets the machine run for `duration` of virtual time.
    pub async fn idle_for(&self, duration: Duration) {
        tokio::time::sleep(duration).await
    }

    /// SIGTERM; returns once the machine's final steps are done.
    pub async fn stop(&mut self) -> Interrupt {
        self.shutdown.cancel();
        self.join().await
    }

    pub async fn join(&mut self) -> Interrupt {
        let task = self.task.take().expect("started");
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("machine stops")
            .expect("machine does not panic")
    }

    /// Simulates SIGKILL: the machine vanishes mid-step, its state file
    /// and runner processes stay as they were.
    pub fn kill(&mut self) {
        self.task.take().expect("started").abort();
    }
}

/// The state that owes `UD_REMOVE_REG_REMOVE_RUN_OK` for `run_id`: the
/// runner is deregistered, the signal waits for a reset and a write.
pub fn owed_release(run_id: &str) -> Phase {
    Phase::Resetting {
        run_id: run_id.into(),
        signal: Signal::RemoveRegRemoveRunOk,
    }
}

/// A state saved by an agent that booted fine and signalled `signal`.
pub fn booted_state(signal: Signal, run_id: &str) -> AgentState {
    AgentState {
        instance_id: Some(INSTANCE.into()),
        boot: Some(BootOutcome::Ok),
        last_signal: Some(LastSignal {
            signal,
            run_id: run_id.into(),
            at: "2025-04-24T18:31:04Z".into(),
        }),
        ..AgentState::default()
    }
}

//! Leaving the pool on a notice from EC2 (spot interruption, rebalance
//! recommendation), and staying out of it. `serve.rs` decides when: at
//! once without a job, after the job (rebalance) or shortly before the
//! interruption (spot). Then the runner goes, the run is told, and every
//! later claim is answered with `UD_REG_FAILED`, so the control plane picks
//! another instance at once instead of waiting out its 10 s.
//!
//! The idle poll raises a notice of its own (`crate::orphan`): the control
//! plane has definitely forgotten the instance for `orphan_grace`, or it
//! has been idle for `max_idle`. It leaves the same way, for good: the
//! state says so across restarts, and the expiry watchdog ends the
//! instance if its tag allows.

use super::reset::failed;
use super::signal::write_until_stored;
use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use crate::orphan::{Answer, Orphan};
use crate::protocol::{InstanceRecord, Signal};
use crate::state::{Phase, Registration};
use crate::table::{ErrorKind, TableError};
use tokio::time::Instant;

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// The final steps after a notice, within `deadline`.
    pub(super) async fn leave(&mut self, registration: Option<Registration>, deadline: Instant) {
        let notice = self
            .setup
            .events
            .notice()
            .map(|n| n.describe())
            .unwrap_or_default();
        let owed = match &self.state.phase {
            Phase::Resetting { run_id, signal } => Some((run_id.clone(), *signal)),
            _ => None,
        };
        let stored = match (owed, registration) {
            (Some((run_id, signal)), _) => {
                // Released and deregistered; a leaving instance must not be
                // pooled, so the release is answered as failed (the control
                // plane then drops the instance at once).
                tracing::warn!(
                    run_id,
                    notice,
                    "leaving the pool: the released run is answered as failed, not pooled"
                );
                self.signal_by(failed(signal), &run_id, deadline).await
            }
            (None, Some(registration)) => {
                let run_id = registration.run_id.clone();
                self.dismantle(registration, Signal::SpotInterrupted).await;
                let stored = self
                    .signal_by(Signal::SpotInterrupted, &run_id, deadline)
                    .await;
                self.left_run = Some(run_id);
                stored
            }
            (None, None) => {
                // Not registered: the signal says why about the run the
                // record names, if any; a claim in flight is then failed
                // by `out_of_pool`.
                let current = self.observed_run_id().unwrap_or_default();
                self.signal_by(Signal::SpotInterrupted, &current, deadline)
                    .await
            }
        };
        if stored {
            self.enter(Phase::SpotInterrupted);
        }
    }

    /// Out of the pool until shutdown: every new claim gets `UD_REG_FAILED`,
    /// and the release of the run a notice took the runner from gets
    /// `UD_REMOVE_REG_REMOVE_RUN_FAILED` (the instance is not to be pooled
    /// again). Reads are eventually consistent at the claimed poll; a
    /// change is confirmed by a strongly consistent read before it is
    /// answered, so a lagging read never fails a run.
    pub(super) async fn out_of_pool(&mut self) {
        let events = self.setup.events.clone();
        let mut answered = self.left_run.clone();
        loop {
            let seen = match self.world.pool.read_instance(false).await {
                Ok(record) => {
                    self.observe(&record);
                    Some(record.and_then(|r| r.run_id).filter(|r| !r.is_empty()))
                }
                Err(e) => {
                    self.read_failed("polling the instance record", &e);
                    None
                }
            };
            if seen.is_some_and(|run| run != answered) {
                match self.world.pool.read_instance(true).await {
                    Ok(record) => {
                        self.observe(&record);
                        let current = record.and_then(|r| r.run_id).filter(|r| !r.is_empty());
                        if current != answered {
                            let answer = self.answer_out_of_pool(current.clone());
                            if events.guard_shutdown(answer).await.is_err() {
                                return;
                            }
                            answered = current;
                        }
                    }
                    Err(e) => self.read_failed("confirming a claim", &e),
                }
            }
            let pause = tokio::time::sleep(self.pace.interval(self.setup.timing.claimed_poll));
            if events.guard_shutdown(pause).await.is_err() {
                return;
            }
        }
    }

    /// Answers the record naming `current` (no run: released).
    async fn answer_out_of_pool(&mut self, current: Option<String>) {
        if let Some(left) = self.left_run.take_if(|left| current.as_ref() != Some(left)) {
            tracing::warn!(run_id = %left, "released while out of the pool: answered as failed, so the instance is not pooled");
            self.store_signal(Signal::RemoveRegRemoveRunFailed, &left)
                .await;
        }
        if let Some(run_id) = current {
            tracing::warn!(run_id, "claim refused: the instance has left the pool");
            self.store_signal(Signal::RegFailed, &run_id).await;
        }
    }

    /// Writes `signal` until stored: a notice has been handled, so only
    /// shutdown (the caller's guard) ends the retries.
    async fn store_signal(&mut self, signal: Signal, run_id: &str) {
        if write_until_stored(&self.world.pool, signal, run_id, None)
            .await
            .is_ok()
        {
            self.record_signal(signal, run_id);
        }
    }

    /// The run id of the newest read of the instance record.
    fn observed_run_id(&self) -> Option<String> {
        self.setup
            .observations
            .borrow()
            .clone()
            .and_then(|o| o.record)
            .and_then(|r| r.run_id)
    }

    /// One read of the idle poll, for orphan detection: `Err` when the
    /// instance is to leave the pool for good. A verdict is confirmed by a
    /// strongly consistent read first, which must say so again.
    pub(super) async fn judge_orphan(
        &mut self,
        read: &Result<Option<InstanceRecord>, TableError>,
    ) -> Result<(), Interrupt> {
        let answer = self.orphan_answer(read);
        if self.orphans.answer(answer, Instant::now()).is_none() {
            return Ok(());
        }
        let confirm = self.world.pool.read_instance(true).await;
        if let Ok(record) = &confirm {
            self.observe(record);
        }
        let answer = self.orphan_answer(&confirm);
        match self.orphans.answer(answer, Instant::now()) {
            Some(reason) => Err(Interrupt::Orphaned(reason)),
            None => Ok(()),
        }
    }

    /// Only two answers are definite, and only once the record has been
    /// seen (the control plane writes it right after launch: a slow first
    /// write is not an orphan). Throttling, 5xx, timeouts, access denied
    /// say nothing; a malformed item is a record.
    fn orphan_answer(&self, read: &Result<Option<InstanceRecord>, TableError>) -> Answer {
        let seen = self.state.record_seen;
        match read {
            Ok(Some(record)) if record.run_id.is_some() => Answer::Claimed,
            Ok(Some(_)) => Answer::Unclaimed,
            Ok(None) if seen => Answer::Forgotten(Orphan::RecordGone),
            Err(e) if seen && e.kind == ErrorKind::TableMissing => {
                Answer::Forgotten(Orphan::TableGone)
            }
            Ok(None) | Err(_) => Answer::Unknown,
        }
    }

    /// Out of the pool for good, from idle (the runner was stopped and
    /// deregistered after the last run): persisted, counted, and shown by
    /// `status` and the heartbeat.
    pub(super) fn retire(&mut self, reason: Orphan) {
        tracing::warn!(
            reason = %reason,
            "leaving the pool for good: no runner is registered again; the instance ends itself if tagged AllowSelfTermination=true"
        );
        self.setup.metrics.left_pool(reason);
        self.enter(Phase::Orphaned { reason });
    }
}

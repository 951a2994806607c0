//! Picking up after a restart: a registration an earlier agent process
//! held is served on or released, a reset it was doing is done again.

use super::release::remove_locally;
use super::{Clock, Interrupt, Machine, Pool, RunnerHost, RunnerProcess};
use crate::protocol::Signal;
use crate::runner::pid::Pgid;
use crate::state::Phase;

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Picks up a registration held by an earlier agent process: serve on
    /// if the claim still holds, release if it went while the agent was
    /// down; without one, removes a registration the runner directory holds
    /// that nothing knows of.
    pub(super) async fn resume(&mut self) -> Result<Phase, Interrupt> {
        if let Phase::Resetting { .. } = self.state.phase {
            // Killed during a reset: it starts over before any signal.
            tracing::info!("resuming a reset from before the restart");
            return Ok(self.state.phase.clone());
        }
        let host = &self.world.host;
        let Some(registration) = self.state.registration() else {
            if host.is_configured() {
                tracing::warn!(
                    "runner directory holds a registration the agent has no record of; removing it"
                );
                host.stop_strays().await;
                remove_locally(host, "a registration nothing knows of").await;
            }
            return Ok(Phase::Idle);
        };
        let run_id = registration.run_id.clone();
        tracing::info!(run_id = %run_id, runner = %registration.runner_name, "resuming a registration from before the restart");
        let record = loop {
            match self.world.pool.read_instance(true).await {
                Ok(record) => break record,
                Err(e) => self.read_failed("reading the instance record to resume", &e),
            }
            self.pause(self.setup.timing.claimed_poll).await?;
        };
        self.observe(&record);
        let still_claimed = record.and_then(|r| r.run_id).as_deref() == Some(run_id.as_str());
        let host = &self.world.host;
        // A saved pgid of 0 or 1 (a corrupt file) names no runner of ours.
        let adopted = registration
            .runner_pgid
            .and_then(Pgid::new)
            .and_then(|pgid| host.adopt(pgid));
        if still_claimed && host.is_configured() {
            let mut registration = registration;
            match adopted {
                Some(runner) => {
                    tracing::info!(
                        pgid = runner.pgid().as_raw(),
                        "re-attached to the running runner"
                    );
                    self.runner = Some(runner);
                }
                None => {
                    host.stop_strays().await;
                    registration.runner_pgid = None;
                }
            }
            let owed = self
                .state
                .last_signal
                .as_ref()
                .is_none_or(|s| s.signal != Signal::RegOk || s.run_id != run_id);
            if owed {
                self.signal(Signal::RegOk, &run_id).await?;
            }
            return Ok(Phase::Serving { registration });
        }
        if still_claimed {
            // Crashed during config.sh: nothing was registered for this run
            // as far as the control plane knows; clean up and register for
            // the claim at once.
            tracing::info!(run_id = %run_id, "registration never finished; registering again");
            if let Some(runner) = adopted {
                runner.stop().await;
            }
            host.stop_strays().await;
            remove_locally(host, "a registration config.sh never finished").await;
            return Ok(Phase::Idle);
        }
        // Released while the agent was down.
        self.runner = adopted;
        Ok(Phase::Releasing {
            registration,
            signal: Signal::RemoveRegRemoveRunOk,
        })
    }
}

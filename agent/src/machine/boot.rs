//! Boot: the pre-runner script once per instance, the boot signal for the
//! initial run, then the runner's installation.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use crate::protocol::Signal;
use crate::state::{BootOutcome, Phase};
use std::time::Duration;

/// Download errors (not digest mismatches) are retried: 5 s, doubling, at
/// most `INSTALL_ATTEMPTS` tries.
const INSTALL_ATTEMPTS: u32 = 4;
const INSTALL_RETRY_FIRST: Duration = Duration::from_secs(5);

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Runs the pre-runner script once per instance and writes `UD_OK` or
    /// `UD_FAILED` for the initial run. The outcome is saved before the
    /// signal is written, so a restart does not run the script again but
    /// still writes a signal that never made it (the boot signal is the
    /// first the agent writes, so "no signal yet" means it is owed).
    pub(super) async fn boot(&mut self) -> Result<(), Interrupt> {
        if self.state.boot.is_none() {
            self.enter(Phase::Booting);
            let events = self.setup.events.clone();
            let outcome = events.guard(self.world.host.pre_runner()).await?;
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "pre-runner script failed");
            }
            self.state.boot = Some(match outcome {
                Ok(()) => BootOutcome::Ok,
                Err(_) => BootOutcome::Failed,
            });
            self.save();
        }
        if self.state.last_signal.is_none() {
            let signal = match self.state.boot {
                Some(BootOutcome::Failed) => Signal::Failed,
                _ => Signal::Ok,
            };
            match self.setup.initial_run_id.clone() {
                Some(run_id) => self.signal(signal, &run_id).await?,
                None => tracing::error!(
                    signal = %signal,
                    "instance has no {} tag: cannot write the boot signal",
                    crate::imds::TAG_INITIAL_RUN_ID
                ),
            }
        }
        Ok(())
    }

    /// Installs the runner (or finds it installed) and writes its job
    /// hooks. A failure is kept in `runner_ready`: claims are then answered
    /// with `UD_REG_FAILED`.
    pub(super) async fn install(&mut self) -> Result<(), Interrupt> {
        let phase = &self.state.phase;
        let keep = phase.registration().is_some() || matches!(phase, Phase::Resetting { .. });
        if !keep {
            // A held registration, or a reset owed, stays in the state file
            // until resumed.
            self.enter(Phase::Installing);
        }
        let events = self.setup.events.clone();
        let mut delay = INSTALL_RETRY_FIRST;
        let mut attempt = 1;
        self.runner_ready = loop {
            match events.guard(self.world.host.install()).await? {
                Ok(()) => break Ok(()),
                Err(e) if e.retryable && attempt < INSTALL_ATTEMPTS => {
                    tracing::warn!(error = %e.message, attempt, "runner download failed; retrying");
                    events.sleep(delay).await?;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e.message, "runner install failed; claims will be answered with UD_REG_FAILED");
                    break Err(e.message.into());
                }
            }
        };
        if self.runner_ready.is_ok() {
            if let Err(e) = self.world.host.write_hooks() {
                tracing::error!(error = %e, "job hooks: polling will not slow down during jobs");
            }
        }
        Ok(())
    }
}

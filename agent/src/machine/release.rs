//! Releasing the instance: the control plane ended the run (releasing →
//! idle); the runner is stopped and deregistered, then the instance reset
//! (`reset.rs`). Shutdown is `shutdown.rs`, a notice `leave.rs`, a restart
//! `resume.rs`.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost, RunnerProcess};
use crate::protocol::Signal;
use crate::state::{Phase, Registration};
use std::time::Duration;
use tokio::time::Instant;

/// Deregistration reads the current token; it must not hold up a stop.
const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Released: deregister, then reset the instance and write `signal`
    /// (`reset.rs`).
    pub(super) async fn release(
        &mut self,
        registration: Registration,
        signal: Signal,
    ) -> Result<Phase, Interrupt> {
        let run_id = registration.run_id.clone();
        self.dismantle(registration, signal).await;
        if self.setup.events.notice().is_some() {
            // Leaving the pool: no reset, and `leave` answers the release
            // as failed so the instance is not pooled again.
            self.enter(Phase::Resetting { run_id, signal });
            return Err(Interrupt::Notice);
        }
        self.reset(run_id, signal).await
    }

    /// Stops the runner and every process it left, and deregisters. The
    /// registration stays in the state until its signal is stored, so that
    /// a crash before then makes the next start deregister (a no-op) and
    /// signal again.
    pub(super) async fn dismantle(&mut self, mut registration: Registration, signal: Signal) {
        self.enter(Phase::Releasing {
            registration: registration.clone(),
            signal,
        });
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
        let host = &self.world.host;
        // Job processes that left the runner's tree (double forks) but
        // still work in its directory go too.
        host.stop_strays().await;
        host.clear_job_marker();
        self.job_changed(false);
        let host = &self.world.host;
        let token =
            match tokio::time::timeout(TOKEN_READ_TIMEOUT, self.world.pool.read_token()).await {
                Ok(Ok(t)) => t.map(|t| t.token).filter(|t| !t.is_empty()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the token for deregistration");
                    None
                }
                Err(_) => None,
            };
        let started = Instant::now();
        let removed = host.remove(token.as_deref()).await;
        tracing::info!(
            run_id = %registration.run_id,
            runner = %registration.runner_name,
            outcome = ?removed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "deregistered"
        );
        registration.runner_pgid = None;
        self.enter(Phase::Releasing {
            registration,
            signal,
        });
    }
}

/// Removes the runner directory's registration files without asking GitHub
/// (a leftover, or what a failed `config.sh` left behind). A failure is
/// logged and goes no further: `is_configured` still reports the files, so
/// the next registration or start removes them again.
pub(super) async fn remove_locally<H: RunnerHost>(host: &H, why: &'static str) {
    match host.remove(None).await {
        Ok(outcome) => tracing::debug!(why, ?outcome, "local registration removed"),
        Err(e) => tracing::warn!(why, error = %e, "could not remove the local registration"),
    }
}

//! A runner version GitHub no longer accepts: the listener exits with
//! `RunnerVersionDeprecated` (7). No job can reach it, so the registration
//! is dropped at once (`serve.rs`, `register_again`), the latest release
//! is installed (verified like any install: `runner/install/`), and the
//! claim registered again. Until an
//! upgrade succeeds, claims are answered with `UD_REG_FAILED` and the
//! upgrade is retried every `UPGRADE_RETRY`. The runner's own self-update
//! stays off: it rewrites `bin/` and skips the digest check.

use super::{Clock, Interrupt, Machine, Pool, RunnerHost};
use std::time::Duration;
use tokio::time::Instant;

/// Between failed upgrade attempts (GitHub's API or the download down).
const UPGRADE_RETRY: Duration = Duration::from_secs(300);

impl<P: Pool, H: RunnerHost, C: Clock> Machine<P, H, C> {
    /// Tries the owed upgrade when its time has come; true when it just
    /// succeeded. Never during a job: called only from states without a
    /// running listener.
    pub(super) async fn upgrade_if_due(&mut self) -> Result<bool, Interrupt> {
        if self.upgrade_due.is_none_or(|due| Instant::now() < due) {
            return Ok(false);
        }
        let events = self.setup.events.clone();
        match events.guard(self.world.host.upgrade()).await? {
            Ok(version) => {
                tracing::info!(version, "runner upgraded; claims are served again");
                if let Err(e) = self.world.host.write_hooks() {
                    tracing::error!(error = %e, "job hooks after the upgrade");
                }
                self.runner_ready = Ok(());
                self.upgrade_due = None;
                Ok(true)
            }
            Err(e) => {
                let why = format!(
                    "runner version deprecated by GitHub and the upgrade failed: {}",
                    e.message
                );
                tracing::error!(
                    retry_in_s = UPGRADE_RETRY.as_secs(),
                    "{why}; claims are answered with UD_REG_FAILED until it succeeds"
                );
                self.runner_ready = Err(why.into());
                self.upgrade_due = Some(Instant::now() + UPGRADE_RETRY);
                Ok(false)
            }
        }
    }
}

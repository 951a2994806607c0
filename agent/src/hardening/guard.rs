//! Hardened mode's firewall kept in place while the agent runs. Root on
//! the host can drop it at any time, and does so without meaning to:
//! `systemctl restart nftables` (its `flush ruleset`), an operator's
//! `nft flush ruleset`, a configuration tool that owns the whole ruleset.
//! So the table is listed every heartbeat interval and compared with the
//! listing taken when it was installed; missing or changed, it is
//! installed again, logged and counted (`firewall_restores_total`).

use super::firewall::{self, FirewallError};
use super::targets::Blocked;
use crate::metrics::Metrics;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the table lives: the kernel through `nft`, or a fake in tests.
pub trait Rules {
    /// Installs (or replaces) the whole table.
    fn apply(&self) -> impl Future<Output = Result<(), FirewallError>> + Send;
    /// The table as listed, `None` when it is not there.
    fn list(&self) -> impl Future<Output = Result<Option<String>, FirewallError>> + Send;
}

/// The real table for `uid` and `blocked`.
#[derive(Debug, Clone)]
pub struct Nft {
    pub uid: u32,
    pub blocked: Blocked,
}

impl Rules for Nft {
    async fn apply(&self) -> Result<(), FirewallError> {
        firewall::apply(self.uid, &self.blocked).await
    }

    async fn list(&self) -> Result<Option<String>, FirewallError> {
        firewall::list().await
    }
}

/// An installed table and how the kernel listed it then.
pub struct Installed<R> {
    rules: R,
    expected: String,
}

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Intact,
    /// Found missing (`"missing"`) or changed (`"changed"`), installed again.
    Restored(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Nft(#[from] FirewallError),
    #[error(
        "nft lists no table {} {} right after installing it",
        firewall::FAMILY,
        firewall::TABLE
    )]
    Vanished,
}

impl<R: Rules> Installed<R> {
    /// Installs the table and keeps its listing to compare with later.
    pub async fn install(rules: R) -> Result<Installed<R>, GuardError> {
        rules.apply().await?;
        let expected = rules.list().await?.ok_or(GuardError::Vanished)?;
        Ok(Installed { rules, expected })
    }

    pub fn rules(&self) -> &R {
        &self.rules
    }

    /// Lists the table; missing or not as installed, installs it again.
    /// A listing that fails counts as missing: reinstalling is harmless
    /// (one atomic replace), leaving a gap is not.
    pub async fn check(&mut self) -> Result<Checked, GuardError> {
        let found = match self.rules.list().await {
            Ok(Some(text)) if text == self.expected => return Ok(Checked::Intact),
            Ok(Some(_)) => "changed",
            Ok(None) => "missing",
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the firewall table; installing it again");
                "missing"
            }
        };
        self.rules.apply().await?;
        self.expected = self.rules.list().await?.ok_or(GuardError::Vanished)?;
        Ok(Checked::Restored(found))
    }
}

/// Checks the table every `interval` until `stop`.
pub async fn run<R: Rules>(
    mut installed: Installed<R>,
    interval: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        match installed.check().await {
            Ok(Checked::Intact) => {}
            Ok(Checked::Restored(found)) => {
                metrics.firewall_restored(true);
                tracing::warn!(
                    found,
                    table = firewall::TABLE,
                    "hardened mode: the firewall table was {found}; installed it again"
                );
            }
            Err(e) => {
                metrics.firewall_restored(false);
                tracing::error!(error = %e, table = firewall::TABLE, "hardened mode: the firewall table is not in place and cannot be installed again; retrying at the next check");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A table in memory: `Some(text)` is installed; `fail` makes apply fail.
    #[derive(Clone, Default)]
    struct Fake {
        table: Arc<Mutex<Option<String>>>,
        applied: Arc<Mutex<u32>>,
        fail: Arc<Mutex<bool>>,
    }

    impl Rules for Fake {
        async fn apply(&self) -> Result<(), FirewallError> {
            if *self.fail.lock().unwrap() {
                return Err(FirewallError::Spawn(std::io::ErrorKind::NotFound.into()));
            }
            *self.applied.lock().unwrap() += 1;
            *self.table.lock().unwrap() = Some("rules".into());
            Ok(())
        }

        async fn list(&self) -> Result<Option<String>, FirewallError> {
            Ok(self.table.lock().unwrap().clone())
        }
    }

    #[tokio::test]
    async fn a_missing_or_changed_table_is_installed_again() {
        let fake = Fake::default();
        let mut installed = Installed::install(fake.clone()).await.unwrap();
        assert_eq!(installed.check().await.unwrap(), Checked::Intact);
        assert_eq!(*fake.applied.lock().unwrap(), 1);

        *fake.table.lock().unwrap() = None;
        assert_eq!(
            installed.check().await.unwrap(),
            Checked::Restored("missing")
        );
        *fake.table.lock().unwrap() = Some("rules\nand one more".into());
        assert_eq!(
            installed.check().await.unwrap(),
            Checked::Restored("changed")
        );
        assert_eq!(fake.table.lock().unwrap().as_deref(), Some("rules"));
        assert_eq!(installed.check().await.unwrap(), Checked::Intact);
        assert_eq!(*fake.applied.lock().unwrap(), 3);

        *fake.table.lock().unwrap() = None;
        *fake.fail.lock().unwrap() = true;
        assert!(installed.check().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_checks_every_interval_and_counts_restores() {
        let fake = Fake::default();
        let installed = Installed::install(fake.clone()).await.unwrap();
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            installed,
            Duration::from_secs(5),
            metrics.clone(),
            stop.clone(),
        ));
        *fake.table.lock().unwrap() = None;
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        assert!(
            fake.table.lock().unwrap().is_some(),
            "restored in one interval"
        );
        *fake.table.lock().unwrap() = None;
        *fake.fail.lock().unwrap() = true;
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
        task.await.unwrap();
        let text = metrics.render();
        let sample = |s: &str| crate::metrics::sample(&text, s);
        assert_eq!(
            sample("runner_agent_firewall_restores_total{result=\"ok\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample("runner_agent_firewall_restores_total{result=\"failed\"}"),
            Some(1.0)
        );
    }
}

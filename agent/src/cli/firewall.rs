//! `runner-agent firewall apply|remove`: hardened mode's firewall by hand,
//! the rules the agent installs at start (and keeps after it stops). For
//! operators (to re-install or inspect after a failure, to remove the
//! table of an agent that is gone) and for tests, which run it in a
//! private network namespace.

use crate::config::Settings;
use crate::hardening::{self, firewall};
use crate::runner::user::RunnerUser;
use anyhow::Context;
use std::path::Path;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Action {
    /// Install (or replace) the table for runner.user.
    Apply,
    /// Remove the table, if it is there (no config needed).
    Remove,
}

/// `remove` reads no config: the package's removal runs it, and a table
/// must be removable after its config is gone.
pub async fn run(config: &Path, action: Action) -> anyhow::Result<()> {
    match action {
        Action::Apply => {
            let settings = &Settings::load(config).context("loading configuration")?;
            let user = RunnerUser::resolve(settings.runner.user.as_deref())?;
            let rules = hardening::firewall_rules(settings, user.as_ref()).await?;
            firewall::apply(rules.uid, &rules.blocked)
                .await
                .context("installing the firewall")?;
            let blocked = &rules.blocked;
            let list: Vec<String> = (blocked.addresses.iter().map(ToString::to_string))
                .chain(blocked.ports.iter().map(|s| format!("tcp {s}")))
                .collect();
            println!(
                "table {} {}: uid {} rejected to {}",
                firewall::FAMILY,
                firewall::TABLE,
                rules.uid,
                list.join(", ")
            );
        }
        Action::Remove => {
            let (family, table) = (firewall::FAMILY, firewall::TABLE);
            // Listed first, so that where there is no table (the package
            // removed from a host that never ran hardened) nothing is
            // written to the ruleset at all.
            if firewall::list()
                .await
                .context("listing the firewall")?
                .is_none()
            {
                println!("table {family} {table}: not there");
                return Ok(());
            }
            firewall::remove().await.context("removing the firewall")?;
            println!("table {family} {table} removed");
        }
    }
    Ok(())
}

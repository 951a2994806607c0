//! `runner-agent firewall apply|remove`: hardened mode's firewall by hand,
//! the rules the agent installs at start and removes at stop. For
//! operators (to re-install or inspect after a failure) and for tests,
//! which run it in a private network namespace.

use crate::config::Settings;
use crate::hardening::{self, firewall};
use crate::runner::user::RunnerUser;
use anyhow::Context;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Action {
    /// Install (or replace) the table for runner.user.
    Apply,
    /// Remove the table, if it is there.
    Remove,
}

pub async fn run(settings: &Settings, action: Action) -> anyhow::Result<()> {
    match action {
        Action::Apply => {
            let user = RunnerUser::resolve(settings.runner.user.as_deref())?;
            let (uid, addresses) = hardening::firewall_target(settings, user.as_ref())?;
            firewall::apply(uid, &addresses)
                .await
                .context("installing the firewall")?;
            let list: Vec<String> = addresses.iter().map(ToString::to_string).collect();
            println!(
                "table {} {}: uid {uid} rejected to {}",
                firewall::FAMILY,
                firewall::TABLE,
                list.join(", ")
            );
        }
        Action::Remove => {
            firewall::remove().await.context("removing the firewall")?;
            println!("table {} {} removed", firewall::FAMILY, firewall::TABLE);
        }
    }
    Ok(())
}

//! Hardened mode (`[hardening] enabled = true`): jobs, running as a
//! dedicated runner user, cannot reach what only the agent should. At start
//! the agent refuses a runner user who could undo that (root through sudo
//! or a root-equivalent group), keeps its config and state readable by
//! root only, and rejects that user's traffic, and traffic the host
//! forwards, to the instance metadata service and the container
//! credential endpoints (so no job can take the instance role, which reads
//! and writes the pool's table and its registration token). The rules are
//! checked every heartbeat interval and put back when missing (`guard`).
//!
//! The table outlives the agent: it stays through a stop, a restart and a
//! crash, so jobs are never unprotected between two agents; the next
//! hardened start replaces it in one transaction, a start with hardened
//! mode off removes it, and so does `runner-agent firewall remove`.
//!
//! A firewall that cannot be installed fails the start: an agent asked to
//! serve hardened must not serve unprotected, and systemd's restart retries
//! it (`Restart=on-failure`), every attempt logged.

pub mod firewall;
pub mod guard;
pub mod isolation;
pub mod rootless;
pub mod targets;

use crate::config::Settings;
use crate::runner::user::RunnerUser;
use anyhow::{bail, Context};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The uid to block: the runner user's, never root's.
pub fn runner_uid(user: Option<&RunnerUser>) -> anyhow::Result<u32> {
    // `resolve` gives `None` for the agent's own user; the config refuses
    // an unset or `root` runner.user, this catches another name for uid 0.
    let Some(user) = user.filter(|u| !u.uid.is_root()) else {
        bail!(
            "hardening needs runner.user to be a dedicated user, not root or the agent's own user"
        );
    };
    Ok(user.uid.as_raw())
}

/// The rules for `settings`: the runner user's uid, the configured
/// addresses and the agent's IMDS endpoint overrides.
pub async fn firewall_rules(
    settings: &Settings,
    user: Option<&RunnerUser>,
) -> anyhow::Result<guard::Nft> {
    let uid = runner_uid(user)?;
    let blocked = targets::from_env(&settings.hardening.metadata_addresses).await?;
    Ok(guard::Nft { uid, blocked })
}

/// The state dir becomes 0700; a config file that group or others can read
/// becomes 0600, with a warning (the operator left it open; it names the
/// pool's table and repository).
pub fn protect_files(config: &Path, state_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 {}", state_dir.display()))?;
    let mode = std::fs::metadata(config)
        .with_context(|| format!("reading {}", config.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(config, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", config.display()))?;
        tracing::warn!(
            path = %config.display(),
            was = format!("{:04o}", mode & 0o7777),
            "config was readable by others than root; now 0600"
        );
    }
    Ok(())
}

/// Hardened-mode start: the user, the files, then the firewall.
/// `Ok(None)`: not enabled, and a table an earlier hardened agent left is
/// removed. An error means the agent must not run.
pub async fn start(
    settings: &Settings,
    user: Option<&RunnerUser>,
) -> anyhow::Result<Option<guard::Installed<guard::Nft>>> {
    if !settings.hardening.enabled {
        remove_leftover().await;
        return Ok(None);
    }
    let rules = firewall_rules(settings, user).await?;
    refuse_escapable(user).await?;
    protect_files(&settings.source, &settings.state_dir)?;
    let installed = guard::Installed::install(rules)
        .await
        .context("hardened mode: installing the firewall; refusing to run without it")?;
    let blocked = &installed.rules().blocked;
    tracing::info!(
        uid = installed.rules().uid,
        addresses = ?blocked.addresses,
        ports = ?blocked.ports,
        table = firewall::TABLE,
        "hardened mode: the runner user cannot reach instance metadata"
    );
    Ok(Some(installed))
}

/// A runner user who can become root (or read the logs, `adm`) can remove
/// any firewall rule and read what the agent keeps from jobs: hardened
/// mode would promise what it cannot keep. A probe that does not tell
/// refuses too.
async fn refuse_escapable(user: Option<&RunnerUser>) -> anyhow::Result<()> {
    let facts = isolation::probe(user.map(|u| u.name.as_str()))
        .await
        .context("hardened mode: reading the runner user's groups and sudo rights")?;
    let level = isolation::decide(&facts);
    if !level.is_isolated() {
        bail!("hardened mode: {level}; refusing to run (remove the user from those groups and sudoers)");
    }
    Ok(())
}

/// Not hardened: a table a hardened agent left (it outlives the agent) no
/// longer belongs. Quiet when `nft` is not installed: then there is none.
async fn remove_leftover() {
    match firewall::list().await {
        Ok(None) => {}
        Ok(Some(_)) => match firewall::remove().await {
            Ok(()) => tracing::info!(
                table = firewall::TABLE,
                "hardened mode is off: removed the firewall table an earlier start left"
            ),
            Err(e) => {
                tracing::error!(error = %e, table = firewall::TABLE, "hardened mode is off, but the firewall table it left cannot be removed")
            }
        },
        Err(firewall::FirewallError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
        // Not ours to worry about when not hardened (an agent without
        // CAP_NET_ADMIN, say); debug for whoever looks.
        Err(e) => tracing::debug!(error = %e, "cannot list the firewall tables"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_end_up_readable_by_their_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let state = dir.path().join("state");
        std::fs::write(&config, "x").unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        protect_files(&config, &state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config), 0o600);
        assert_eq!(mode(&state), 0o700);
        // A tighter config is left as it is.
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o400)).unwrap();
        protect_files(&config, &state).unwrap();
        assert_eq!(mode(&config), 0o400);
    }
}

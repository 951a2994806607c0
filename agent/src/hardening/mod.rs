//! Hardened mode (`[hardening] enabled = true`): jobs, running as a
//! dedicated runner user, cannot reach what only the agent should. At start
//! the agent rejects that user's traffic to the instance metadata service
//! (so no job can take the instance role, which reads and writes the pool's
//! table and its registration token) and keeps its config and state
//! readable by root only; on stop it removes its firewall table.
//!
//! A firewall that cannot be installed fails the start: an agent asked to
//! serve hardened must not serve unprotected, and systemd's restart retries
//! it (`Restart=on-failure`), every attempt logged.

pub mod firewall;
pub mod isolation;
pub mod rootless;

use crate::config::{HardeningSettings, Settings};
use crate::runner::user::RunnerUser;
use anyhow::{anyhow, bail, Context};
use runner_agent_common::http_url;
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The IMDS endpoint override the AWS SDK (and so the agent) honours.
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";

/// The uid to block and the addresses it may not reach: the configured
/// metadata addresses and the host of the agent's IMDS endpoint override.
pub fn firewall_target(
    settings: &Settings,
    user: Option<&RunnerUser>,
) -> anyhow::Result<(u32, Vec<IpAddr>)> {
    // `resolve` gives `None` for the agent's own user; the config refuses
    // an unset or `root` runner.user, this catches another name for uid 0.
    let Some(user) = user.filter(|u| !u.uid.is_root()) else {
        bail!(
            "hardening needs runner.user to be a dedicated user, not root or the agent's own user"
        );
    };
    let endpoint = std::env::var(ENDPOINT_ENV).ok();
    let addresses = blocked_addresses(&settings.hardening, endpoint.as_deref())?;
    Ok((user.uid.as_raw(), addresses))
}

/// The configured addresses plus the override's host (its name resolved:
/// the firewall matches addresses), without duplicates.
pub fn blocked_addresses(
    settings: &HardeningSettings,
    endpoint: Option<&str>,
) -> anyhow::Result<Vec<IpAddr>> {
    let mut addresses = settings.metadata_addresses.clone();
    if let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) {
        // The SDK reaches IMDS over http(s) only, so the common parser's
        // refusals are of endpoints the agent could not use either.
        let url = http_url::parse(endpoint.trim()).map_err(|e| anyhow!("{ENDPOINT_ENV}: {e}"))?;
        let Some(host) = url.host_str() else {
            bail!("{ENDPOINT_ENV}={endpoint:?} has no host");
        };
        // An IPv6 host keeps its brackets in the URL's text.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let extra: Vec<IpAddr> = match literal.parse::<IpAddr>() {
            Ok(address) => vec![address],
            Err(_) => (host, 0)
                .to_socket_addrs()
                .with_context(|| format!("resolving {host} from {ENDPOINT_ENV}"))?
                .map(|s| s.ip())
                .collect(),
        };
        addresses.extend(extra);
    }
    let mut unique = Vec::new();
    for a in addresses {
        if !unique.contains(&a) {
            unique.push(a);
        }
    }
    Ok(unique)
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

/// Hardened-mode start: files first, then the firewall. `Ok(false)`: not
/// enabled, nothing done. An error means the agent must not run.
pub async fn start(settings: &Settings, user: Option<&RunnerUser>) -> anyhow::Result<bool> {
    if !settings.hardening.enabled {
        return Ok(false);
    }
    let (uid, addresses) = firewall_target(settings, user)?;
    protect_files(&settings.source, &settings.state_dir)?;
    firewall::apply(uid, &addresses)
        .await
        .context("hardened mode: installing the firewall; refusing to run without it")?;
    tracing::info!(uid, addresses = ?addresses, table = firewall::TABLE, "hardened mode: the runner user cannot reach instance metadata");
    // The firewall does not stop a user who can become root; say so, but
    // run: the rule still stops whatever does not try that hard.
    let name = user.map(|u| u.name.as_str());
    match isolation::probe(name).await {
        Ok(facts) => {
            let level = isolation::decide(&facts);
            if !level.is_isolated() {
                tracing::warn!(%level, "hardened mode, but jobs are not isolated");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot tell how isolated jobs are"),
    }
    Ok(true)
}

/// Hardened-mode stop: the table goes. A failure is logged; the table then
/// stays until the next start replaces it (which errs on the safe side).
pub async fn stop() {
    match firewall::remove().await {
        Ok(()) => tracing::info!(table = firewall::TABLE, "firewall removed"),
        Err(e) => tracing::error!(error = %e, "removing the firewall"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(list: &[&str]) -> HardeningSettings {
        HardeningSettings {
            enabled: true,
            metadata_addresses: list.iter().map(|a| a.parse().unwrap()).collect(),
            docker: Default::default(),
        }
    }

    #[test]
    fn the_endpoint_override_host_is_blocked_too() {
        let s = settings(&["169.254.169.254", "fd00:ec2::254"]);
        let got = blocked_addresses(&s, None).unwrap();
        assert_eq!(got, s.metadata_addresses);
        let got = blocked_addresses(&s, Some("http://127.0.0.9:8123/")).unwrap();
        assert_eq!(got.last().unwrap().to_string(), "127.0.0.9");
        let got = blocked_addresses(&s, Some("http://[fd00:ec2::254]")).unwrap();
        assert_eq!(got.len(), 2, "no duplicates: {got:?}");
        let got = blocked_addresses(&s, Some("http://localhost:1338")).unwrap();
        assert!(got.iter().any(|a| a.is_loopback()), "{got:?}");
        for bad in ["not a url", "https:127.0.0.9", "ftp://127.0.0.9/"] {
            assert!(blocked_addresses(&s, Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(blocked_addresses(&s, Some("")).unwrap().len(), 2);
    }

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

//! `[hardening]`: whether jobs are kept away from what only the agent may
//! reach. Off by default: it needs a dedicated runner user, which the
//! fleet-actions pool does not use.

use super::keys::Keys;
use super::rootless::RootlessSettings;
use super::{ConfigError, ResetSettings, RunnerSettings};
use serde::Deserialize;
use std::net::IpAddr;

/// Where an instance's credentials can be served: IMDS (IPv4, IPv6), the
/// ECS task credential endpoint, the EKS Pod Identity agent (IPv4, IPv6).
/// Only IMDS serves the instance role; the others are blocked as well
/// so that nothing a host runs for containers hands a job credentials.
const DEFAULT_METADATA_ADDRESSES: &[&str] = &[
    "169.254.169.254",
    "fd00:ec2::254",
    "169.254.170.2",
    "169.254.170.23",
    "fd00:ec2::23",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHardening {
    pub enabled: Option<bool>,
    pub metadata_addresses: Option<Vec<String>>,
    pub docker: Option<String>,
    pub docker_data_root: Option<std::path::PathBuf>,
    pub docker_runtime_dir: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct HardeningSettings {
    pub enabled: bool,
    /// Addresses the runner user may not reach (the agent adds the host of
    /// its IMDS endpoint override, if any).
    pub metadata_addresses: Vec<IpAddr>,
    /// The runner user's rootless Docker daemon (`rootless.rs`).
    pub docker: RootlessSettings,
}

impl RawHardening {
    pub(super) fn into_settings(self, at: &Keys) -> Result<HardeningSettings, ConfigError> {
        let metadata_addresses = self
            .metadata_addresses
            .unwrap_or_else(|| {
                DEFAULT_METADATA_ADDRESSES
                    .iter()
                    .map(|a| a.to_string())
                    .collect()
            })
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    at.invalid("metadata_addresses", format!("{a:?} is not an IP address"))
                })
            })
            .collect::<Result<_, _>>()?;
        let docker = RootlessSettings::parse(
            at,
            self.docker.as_deref(),
            self.docker_data_root,
            self.docker_runtime_dir,
        )?;
        Ok(HardeningSettings {
            enabled: self.enabled.unwrap_or(false),
            metadata_addresses,
            docker,
        })
    }
}

impl HardeningSettings {
    /// What hardened mode needs of the other sections: a runner user it
    /// can fence in, a reset, and something to block.
    pub(super) fn check_needs(
        &self,
        at: &Keys,
        runner: &RunnerSettings,
        reset: &ResetSettings,
    ) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        // Jobs as root (or as the agent) can remove any firewall rule.
        if matches!(runner.user.as_deref(), None | Some("root")) {
            return Err(at.invalid(
                "enabled",
                "needs runner.user: a dedicated user other than root for the jobs",
            ));
        }
        // A hardened instance that is never cleaned hands each job what the
        // last one left.
        if !reset.enabled && !reset.allow_weaker {
            return Err(at.invalid(
                "enabled",
                "needs the reset (reset.enabled); set reset.allow_weaker = true to run hardened jobs on an instance that is not cleaned between them",
            ));
        }
        if self.metadata_addresses.is_empty() {
            return Err(at.invalid(
                "metadata_addresses",
                "empty: hardened mode would block nothing",
            ));
        }
        Ok(())
    }
}

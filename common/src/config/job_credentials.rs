//! `[job_credentials]`: per-run AWS credentials for jobs. Off unless
//! `role_arn` is set: then, for each claimed run, the agent assumes that
//! role and serves the credentials on a loopback endpoint that the AWS SDKs
//! and CLI read (docs/operations.md, "Job credentials").

use super::keys::Keys;
use super::ConfigError;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The endpoint's port when `listen` names none: fixed, so that hardened
/// mode's firewall and an operator's own rules can name it.
pub const DEFAULT_JOB_CREDENTIALS_PORT: u16 = 9611;
/// Sessions last this long unless `duration` says otherwise.
const DEFAULT_DURATION: Duration = Duration::from_secs(3600);
/// STS refuses shorter sessions (`DurationSeconds` ≥ 900)...
const MIN_DURATION: Duration = Duration::from_secs(15 * 60);
/// ...and longer ones than 12 h (a role's own maximum may be lower: STS
/// then refuses the call, and the agent logs why).
const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobCredentials {
    pub role_arn: Option<String>,
    pub duration: Option<String>,
    pub listen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCredentialsSettings {
    /// The role each run's session assumes.
    pub role_arn: String,
    /// How long each session lasts (`DurationSeconds`); refreshed before.
    pub duration: Duration,
    /// The loopback address the endpoint listens on (port 0: any, logged
    /// and given to the runner).
    pub listen: SocketAddr,
}

impl RawJobCredentials {
    /// `None` when `role_arn` is not set (the feature is off).
    pub(super) fn into_settings(
        self,
        at: &Keys,
    ) -> Result<Option<JobCredentialsSettings>, ConfigError> {
        let role_arn = match self.role_arn.as_deref().map(str::trim) {
            None | Some("") => {
                if self.duration.is_some() || self.listen.is_some() {
                    return Err(at.invalid(
                        "role_arn",
                        "not set: the other job_credentials keys do nothing without it",
                    ));
                }
                return Ok(None);
            }
            Some(arn) => role_arn(at, arn)?,
        };
        let duration = at.duration("duration", self.duration.as_deref(), DEFAULT_DURATION)?;
        if !(MIN_DURATION..=MAX_DURATION).contains(&duration) {
            return Err(at.invalid(
                "duration",
                "must be from 15m (STS's minimum) to 12h (its maximum)",
            ));
        }
        let listen = listen(at, self.listen.as_deref())?;
        Ok(Some(JobCredentialsSettings {
            role_arn,
            duration,
            listen,
        }))
    }
}

/// `arn:<partition>:iam::<account>:role/<path/name>`: what AssumeRole
/// takes. A wrong one would only show at the first claim.
fn role_arn(at: &Keys, arn: &str) -> Result<String, ConfigError> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let valid = matches!(
        parts.as_slice(),
        ["arn", partition, "iam", "", account, resource]
            if !partition.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty())
    );
    if !valid {
        return Err(at.invalid(
            "role_arn",
            format!("{arn:?} is not a role ARN like arn:aws:iam::123456789012:role/ci-jobs"),
        ));
    }
    Ok(arn.to_owned())
}

/// A loopback address, with or without a port. The SDKs read container
/// credentials over plain HTTP only from loopback addresses; any other
/// address would also hand the credentials to whoever reaches it.
fn listen(at: &Keys, text: Option<&str>) -> Result<SocketAddr, ConfigError> {
    let text = match text.map(str::trim) {
        None | Some("") => {
            return Ok(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                DEFAULT_JOB_CREDENTIALS_PORT,
            ))
        }
        Some(text) => text,
    };
    let address = text
        .parse::<SocketAddr>()
        .or_else(|_| {
            let ip = text.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, DEFAULT_JOB_CREDENTIALS_PORT))
        })
        .map_err(|_| {
            at.invalid(
                "listen",
                format!("{text:?} is not an address (and port) like 127.0.0.1:{DEFAULT_JOB_CREDENTIALS_PORT}"),
            )
        })?;
    if !address.ip().is_loopback() {
        return Err(at.invalid(
            "listen",
            format!("{text:?} is not a loopback address (127.0.0.0/8 or ::1)"),
        ));
    }
    Ok(address)
}

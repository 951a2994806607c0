//! `[timing]`: how often the agent polls, heartbeats and checks, and the
//! margins it keeps.

use super::keys::Keys;
use super::ConfigError;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTiming {
    pub idle_poll_interval: Option<String>,
    pub claimed_poll_interval: Option<String>,
    pub job_poll_interval: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub expiry_check_interval: Option<String>,
    pub self_termination_grace: Option<String>,
    pub spot_poll_interval: Option<String>,
    pub spot_job_margin: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Timing {
    pub idle_poll_interval: Duration,
    pub claimed_poll_interval: Duration,
    pub job_poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub expiry_check_interval: Duration,
    pub self_termination_grace: Duration,
    pub spot_poll_interval: Duration,
    /// A job under a spot notice runs until the notice's time minus this,
    /// then the runner is stopped (deregistration and the signal need it).
    pub spot_job_margin: Duration,
}

impl RawTiming {
    pub(super) fn into_settings(self, at: &Keys) -> Result<Timing, ConfigError> {
        let positive =
            |key, value: Option<String>, default| at.positive(key, value.as_deref(), default);
        let any = |key, value: Option<String>, default| at.duration(key, value.as_deref(), default);
        let timing = Timing {
            idle_poll_interval: positive(
                "idle_poll_interval",
                self.idle_poll_interval,
                Duration::from_millis(250),
            )?,
            claimed_poll_interval: positive(
                "claimed_poll_interval",
                self.claimed_poll_interval,
                Duration::from_secs(1),
            )?,
            job_poll_interval: positive(
                "job_poll_interval",
                self.job_poll_interval,
                Duration::from_secs(10),
            )?,
            heartbeat_interval: positive(
                "heartbeat_interval",
                self.heartbeat_interval,
                Duration::from_secs(5),
            )?,
            expiry_check_interval: positive(
                "expiry_check_interval",
                self.expiry_check_interval,
                Duration::from_secs(30),
            )?,
            self_termination_grace: any(
                "self_termination_grace",
                self.self_termination_grace,
                Duration::from_secs(60),
            )?,
            spot_poll_interval: positive(
                "spot_poll_interval",
                self.spot_poll_interval,
                Duration::from_secs(5),
            )?,
            spot_job_margin: any(
                "spot_job_margin",
                self.spot_job_margin,
                Duration::from_secs(20),
            )?,
        };
        check_limits(at, &timing)?;
        Ok(timing)
    }
}

/// What the instance's and the control plane's clocks allow.
fn check_limits(at: &Keys, timing: &Timing) -> Result<(), ConfigError> {
    if timing.spot_job_margin > Duration::from_secs(110) {
        return Err(at.invalid(
            "spot_job_margin",
            "EC2 gives two minutes' notice; a margin over 110s stops every job at once",
        ));
    }
    if timing.heartbeat_interval > Duration::from_secs(10) {
        return Err(at.invalid(
            "heartbeat_interval",
            "the control plane treats a heartbeat older than 15 s as dead; keep it at most 10s",
        ));
    }
    Ok(())
}

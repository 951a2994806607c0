//! The file as written: every key optional where it has a default, unknown
//! keys refused. Durations and URLs stay text here so that validation can
//! name the key whose value is wrong.

use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub table: String,
    pub github: RawGithub,
    pub runner: RawRunner,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub timing: RawTiming,
    #[serde(default)]
    pub reset: super::reset::RawReset,
    #[serde(default)]
    pub hardening: super::reset::RawHardening,
    #[serde(default)]
    pub metrics: super::metrics::RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGithub {
    pub url: Option<String>,
    pub owner: Option<String>,
    pub repo: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRunner {
    pub version: String,
    pub sha256: Option<String>,
    pub install_dir: Option<PathBuf>,
    pub user: Option<String>,
    pub release_base_url: Option<String>,
    pub release_api_url: Option<String>,
    #[serde(default)]
    pub allow_run_as_root: bool,
    pub stop_timeout: Option<String>,
    #[serde(default)]
    pub extra_labels: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub state_dir: Option<PathBuf>,
    pub pre_runner_script: Option<PathBuf>,
    pub pre_runner_timeout: Option<String>,
}

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

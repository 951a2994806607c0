//! The file as written: every key optional where it has a default, unknown
//! keys refused. Durations and URLs stay text here so that validation can
//! name the key whose value is wrong. Each section's raw form lives beside
//! its settings, in the section's module, with the validation between them.

use super::agent::RawAgent;
use super::expiry::RawExpiry;
use super::github::RawGithub;
use super::hardening::RawHardening;
use super::job_credentials::RawJobCredentials;
use super::metrics::RawMetrics;
use super::reset::RawReset;
use super::runner::RawRunner;
use super::timing::RawTiming;
use serde::Deserialize;

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
    pub expiry: RawExpiry,
    #[serde(default)]
    pub reset: RawReset,
    #[serde(default)]
    pub hardening: RawHardening,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub job_credentials: RawJobCredentials,
}

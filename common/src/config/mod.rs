//! The agent's settings: one TOML file, overridden by `RUNNER_AGENT_*`
//! environment variables, validated into typed [`Settings`].
//!
//! Environment overrides name the TOML key with the section joined by a
//! double underscore: `RUNNER_AGENT_TABLE`, `RUNNER_AGENT_RUNNER__VERSION`,
//! `RUNNER_AGENT_TIMING__IDLE_POLL_INTERVAL`. `true`/`false` become booleans,
//! everything else a string; they are applied before validation, so a bad
//! override is reported with its key like a bad file entry.

mod agent;
mod duration;
mod env;
mod expiry;
mod github;
mod hardening;
mod job_credentials;
mod keys;
mod metrics;
mod raw;
mod reset;
mod rootless;
mod runner;
mod timing;
mod validate;

#[cfg(test)]
mod tests;

pub use agent::PreRunner;
pub use duration::parse_duration;
pub use expiry::{ExpirySettings, DEFAULT_ORPHAN_GRACE};
pub use github::GithubRepo;
pub use hardening::HardeningSettings;
pub use job_credentials::{JobCredentialsSettings, DEFAULT_JOB_CREDENTIALS_PORT};
pub use metrics::MetricsSettings;
pub use reset::{
    parse_size, DockerMode, ImageMode, ResetSettings, DEFAULT_HOME_PATHS, DEFAULT_TEMP_DIRS,
};
pub use rootless::{RootlessMode, RootlessSettings};
pub use runner::{parse_runner_version, RunnerSettings, RunnerVersion};
pub use timing::Timing;
pub use validate::is_table_name;

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/runner-agent/config.toml";
/// The unit's `StateDirectory=`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/runner-agent";
pub const DEFAULT_INSTALL_DIR: &str = "/opt/actions-runner";
pub const ENV_PREFIX: &str = "RUNNER_AGENT_";
pub const DEFAULT_RELEASE_BASE_URL: &str = "https://github.com/actions/runner/releases/download";
pub const DEFAULT_GITHUB_SERVER: &str = "https://github.com";
/// Where `latest` is resolved, and the upgrade asks, when
/// `runner.release_api_url` is not set.
pub const DEFAULT_RELEASE_API_URL: &str = "https://api.github.com";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Validated settings. Every field is usable as is.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: PathBuf,
    pub table: String,
    pub github: GithubRepo,
    pub runner: RunnerSettings,
    pub state_dir: PathBuf,
    pub pre_runner: Option<PreRunner>,
    pub timing: Timing,
    pub expiry: ExpirySettings,
    pub reset: ResetSettings,
    pub hardening: HardeningSettings,
    pub metrics: MetricsSettings,
    /// Per-run AWS credentials for jobs, when `[job_credentials]` names a
    /// role.
    pub job_credentials: Option<JobCredentialsSettings>,
}

impl Settings {
    /// Loads `path`, applies `RUNNER_AGENT_*` overrides from the process
    /// environment and validates.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(path, &text, std::env::vars())
    }

    /// Parses `text` (read from `path`, named in errors) with the given
    /// environment overrides.
    pub fn from_toml(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        env::apply_overrides(&mut doc, env).map_err(parse_err)?;
        let raw = raw::RawConfig::deserialize(toml::Value::Table(doc))
            .map_err(|e| parse_err(e.to_string().trim_end().to_owned()))?;
        validate::validate(path, raw)
    }
}

//! The agent's settings: one TOML file, overridden by `RUNNER_AGENT_*`
//! environment variables, validated into typed [`Settings`].
//!
//! Environment overrides name the TOML key with the section joined by a
//! double underscore: `RUNNER_AGENT_TABLE`, `RUNNER_AGENT_RUNNER__VERSION`,
//! `RUNNER_AGENT_TIMING__IDLE_POLL_INTERVAL`. `true`/`false` become booleans,
//! everything else a string; they are applied before validation, so a bad
//! override is reported with its key like a bad file entry.

mod duration;
mod env;
mod metrics;
mod raw;
mod reset;
mod validate;

#[cfg(test)]
mod tests;

pub use duration::parse_duration;
pub use metrics::MetricsSettings;
pub use reset::{
    parse_size, DockerMode, HardeningSettings, ImageMode, ResetSettings, DEFAULT_HOME_PATHS,
    DEFAULT_TEMP_DIRS,
};
pub use validate::{is_table_name, parse_runner_version};

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

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
    pub reset: ResetSettings,
    pub hardening: HardeningSettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubRepo {
    pub owner: String,
    pub repo: String,
    /// `https://github.com` or a GitHub Enterprise Server base.
    pub server: String,
}

impl GithubRepo {
    pub fn url(&self) -> String {
        format!("{}/{}/{}", self.server, self.owner, self.repo)
    }
}

/// `runner.version`: a release, or whatever the release API calls the
/// latest one at the time of the install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerVersion {
    /// Three dot-separated numbers, e.g. `2.331.0`.
    Pinned(String),
    Latest,
}

impl RunnerVersion {
    pub fn pinned(&self) -> Option<&str> {
        match self {
            RunnerVersion::Pinned(v) => Some(v),
            RunnerVersion::Latest => None,
        }
    }
}

impl std::fmt::Display for RunnerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pinned().unwrap_or("latest"))
    }
}

impl PartialEq<&str> for RunnerVersion {
    fn eq(&self, other: &&str) -> bool {
        match self {
            RunnerVersion::Pinned(v) => v == other,
            RunnerVersion::Latest => *other == "latest",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub version: RunnerVersion,
    /// 64 lower-case hexadecimal characters; never with `latest`.
    pub sha256: Option<String>,
    pub install_dir: PathBuf,
    /// `None`: the runner runs as the agent's own user.
    pub user: Option<String>,
    /// An http(s) URL; tarballs are at `<base>/v<version>/<name>`.
    pub release_base_url: Url,
    /// The release API, asked for a pinned tarball's digest when neither
    /// the config nor the built-in table has one. With `latest` it is
    /// always set (`DEFAULT_RELEASE_API_URL` unless configured).
    pub release_api_url: Option<Url>,
    pub allow_run_as_root: bool,
    pub stop_timeout: Duration,
    pub labels_extra: Vec<String>,
}

impl RunnerSettings {
    /// The release API to resolve the latest release with: the configured
    /// one, else GitHub's. An upgrade asks it whatever `version` says.
    pub fn release_api(&self) -> Url {
        self.release_api_url.clone().unwrap_or_else(|| {
            crate::http_url::parse(DEFAULT_RELEASE_API_URL).expect("the default API URL parses")
        })
    }
}

#[derive(Debug, Clone)]
pub struct PreRunner {
    pub script: PathBuf,
    pub timeout: Duration,
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

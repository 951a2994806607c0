//! `[runner]`: which actions/runner release is installed, from where,
//! where to, and as which user it runs.

use super::keys::Keys;
use super::{ConfigError, DEFAULT_INSTALL_DIR, DEFAULT_RELEASE_API_URL, DEFAULT_RELEASE_BASE_URL};
use crate::{digest, http_url};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

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
            http_url::parse(DEFAULT_RELEASE_API_URL).expect("the default API URL parses")
        })
    }
}

impl RawRunner {
    pub(super) fn into_settings(self, at: &Keys) -> Result<RunnerSettings, ConfigError> {
        let version = version(at, &self.version)?;
        let sha256 = sha256(at, self.sha256.as_deref(), &version)?;
        let release_base_url = http_url::parse(
            self.release_base_url
                .as_deref()
                .unwrap_or(DEFAULT_RELEASE_BASE_URL),
        )
        .map_err(|e| at.invalid("release_base_url", e))?;
        // `latest` cannot be installed without asking which release that is.
        let release_api_url = match (&self.release_api_url, &version) {
            (None, RunnerVersion::Pinned(_)) => None,
            (api, _) => Some(
                http_url::parse(api.as_deref().unwrap_or(DEFAULT_RELEASE_API_URL))
                    .map_err(|e| at.invalid("release_api_url", e))?,
            ),
        };
        check_user_and_labels(at, self.user.as_deref(), &self.extra_labels)?;
        let install_dir = at.absolute(
            "install_dir",
            self.install_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_DIR)),
        )?;
        let stop_timeout = at.positive(
            "stop_timeout",
            self.stop_timeout.as_deref(),
            Duration::from_secs(10),
        )?;
        Ok(RunnerSettings {
            version,
            sha256,
            install_dir,
            user: self.user,
            release_base_url,
            release_api_url,
            allow_run_as_root: self.allow_run_as_root,
            stop_timeout,
            labels_extra: self.extra_labels,
        })
    }
}

fn version(at: &Keys, text: &str) -> Result<RunnerVersion, ConfigError> {
    if text == "latest" {
        Ok(RunnerVersion::Latest)
    } else if parse_runner_version(text).is_some() {
        Ok(RunnerVersion::Pinned(text.to_owned()))
    } else {
        Err(at.invalid(
            "version",
            format!("{text:?} is neither a version like 2.321.0 nor \"latest\""),
        ))
    }
}

fn sha256(
    at: &Keys,
    text: Option<&str>,
    version: &RunnerVersion,
) -> Result<Option<String>, ConfigError> {
    match text {
        None => Ok(None),
        // The latest release changes; one pinned digest cannot follow it.
        Some(_) if *version == RunnerVersion::Latest => Err(at.invalid(
            "sha256",
            "cannot pin a digest with runner.version = \"latest\": the release API's digest is checked",
        )),
        Some(s) => Ok(Some(
            digest::parse_sha256_hex(s).map_err(|e| at.invalid("sha256", e))?,
        )),
    }
}

fn check_user_and_labels(
    at: &Keys,
    user: Option<&str>,
    labels: &[String],
) -> Result<(), ConfigError> {
    if let Some(user) = user {
        if user.is_empty() || user.contains(['/', ':', '\0', ' ']) {
            return Err(at.invalid("user", format!("{user:?} is not a user name")));
        }
    }
    for label in labels {
        if label.is_empty() || label.contains(',') {
            return Err(at.invalid(
                "extra_labels",
                format!("{label:?}: labels are non-empty and contain no comma"),
            ));
        }
    }
    Ok(())
}

/// An `actions/runner` version, three dot-separated numbers of 1-6 digits
/// (`2.331.0`), as numbers that compare the way releases are ordered.
pub fn parse_runner_version(v: &str) -> Option<[u32; 3]> {
    let mut numbers = [0u32; 3];
    let mut parts = v.split('.');
    for number in &mut numbers {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 6 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *number = part.parse().ok()?;
    }
    parts.next().is_none().then_some(numbers)
}

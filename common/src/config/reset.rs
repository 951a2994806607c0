//! `[reset]` and `[hardening]`: what is cleaned between runs on a reused
//! instance, and whether jobs are kept away from what only the agent may
//! reach. Defaults suit the fleet-actions pool: reset on, hardening off
//! (hardening needs a dedicated runner user, which that pool does not use).

use super::{parse_duration, ConfigError};
use bytesize::ByteSize;
use serde::Deserialize;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Credentials and settings jobs commonly leave in the runner user's home:
/// docker login, cloud CLIs, gh, git, npm, PyPI, netrc. `.ssh` loses only
/// the files that were not there when the agent first started.
pub const DEFAULT_HOME_PATHS: &[&str] = &[
    ".docker/config.json",
    ".aws",
    ".config/gh",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".netrc",
    ".ssh",
];

/// Where the runner user's files are removed at any depth after a run:
/// temp dirs, POSIX shared memory and message queues.
pub const DEFAULT_TEMP_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/dev/mqueue"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReset {
    pub enabled: Option<bool>,
    pub keep_work: Option<Vec<String>>,
    pub diag_keep: Option<usize>,
    pub diag_max_size: Option<String>,
    pub home: Option<PathBuf>,
    pub home_paths: Option<Vec<String>>,
    pub home_keep: Option<Vec<String>>,
    pub home_max: Option<String>,
    pub temp_dirs: Option<Vec<PathBuf>>,
    pub deny_cron: Option<bool>,
    pub allow_weaker: Option<bool>,
    pub runner_pids_max: Option<u64>,
    pub runner_memory_max: Option<String>,
    pub docker: Option<String>,
    pub images: Option<String>,
    pub docker_cli: Option<PathBuf>,
    pub docker_host: Option<String>,
    pub image_cache_max: Option<String>,
    pub build_cache_max: Option<String>,
    pub min_free_space: Option<String>,
    pub min_free_inodes: Option<u64>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHardening {
    pub enabled: Option<bool>,
    pub metadata_addresses: Option<Vec<String>>,
}

/// Whether the reset cleans up after docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerMode {
    /// When the docker CLI is installed and its daemon answered at the
    /// agent's first start; a daemon that stops answering later fails the
    /// reset.
    Auto,
    /// Always: no daemon fails the reset.
    Required,
    Off,
}

/// What the reset does with docker images a run pulled, built or tagged.
/// Either way, a tag the baseline had is pointed back at its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageMode {
    /// Kept as a cache (up to `image_cache_max`): faster runs, but a later
    /// job that runs an image by a tag without pulling can get one a
    /// hostile job built under that tag. The default, but in hardened mode.
    Keep,
    /// Removed: every run sees the images the instance was prepared with.
    /// The default in hardened mode.
    Baseline,
}

#[derive(Debug, Clone)]
pub struct ResetSettings {
    pub enabled: bool,
    /// Paths under `_work` that survive (relative, no `..`).
    pub keep_work: Vec<PathBuf>,
    /// `_diag` keeps this many newest files...
    pub diag_keep: usize,
    /// ...and at most this many bytes of them.
    pub diag_max_size: u64,
    /// The runner user's home; `None`: from the user database.
    pub home: Option<PathBuf>,
    /// Removed from the home (relative paths) when the runner has no user
    /// of its own; with one, the whole home is restored instead.
    pub home_paths: Vec<PathBuf>,
    /// With a dedicated runner user: what survives the home's restore
    /// (relative paths: caches a later run may trust).
    pub home_keep: Vec<PathBuf>,
    /// The home's baseline copy is refused past this many bytes.
    pub home_max: u64,
    /// Files and directories the runner user owns here are removed (a
    /// dedicated runner user only: root owns too much of /tmp).
    pub temp_dirs: Vec<PathBuf>,
    /// The runner user goes into /etc/cron.deny and /etc/at.deny (its
    /// crontab and at jobs are removed after every run either way).
    pub deny_cron: bool,
    /// Serve even where the reset cannot promise a clean slate: no cgroup
    /// for the runner, or hardening without a reset. Off: the agent
    /// refuses (a config error, or `UD_REG_FAILED` with the reason).
    pub allow_weaker: bool,
    /// The runner's cgroup may hold at most this many processes (0: no
    /// limit): a fork bomb in a job stops there.
    pub runner_pids_max: u64,
    /// ...and use at most this much memory; `None`: all the machine has
    /// but 512 MiB (the agent's and the system's share); `Some(0)`: none.
    pub runner_memory_max: Option<u64>,
    pub docker: DockerMode,
    pub images: ImageMode,
    pub docker_cli: PathBuf,
    /// `--host` for the CLI; `None`: its own default (DOCKER_HOST, context).
    pub docker_host: Option<String>,
    pub image_cache_max: u64,
    pub build_cache_max: u64,
    pub min_free_space: u64,
    pub min_free_inodes: u64,
    /// The whole reset; past it, the reset has failed.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HardeningSettings {
    pub enabled: bool,
    /// Addresses the runner user may not reach (the agent adds the host of
    /// its IMDS endpoint override, if any).
    pub metadata_addresses: Vec<std::net::IpAddr>,
}

/// `hardened`: what is kept between runs (the tool cache, docker images)
/// defaults to nothing, since a hostile job can poison it for the next.
pub(super) fn validate_reset(
    path: &Path,
    raw: RawReset,
    hardened: bool,
) -> Result<ResetSettings, ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: format!("reset.{key}"),
        reason,
    };
    let size = |key: &str, value: &Option<String>, default: u64| match value {
        None => Ok(default),
        Some(text) => parse_size(text).map_err(|reason| invalid(key, reason)),
    };
    let relative = |key: &str, items: Vec<String>| {
        items
            .into_iter()
            .map(|item| relative_path(&item).map_err(|reason| invalid(key, reason)))
            .collect::<Result<Vec<_>, _>>()
    };
    let docker = match raw.docker.as_deref().unwrap_or("auto") {
        "auto" => DockerMode::Auto,
        "required" => DockerMode::Required,
        "off" => DockerMode::Off,
        other => {
            return Err(invalid(
                "docker",
                format!("{other:?}: one of auto, required, off"),
            ))
        }
    };
    for dir in raw.temp_dirs.iter().flatten().chain(raw.home.iter()) {
        if !dir.is_absolute() {
            return Err(invalid(
                "temp_dirs",
                format!("{} is not an absolute path", dir.display()),
            ));
        }
    }
    let images = match raw.images.as_deref() {
        None if hardened => ImageMode::Baseline,
        None | Some("keep") => ImageMode::Keep,
        Some("baseline") => ImageMode::Baseline,
        Some(other) => {
            return Err(invalid(
                "images",
                format!("{other:?}: one of keep, baseline"),
            ))
        }
    };
    let timeout = match &raw.timeout {
        None => Duration::from_secs(120),
        Some(text) => parse_duration(text).map_err(|reason| invalid("timeout", reason))?,
    };
    if timeout.is_zero() {
        return Err(invalid("timeout", "must be greater than zero".into()));
    }
    Ok(ResetSettings {
        enabled: raw.enabled.unwrap_or(true),
        keep_work: relative(
            "keep_work",
            raw.keep_work.unwrap_or_else(|| match hardened {
                true => Vec::new(),
                false => vec!["_tool".into()],
            }),
        )?,
        diag_keep: raw.diag_keep.unwrap_or(20),
        diag_max_size: size("diag_max_size", &raw.diag_max_size, 100 << 20)?,
        home: raw.home,
        home_paths: relative(
            "home_paths",
            raw.home_paths
                .unwrap_or_else(|| DEFAULT_HOME_PATHS.iter().map(|p| p.to_string()).collect()),
        )?,
        home_keep: relative("home_keep", raw.home_keep.unwrap_or_default())?,
        home_max: size("home_max", &raw.home_max, 256 << 20)?,
        temp_dirs: raw
            .temp_dirs
            .unwrap_or_else(|| DEFAULT_TEMP_DIRS.iter().map(PathBuf::from).collect()),
        deny_cron: raw.deny_cron.unwrap_or(false),
        allow_weaker: raw.allow_weaker.unwrap_or(false),
        runner_pids_max: raw.runner_pids_max.unwrap_or(4096),
        runner_memory_max: match raw.runner_memory_max.as_deref() {
            None | Some("auto") => None,
            Some(text) => {
                Some(parse_size(text).map_err(|reason| invalid("runner_memory_max", reason))?)
            }
        },
        docker,
        images,
        docker_cli: raw.docker_cli.unwrap_or_else(|| "docker".into()),
        docker_host: raw.docker_host,
        image_cache_max: size("image_cache_max", &raw.image_cache_max, 20 << 30)?,
        build_cache_max: size("build_cache_max", &raw.build_cache_max, 5 << 30)?,
        min_free_space: size("min_free_space", &raw.min_free_space, 2 << 30)?,
        min_free_inodes: raw.min_free_inodes.unwrap_or(10_000),
        timeout,
    })
}

pub(super) fn validate_hardening(
    path: &Path,
    raw: RawHardening,
) -> Result<HardeningSettings, ConfigError> {
    let metadata_addresses = raw
        .metadata_addresses
        .unwrap_or_else(|| vec!["169.254.169.254".into(), "fd00:ec2::254".into()])
        .iter()
        .map(|a| {
            a.parse().map_err(|_| ConfigError::Invalid {
                path: path.to_owned(),
                key: "hardening.metadata_addresses".into(),
                reason: format!("{a:?} is not an IP address"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(HardeningSettings {
        enabled: raw.enabled.unwrap_or(false),
        metadata_addresses,
    })
}

/// "20GiB", "512MB", "0": bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("{text:?} is not a size like 20GiB or 512MB: {e}"))
}

/// A path relative to a directory the reset cleans, that cannot leave it.
fn relative_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    let inside = !text.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(path)
    } else {
        Err(format!(
            "{text:?}: a relative path that stays inside its directory"
        ))
    }
}

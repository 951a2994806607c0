//! `[reset]`: what is cleaned between runs on a reused instance. On by
//! default, as the fleet-actions pool needs; what it keeps depends on
//! whether hardening is on (`[hardening]`, validated first).

use super::keys::Keys;
use super::ConfigError;
use bytesize::ByteSize;
use serde::Deserialize;
use std::path::{Component, PathBuf};
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

impl RawReset {
    /// `hardened`: what is kept between runs (the tool cache, docker
    /// images) defaults to nothing, since a hostile job can poison it for
    /// the next.
    pub(super) fn into_settings(
        self,
        at: &Keys,
        hardened: bool,
    ) -> Result<ResetSettings, ConfigError> {
        let docker = docker_mode(at, self.docker.as_deref())?;
        for dir in self.temp_dirs.iter().flatten().chain(self.home.iter()) {
            at.absolute("temp_dirs", dir)?;
        }
        let images = image_mode(at, self.images.as_deref(), hardened)?;
        let timeout = at.positive("timeout", self.timeout.as_deref(), Duration::from_secs(120))?;
        let size = |key, value: Option<String>, default| size(at, key, value, default);
        let relative = |key, items| relative_paths(at, key, items);
        let keep_work = match hardened {
            true => Vec::new(),
            false => vec!["_tool".into()],
        };
        let home_paths = DEFAULT_HOME_PATHS.iter().map(|p| p.to_string()).collect();
        Ok(ResetSettings {
            enabled: self.enabled.unwrap_or(true),
            keep_work: relative("keep_work", self.keep_work.unwrap_or(keep_work))?,
            diag_keep: self.diag_keep.unwrap_or(20),
            diag_max_size: size("diag_max_size", self.diag_max_size, 100 << 20)?,
            home: self.home,
            home_paths: relative("home_paths", self.home_paths.unwrap_or(home_paths))?,
            home_keep: relative("home_keep", self.home_keep.unwrap_or_default())?,
            home_max: size("home_max", self.home_max, 256 << 20)?,
            temp_dirs: self
                .temp_dirs
                .unwrap_or_else(|| DEFAULT_TEMP_DIRS.iter().map(PathBuf::from).collect()),
            deny_cron: self.deny_cron.unwrap_or(false),
            allow_weaker: self.allow_weaker.unwrap_or(false),
            runner_pids_max: self.runner_pids_max.unwrap_or(4096),
            runner_memory_max: memory_max(at, self.runner_memory_max.as_deref())?,
            docker,
            images,
            docker_cli: self.docker_cli.unwrap_or_else(|| "docker".into()),
            docker_host: self.docker_host,
            image_cache_max: size("image_cache_max", self.image_cache_max, 20 << 30)?,
            build_cache_max: size("build_cache_max", self.build_cache_max, 5 << 30)?,
            min_free_space: size("min_free_space", self.min_free_space, 2 << 30)?,
            min_free_inodes: self.min_free_inodes.unwrap_or(10_000),
            timeout,
        })
    }
}

fn docker_mode(at: &Keys, text: Option<&str>) -> Result<DockerMode, ConfigError> {
    match text.unwrap_or("auto") {
        "auto" => Ok(DockerMode::Auto),
        "required" => Ok(DockerMode::Required),
        "off" => Ok(DockerMode::Off),
        other => Err(at.invalid("docker", format!("{other:?}: one of auto, required, off"))),
    }
}

fn image_mode(at: &Keys, text: Option<&str>, hardened: bool) -> Result<ImageMode, ConfigError> {
    match text {
        None if hardened => Ok(ImageMode::Baseline),
        None | Some("keep") => Ok(ImageMode::Keep),
        Some("baseline") => Ok(ImageMode::Baseline),
        Some(other) => Err(at.invalid("images", format!("{other:?}: one of keep, baseline"))),
    }
}

/// `runner_memory_max`: `None` (unset or `auto`) leaves the agent and the
/// system their share.
fn memory_max(at: &Keys, text: Option<&str>) -> Result<Option<u64>, ConfigError> {
    match text {
        None | Some("auto") => Ok(None),
        Some(text) => {
            Ok(Some(parse_size(text).map_err(|reason| {
                at.invalid("runner_memory_max", reason)
            })?))
        }
    }
}

fn size(at: &Keys, key: &str, value: Option<String>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => parse_size(&text).map_err(|reason| at.invalid(key, reason)),
    }
}

fn relative_paths(at: &Keys, key: &str, items: Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    items
        .into_iter()
        .map(|item| relative_path(&item).map_err(|reason| at.invalid(key, reason)))
        .collect()
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

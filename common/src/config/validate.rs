//! From the file as written to [`Settings`]: defaults filled in, every
//! value checked, errors naming the key.

use super::raw::{RawConfig, RawGithub};
use super::{
    parse_duration, ConfigError, GithubRepo, PreRunner, RunnerSettings, RunnerVersion, Settings,
    Timing, DEFAULT_GITHUB_SERVER, DEFAULT_INSTALL_DIR, DEFAULT_RELEASE_API_URL,
    DEFAULT_RELEASE_BASE_URL, DEFAULT_STATE_DIR,
};
use crate::{digest, http_url};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(super) fn validate(path: &Path, raw: RawConfig) -> Result<Settings, ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        path: path.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let duration = |key: &str, value: &Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => parse_duration(text).map_err(|reason| invalid(key, reason)),
    };
    let positive = |key: &str, value: &Option<String>, default: Duration| {
        let d = duration(key, value, default)?;
        if d.is_zero() {
            return Err(invalid(key, "must be greater than zero".into()));
        }
        Ok(d)
    };

    if !is_table_name(&raw.table) {
        return Err(invalid(
            "table",
            format!(
                "{:?} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ - .)",
                raw.table
            ),
        ));
    }
    let github = github_repo(&raw.github).map_err(|(key, reason)| invalid(key, reason))?;

    let r = &raw.runner;
    let version = if r.version == "latest" {
        RunnerVersion::Latest
    } else if parse_runner_version(&r.version).is_some() {
        RunnerVersion::Pinned(r.version.clone())
    } else {
        return Err(invalid(
            "runner.version",
            format!(
                "{:?} is neither a version like 2.321.0 nor \"latest\"",
                r.version
            ),
        ));
    };
    let sha256 = match &r.sha256 {
        None => None,
        // The latest release changes; one pinned digest cannot follow it.
        Some(_) if version == RunnerVersion::Latest => {
            return Err(invalid(
                "runner.sha256",
                "cannot pin a digest with runner.version = \"latest\": the release API's digest is checked".into(),
            ))
        }
        Some(s) => Some(digest::parse_sha256_hex(s).map_err(|e| invalid("runner.sha256", e))?),
    };
    let release_base_url = http_url::parse(
        r.release_base_url
            .as_deref()
            .unwrap_or(DEFAULT_RELEASE_BASE_URL),
    )
    .map_err(|e| invalid("runner.release_base_url", e))?;
    // `latest` cannot be installed without asking which release that is.
    let release_api_url = match (&r.release_api_url, &version) {
        (None, RunnerVersion::Pinned(_)) => None,
        (api, _) => Some(
            http_url::parse(api.as_deref().unwrap_or(DEFAULT_RELEASE_API_URL))
                .map_err(|e| invalid("runner.release_api_url", e))?,
        ),
    };
    if let Some(user) = &r.user {
        if user.is_empty() || user.contains(['/', ':', '\0', ' ']) {
            return Err(invalid(
                "runner.user",
                format!("{user:?} is not a user name"),
            ));
        }
    }
    for label in &r.extra_labels {
        if label.is_empty() || label.contains(',') {
            return Err(invalid(
                "runner.extra_labels",
                format!("{label:?}: labels are non-empty and contain no comma"),
            ));
        }
    }
    let install_dir = absolute(
        "runner.install_dir",
        r.install_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_INSTALL_DIR)),
    )
    .map_err(|(k, e)| invalid(k, e))?;
    let runner = RunnerSettings {
        version,
        sha256,
        install_dir,
        user: r.user.clone(),
        release_base_url,
        release_api_url,
        allow_run_as_root: r.allow_run_as_root,
        stop_timeout: positive(
            "runner.stop_timeout",
            &r.stop_timeout,
            Duration::from_secs(10),
        )?,
        labels_extra: r.extra_labels.clone(),
    };

    let a = &raw.agent;
    let state_dir = absolute(
        "agent.state_dir",
        a.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    )
    .map_err(|(k, e)| invalid(k, e))?;
    let pre_runner = match &a.pre_runner_script {
        None => None,
        Some(script) => Some(PreRunner {
            script: absolute("agent.pre_runner_script", script.clone())
                .map_err(|(k, e)| invalid(k, e))?,
            timeout: positive(
                "agent.pre_runner_timeout",
                &a.pre_runner_timeout,
                Duration::from_secs(900),
            )?,
        }),
    };

    let t = &raw.timing;
    let timing = Timing {
        idle_poll_interval: positive(
            "timing.idle_poll_interval",
            &t.idle_poll_interval,
            Duration::from_millis(250),
        )?,
        claimed_poll_interval: positive(
            "timing.claimed_poll_interval",
            &t.claimed_poll_interval,
            Duration::from_secs(1),
        )?,
        job_poll_interval: positive(
            "timing.job_poll_interval",
            &t.job_poll_interval,
            Duration::from_secs(10),
        )?,
        heartbeat_interval: positive(
            "timing.heartbeat_interval",
            &t.heartbeat_interval,
            Duration::from_secs(5),
        )?,
        expiry_check_interval: positive(
            "timing.expiry_check_interval",
            &t.expiry_check_interval,
            Duration::from_secs(30),
        )?,
        self_termination_grace: duration(
            "timing.self_termination_grace",
            &t.self_termination_grace,
            Duration::from_secs(60),
        )?,
        spot_poll_interval: positive(
            "timing.spot_poll_interval",
            &t.spot_poll_interval,
            Duration::from_secs(5),
        )?,
        spot_job_margin: duration(
            "timing.spot_job_margin",
            &t.spot_job_margin,
            Duration::from_secs(20),
        )?,
    };
    if timing.spot_job_margin > Duration::from_secs(110) {
        return Err(invalid(
            "timing.spot_job_margin",
            "EC2 gives two minutes' notice; a margin over 110s stops every job at once".into(),
        ));
    }
    if timing.heartbeat_interval > Duration::from_secs(10) {
        return Err(invalid(
            "timing.heartbeat_interval",
            "the control plane treats a heartbeat older than 15 s as dead; keep it at most 10s"
                .into(),
        ));
    }

    let hardening = super::reset::validate_hardening(path, raw.hardening)?;
    let reset = super::reset::validate_reset(path, raw.reset, hardening.enabled)?;
    if hardening.enabled {
        // Jobs as root (or as the agent) can remove any firewall rule.
        if matches!(runner.user.as_deref(), None | Some("root")) {
            return Err(invalid(
                "hardening.enabled",
                "needs runner.user: a dedicated user other than root for the jobs".into(),
            ));
        }
        // A hardened instance that is never cleaned hands each job what the
        // last one left.
        if !reset.enabled && !reset.allow_weaker {
            return Err(invalid(
                "hardening.enabled",
                "needs the reset (reset.enabled); set reset.allow_weaker = true to run hardened jobs on an instance that is not cleaned between them".into(),
            ));
        }
        if hardening.metadata_addresses.is_empty() {
            return Err(invalid(
                "hardening.metadata_addresses",
                "empty: hardened mode would block nothing".into(),
            ));
        }
    }
    let metrics = super::metrics::validate_metrics(path, raw.metrics)?;
    Ok(Settings {
        source: path.to_owned(),
        table: raw.table,
        github,
        runner,
        state_dir,
        pre_runner,
        timing,
        reset,
        hardening,
        metrics,
    })
}

/// An owner or repository name as GitHub allows it; also keeps the name
/// safe in a path and a URL.
fn is_github_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn github_repo(raw: &RawGithub) -> Result<GithubRepo, (&'static str, String)> {
    match (&raw.url, &raw.owner, &raw.repo) {
        (Some(text), None, None) => {
            let url = http_url::parse(text).map_err(|e| ("github.url", e))?;
            let shape = || {
                (
                    "github.url",
                    format!("{text:?} is not https://<host>/<owner>/<repo>"),
                )
            };
            // Credentials, a query or a fragment would be dropped from the
            // runner's URL without a word: refuse them.
            if !url.username().is_empty()
                || url.password().is_some()
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(shape());
            }
            let mut segments: Vec<&str> = url.path_segments().into_iter().flatten().collect();
            // `.../widgets/` is the same repository.
            while segments.last() == Some(&"") {
                segments.pop();
            }
            let [owner, repo] = segments[..] else {
                return Err(shape());
            };
            if !is_github_name(owner) || !is_github_name(repo) {
                return Err(shape());
            }
            Ok(GithubRepo {
                owner: owner.to_owned(),
                repo: repo.trim_end_matches(".git").to_owned(),
                server: url.origin().ascii_serialization(),
            })
        }
        (None, Some(owner), Some(repo)) => {
            if !is_github_name(owner) {
                return Err(("github.owner", format!("{owner:?} is not a GitHub owner")));
            }
            if !is_github_name(repo) {
                return Err(("github.repo", format!("{repo:?} is not a repository name")));
            }
            Ok(GithubRepo {
                owner: owner.clone(),
                repo: repo.clone(),
                server: DEFAULT_GITHUB_SERVER.into(),
            })
        }
        _ => Err((
            "github",
            "give either `url` or both `owner` and `repo`".into(),
        )),
    }
}

fn absolute(key: &'static str, path: PathBuf) -> Result<PathBuf, (&'static str, String)> {
    if path.is_absolute() {
        Ok(path)
    } else {
        Err((key, format!("{} is not an absolute path", path.display())))
    }
}

/// A DynamoDB table name: 3-255 of A-Z a-z 0-9 _ - .
pub fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
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

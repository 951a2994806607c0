//! The agent's settings: one TOML file, overridden by `RUNNER_AGENT_*`
//! environment variables, validated into typed [`Settings`].
//!
//! Environment overrides name the TOML key with the section joined by a
//! double underscore: `RUNNER_AGENT_TABLE`, `RUNNER_AGENT_RUNNER__VERSION`,
//! `RUNNER_AGENT_TIMING__IDLE_POLL_INTERVAL`. `true`/`false` become booleans,
//! everything else a string; they are applied before validation, so a bad
//! override is reported with its key like a bad file entry.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/runner-agent/config.toml";
/// The unit's `StateDirectory=`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/runner-agent";
pub const ENV_PREFIX: &str = "RUNNER_AGENT_";
pub const DEFAULT_RELEASE_BASE_URL: &str = "https://github.com/actions/runner/releases/download";

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

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub version: String,
    pub sha256: Option<String>,
    pub install_dir: PathBuf,
    /// `None`: the runner runs as the agent's own user.
    pub user: Option<String>,
    pub release_base_url: String,
    /// Whether to ask the release API for the tarball's digest when neither
    /// the config nor the built-in table pins one.
    pub release_api_url: Option<String>,
    pub allow_run_as_root: bool,
    pub stop_timeout: Duration,
    pub labels_extra: Vec<String>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    table: String,
    github: RawGithub,
    runner: RawRunner,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    timing: RawTiming,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGithub {
    url: Option<String>,
    owner: Option<String>,
    repo: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunner {
    version: String,
    sha256: Option<String>,
    install_dir: Option<PathBuf>,
    user: Option<String>,
    release_base_url: Option<String>,
    release_api_url: Option<String>,
    #[serde(default)]
    allow_run_as_root: bool,
    stop_timeout: Option<String>,
    #[serde(default)]
    extra_labels: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    state_dir: Option<PathBuf>,
    pre_runner_script: Option<PathBuf>,
    pre_runner_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    idle_poll_interval: Option<String>,
    claimed_poll_interval: Option<String>,
    job_poll_interval: Option<String>,
    heartbeat_interval: Option<String>,
    expiry_check_interval: Option<String>,
    self_termination_grace: Option<String>,
    spot_poll_interval: Option<String>,
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
        apply_env_overrides(&mut doc, env).map_err(parse_err)?;
        let raw = RawConfig::deserialize(toml::Value::Table(doc))
            .map_err(|e| parse_err(e.to_string().trim_end().to_owned()))?;
        validate(path, raw)
    }
}

fn apply_env_overrides(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), String> {
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // These two select the file and the log format; they are not keys.
        if key == "CONFIG" || key == "LOG_FORMAT" {
            continue;
        }
        let key = key.to_ascii_lowercase();
        let value = match value.as_str() {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            _ => toml::Value::String(value),
        };
        match key.split_once("__") {
            None => {
                doc.insert(key, value);
            }
            Some((section, field)) => {
                let entry = doc
                    .entry(section.to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(table) = entry else {
                    return Err(format!("{name}: `{section}` is not a table"));
                };
                table.insert(field.to_owned(), value);
            }
        }
    }
    Ok(())
}

fn validate(path: &Path, raw: RawConfig) -> Result<Settings, ConfigError> {
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
    if !is_runner_version(&r.version) {
        return Err(invalid(
            "runner.version",
            format!("{:?} is not a version like 2.321.0", r.version),
        ));
    }
    let sha256 = match &r.sha256 {
        None => None,
        Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(s.to_ascii_lowercase())
        }
        Some(s) => {
            return Err(invalid(
                "runner.sha256",
                format!("{s:?} is not 64 hexadecimal characters"),
            ))
        }
    };
    let release_base_url = r
        .release_base_url
        .clone()
        .unwrap_or_else(|| DEFAULT_RELEASE_BASE_URL.to_owned());
    check_http_url(&release_base_url).map_err(|e| invalid("runner.release_base_url", e))?;
    if let Some(api) = &r.release_api_url {
        check_http_url(api).map_err(|e| invalid("runner.release_api_url", e))?;
    }
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
            .unwrap_or_else(|| PathBuf::from("/opt/actions-runner")),
    )
    .map_err(|(k, e)| invalid(k, e))?;
    let runner = RunnerSettings {
        version: r.version.clone(),
        sha256,
        install_dir,
        user: r.user.clone(),
        release_base_url: release_base_url.trim_end_matches('/').to_owned(),
        release_api_url: r.release_api_url.clone(),
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
    };
    if timing.heartbeat_interval > Duration::from_secs(10) {
        return Err(invalid(
            "timing.heartbeat_interval",
            "the control plane treats a heartbeat older than 15 s as dead; keep it at most 10s"
                .into(),
        ));
    }

    Ok(Settings {
        source: path.to_owned(),
        table: raw.table,
        github,
        runner,
        state_dir,
        pre_runner,
        timing,
    })
}

fn github_repo(raw: &RawGithub) -> Result<GithubRepo, (&'static str, String)> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    match (&raw.url, &raw.owner, &raw.repo) {
        (Some(url), None, None) => {
            let (scheme, rest) = url
                .split_once("://")
                .ok_or(("github.url", format!("{url:?} is not a URL")))?;
            if scheme != "https" && scheme != "http" {
                return Err(("github.url", format!("{url:?}: scheme must be https")));
            }
            let mut parts = rest.trim_end_matches('/').split('/');
            let host = parts.next().unwrap_or_default();
            let owner = parts.next().unwrap_or_default();
            let repo = parts.next().unwrap_or_default();
            if host.is_empty() || !name_ok(owner) || !name_ok(repo) || parts.next().is_some() {
                return Err((
                    "github.url",
                    format!("{url:?} is not https://<host>/<owner>/<repo>"),
                ));
            }
            Ok(GithubRepo {
                owner: owner.to_owned(),
                repo: repo.trim_end_matches(".git").to_owned(),
                server: format!("{scheme}://{host}"),
            })
        }
        (None, Some(owner), Some(repo)) => {
            if !name_ok(owner) {
                return Err(("github.owner", format!("{owner:?} is not a GitHub owner")));
            }
            if !name_ok(repo) {
                return Err(("github.repo", format!("{repo:?} is not a repository name")));
            }
            Ok(GithubRepo {
                owner: owner.clone(),
                repo: repo.clone(),
                server: "https://github.com".into(),
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

fn check_http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} is not an http(s) URL"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// A DynamoDB table name: 3-255 of A-Z a-z 0-9 _ - .
pub fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn is_runner_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 6 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Longer than any sensible interval or timeout; keeps instant arithmetic
/// far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses `250ms`, `5s`, `10m`, `1h` (one number, one unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m or h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s, 10m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m or h)")),
    };
    if d > MAX_DURATION {
        return Err(format!("{text:?} is longer than a week"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
table = "acme-widgets-pool"
[github]
url = "https://github.com/acme/widgets"
[runner]
version = "2.321.0"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_toml(
            Path::new("/etc/runner-agent/config.toml"),
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let s = load(MINIMAL, &[]).unwrap();
        assert_eq!(s.github.url(), "https://github.com/acme/widgets");
        assert_eq!(s.runner.install_dir, PathBuf::from("/opt/actions-runner"));
        assert_eq!(s.timing.idle_poll_interval, Duration::from_millis(250));
        assert_eq!(s.timing.heartbeat_interval, Duration::from_secs(5));
        assert!(s.pre_runner.is_none());
        assert_eq!(s.runner.release_base_url, DEFAULT_RELEASE_BASE_URL);
    }

    #[test]
    fn owner_and_repo_form() {
        let text = MINIMAL.replace(
            "url = \"https://github.com/acme/widgets\"",
            "owner = \"acme\"\nrepo = \"widgets\"",
        );
        let s = load(&text, &[]).unwrap();
        assert_eq!(s.github.owner, "acme");
        assert_eq!(s.github.repo, "widgets");
    }

    #[test]
    fn env_overrides_apply_and_are_validated() {
        let s = load(
            MINIMAL,
            &[
                ("RUNNER_AGENT_RUNNER__VERSION", "2.330.1"),
                ("RUNNER_AGENT_TIMING__IDLE_POLL_INTERVAL", "100ms"),
                ("RUNNER_AGENT_RUNNER__ALLOW_RUN_AS_ROOT", "true"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(s.runner.version, "2.330.1");
        assert_eq!(s.timing.idle_poll_interval, Duration::from_millis(100));
        assert!(s.runner.allow_run_as_root);

        let err = load(
            MINIMAL,
            &[("RUNNER_AGENT_TIMING__HEARTBEAT_INTERVAL", "5 parsecs")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("timing.heartbeat_interval"), "{err}");
    }

    #[test]
    fn errors_name_file_and_key() {
        let cases = [
            (MINIMAL.replace("2.321.0", "latest"), "runner.version"),
            (
                MINIMAL.replace("[runner]", "[runner]\nsha256 = \"abc\""),
                "runner.sha256",
            ),
            (MINIMAL.replace("acme-widgets-pool", "a b"), "table"),
            (
                MINIMAL.replace("https://github.com/acme/widgets", "github.com/acme"),
                "github.url",
            ),
            (
                format!("{MINIMAL}[timing]\nidle_poll_interval = \"0ms\"\n"),
                "timing.idle_poll_interval",
            ),
            (
                format!("{MINIMAL}[agent]\npre_runner_script = \"relative.sh\"\n"),
                "agent.pre_runner_script",
            ),
        ];
        for (text, key) in cases {
            let err = load(&text, &[]).unwrap_err().to_string();
            assert!(err.contains("/etc/runner-agent/config.toml"), "{err}");
            assert!(err.contains(key), "expected {key} in {err}");
        }
    }

    #[test]
    fn unknown_and_missing_keys_are_errors() {
        let err = load(&format!("{MINIMAL}colour = \"blue\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
        let err = load("table = \"abc\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("github"), "{err}");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../packaging/config.example.toml");
        let s = load(text, &[]).unwrap();
        assert_eq!(s.table, "acme-widgets-pool");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("99999999999h").is_err());
    }
}

//! The generator's input: a TOML file (and command-line overrides),
//! validated into a [`Plan`] that the renderers turn into text.
//!
//! The `[agent_config]` table is the agent's own `config.toml`, checked by
//! the agent's parser (`runner_agent::config`), so what we write is what the
//! agent accepts.

use crate::os::OsChoice;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the agent's binary comes from when no download is configured:
/// the packages' and the Packer recipe's location.
pub const IMAGE_AGENT_PATH: &str = "/usr/bin/runner-agent";
/// Where a downloaded agent is installed.
pub const DOWNLOAD_AGENT_PATH: &str = "/usr/local/bin/runner-agent";
/// Where the operator's pre-runner script is written on the instance.
pub const PRE_RUNNER_PATH: &str = "/etc/runner-agent/pre-runner.sh";

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A `#!/bin/bash` user-data script.
    Shell,
    /// `#cloud-config`: write_files, packages, runcmd.
    CloudConfig,
    /// A MIME multipart user data holding the shell script (and any
    /// `mime_parts` of the input).
    Mime,
    /// A `pre-runner-script` for fleet-actions/ec2-runner-pool-manager.
    PoolManager,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Shell => "shell",
            Format::CloudConfig => "cloud-config",
            Format::Mime => "mime",
            Format::PoolManager => "pool-manager",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    format: Option<Format>,
    os: Option<String>,
    #[serde(default = "yes")]
    packages: bool,
    #[serde(default)]
    extra_packages: Vec<String>,
    pre_runner_script: Option<PathBuf>,
    #[serde(default)]
    runner_user_sudo: bool,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    mime_parts: Vec<RawMimePart>,
    agent_config: Option<toml::Table>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    path: Option<String>,
    #[serde(default)]
    download: BTreeMap<String, RawDownload>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDownload {
    url: String,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMimePart {
    path: PathBuf,
    content_type: String,
}

/// Command-line values; each replaces the input file's.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub format: Option<Format>,
    pub os: Option<String>,
    pub table: Option<String>,
    pub github_url: Option<String>,
    /// github.com owner and repository (instead of a URL).
    pub github_owner: Option<String>,
    pub github_repo: Option<String>,
    pub runner_version: Option<String>,
    pub runner_sha256: Option<String>,
    pub runner_user: Option<String>,
    pub agent_path: Option<String>,
}

/// A validated input, ready to render.
#[derive(Debug, Clone)]
pub struct Plan {
    pub format: Format,
    pub os: OsChoice,
    pub packages: bool,
    pub extra_packages: Vec<String>,
    /// The runner's user, created at boot when missing.
    pub runner_user: Option<String>,
    pub runner_user_sudo: bool,
    pub agent_path: String,
    /// By arch (`x86_64`, `aarch64`); empty: the agent is on the image.
    pub downloads: BTreeMap<String, Download>,
    /// The operator's script, run by the agent once per instance.
    pub pre_runner: Option<String>,
    /// `/etc/runner-agent/config.toml`, as written.
    pub config_toml: String,
    /// Its `table`.
    pub table: String,
    pub mime_parts: Vec<MimePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub url: String,
    pub sha256: String,
}

impl Download {
    /// curl's `--proto`: redirects must not leave the URL's own scheme.
    pub fn proto(&self) -> &'static str {
        if self.url.starts_with("https://") {
            "https"
        } else {
            "http"
        }
    }

    /// A release tarball (by its path: presigned URLs carry a query), else
    /// the bare binary.
    pub fn is_tarball(&self) -> bool {
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        path.ends_with(".tar.gz") || path.ends_with(".tgz")
    }
}

#[derive(Debug, Clone)]
pub struct MimePart {
    pub filename: String,
    pub content_type: String,
    pub body: String,
}

pub const ARCHES: &[&str] = &["x86_64", "aarch64"];

/// The MIME types cloud-init's user-data handlers take (others it skips).
pub const CLOUD_INIT_PART_TYPES: &[&str] = &[
    "text/cloud-boothook",
    "text/cloud-config",
    "text/cloud-config-archive",
    "text/jinja2",
    "text/part-handler",
    "text/x-include-once-url",
    "text/x-include-url",
    "text/x-shellscript",
    "text/x-shellscript-per-boot",
    "text/x-shellscript-per-instance",
    "text/x-shellscript-per-once",
];

impl Plan {
    /// Reads and validates `path` (or only `overrides` when `path` is
    /// `None`). Relative paths inside the file are relative to it.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Plan, InputError> {
        let (name, text, base) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| InputError::Read {
                    path: p.to_owned(),
                    source,
                })?;
                let base = p.parent().map(Path::to_owned).unwrap_or_default();
                (p.to_owned(), text, base)
            }
            None => (
                PathBuf::from("<command line>"),
                String::new(),
                PathBuf::new(),
            ),
        };
        Self::parse(&name, &text, &base, overrides)
    }

    pub fn parse(
        name: &Path,
        text: &str,
        base: &Path,
        overrides: &Overrides,
    ) -> Result<Plan, InputError> {
        let raw: RawInput = toml::from_str(text).map_err(|e| InputError::Parse {
            path: name.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |field: &str, reason: String| InputError::Invalid {
            path: name.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let read = |field: &str, rel: &Path| {
            let full = base.join(rel);
            let text = std::fs::read_to_string(&full)
                .map_err(|e| invalid(field, format!("reading {}: {e}", full.display())))?;
            if text.contains('\0') {
                return Err(invalid(
                    field,
                    format!("{} contains a NUL byte", full.display()),
                ));
            }
            Ok((full, text))
        };

        let format = overrides.format.or(raw.format).unwrap_or(Format::Shell);
        let os_text = overrides
            .os
            .clone()
            .or(raw.os)
            .unwrap_or_else(|| "auto".into());
        let os = OsChoice::parse(&os_text).map_err(|reason| invalid("os", reason))?;

        for pkg in &raw.extra_packages {
            if pkg.is_empty()
                || pkg.starts_with('-')
                || !pkg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-._:".contains(&b))
            {
                return Err(invalid(
                    "extra_packages",
                    format!("{pkg:?} is not a package name"),
                ));
            }
        }

        let downloads = downloads(&raw.agent).map_err(|(f, r)| invalid(&f, r))?;
        let agent_path = overrides
            .agent_path
            .clone()
            .or(raw.agent.path)
            .unwrap_or_else(|| {
                if downloads.is_empty() {
                    IMAGE_AGENT_PATH.into()
                } else {
                    DOWNLOAD_AGENT_PATH.into()
                }
            });
        if !agent_path.starts_with('/') || !is_plain_path(&agent_path) {
            return Err(invalid(
                "agent.path",
                format!("{agent_path:?} is not an absolute path of plain characters"),
            ));
        }

        let pre_runner = match &raw.pre_runner_script {
            None => None,
            Some(rel) => {
                let (full, text) = read("pre_runner_script", rel)?;
                if text.contains('\r') {
                    return Err(invalid(
                        "pre_runner_script",
                        format!(
                            "{} has CR (Windows) line endings, which bash does not run",
                            full.display()
                        ),
                    ));
                }
                Some(text)
            }
        };

        // The agent's config: the file's table, then the flags, then the
        // keys the generator owns.
        let mut config = raw.agent_config.unwrap_or_default();
        set(&mut config, None, "table", &overrides.table);
        // A flag names the repository one way; the file's other way goes.
        if overrides.github_url.is_some() {
            config.insert("github".into(), toml::Value::Table(toml::Table::new()));
            set(&mut config, Some("github"), "url", &overrides.github_url);
        } else if overrides.github_owner.is_some() || overrides.github_repo.is_some() {
            if let Some(toml::Value::Table(github)) = config.get_mut("github") {
                github.remove("url");
            }
            set(
                &mut config,
                Some("github"),
                "owner",
                &overrides.github_owner,
            );
            set(&mut config, Some("github"), "repo", &overrides.github_repo);
        }
        set(
            &mut config,
            Some("runner"),
            "version",
            &overrides.runner_version,
        );
        set(
            &mut config,
            Some("runner"),
            "sha256",
            &overrides.runner_sha256,
        );
        set(&mut config, Some("runner"), "user", &overrides.runner_user);
        if pre_runner.is_some() {
            if section_has(&config, "agent", "pre_runner_script") {
                return Err(invalid(
                    "agent_config.agent.pre_runner_script",
                    "set by the generator from `pre_runner_script`; give only that".into(),
                ));
            }
            set(
                &mut config,
                Some("agent"),
                "pre_runner_script",
                &Some(PRE_RUNNER_PATH.into()),
            );
        }
        let config_toml = format!(
            "# Written by runner-userdata; keys in docs/config.md.\n{}",
            toml::to_string(&config).map_err(|e| invalid("agent_config", e.to_string()))?
        );
        let settings = runner_agent::config::Settings::from_toml(
            Path::new("agent_config"),
            &config_toml,
            std::iter::empty(),
        )
        .map_err(|e| invalid("agent_config", strip_config_prefix(&e.to_string())))?;
        if settings.state_dir != Path::new(runner_agent::config::DEFAULT_STATE_DIR) {
            // The unit's StateDirectory= creates and owns only this one.
            return Err(invalid(
                "agent_config.agent.state_dir",
                "must be /var/lib/runner-agent, the unit's StateDirectory".into(),
            ));
        }
        let runner_user = settings.runner.user.clone();
        if raw.runner_user_sudo && runner_user.is_none() {
            return Err(invalid(
                "runner_user_sudo",
                "needs agent_config.runner.user".into(),
            ));
        }
        if let Some(user) = &runner_user {
            if !is_user_name(user) {
                return Err(invalid(
                    "agent_config.runner.user",
                    format!("{user:?}: use lower-case letters, digits, _ and -, at most 32"),
                ));
            }
        }

        let mut mime_parts = Vec::new();
        for (i, part) in raw.mime_parts.iter().enumerate() {
            let field = format!("mime_parts[{i}]");
            if format != Format::Mime {
                return Err(invalid(&field, "only used with format \"mime\"".into()));
            }
            let ct = &part.content_type;
            if !CLOUD_INIT_PART_TYPES.contains(&ct.as_str()) {
                return Err(invalid(
                    &format!("{field}.content_type"),
                    format!(
                        "{ct:?} is not a part type cloud-init handles ({})",
                        CLOUD_INIT_PART_TYPES.join(", ")
                    ),
                ));
            }
            let (full, body) = read(&format!("{field}.path"), &part.path)?;
            let filename = full
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // cloud-init stores parts by file name (scripts under
            // scripts/<name>): a repeated name overwrites.
            if filename == crate::mime::SCRIPT_PART_NAME
                || mime_parts.iter().any(|p: &MimePart| p.filename == filename)
            {
                return Err(invalid(
                    &format!("{field}.path"),
                    format!("file name {filename:?} is already taken by another part"),
                ));
            }
            mime_parts.push(MimePart {
                filename,
                content_type: ct.clone(),
                body,
            });
        }

        Ok(Plan {
            format,
            os,
            packages: raw.packages,
            extra_packages: raw.extra_packages,
            runner_user,
            runner_user_sudo: raw.runner_user_sudo,
            agent_path,
            downloads,
            pre_runner,
            config_toml,
            table: settings.table,
            mime_parts,
        })
    }
}

fn downloads(raw: &RawAgent) -> Result<BTreeMap<String, Download>, (String, String)> {
    let mut out = BTreeMap::new();
    for (arch, d) in &raw.download {
        let field = |k: &str| format!("agent.download.{arch}.{k}");
        if !ARCHES.contains(&arch.as_str()) {
            return Err((
                format!("agent.download.{arch}"),
                format!("unknown arch; use {}", ARCHES.join(" or ")),
            ));
        }
        check_download_url(&d.url).map_err(|r| (field("url"), r))?;
        if d.sha256.len() != 64 || !d.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                field("sha256"),
                format!("{:?} is not 64 hexadecimal characters", d.sha256),
            ));
        }
        out.insert(
            arch.clone(),
            Download {
                url: d.url.clone(),
                sha256: d.sha256.to_ascii_lowercase(),
            },
        );
    }
    Ok(out)
}

/// https anywhere; plain http only to a loopback address (a local mirror,
/// the tests' server), since nothing else would protect the download in
/// transit before the checksum is checked.
fn check_download_url(url: &str) -> Result<(), String> {
    if !url.bytes().all(|b| b.is_ascii_graphic()) || url.contains(['\'', '"', '\\', '`', '$']) {
        return Err(format!("{url:?} has characters a URL does not"));
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} is not a URL"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" => {
            let name = match host.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => host.split(':').next().unwrap_or_default(),
            };
            let loopback = name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{url:?}: use https (plain http only to a loopback address)"
                ))
            }
        }
        _ => Err(format!("{url:?}: use https")),
    }
}

fn set(config: &mut toml::Table, section: Option<&str>, key: &str, value: &Option<String>) {
    let Some(value) = value else { return };
    let table = match section {
        None => config,
        Some(s) => {
            let entry = config
                .entry(s.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => t,
                // Not a table: the agent's parser reports it below.
                _ => return,
            }
        }
    };
    table.insert(key.to_owned(), toml::Value::String(value.clone()));
}

fn section_has(config: &toml::Table, section: &str, key: &str) -> bool {
    config
        .get(section)
        .and_then(toml::Value::as_table)
        .is_some_and(|t| t.contains_key(key))
}

/// "config agent_config: key `x`: why" reads better as "`agent_config.x`: why".
fn strip_config_prefix(message: &str) -> String {
    let message = message
        .strip_prefix("config agent_config: ")
        .or_else(|| message.strip_prefix("parsing config agent_config: "))
        .unwrap_or(message);
    match message.strip_prefix("key `") {
        Some(rest) => format!("key `agent_config.{rest}"),
        None => message.to_owned(),
    }
}

fn is_plain_path(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
        && !path.split('/').any(|c| c == "..")
}

/// What useradd accepts on every supported family, kept strict because the
/// name goes into a sudoers file and shell commands.
fn is_user_name(name: &str) -> bool {
    let first_ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    first_ok
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[agent_config]
table = "acme-widgets-pool"
[agent_config.github]
url = "https://github.com/acme/widgets"
[agent_config.runner]
version = "2.331.0"
"#;

    fn parse(text: &str) -> Result<Plan, InputError> {
        Plan::parse(
            Path::new("in.toml"),
            text,
            Path::new("."),
            &Overrides::default(),
        )
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_input_uses_the_image_agent_and_detects_the_os() {
        let plan = parse(MINIMAL).unwrap();
        assert_eq!(plan.format, Format::Shell);
        assert_eq!(plan.os, OsChoice::Auto);
        assert_eq!(plan.agent_path, IMAGE_AGENT_PATH);
        assert!(plan.downloads.is_empty());
        assert!(plan.config_toml.contains("table = \"acme-widgets-pool\""));
    }

    #[test]
    fn flags_fill_in_the_agent_config() {
        let overrides = Overrides {
            table: Some("t-pool".into()),
            github_url: Some("https://github.com/o/r".into()),
            runner_version: Some("2.330.0".into()),
            runner_user: Some("runner".into()),
            ..Default::default()
        };
        let plan = Plan::parse(Path::new("x"), "", Path::new("."), &overrides).unwrap();
        assert_eq!(plan.runner_user.as_deref(), Some("runner"));
        let settings = runner_agent::config::Settings::from_toml(
            Path::new("x"),
            &plan.config_toml,
            std::iter::empty(),
        )
        .unwrap();
        assert_eq!(settings.table, "t-pool");
        assert_eq!(settings.runner.version, "2.330.0");
        // Owner and repo replace the file's URL.
        let by_name = Overrides {
            github_owner: Some("acme".into()),
            github_repo: Some("gadgets".into()),
            ..Default::default()
        };
        let plan = Plan::parse(Path::new("x"), MINIMAL, Path::new("."), &by_name).unwrap();
        assert!(!plan.config_toml.contains("url ="), "{}", plan.config_toml);
        assert!(plan.config_toml.contains("repo = \"gadgets\""));
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases: &[(&str, &str)] = &[
            ("colour = 1\n", "unknown field `colour`"),
            ("os = \"gentoo\"\n", "`os`"),
            ("[agent_config]\ntable = \"t-pool\"\n", "agent_config"),
            (
                "[agent.download.x86_64]\nurl = \"http://example.com/a.tar.gz\"\nsha256 = \"00\"\n",
                "`agent.download.x86_64.url`: \"http://example.com/a.tar.gz\": use https",
            ),
            (
                "[agent.download.x86_64]\nurl = \"https://example.com/a.tar.gz\"\nsha256 = \"abc\"\n",
                "`agent.download.x86_64.sha256`",
            ),
            (
                "[agent.download.riscv64]\nurl = \"https://example.com/a\"\nsha256 = \"abc\"\n",
                "`agent.download.riscv64`",
            ),
            ("extra_packages = [\"git; rm -rf /\"]\n", "`extra_packages`"),
            ("[agent]\npath = \"bin/runner-agent\"\n", "`agent.path`"),
            ("runner_user_sudo = true\n", "`runner_user_sudo`"),
            ("pre_runner_script = \"does-not-exist.sh\"\n", "`pre_runner_script`: reading"),
        ];
        for (extra, expected) in cases {
            let text = if extra.contains("agent_config") {
                extra.to_string()
            } else {
                format!("{extra}{MINIMAL}")
            };
            let message = error(&text);
            assert!(
                message.contains(expected),
                "{text}\n=> {message}\n(wanted {expected})"
            );
        }
    }

    #[test]
    fn agent_config_errors_come_from_the_agents_parser() {
        let text = MINIMAL.replace("2.331.0", "latest");
        assert!(
            error(&text).contains("agent_config.runner.version"),
            "{}",
            error(&text)
        );
        let text = format!("{MINIMAL}sha256 = \"xyz\"\n");
        assert!(error(&text).contains("agent_config.runner.sha256"));
        let text = format!("{MINIMAL}colour = \"red\"\n");
        assert!(error(&text).contains("unknown field `colour`"));
    }

    #[test]
    fn plain_http_downloads_only_from_loopback() {
        for ok in [
            "https://example.com/x.tar.gz",
            "http://127.0.0.1:8080/x.tar.gz",
            "http://[::1]:80/x",
            "http://localhost/x",
        ] {
            check_download_url(ok).unwrap();
        }
        for bad in [
            "http://10.0.0.1/x",
            "http://127.0.0.1.example.com/x",
            "ftp://127.0.0.1/x",
            "https://x/$(reboot)",
            "https:///x",
        ] {
            assert!(check_download_url(bad).is_err(), "{bad}");
        }
    }
}

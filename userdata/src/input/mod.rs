//! The generator's input: a TOML file (and command-line overrides),
//! validated into a [`Plan`] that the renderers turn into text.
//!
//! The `[agent_config]` table is the agent's own `config.toml`, checked by
//! the agent's parser (`runner_agent_common::config`), so what we write is
//! what the agent accepts.

mod agent_config;
#[cfg(test)]
mod tests;

use crate::download::{self, Download, RawDownload};
use crate::mime::{MimePart, CLOUD_INIT_PART_TYPES, SCRIPT_PART_NAME};
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
    /// Hardened mode: `[hardening] enabled = true` in the agent config, and
    /// the runner user kept out of the docker group.
    #[serde(default)]
    hardened: bool,
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
    /// `--hardened`: turns hardened mode on (never off).
    pub hardened: bool,
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
    /// The agent config has hardened mode on: the runner user must not be
    /// in the docker group (or have sudo).
    pub hardened: bool,
    pub agent_path: String,
    /// By arch (`x86_64`, `aarch64`); empty: the agent is on the image.
    pub downloads: BTreeMap<String, Download>,
    /// The operator's script, run by the agent once per instance.
    pub pre_runner: Option<String>,
    /// `/etc/runner-agent/config.toml`, as written.
    pub config_toml: String,
    /// Its `table`.
    pub table: String,
    /// Its `job_credentials.role_arn`: the role the agent assumes for each
    /// run, which the instance role's policy must allow.
    pub job_role_arn: Option<String>,
    pub mime_parts: Vec<MimePart>,
}

impl Plan {
    /// What is installed on `family`: the runner's packages, rootless
    /// Docker's in hardened mode, then the operator's extras.
    pub fn package_list(&self, family: crate::os::OsFamily) -> Vec<&str> {
        let rootless = match self.hardened {
            true => family.rootless_packages(),
            false => &[],
        };
        let mut list: Vec<&str> = family.packages().to_vec();
        list.extend(rootless);
        list.extend(self.extra_packages.iter().map(String::as_str));
        list
    }

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

        let downloads =
            download::downloads(&raw.agent.download).map_err(|(f, r)| invalid(&f, r))?;
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

        let hardened = raw.hardened || overrides.hardened;
        let job_role_arn = raw
            .agent_config
            .as_ref()
            .and_then(agent_config::job_role_arn);
        let (config_toml, settings) =
            agent_config::build(raw.agent_config, overrides, pre_runner.is_some(), hardened)
                .map_err(|(field, reason)| invalid(&field, reason))?;
        let runner_user = settings.runner.user.clone();
        if raw.runner_user_sudo && runner_user.is_none() {
            return Err(invalid(
                "runner_user_sudo",
                "needs agent_config.runner.user".into(),
            ));
        }
        if raw.runner_user_sudo && settings.hardening.enabled {
            return Err(invalid(
                "runner_user_sudo",
                "not with hardened mode: a runner user with sudo can undo it".into(),
            ));
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
            if filename == SCRIPT_PART_NAME
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
            hardened: settings.hardening.enabled,
            agent_path,
            downloads,
            pre_runner,
            config_toml,
            table: settings.table,
            job_role_arn,
            mime_parts,
        })
    }
}

fn is_plain_path(path: &str) -> bool {
    path.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
        && !path.split('/').any(|c| c == "..")
}

//! `[agent_config]`: the agent's own `config.toml`, from the input file,
//! the command-line flags and the keys the generator owns, checked by the
//! agent's parser.

use super::{Overrides, PRE_RUNNER_PATH};
use runner_agent_common::config::{ConfigError, Settings, DEFAULT_STATE_DIR};
use std::path::Path;

/// The config as written to the instance, and as the agent will read it.
/// Errors are (field, reason).
pub(super) fn build(
    table: Option<toml::Table>,
    overrides: &Overrides,
    pre_runner: bool,
    hardened: bool,
) -> Result<(String, Settings), (String, String)> {
    let invalid = |field: &str, reason: String| (field.to_owned(), reason);
    // The file's table, then the flags, then the keys the generator owns.
    let mut config = table.unwrap_or_default();
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
    if pre_runner {
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
    if hardened {
        if let Some(toml::Value::Boolean(false)) = config
            .get("hardening")
            .and_then(toml::Value::as_table)
            .and_then(|t| t.get("enabled"))
        {
            return Err(invalid(
                "agent_config.hardening.enabled",
                "false, but `hardened` asks for hardened mode; drop one".into(),
            ));
        }
        // The agent's parser checks the rest (a dedicated runner.user).
        let section = config
            .entry("hardening")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = section {
            t.insert("enabled".into(), toml::Value::Boolean(true));
        }
    }
    let config_toml = format!(
        "# Written by runner-userdata; keys in docs/config.md.\n{}",
        toml::to_string(&config).map_err(|e| invalid("agent_config", e.to_string()))?
    );
    let settings =
        Settings::from_toml(Path::new("agent_config"), &config_toml, []).map_err(as_input_error)?;
    if settings.state_dir != Path::new(DEFAULT_STATE_DIR) {
        // The unit's StateDirectory= creates and owns only this one.
        return Err(invalid(
            "agent_config.agent.state_dir",
            "must be /var/lib/runner-agent, the unit's StateDirectory".into(),
        ));
    }
    if let Some(user) = &settings.runner.user {
        if !is_user_name(user) {
            return Err(invalid(
                "agent_config.runner.user",
                format!("{user:?}: use lower-case letters, digits, _ and -, at most 32"),
            ));
        }
    }
    Ok((config_toml, settings))
}

/// `job_credentials.role_arn`, as the file gives it (the agent's parser
/// checks it): the IAM policy allows sts:AssumeRole on it.
pub(super) fn job_role_arn(config: &toml::Table) -> Option<String> {
    config
        .get("job_credentials")?
        .as_table()?
        .get("role_arn")?
        .as_str()
        .map(str::to_owned)
}

/// The agent's error in the input's terms: its keys are under
/// `agent_config`, and the file it names is the one being rendered, not a
/// file of the agent's.
fn as_input_error(e: ConfigError) -> (String, String) {
    let reason = match e {
        ConfigError::Invalid { key, reason, .. } => format!("key `agent_config.{key}`: {reason}"),
        ConfigError::Parse { message, .. } => message,
        // from_toml reads no file; kept whole should that change.
        ConfigError::Read { .. } => e.to_string(),
    };
    ("agent_config".into(), reason)
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

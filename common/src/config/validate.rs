//! From the file as written to [`Settings`]: each section turns its raw
//! form into its settings (defaults filled in, every value checked, errors
//! naming the key), then what one section needs of another is checked.

use super::keys::Keys;
use super::raw::RawConfig;
use super::{ConfigError, Settings};
use std::path::Path;

pub(super) fn validate(path: &Path, raw: RawConfig) -> Result<Settings, ConfigError> {
    let section = |name| Keys::new(path, name);
    let table = table(&section(""), raw.table)?;
    let github = raw.github.into_settings(&section("github"))?;
    let runner = raw.runner.into_settings(&section("runner"))?;
    let (state_dir, pre_runner) = raw.agent.into_settings(&section("agent"))?;
    let timing = raw.timing.into_settings(&section("timing"))?;
    let expiry = raw.expiry.into_settings(&section("expiry"))?;
    let hardening = raw.hardening.into_settings(&section("hardening"))?;
    // Hardened, the reset keeps less by default.
    let reset = raw
        .reset
        .into_settings(&section("reset"), hardening.enabled)?;
    hardening.check_needs(&section("hardening"), &runner, &reset)?;
    let metrics = raw.metrics.into_settings(&section("metrics"))?;
    let job_credentials = raw
        .job_credentials
        .into_settings(&section("job_credentials"))?;
    Ok(Settings {
        source: path.to_owned(),
        table,
        github,
        runner,
        state_dir,
        pre_runner,
        timing,
        expiry,
        reset,
        hardening,
        metrics,
        job_credentials,
    })
}

fn table(at: &Keys, name: String) -> Result<String, ConfigError> {
    if !is_table_name(&name) {
        return Err(at.invalid(
            "table",
            format!("{name:?} is not a DynamoDB table name (3-255 of A-Z a-z 0-9 _ - .)"),
        ));
    }
    Ok(name)
}

/// A DynamoDB table name: 3-255 of A-Z a-z 0-9 _ - .
pub fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

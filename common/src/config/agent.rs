//! `[agent]`: where the agent keeps its state, and the script it runs
//! before the runner starts, if any.

use super::keys::Keys;
use super::{ConfigError, DEFAULT_STATE_DIR};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub state_dir: Option<PathBuf>,
    pub pre_runner_script: Option<PathBuf>,
    pub pre_runner_timeout: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PreRunner {
    pub script: PathBuf,
    pub timeout: Duration,
}

impl RawAgent {
    /// The state directory and the pre-runner script (both are fields of
    /// [`super::Settings`] itself).
    pub(super) fn into_settings(
        self,
        at: &Keys,
    ) -> Result<(PathBuf, Option<PreRunner>), ConfigError> {
        let state_dir = at.absolute(
            "state_dir",
            self.state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        )?;
        let pre_runner = match self.pre_runner_script {
            None => None,
            Some(script) => Some(PreRunner {
                script: at.absolute("pre_runner_script", script)?,
                timeout: at.positive(
                    "pre_runner_timeout",
                    self.pre_runner_timeout.as_deref(),
                    Duration::from_secs(900),
                )?,
            }),
        };
        Ok((state_dir, pre_runner))
    }
}

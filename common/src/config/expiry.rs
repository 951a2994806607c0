//! `[expiry]`: when an instance the control plane has forgotten, or one
//! idle too long, leaves the pool for good (and ends itself when tagged
//! `AllowSelfTermination=true`); docs/operations.md, "Self-termination".
//! The expiry threshold's own grace is `timing.self_termination_grace`.

use super::keys::Keys;
use super::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// How long the table must have been gone, or the instance record absent,
/// before the instance counts as forgotten: long enough to outlast a
/// control plane's redeploy, short next to an hour of a stray instance.
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpiry {
    pub orphan_grace: Option<String>,
    pub max_idle: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpirySettings {
    /// Zero: an orphan is never detected.
    pub orphan_grace: Duration,
    /// `None` (the default): an idle instance waits for claims for ever.
    pub max_idle: Option<Duration>,
}

impl RawExpiry {
    pub(super) fn into_settings(self, at: &Keys) -> Result<ExpirySettings, ConfigError> {
        let orphan_grace = at.duration(
            "orphan_grace",
            self.orphan_grace.as_deref(),
            DEFAULT_ORPHAN_GRACE,
        )?;
        // Unset or empty: no limit. Zero would end every instance at its
        // first idle poll, so it is refused rather than read as "off".
        let max_idle = match self.max_idle.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(at.positive("max_idle", Some(text), Duration::ZERO)?),
        };
        Ok(ExpirySettings {
            orphan_grace,
            max_idle,
        })
    }
}

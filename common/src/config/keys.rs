//! Errors that name the file and the key: each section validates its
//! values through a [`Keys`] that knows the section's name.

use super::{parse_duration, ConfigError};
use std::path::Path;
use std::time::Duration;

/// The file and the section (`""`: the top level) whose keys are checked.
pub(super) struct Keys<'a> {
    path: &'a Path,
    section: &'static str,
}

impl<'a> Keys<'a> {
    pub(super) fn new(path: &'a Path, section: &'static str) -> Keys<'a> {
        Keys { path, section }
    }

    /// `key` of this section is wrong.
    pub(super) fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        let key = match self.section {
            "" => key.to_owned(),
            section => format!("{section}.{key}"),
        };
        self.error(key, reason.into())
    }

    /// The section as a whole is wrong (keys that exclude each other).
    pub(super) fn invalid_section(&self, reason: impl Into<String>) -> ConfigError {
        self.error(self.section.to_owned(), reason.into())
    }

    fn error(&self, key: String, reason: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key,
            reason,
        }
    }

    /// A duration, `default` when the key is not set; zero is allowed.
    pub(super) fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            None => Ok(default),
            Some(text) => parse_duration(text).map_err(|reason| self.invalid(key, reason)),
        }
    }

    /// A duration greater than zero, `default` when the key is not set.
    pub(super) fn positive(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(key, value, default)?;
        if d.is_zero() {
            return Err(self.invalid(key, "must be greater than zero"));
        }
        Ok(d)
    }

    /// `path` if it is absolute.
    pub(super) fn absolute<P: AsRef<Path>>(&self, key: &str, path: P) -> Result<P, ConfigError> {
        if path.as_ref().is_absolute() {
            Ok(path)
        } else {
            let reason = format!("{} is not an absolute path", path.as_ref().display());
            Err(self.invalid(key, reason))
        }
    }
}

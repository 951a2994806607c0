//! How an install fails, shared by the download, the release API and the
//! unpack.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no SHA-256 known for runner {version} ({arch}): set runner.sha256 or runner.release_api_url")]
    NoDigest { version: String, arch: String },
    #[error("runner tarball {url}: {message}")]
    Download { url: String, message: String },
    #[error("runner tarball {url}: SHA-256 mismatch: expected {expected}, got {actual}; nothing unpacked")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("release API {url}: {message}")]
    ReleaseApi { url: String, message: String },
    #[error("unpacking runner tarball: entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("installing runner into {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making the install root's: {0}")]
    Layout(crate::nofollow::FsError),
    #[error("{path} holds a configured runner of another version; refusing to replace it")]
    ConfiguredElsewhere { path: PathBuf },
}

impl InstallError {
    /// Whether trying again may help: a download or release-API error may
    /// (GitHub or the network come back); a digest mismatch will not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            InstallError::Download { .. } | InstallError::ReleaseApi { .. }
        )
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An error and its sources, joined by ": ".
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! Why a reset failed: the step that failed and its cause, or the
//! invariant the clean-slate check found broken. Its text is what the log,
//! `status` and the signal's reason show.

use super::check::Unclean;
use super::docker::DockerError;
use super::health::RoomError;
use std::time::Duration;

/// A step's own error, whatever its type.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("the reset did not finish within {0:?}")]
    TimedOut(Duration),
    /// A step failed: what it was doing, and why.
    #[error("{doing}: {cause}")]
    Step {
        doing: String,
        #[source]
        cause: Cause,
    },
    #[error("docker does not answer: {0}")]
    DockerDown(#[source] DockerError),
    #[error("docker stopped answering after the clean-up: {0}")]
    DockerGone(#[source] DockerError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Unclean(#[from] Unclean),
    #[error(transparent)]
    Room(#[from] RoomError),
}

impl ResetError {
    /// For `map_err`: the step `doing` failed with the error given.
    pub fn step<E: Into<Cause>>(doing: impl Into<String>) -> impl FnOnce(E) -> ResetError {
        let doing = doing.into();
        move |e| ResetError::Step {
            doing,
            cause: e.into(),
        }
    }
}

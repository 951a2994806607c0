//! What `Runner.Listener run` means by its exit code. The agent starts the
//! listener itself rather than through `run.sh`: `run-helper.sh` turns 1, 5
//! and unknown codes into 0 and waits on `update.finished` for 3 and 4, so
//! behind it a session conflict looks like a clean exit. Codes from
//! actions/runner `src/Runner.Common/Constants.cs` (`ReturnCode`), checked
//! against v2.336.0.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Set for the listener so that a version GitHub no longer accepts exits
/// with `RunnerVersionDeprecated` (7) instead of 1 (actions/runner v2.333.0
/// and later; older listeners ignore it).
pub const DEPRECATED_EXIT_CODE_ENV: &str = "ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerExit {
    /// 0: stopped (also after SIGINT/SIGTERM).
    Success,
    /// 1: a non-retryable error (not configured, runner not found, ...).
    Terminated,
    /// 2: a retryable error.
    Retryable,
    /// 3 and 4: the listener wants to update itself, which `--disableupdate`
    /// should prevent.
    Updating(i32),
    /// 5: another listener holds this runner's session.
    SessionConflict,
    /// 7: GitHub refuses this runner version.
    VersionDeprecated,
    /// Any other code.
    Other(i32),
    /// Killed by a signal.
    Signalled(i32),
    /// Not our child (adopted after a restart): no status to read.
    Unknown,
}

impl ListenerExit {
    pub fn of(status: Option<ExitStatus>) -> ListenerExit {
        let Some(status) = status else {
            return ListenerExit::Unknown;
        };
        match (status.code(), status.signal()) {
            (Some(0), _) => ListenerExit::Success,
            (Some(1), _) => ListenerExit::Terminated,
            (Some(2), _) => ListenerExit::Retryable,
            (Some(code @ (3 | 4)), _) => ListenerExit::Updating(code),
            (Some(5), _) => ListenerExit::SessionConflict,
            (Some(7), _) => ListenerExit::VersionDeprecated,
            (Some(code), _) => ListenerExit::Other(code),
            (None, Some(signal)) => ListenerExit::Signalled(signal),
            (None, None) => ListenerExit::Unknown,
        }
    }

    /// For the log and the restart counters.
    pub fn describe(&self) -> String {
        match self {
            ListenerExit::Success => "exited 0".into(),
            ListenerExit::Terminated => "exited 1 (terminated error)".into(),
            ListenerExit::Retryable => "exited 2 (retryable error)".into(),
            ListenerExit::Updating(code) => {
                format!("exited {code} (self-update requested despite --disableupdate)")
            }
            ListenerExit::SessionConflict => "exited 5 (session conflict)".into(),
            ListenerExit::VersionDeprecated => "exited 7 (runner version deprecated)".into(),
            ListenerExit::Other(code) => format!("exited {code}"),
            ListenerExit::Signalled(signal) => format!("killed by signal {signal}"),
            ListenerExit::Unknown => "exited (status unknown: adopted process)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(c: i32) -> ListenerExit {
        ListenerExit::of(Some(ExitStatus::from_raw(c << 8)))
    }

    #[test]
    fn codes_as_the_runner_defines_them() {
        assert_eq!(code(0), ListenerExit::Success);
        assert_eq!(code(1), ListenerExit::Terminated);
        assert_eq!(code(2), ListenerExit::Retryable);
        assert_eq!(code(3), ListenerExit::Updating(3));
        assert_eq!(code(4), ListenerExit::Updating(4));
        assert_eq!(code(5), ListenerExit::SessionConflict);
        assert_eq!(code(6), ListenerExit::Other(6));
        assert_eq!(code(7), ListenerExit::VersionDeprecated);
        assert_eq!(code(255), ListenerExit::Other(255));
        assert_eq!(
            ListenerExit::of(Some(ExitStatus::from_raw(9))),
            ListenerExit::Signalled(9)
        );
        assert_eq!(ListenerExit::of(None), ListenerExit::Unknown);
    }
}

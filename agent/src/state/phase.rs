//! The agent's states, as data: what it is doing and, where a runner is
//! registered, which one. Persisted in `state.json`, so a restarted agent
//! knows whether a registration is held and what was owed for it.

use crate::orphan::Orphan;
use crate::protocol::Signal;
use serde::{Deserialize, Serialize};

/// A runner registration: from the moment `config.sh` is started until the
/// signal for its release is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub run_id: String,
    pub runner_name: String,
    /// Process group of the running listener, so that a restarted agent can
    /// stop a runner it lost track of.
    pub runner_pgid: Option<i32>,
}

/// One state of the lifecycle. The tag is the name `status` shows and
/// systemd's STATUS= carries; those names are the ones earlier agents wrote
/// as free-form phase strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name")]
pub enum Phase {
    /// First boot: the pre-runner script and the boot signal.
    #[default]
    #[serde(rename = "pre-runner")]
    Booting,
    /// The pre-runner script failed (`UD_FAILED`): nothing more runs.
    #[serde(rename = "failed")]
    BootFailed,
    #[serde(rename = "installing")]
    Installing,
    /// Waiting for a claim.
    #[serde(rename = "idle")]
    Idle,
    /// Claimed for `run_id`; `runner_name` once `config.sh` was started.
    #[serde(rename = "registering")]
    Registering {
        run_id: String,
        runner_name: Option<String>,
    },
    /// Registered; the runner runs until the release.
    #[serde(rename = "registered")]
    Serving { registration: Registration },
    /// Released (or leaving): stopping the runner, deregistering, then
    /// writing `signal` for the run.
    #[serde(rename = "deregistering")]
    Releasing {
        registration: Registration,
        signal: Signal,
    },
    /// Deregistered: the instance is being reset for the next run before
    /// `signal` is written for `run_id` (a restart resets again first).
    #[serde(rename = "resetting")]
    Resetting { run_id: String, signal: Signal },
    /// SIGTERM: a registration, if any, is being given up.
    #[serde(rename = "stopping")]
    Stopping { registration: Option<Registration> },
    /// Spot notice handled; waiting for the instance to go.
    #[serde(rename = "spot-interrupted")]
    SpotInterrupted,
    /// Out of the pool for good (the control plane forgot the instance, or
    /// it sat idle past `expiry.max_idle`): never registers again, also
    /// after a restart; the expiry watchdog ends the instance if allowed.
    #[serde(rename = "orphaned")]
    Orphaned { reason: Orphan },
}

impl Phase {
    /// The name `status` shows (the serde tag).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Booting => "pre-runner",
            Phase::BootFailed => "failed",
            Phase::Installing => "installing",
            Phase::Idle => "idle",
            Phase::Registering { .. } => "registering",
            Phase::Serving { .. } => "registered",
            Phase::Releasing { .. } => "deregistering",
            Phase::Resetting { .. } => "resetting",
            Phase::Stopping { .. } => "stopping",
            Phase::SpotInterrupted => "spot-interrupted",
            Phase::Orphaned { .. } => "orphaned",
        }
    }

    /// The registration this state holds, if any. A registering state holds
    /// one once `config.sh` has been started: a crash then must clean up.
    pub fn registration(&self) -> Option<Registration> {
        match self {
            Phase::Registering {
                run_id,
                runner_name: Some(name),
            } => Some(Registration {
                run_id: run_id.clone(),
                runner_name: name.clone(),
                runner_pgid: None,
            }),
            Phase::Serving { registration } | Phase::Releasing { registration, .. } => {
                Some(registration.clone())
            }
            Phase::Stopping { registration } => registration.clone(),
            _ => None,
        }
    }

    /// Reads the state of a file written before states were data: a free
    /// phase string beside an optional registration.
    pub fn from_legacy(phase: &str, registration: Option<Registration>) -> Phase {
        match (phase, registration) {
            ("registering", Some(r)) => Phase::Registering {
                run_id: r.run_id,
                runner_name: Some(r.runner_name),
            },
            ("deregistering", Some(registration)) => Phase::Releasing {
                registration,
                signal: Signal::RemoveRegRemoveRunOk,
            },
            ("spot-interrupted", Some(registration)) => Phase::Releasing {
                registration,
                signal: Signal::SpotInterrupted,
            },
            ("stopping", registration) => Phase::Stopping { registration },
            (_, Some(registration)) => Phase::Serving { registration },
            ("" | "pre-runner" | "booted", None) => Phase::Booting,
            ("failed", None) => Phase::BootFailed,
            ("installing", None) => Phase::Installing,
            ("spot-interrupted", None) => Phase::SpotInterrupted,
            (_, None) => Phase::Idle,
        }
    }
}

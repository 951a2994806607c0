//! What the heartbeat says about the agent besides "alive": the control
//! plane reads only the heartbeat's `updatedAt` (its
//! `heartbeat-operations.ts`), so these attributes are for operators
//! (`runner-agent pool`). The machine publishes a `Status` on a watch
//! channel whenever it saves its state; the heartbeat task writes the
//! newest one with each beat. docs/protocol.md lists the attributes.

use crate::orphan::Orphan;
use crate::state::Phase;

/// Values are cut to this many characters: the item stays one write unit
/// (under 1 KiB) whatever a reset's error says.
const MAX_TEXT: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The machine's state, as `runner-agent status` names it.
    pub state: String,
    /// The run the instance is claimed for, registered for or releasing.
    pub run_id: Option<String>,
    pub job_active: bool,
    pub runner_version: Option<String>,
    /// `ok`, or `failed: <why>`, once a reset has run in this process.
    pub last_reset: Option<String>,
    /// The clean-slate check after it: `pass at <time> in <n> ms`, or
    /// `fail at <time>: <invariant>: <what>`.
    pub last_check: Option<String>,
    /// Why the instance left the pool for good, when it has: it serves no
    /// more, and the expiry watchdog ends it if the tag allows.
    pub orphaned: Option<Orphan>,
}

impl Status {
    pub fn set_phase(&mut self, phase: &Phase) {
        self.state = phase.name().to_owned();
        self.run_id = run_id_of(phase).map(|r| shorten(&r));
        self.orphaned = match phase {
            Phase::Orphaned { reason } => Some(*reason),
            _ => None,
        };
    }

    pub fn set_reset<E: std::fmt::Display>(&mut self, outcome: &Result<String, E>) {
        self.last_reset = Some(match outcome {
            Ok(_) => "ok".to_owned(),
            Err(why) => shorten(&format!("failed: {why}")),
        });
    }
}

impl Status {
    /// Short (the heartbeat stays one write unit): the failed invariant's
    /// detail is in `last_reset` already.
    pub fn set_check(&mut self, check: &crate::state::CheckRecord) {
        self.last_check = Some(match &check.failed {
            None => format!("pass at {} in {} ms", check.at, check.millis),
            Some(why) => format!(
                "fail at {}: {}",
                check.at,
                why.split(':').next().unwrap_or_default()
            ),
        });
    }
}

fn run_id_of(phase: &Phase) -> Option<String> {
    match phase {
        Phase::Registering { run_id, .. } | Phase::Resetting { run_id, .. } => Some(run_id.clone()),
        other => other.registration().map(|r| r.run_id),
    }
}

pub fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Registration;

    #[test]
    fn run_ids_come_from_every_state_that_has_one() {
        let mut s = Status::default();
        s.set_phase(&Phase::Idle);
        assert_eq!((s.state.as_str(), s.run_id.as_deref()), ("idle", None));
        s.set_phase(&Phase::Serving {
            registration: Registration {
                run_id: "77-1".into(),
                runner_name: "i-1-3".into(),
                runner_pgid: None,
            },
        });
        assert_eq!(
            (s.state.as_str(), s.run_id.as_deref()),
            ("registered", Some("77-1"))
        );
        s.set_phase(&Phase::Registering {
            run_id: "78-1".into(),
            runner_name: None,
        });
        assert_eq!(s.run_id.as_deref(), Some("78-1"));
        s.set_phase(&Phase::Orphaned {
            reason: Orphan::TableGone,
        });
        assert_eq!(
            (s.state.as_str(), s.run_id.as_deref(), s.orphaned),
            ("orphaned", None, Some(Orphan::TableGone))
        );
        s.set_phase(&Phase::Idle);
        assert_eq!(s.orphaned, None);
    }

    #[test]
    fn long_reset_errors_are_cut() {
        let mut s = Status::default();
        s.set_reset::<String>(&Err("x".repeat(5000)));
        let text = s.last_reset.clone().unwrap();
        assert!(text.starts_with("failed: x") && text.chars().count() == MAX_TEXT + 1);
        s.set_reset::<String>(&Ok("2 containers".into()));
        assert_eq!(s.last_reset.as_deref(), Some("ok"));
    }
}

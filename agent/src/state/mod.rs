//! State that must survive a crash or restart: whether boot finished, the
//! lifecycle's state (with the registration it holds: run id, runner name,
//! the runner's process group) and the registration counter. Written atomically: temp file, fsync, rename,
//! fsync of the directory, so a crash leaves the old or the new file.

mod phase;

pub use phase::{Phase, Registration};

use crate::protocol::Signal;
use runner_agent_common::fs::write_atomically;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootOutcome {
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSignal {
    pub signal: Signal,
    pub run_id: String,
    pub at: String,
}

/// The last clean-slate check (the reset's final step): whether every
/// invariant held, when, how long the reset and check took, and the
/// invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub passed: bool,
    pub at: String,
    pub millis: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

impl std::fmt::Display for CheckRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.failed {
            None => write!(f, "pass at {} in {} ms", self.at, self.millis),
            Some(why) => write!(f, "fail at {}: {why}", self.at),
        }
    }
}

/// Everything the agent persists. Read and written through [`StoredState`],
/// which also carries the fields earlier agents wrote (`phase` as a string,
/// `registration`), so that an upgrade of a registered instance resumes and
/// a downgrade still finds its registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredState", into = "StoredState")]
pub struct AgentState {
    pub instance_id: Option<String>,
    pub boot: Option<BootOutcome>,
    pub registration_counter: u64,
    pub phase: Phase,
    pub phase_since: String,
    pub last_signal: Option<LastSignal>,
    pub pid: Option<u32>,
    /// Why the instance is not clean: a reset failed, so claims are
    /// refused (with `UD_REG_FAILED`) until the instance is replaced.
    pub unclean: Option<String>,
    pub last_check: Option<CheckRecord>,
    /// The instance record has been read at least once on this instance:
    /// from then on its absence counts as forgotten (`orphan.rs`).
    pub record_seen: bool,
}

impl AgentState {
    pub fn registration(&self) -> Option<Registration> {
        self.phase.registration()
    }
}

/// The file's shape. `state` is the typed phase; `phase` and
/// `registration` are derived from it on write (for `status --json` and
/// older agents) and are the only source in files older agents wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct StoredState {
    #[serde(default)]
    instance_id: Option<String>,
    #[serde(default)]
    boot: Option<BootOutcome>,
    #[serde(default)]
    registration_counter: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<Phase>,
    #[serde(default)]
    phase: String,
    #[serde(default)]
    phase_since: String,
    #[serde(default)]
    registration: Option<Registration>,
    #[serde(default)]
    last_signal: Option<LastSignal>,
    #[serde(default)]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unclean: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_check: Option<CheckRecord>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    record_seen: bool,
}

impl From<StoredState> for AgentState {
    fn from(s: StoredState) -> AgentState {
        let phase = match s.state {
            Some(phase) => phase,
            None => Phase::from_legacy(&s.phase, s.registration),
        };
        AgentState {
            instance_id: s.instance_id,
            boot: s.boot,
            registration_counter: s.registration_counter,
            phase,
            phase_since: s.phase_since,
            last_signal: s.last_signal,
            pid: s.pid,
            unclean: s.unclean,
            last_check: s.last_check,
            record_seen: s.record_seen,
        }
    }
}

impl From<AgentState> for StoredState {
    fn from(a: AgentState) -> StoredState {
        StoredState {
            instance_id: a.instance_id,
            boot: a.boot,
            registration_counter: a.registration_counter,
            phase: a.phase.name().to_owned(),
            registration: a.phase.registration(),
            state: Some(a.phase),
            phase_since: a.phase_since,
            last_signal: a.last_signal,
            pid: a.pid,
            unclean: a.unclean,
            last_check: a.last_check,
            record_seen: a.record_seen,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: &Path) -> StateStore {
        StateStore {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The stored state; a missing file is a fresh start.
    pub fn load(&self) -> Result<AgentState, StateError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }

    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        let path = self.path();
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        write_atomically(&path, &bytes, 0o600).map_err(|source| StateError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn round_trip_and_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(&dir.path().join("nested"));
        assert_eq!(store.load().unwrap(), AgentState::default());
        let state = AgentState {
            registration_counter: 3,
            phase: Phase::Serving {
                registration: Registration {
                    run_id: "42".into(),
                    runner_name: "i-0abc-3".into(),
                    runner_pgid: Some(1234),
                },
            },
            last_signal: Some(LastSignal {
                signal: Signal::RegOk,
                run_id: "42".into(),
                at: "2025-04-24T18:31:04Z".into(),
            }),
            ..AgentState::default()
        };
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        let err = StateStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }

    /// A file as the agent wrote it before states were data: a registered
    /// instance upgraded in place resumes its registration.
    #[test]
    fn reads_a_state_file_from_before_states_were_data() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = r#"{
  "instance_id": "i-0123456789abcdef0",
  "boot": "ok",
  "registration_counter": 2,
  "registration": {"run_id": "4711", "runner_name": "i-0123456789abcdef0-2", "runner_pgid": 5150},
  "phase": "registered",
  "phase_since": "2025-04-24T18:31:04Z",
  "last_signal": {"signal": "UD_REG_OK", "run_id": "4711", "at": "2025-04-24T18:31:05Z"},
  "pid": 977
}"#;
        std::fs::write(dir.path().join(STATE_FILE), legacy).unwrap();
        let store = StateStore::new(dir.path());
        let state = store.load().unwrap();
        let registration = Registration {
            run_id: "4711".into(),
            runner_name: "i-0123456789abcdef0-2".into(),
            runner_pgid: Some(5150),
        };
        assert_eq!(
            state.phase,
            Phase::Serving {
                registration: registration.clone()
            }
        );
        assert_eq!(state.boot, Some(BootOutcome::Ok));
        assert_eq!(state.registration_counter, 2);
        assert_eq!(state.last_signal.as_ref().unwrap().signal, Signal::RegOk);
        // Written back: the typed state, and the fields older readers use.
        store.save(&state).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(json["phase"], "registered");
        assert_eq!(json["state"]["name"], "registered");
        assert_eq!(json["registration"]["runner_pgid"], 5150);
        assert_eq!(store.load().unwrap(), state);
    }

    #[test]
    fn legacy_phases_map_to_states() {
        let reg = Registration {
            run_id: "1".into(),
            runner_name: "i-1-1".into(),
            runner_pgid: None,
        };
        let cases = [
            ("", None, "pre-runner"),
            ("booted", None, "pre-runner"),
            ("failed", None, "failed"),
            ("installing", None, "installing"),
            ("idle", None, "idle"),
            ("registering", Some(reg.clone()), "registering"),
            ("registered", Some(reg.clone()), "registered"),
            ("deregistering", Some(reg.clone()), "deregistering"),
            ("stopping", Some(reg.clone()), "stopping"),
            ("spot-interrupted", None, "spot-interrupted"),
            ("something-new", None, "idle"),
        ];
        for (old, registration, name) in cases {
            let held = registration.is_some();
            let phase = Phase::from_legacy(old, registration);
            assert_eq!(phase.name(), name, "{old}");
            assert_eq!(phase.registration().is_some(), held, "{old}");
        }
    }
}

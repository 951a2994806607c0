//! State that must survive a crash or restart: whether boot finished, the
//! registration held (run id, runner name, the runner's process group) and
//! the registration counter. Written atomically: temp file, fsync, rename,
//! fsync of the directory, so a crash leaves the old or the new file.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootOutcome {
    Ok,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub run_id: String,
    pub runner_name: String,
    /// Process group of the running `run.sh`, so that a restarted agent can
    /// stop a runner it lost track of.
    pub runner_pgid: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSignal {
    pub signal: String,
    pub run_id: String,
    pub at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub instance_id: Option<String>,
    pub boot: Option<BootOutcome>,
    pub registration_counter: u64,
    pub registration: Option<Registration>,
    /// What the agent is doing, for `status`.
    pub phase: String,
    pub phase_since: String,
    pub last_signal: Option<LastSignal>,
    pub pid: Option<u32>,
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

/// Replaces `path` with `bytes` so that a crash at any point leaves either
/// the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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
            registration: Some(Registration {
                run_id: "42".into(),
                runner_name: "i-0abc-3".into(),
                runner_pgid: Some(1234),
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
}

//! The verified install, written down: every entry of the install dir
//! with its kind, owner, mode and size, the SHA-256 of every file, and the
//! inode and ctime that prove a file unchanged since (a write, a chmod or
//! a chown moves the ctime, and nobody can set it back). Taken once the
//! install is root's (`layout.rs`); the reset's check compares the install
//! with it after every run, by `lstat` alone, so a 200 MB runner costs a
//! walk, not a hash.
//!
//! Left out: the user's directories (`_work`, `_diag`, the hooks' marker
//! directory), the registration files, and what `config.sh` rewrites as
//! root at every registration (`.env`, `.path`, `svc.sh`). What is not in
//! the manifest may exist only as root's and unwritable by anyone else:
//! nothing the runner user could have made or changed.

use super::layout::USER_DIRS;
use super::{HOOK_DIR, JOB_DIR, REGISTRATION_FILES};
use crate::nofollow::{self, DirFd, FsError, Kind};
use nix::sys::stat::FileStat;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Written by `config.sh` (its `env.sh`, and the service script on Linux)
/// at every registration: root's, not a part of the verified release.
const CONFIG_WRITTEN: &[&str] = &[".env", ".path", "svc.sh"];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: i64,
    ino: u64,
    ctime: (i64, i64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EntryKind {
    Dir,
    File { sha256: String },
    Link { target: PathBuf },
    Other,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    entries: BTreeMap<PathBuf, Entry>,
}

fn left_out(relative: &Path) -> bool {
    let top = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    USER_DIRS.contains(&top.as_str())
        || (REGISTRATION_FILES.contains(&top.as_str()) && relative.components().count() == 1)
        || (CONFIG_WRITTEN.contains(&top.as_str()) && relative.components().count() == 1)
        || relative.starts_with(Path::new(HOOK_DIR).join(JOB_DIR))
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Option<Manifest>, ManifestError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ManifestError::Io {
                    path: path.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ManifestError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        let io = |source| ManifestError::Io {
            path: path.to_owned(),
            source,
        };
        let json = serde_json::to_vec(self)
            .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        runner_agent_common::fs::write_atomically(path, &json, 0o600).map_err(io)
    }

    /// Records the install at `dir`. A file whose inode, size and ctime are
    /// what `previous` recorded keeps its digest unhashed (an agent restart
    /// does not read 200 MB again).
    pub fn record(dir: &Path, previous: Option<&Manifest>) -> Result<Manifest, ManifestError> {
        let mut manifest = Manifest::default();
        let Some(mut root) = DirFd::open(dir)? else {
            return Ok(manifest);
        };
        let mut found = Vec::new();
        root.walk(&mut |relative, entry| {
            if !left_out(relative) {
                found.push((relative.to_owned(), entry.stat));
            }
        })?;
        for (relative, stat) in found {
            let kind = match nofollow::kind_of(&stat) {
                Kind::Dir => EntryKind::Dir,
                Kind::Link => {
                    let parent = root.lookup(relative.parent().unwrap_or(Path::new("")))?;
                    let name = relative.file_name().unwrap_or_default();
                    match parent {
                        Some(parent) => EntryKind::Link {
                            target: parent.read_link(name)?.into(),
                        },
                        None => continue,
                    }
                }
                Kind::Other if stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG => {
                    let entry = entry_of(EntryKind::Other, &stat);
                    let known = previous
                        .and_then(|p| p.entries.get(&relative))
                        .filter(|p| same_stat(p, &entry));
                    match known {
                        Some(known) => known.kind.clone(),
                        None => EntryKind::File {
                            sha256: digest(&root, &relative)?,
                        },
                    }
                }
                Kind::Other => EntryKind::Other,
            };
            manifest.entries.insert(relative, entry_of(kind, &stat));
        }
        Ok(manifest)
    }

    /// Where the install at `dir` differs from this manifest (empty: as
    /// verified), by `lstat` alone.
    pub fn differences(&self, dir: &Path) -> Result<Vec<String>, ManifestError> {
        let mut differs = Vec::new();
        let Some(mut root) = DirFd::open(dir)? else {
            return Ok(vec![format!("{} is missing", dir.display())]);
        };
        let mut seen = std::collections::BTreeSet::new();
        root.walk(&mut |relative, entry| {
            let stat = &entry.stat;
            match self.entries.get(relative) {
                Some(recorded) => {
                    seen.insert(relative.to_owned());
                    let now = entry_of(recorded.kind.clone(), stat);
                    let kind_same = matches!(
                        (&recorded.kind, nofollow::kind_of(stat)),
                        (EntryKind::Dir, Kind::Dir)
                            | (EntryKind::Link { .. }, Kind::Link)
                            | (EntryKind::File { .. } | EntryKind::Other, Kind::Other)
                    );
                    let unchanged = match recorded.kind {
                        // A directory's ctime moves with every entry made
                        // in it (by root's config.sh too): its owner and
                        // mode are what matter.
                        EntryKind::Dir => {
                            (now.mode, now.uid, now.gid)
                                == (recorded.mode, recorded.uid, recorded.gid)
                        }
                        _ => same_stat(recorded, &now),
                    };
                    if !kind_same || !unchanged {
                        differs.push(format!("{} changed", relative.display()));
                    }
                }
                None if left_out(relative) => {}
                None => {
                    // Made by root since (config.sh's files): fine while
                    // nobody else can write it.
                    let writable =
                        stat.st_mode & 0o022 != 0 && nofollow::kind_of(stat) != Kind::Link;
                    if stat.st_uid != 0 || writable {
                        differs.push(format!("{} is not root's alone", relative.display()));
                    }
                }
            }
        })?;
        for relative in self.entries.keys() {
            if !seen.contains(relative) {
                differs.push(format!("{} is missing", relative.display()));
            }
        }
        Ok(differs)
    }

    pub fn files(&self) -> usize {
        self.entries.len()
    }
}

fn entry_of(kind: EntryKind, stat: &FileStat) -> Entry {
    Entry {
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        size: stat.st_size,
        ino: stat.st_ino,
        ctime: (stat.st_ctime, stat.st_ctime_nsec),
    }
}

fn same_stat(a: &Entry, b: &Entry) -> bool {
    (a.mode, a.uid, a.gid, a.size, a.ino, a.ctime) == (b.mode, b.uid, b.gid, b.size, b.ino, b.ctime)
}

fn digest(root: &DirFd, relative: &Path) -> Result<String, ManifestError> {
    let io = |source| ManifestError::Io {
        path: root.path().join(relative),
        source,
    };
    let parent = root.lookup(relative.parent().unwrap_or(Path::new("")))?;
    let file = match parent {
        Some(parent) => parent.open_file(relative.file_name().unwrap_or_default())?,
        None => None,
    };
    let mut file = file.ok_or_else(|| io(std::io::ErrorKind::NotFound.into()))?;
    crate::digest::copy_hashed(&mut file, &mut std::io::sink())
        .map(|(_, sha256)| sha256)
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn install(dir: &Path) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("_work/_tool")).unwrap();
        std::fs::write(dir.join("config.sh"), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.join("bin/Runner.Listener"), "listener").unwrap();
        std::fs::write(dir.join(".runner"), "{}").unwrap();
        std::os::unix::fs::symlink("config.sh", dir.join("run.sh")).unwrap();
    }

    /// Unchanged → no difference; every kind of change, one at a time →
    /// named. (Run as root the ownership rule holds; as another user the
    /// files are that user's, which the rule for new files reports.)
    #[test]
    fn changes_are_found_by_stat_and_digests_are_reused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runner");
        install(&dir);
        let manifest = Manifest::record(&dir, None).unwrap();
        assert!(manifest
            .entries
            .contains_key(Path::new("bin/Runner.Listener")));
        assert!(!manifest.entries.contains_key(Path::new("_work")));
        assert!(!manifest.entries.contains_key(Path::new(".runner")));
        assert_eq!(manifest.differences(&dir).unwrap(), Vec::<String>::new());
        // Recorded again: digests carried over, not recomputed.
        let again = Manifest::record(&dir, Some(&manifest)).unwrap();
        assert_eq!(again.entries, manifest.entries);
        // The user's directory and the registration change freely.
        std::fs::write(dir.join("_work/_tool/x"), "x").unwrap();
        std::fs::write(dir.join(".runner"), "{\"other\": 1}").unwrap();
        assert_eq!(manifest.differences(&dir).unwrap(), Vec::<String>::new());

        // Content changed, the same size, the mtime put back.
        let listener = dir.join("bin/Runner.Listener");
        let mtime = std::fs::metadata(&listener).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&listener, "LISTENER").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&listener)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let differs = manifest.differences(&dir).unwrap();
        assert_eq!(differs, ["bin/Runner.Listener changed"]);
        // A mode, a link's target, a missing file, a new file open to all.
        let manifest = Manifest::record(&dir, Some(&manifest)).unwrap();
        std::fs::set_permissions(
            dir.join("config.sh"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        std::fs::remove_file(dir.join("run.sh")).unwrap();
        std::os::unix::fs::symlink("/tmp/evil", dir.join("run.sh")).unwrap();
        std::fs::remove_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("planted"), "x").unwrap();
        std::fs::set_permissions(dir.join("planted"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        let differs = manifest.differences(&dir).unwrap();
        for expected in [
            "config.sh changed",
            "run.sh changed",
            "bin is missing",
            "bin/Runner.Listener is missing",
            "planted is not root's alone",
        ] {
            assert!(
                differs.iter().any(|d| d == expected),
                "{expected}: {differs:?}"
            );
        }
    }
}

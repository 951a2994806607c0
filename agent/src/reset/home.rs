//! A fresh home for every run. A job can leave anything in the runner
//! user's home that a later run executes or trusts: a `.bashrc` line, a
//! `~/.gitconfig` with `core.fsmonitor`, `~/.cargo/config.toml`, a
//! systemd user unit, an `authorized_keys` entry. So the home is put back
//! after every run to what it held once the instance was prepared (after
//! the pre-runner script): what is new goes, what changed is restored,
//! what went comes back. Only the operator's keep-list (caches such as
//! `.cache/pip`) survives a run, and it is the operator's to trust.
//!
//! The baseline is a manifest (kind, owner, mode, size, times, inode of
//! every entry) and the content of every file, stored by digest in the
//! agent's state dir (root's). A file counts as unchanged only when its
//! inode, size, mtime and ctime are what was recorded: a job can forge an
//! mtime, not a ctime. Every path is walked without following links.

use crate::nofollow::{self, DirFd, FsError, Kind};
use entry::{is_regular, matches_kind, owned_as, record, Item, Recorded, Seen};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const MANIFEST: &str = "manifest.json";
const BLOBS: &str = "blobs";

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the runner's home holds more than {max} bytes outside reset.home_keep; not taken as a baseline (raise reset.home_max or list caches in reset.home_keep)")]
    TooLarge { max: u64 },
    #[error("no baseline of the runner's home ({0}); the home cannot be restored")]
    NoBaseline(PathBuf),
    #[error("the home baseline's copy of {0} is missing or damaged")]
    Blob(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The home as it was after preparation: relative path → entry ("" is
/// the home itself).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HomeBaseline {
    entries: BTreeMap<PathBuf, Recorded>,
}

pub struct HomeStore {
    pub dir: PathBuf,
    pub keep: Vec<PathBuf>,
    pub max_bytes: u64,
}

/// What a restore did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub removed: usize,
    pub restored: usize,
}

/// One walk over the home: restoring (`act`), or only looking, when every
/// difference is noted in `differs` and nothing changes (the check).
struct Pass {
    act: bool,
    done: Restored,
    differs: Vec<PathBuf>,
}

impl Pass {
    /// Notes `relative` as different; whether to change it.
    fn differs(&mut self, relative: &Path) -> bool {
        self.differs.push(relative.to_owned());
        self.act
    }
}

impl HomeStore {
    fn kept(&self, relative: &Path) -> bool {
        self.keep.iter().any(|k| relative.starts_with(k))
    }

    /// Whether `relative` lies above a kept path (then it is walked into,
    /// never removed whole).
    fn holds_kept(&self, relative: &Path) -> bool {
        self.keep
            .iter()
            .any(|k| k.starts_with(relative) && k != relative)
    }

    pub fn exists(&self) -> bool {
        self.dir.join(MANIFEST).exists()
    }

    /// Records `home` (everything but the keep-list) and copies its files.
    pub fn take(&self, home: &Path) -> Result<HomeBaseline, HomeError> {
        let Some(mut root) = DirFd::open(home)? else {
            return Err(HomeError::Fs(FsError::Sys {
                path: home.to_owned(),
                errno: Errno::ENOENT,
            }));
        };
        let blobs = self.dir.join(BLOBS);
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let mut baseline = HomeBaseline::default();
        let stat = nix::sys::stat::fstat(root.fd()).map_err(nofollow::sys(home))?;
        baseline
            .entries
            .insert(PathBuf::new(), record(Item::Dir, &stat));
        let mut bytes = 0u64;
        self.take_dir(&mut root, Path::new(""), &mut baseline, &mut bytes, 0)?;
        self.save(&baseline)?;
        Ok(baseline)
    }

    fn take_dir(
        &self,
        dir: &mut DirFd,
        prefix: &Path,
        baseline: &mut HomeBaseline,
        bytes: &mut u64,
        depth: usize,
    ) -> Result<(), HomeError> {
        if depth >= nofollow::MAX_DEPTH {
            return Err(FsError::TooDeep(dir.path().to_owned()).into());
        }
        for entry in dir.entries()? {
            let relative = prefix.join(&entry.name);
            if self.kept(&relative) {
                continue;
            }
            let item = match entry.kind() {
                Kind::Dir => Item::Dir,
                Kind::Link => Item::Link {
                    target: dir.read_link(&entry.name)?.into(),
                },
                Kind::Other if is_regular(&entry.stat) => {
                    *bytes += entry.stat.st_size.max(0) as u64;
                    if *bytes > self.max_bytes {
                        return Err(HomeError::TooLarge {
                            max: self.max_bytes,
                        });
                    }
                    let Some(file) = dir.open_file(&entry.name)? else {
                        continue;
                    };
                    self.store_blob(file, &relative)?
                }
                // Sockets, fifos: nothing to restore; a reset removes them.
                Kind::Other => continue,
            };
            baseline
                .entries
                .insert(relative.clone(), record(item, &entry.stat));
            if entry.kind() == Kind::Dir {
                if let Some(mut sub) = dir.child(&entry.name)? {
                    self.take_dir(&mut sub, &relative, baseline, bytes, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Copies the file into the store, named by its digest.
    fn store_blob(&self, mut file: std::fs::File, relative: &Path) -> Result<Item, HomeError> {
        let blobs = self.dir.join(BLOBS);
        let incoming = blobs.join(format!(".incoming-{:016x}", fastrand::u64(..)));
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&incoming)
            .map_err(io(&incoming))?;
        let copied = crate::digest::copy_hashed(&mut file, &mut out)
            .map_err(io(relative))
            .and_then(|(size, sha256)| {
                out.sync_all().map_err(io(&incoming))?;
                std::fs::rename(&incoming, blobs.join(&sha256)).map_err(io(&incoming))?;
                Ok(Item::File { size, sha256 })
            });
        if copied.is_err() {
            let _ = std::fs::remove_file(&incoming);
        }
        copied
    }

    pub fn load(&self) -> Result<HomeBaseline, HomeError> {
        let path = self.dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => HomeError::NoBaseline(path.clone()),
            _ => io(&path)(e),
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| io(&path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
    }

    /// Puts `home` back to `baseline` but for the keep-list; the stats of
    /// what was restored are recorded in `baseline` (the caller saves it).
    pub fn restore(&self, home: &Path, baseline: &mut HomeBaseline) -> Result<Restored, HomeError> {
        let Some(mut root) = DirFd::open(home)? else {
            return Err(HomeError::NoBaseline(home.to_owned()));
        };
        let mut pass = Pass {
            act: true,
            done: Restored::default(),
            differs: Vec::new(),
        };
        if let Some(rec) = baseline.entries.get(Path::new("")).cloned() {
            fix_owner_mode(&root, &rec)?;
        }
        self.restore_dir(&mut root, Path::new(""), baseline, &mut pass, 0)?;
        Ok(pass.done)
    }

    /// Where `home` differs from `baseline` (outside the keep-list),
    /// changing nothing.
    pub fn differences(
        &self,
        home: &Path,
        baseline: &mut HomeBaseline,
    ) -> Result<Vec<PathBuf>, HomeError> {
        let Some(mut root) = DirFd::open(home)? else {
            return Ok(vec![home.to_owned()]);
        };
        let mut pass = Pass {
            act: false,
            done: Restored::default(),
            differs: Vec::new(),
        };
        if let Some(rec) = baseline.entries.get(Path::new("")) {
            let stat = nix::sys::stat::fstat(root.fd()).map_err(nofollow::sys(home))?;
            if !owned_as(&stat, rec) {
                pass.differs(Path::new(""));
            }
        }
        self.restore_dir(&mut root, Path::new(""), baseline, &mut pass, 0)?;
        Ok(pass.differs)
    }

    pub fn save(&self, baseline: &HomeBaseline) -> Result<(), HomeError> {
        // Names that are not UTF-8 cannot be JSON keys: refused here.
        let json = serde_json::to_vec(baseline)
            .map_err(|e| io(&self.dir)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        runner_agent_common::fs::write_atomically(&self.dir.join(MANIFEST), &json, 0o600)
            .map_err(io(&self.dir))
    }

    fn restore_dir(
        &self,
        dir: &mut DirFd,
        prefix: &Path,
        baseline: &mut HomeBaseline,
        pass: &mut Pass,
        depth: usize,
    ) -> Result<(), HomeError> {
        if depth >= nofollow::MAX_DEPTH {
            return Err(FsError::TooDeep(dir.path().to_owned()).into());
        }
        let mut present = BTreeSet::new();
        for entry in dir.entries()? {
            let relative = prefix.join(&entry.name);
            if self.kept(&relative) {
                continue;
            }
            let recorded = baseline.entries.get(&relative).cloned();
            let same_kind = recorded
                .as_ref()
                .is_some_and(|r| matches_kind(&r.item, &entry));
            if !same_kind {
                if recorded.is_none() && entry.kind() == Kind::Dir && self.holds_kept(&relative) {
                    // New, but a kept cache lives below it.
                    if let Some(mut sub) = dir.child(&entry.name)? {
                        self.restore_dir(&mut sub, &relative, baseline, pass, depth + 1)?;
                    }
                    continue;
                }
                if pass.differs(&relative) {
                    pass.done.removed += dir.remove(&entry.name)?.min(1);
                }
                continue;
            }
            present.insert(entry.name.clone());
            let recorded = recorded.expect("same kind implies recorded");
            match &recorded.item {
                Item::Dir => {
                    if let Some(mut sub) = dir.child(&entry.name)? {
                        if !owned_as(&entry.stat, &recorded) && pass.differs(&relative) {
                            fix_owner_mode(&sub, &recorded)?;
                        }
                        self.restore_dir(&mut sub, &relative, baseline, pass, depth + 1)?;
                    }
                }
                Item::Link { target } => {
                    let now = dir.read_link(&entry.name)?;
                    let changed = Path::new(&now) != target || !owned_as(&entry.stat, &recorded);
                    if changed && pass.differs(&relative) {
                        dir.remove(&entry.name)?;
                        self.put(dir, &entry.name, &relative, baseline)?;
                        pass.done.restored += 1;
                    }
                }
                Item::File { .. } => {
                    let changed =
                        Seen::of(&entry.stat) != recorded.seen || !owned_as(&entry.stat, &recorded);
                    if changed && pass.differs(&relative) {
                        self.put(dir, &entry.name, &relative, baseline)?;
                        pass.done.restored += 1;
                    }
                }
            }
        }
        // What the run removed (or what was replaced by something else).
        let missing: Vec<PathBuf> = baseline
            .entries
            .keys()
            .filter(|p| p.parent() == Some(prefix) && !p.as_os_str().is_empty())
            .filter(|p| !present.contains(p.file_name().unwrap_or_default()))
            .cloned()
            .collect();
        for relative in missing {
            if !pass.differs(&relative) {
                continue;
            }
            let name = relative.file_name().unwrap_or_default().to_owned();
            self.put(dir, &name, &relative, baseline)?;
            pass.done.restored += 1;
            if matches!(baseline.entries[&relative].item, Item::Dir) {
                if let Some(mut sub) = dir.child(&name)? {
                    self.restore_dir(&mut sub, &relative, baseline, pass, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    /// Creates `name` in `dir` as recorded for `relative` (replacing a file
    /// there atomically), and records its new stat.
    fn put(
        &self,
        dir: &DirFd,
        name: &OsStr,
        relative: &Path,
        baseline: &mut HomeBaseline,
    ) -> Result<(), HomeError> {
        let recorded = baseline.entries[relative].clone();
        let path = dir.path().join(name);
        let (uid, gid) = (Uid::from_raw(recorded.uid), Gid::from_raw(recorded.gid));
        let mode = Mode::from_bits_truncate(recorded.mode);
        match &recorded.item {
            Item::Dir => {
                match nix::sys::stat::mkdirat(dir.fd(), name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(nofollow::sys(&path)(errno).into()),
                }
                let sub = dir
                    .child(name)?
                    .ok_or_else(|| nofollow::sys(&path)(Errno::ENOENT))?;
                fix_owner_mode(&sub, &recorded)?;
            }
            Item::Link { target } => {
                nix::unistd::symlinkat(target.as_path(), dir.fd(), name)
                    .map_err(nofollow::sys(&path))?;
                nix::unistd::fchownat(
                    dir.fd(),
                    name,
                    Some(uid),
                    Some(gid),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(nofollow::sys(&path))?;
            }
            Item::File { sha256, size } => {
                let blob = self.dir.join(BLOBS).join(sha256);
                let mut content =
                    std::fs::File::open(&blob).map_err(|_| HomeError::Blob(relative.into()))?;
                // A fresh name nobody can have planted, created exclusively;
                // renamed over whatever stands at `name` (a link is replaced,
                // never followed).
                let temp = format!(".runner-agent-restore-{:016x}", fastrand::u64(..));
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let fd = nix::fcntl::openat(
                    dir.fd(),
                    temp.as_str(),
                    flags,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(nofollow::sys(&path))?;
                let mut file = std::fs::File::from(fd);
                let written = crate::digest::copy_hashed(&mut content, &mut file)
                    .map_err(io(&path))
                    .and_then(|copied| match copied == (*size, sha256.clone()) {
                        true => Ok(()),
                        false => Err(HomeError::Blob(relative.into())),
                    })
                    .and_then(|()| {
                        nix::unistd::fchown(file.as_fd(), Some(uid), Some(gid))
                            .and_then(|()| nix::sys::stat::fchmod(file.as_fd(), mode))
                            .map_err(|e| nofollow::sys(&path)(e).into())
                    })
                    .and_then(|()| {
                        nix::fcntl::renameat(dir.fd(), temp.as_str(), dir.fd(), name)
                            .map_err(|e| nofollow::sys(&path)(e).into())
                    });
                if let Err(e) = written {
                    let _ = nix::unistd::unlinkat(
                        dir.fd(),
                        temp.as_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    );
                    return Err(e);
                }
            }
        }
        if let Some(stat) = dir.stat(name)? {
            if let Some(rec) = baseline.entries.get_mut(relative) {
                rec.seen = Seen::of(&stat);
            }
        }
        Ok(())
    }
}

fn fix_owner_mode(dir: &DirFd, recorded: &Recorded) -> Result<(), HomeError> {
    let stat = nix::sys::stat::fstat(dir.fd()).map_err(nofollow::sys(dir.path()))?;
    if !owned_as(&stat, recorded) {
        nix::unistd::fchown(
            dir.fd(),
            Some(Uid::from_raw(recorded.uid)),
            Some(Gid::from_raw(recorded.gid)),
        )
        .map_err(nofollow::sys(dir.path()))?;
        nix::sys::stat::fchmod(dir.fd(), Mode::from_bits_truncate(recorded.mode))
            .map_err(nofollow::sys(dir.path()))?;
    }
    Ok(())
}

mod entry;
#[cfg(test)]
mod tests;

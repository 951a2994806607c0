//! File operations the root-side reset makes in places the runner user can
//! write (`_work`, `_diag`, the home, temp dirs). A job may have replaced
//! any directory there with a link to somewhere else (root's or the
//! operator's); a path string resolved by the kernel would follow it. So
//! every step here goes from an open directory descriptor to the next with
//! `O_NOFOLLOW | O_DIRECTORY`, names are looked at with
//! `AT_SYMLINK_NOFOLLOW`, and a link where a directory belongs is removed
//! as a link, never entered. Only the starting directory is opened by
//! path: it is configured by the operator (the install dir, the home, /tmp)
//! and must itself not be a link.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Deeper trees than this are not walked: the reset fails instead (a job
/// nesting directories without end must not exhaust the agent's
/// descriptors or stack).
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{path}: {errno}")]
    Sys { path: PathBuf, errno: Errno },
    #[error("{0}: is a symbolic link; refusing to start from it")]
    RootIsLink(PathBuf),
    #[error("{0}: more than {MAX_DEPTH} directories deep; not walked")]
    TooDeep(PathBuf),
}

pub(crate) fn sys(path: &Path) -> impl FnOnce(Errno) -> FsError + '_ {
    move |errno| FsError::Sys {
        path: path.to_owned(),
        errno,
    }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// What a name in a directory is, never resolved through a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Link,
    Other,
}

pub fn kind_of(stat: &FileStat) -> Kind {
    match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => Kind::Link,
        _ => Kind::Other,
    }
}

/// One entry of a directory, as `lstat` sees it.
#[derive(Debug)]
pub struct Entry {
    pub name: OsString,
    pub stat: FileStat,
}

impl Entry {
    pub fn kind(&self) -> Kind {
        kind_of(&self.stat)
    }
}

/// An open directory, and the path it was reached by (for messages only:
/// nothing is ever resolved through it again).
pub struct DirFd {
    dir: Dir,
    path: PathBuf,
}

impl DirFd {
    /// Opens `path` itself; `None` when it does not exist. A link there is
    /// an error: the operator's configured directory is not followed.
    pub fn open(path: &Path) -> Result<Option<DirFd>, FsError> {
        match Dir::open(path, DIR_FLAGS, Mode::empty()) {
            Ok(dir) => Ok(Some(DirFd {
                dir,
                path: path.to_owned(),
            })),
            Err(Errno::ENOENT) => Ok(None),
            // O_DIRECTORY on a link says ENOTDIR on Linux, ELOOP elsewhere.
            Err(Errno::ELOOP | Errno::ENOTDIR) if path.is_symlink() => {
                Err(FsError::RootIsLink(path.to_owned()))
            }
            Err(errno) => Err(sys(path)(errno)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// `lstat` of `name` in this directory; `None` when it is gone.
    pub fn stat(&self, name: &OsStr) -> Result<Option<FileStat>, FsError> {
        match fstatat(self.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(stat)),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(sys(&self.path.join(name))(errno)),
        }
    }

    /// The subdirectory `name`, if it is a real directory: `Ok(None)` when
    /// it is missing, a link or not a directory (the caller decides what to
    /// do with those; nothing is entered).
    pub fn child(&self, name: &OsStr) -> Result<Option<DirFd>, FsError> {
        let path = self.path.join(name);
        match nix::fcntl::openat(self.fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(DirFd {
                dir: Dir::from_fd(fd).map_err(sys(&path))?,
                path,
            })),
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => Ok(None),
            Err(errno) => Err(sys(&path)(errno)),
        }
    }

    /// The file `name` opened for reading, never through a link, never
    /// blocking on a fifo; `None` when it is gone, a link or a directory.
    pub fn open_file(&self, name: &OsStr) -> Result<Option<std::fs::File>, FsError> {
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(self.fd(), name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(std::fs::File::from(fd))),
            Err(Errno::ENOENT | Errno::ELOOP | Errno::EISDIR) => Ok(None),
            Err(errno) => Err(sys(&self.path.join(name))(errno)),
        }
    }

    /// Where the link `name` points.
    pub fn read_link(&self, name: &OsStr) -> Result<OsString, FsError> {
        nix::fcntl::readlinkat(self.fd(), name).map_err(sys(&self.path.join(name)))
    }

    /// Every entry but `.` and `..`, with its `lstat`. An entry removed
    /// while we look is left out.
    pub fn entries(&mut self) -> Result<Vec<Entry>, FsError> {
        let mut names = Vec::new();
        for entry in self.dir.iter() {
            let entry = entry.map_err(sys(&self.path))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsStr::from_bytes(name).to_owned());
            }
        }
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            if let Some(stat) = self.stat(&name)? {
                found.push(Entry { name, stat });
            }
        }
        Ok(found)
    }

    /// Removes `name` whatever it is (a directory with all it holds, a
    /// link as a link); returns how many names went, 0 when it was gone.
    pub fn remove(&self, name: &OsStr) -> Result<usize, FsError> {
        self.remove_at(name, 0)
    }

    fn remove_at(&self, name: &OsStr, depth: usize) -> Result<usize, FsError> {
        let path = self.path.join(name);
        let Some(stat) = self.stat(name)? else {
            return Ok(0);
        };
        let mut removed = 0;
        let flag = if kind_of(&stat) == Kind::Dir {
            if depth >= MAX_DEPTH {
                return Err(FsError::TooDeep(path));
            }
            // Swapped for a link since the stat: `child` does not follow
            // it, and unlinking it below as a directory then fails.
            if let Some(mut dir) = self.child(name)? {
                for entry in dir.entries()? {
                    removed += dir.remove_at(&entry.name, depth + 1)?;
                }
            }
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match nix::unistd::unlinkat(self.fd(), name, flag) {
            Ok(()) => Ok(removed + 1),
            Err(Errno::ENOENT) => Ok(removed),
            Err(errno) => Err(sys(&path)(errno)),
        }
    }

    /// Opens `relative` one real directory at a time. `Ok((dir, None))`:
    /// all of it (`dir` is `None` when `relative` names this directory);
    /// `Ok((dir, Some(name)))`: `name` in `dir` (or in this directory) is
    /// missing, a link or not a directory, and nothing below it is opened.
    fn resolve(&self, relative: &Path) -> Result<(Option<DirFd>, Option<OsString>), FsError> {
        let mut current: Option<DirFd> = None;
        for component in relative.components() {
            let Component::Normal(name) = component else {
                continue;
            };
            match current.as_ref().unwrap_or(self).child(name)? {
                Some(next) => current = Some(next),
                None => return Ok((current, Some(name.to_owned()))),
            }
        }
        Ok((current, None))
    }

    /// The directory at `relative` below this one, every component a real
    /// directory. A component that is a link or a file is removed (it
    /// stands where a directory belongs) and the walk stops there:
    /// `Ok(None)`, as when a component is missing.
    pub fn descend(&self, relative: &Path) -> Result<Option<DirFd>, FsError> {
        match self.resolve(relative)? {
            (Some(dir), None) => Ok(Some(dir)),
            (None, None) => DirFd::open_again(self),
            (parent, Some(name)) => {
                let here = parent.as_ref().unwrap_or(self);
                if here.stat(&name)?.is_some() {
                    tracing::warn!(path = %here.path.join(&name).display(), "a link or file where a directory belongs; removed, not followed");
                    here.remove(&name)?;
                }
                Ok(None)
            }
        }
    }

    /// The directory at `relative` below this one if every component is a
    /// real directory; `None` otherwise. Nothing is changed (the check's
    /// way to look).
    pub fn lookup(&self, relative: &Path) -> Result<Option<DirFd>, FsError> {
        match self.resolve(relative)? {
            (Some(dir), None) => Ok(Some(dir)),
            (None, None) => DirFd::open_again(self),
            (_, Some(_)) => Ok(None),
        }
    }

    /// Whether anything stands at `relative` or in the way to it (a link
    /// or file where a directory on the way belongs).
    pub fn exists(&self, relative: &Path) -> Result<bool, FsError> {
        match self.resolve(relative)? {
            (parent, Some(name)) => Ok(parent.as_ref().unwrap_or(self).stat(&name)?.is_some()),
            (_, None) => Ok(true),
        }
    }

    fn open_again(dir: &DirFd) -> Result<Option<DirFd>, FsError> {
        let fd =
            nix::fcntl::openat(dir.fd(), ".", DIR_FLAGS, Mode::empty()).map_err(sys(&dir.path))?;
        Ok(Some(DirFd {
            dir: Dir::from_fd(fd).map_err(sys(&dir.path))?,
            path: dir.path.clone(),
        }))
    }

    /// Removes the entry at `relative` below this directory (its parents
    /// walked as in `descend`); returns how many names went.
    pub fn remove_path(&self, relative: &Path) -> Result<usize, FsError> {
        let Some(name) = relative.file_name() else {
            return Ok(0);
        };
        let parent = relative.parent().unwrap_or(Path::new(""));
        match self.descend(parent)? {
            Some(dir) => dir.remove(name),
            None => Ok(0),
        }
    }

    /// Every file below this directory (not directories, not followed
    /// links), relative to it, with its `lstat`, to `MAX_DEPTH`.
    pub fn walk_files(&mut self) -> Result<Vec<(PathBuf, FileStat)>, FsError> {
        let mut found = Vec::new();
        self.walk_into(Path::new(""), 0, &mut |relative, entry| {
            if entry.kind() != Kind::Dir {
                found.push((relative.to_owned(), entry.stat));
            }
        })?;
        Ok(found)
    }

    /// Calls `visit` with every entry below this directory, parents before
    /// their children.
    pub fn walk(&mut self, visit: &mut dyn FnMut(&Path, &Entry)) -> Result<(), FsError> {
        self.walk_into(Path::new(""), 0, visit)
    }

    fn walk_into(
        &mut self,
        prefix: &Path,
        depth: usize,
        visit: &mut dyn FnMut(&Path, &Entry),
    ) -> Result<(), FsError> {
        if depth >= MAX_DEPTH {
            return Err(FsError::TooDeep(self.path.clone()));
        }
        for entry in self.entries()? {
            let relative = prefix.join(&entry.name);
            visit(&relative, &entry);
            if entry.kind() == Kind::Dir {
                if let Some(mut dir) = self.child(&entry.name)? {
                    dir.walk_into(&relative, depth + 1, visit)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    /// A link planted where a directory belongs, at the end of a path or in
    /// its middle, is removed as a link; what it points at stays.
    #[test]
    fn links_are_removed_never_entered() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("precious");
        touch(&outside.join("a"));
        touch(&outside.join("sub/b"));
        let base = root.path().join("base");
        std::fs::create_dir_all(base.join("real")).unwrap();
        symlink(&outside, base.join("whole")).unwrap();
        symlink(&outside, base.join("real/middle")).unwrap();
        let dir = DirFd::open(&base).unwrap().unwrap();
        assert_eq!(dir.remove(OsStr::new("whole")).unwrap(), 1);
        // Through a link in the middle: the link goes, nothing below it.
        assert_eq!(dir.remove_path(Path::new("real/middle/sub/b")).unwrap(), 0);
        assert!(!base.join("real/middle").exists());
        assert!(dir.descend(Path::new("real")).unwrap().is_some());
        assert!(outside.join("a").exists() && outside.join("sub/b").exists());
        // The starting directory itself may not be a link.
        let link = root.path().join("link");
        symlink(&outside, &link).unwrap();
        assert!(matches!(DirFd::open(&link), Err(FsError::RootIsLink(_))));
        assert!(DirFd::open(&root.path().join("missing")).unwrap().is_none());
    }

    #[test]
    fn whole_trees_go_and_walks_list_files_without_following() {
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        touch(&outside.join("kept"));
        let base = root.path().join("base");
        touch(&base.join("t/a/b/c"));
        touch(&base.join("t/d"));
        symlink(&outside, base.join("t/a/out")).unwrap();
        let mut dir = DirFd::open(&base).unwrap().unwrap();
        let mut files: Vec<PathBuf> = dir.walk_files().unwrap().into_iter().map(|f| f.0).collect();
        files.sort();
        assert_eq!(
            files,
            ["t/a/b/c", "t/a/out", "t/d"].map(PathBuf::from).to_vec()
        );
        assert_eq!(dir.remove(OsStr::new("t")).unwrap(), 6);
        assert!(!base.join("t").exists());
        assert!(outside.join("kept").exists());
    }

    #[test]
    fn a_tree_past_the_depth_bound_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let mut deep = root.path().join("d");
        for _ in 0..=MAX_DEPTH {
            deep.push("x");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let dir = DirFd::open(root.path()).unwrap().unwrap();
        assert!(matches!(
            dir.remove(OsStr::new("d")),
            Err(FsError::TooDeep(_))
        ));
    }
}

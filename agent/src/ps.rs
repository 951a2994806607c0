//! The one reader of `/proc`: processes for the runner's tree stop
//! (`runner/tree.rs`), the reset's sweep of the runner user
//! (`reset/procs.rs`) and its clean-slate check; the agent's own mounts and
//! cgroups, and the machine's memory, for the runner's cgroup
//! (`reset/cgroup.rs`). A job controls its processes' names
//! (any bytes, `prctl(PR_SET_NAME)`), so nothing here decodes them as
//! text; and a `/proc` that cannot be read is an error, never "no process
//! left": the callers decide whether to kill, and must not decide on a
//! read that failed. A process that exits while we look is simply gone.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// Exited, waiting for its parent (`Z`) or dead (`X`).
    pub zombie: bool,
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// The command name as the kernel has it (bytes, not text).
    pub name: Vec<u8>,
    /// `/proc/<pid>/cgroup` as read: `id:controllers:path` lines.
    pub cgroups: Vec<u8>,
}

impl Process {
    /// Whether any of its uids is `uid` (a setuid helper still counts).
    pub fn has_uid(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    /// Whether it is in the cgroup at `path` (as `/proc/<pid>/cgroup`
    /// names it) or one below it, in any hierarchy.
    pub fn in_cgroup(&self, path: &Path) -> bool {
        self.cgroups.split(|b| *b == b'\n').any(|line| {
            let mut fields = line.splitn(3, |b| *b == b':');
            let in_path = fields
                .nth(2)
                .map(|p| Path::new(std::ffi::OsStr::from_bytes(p)));
            in_path.is_some_and(|p| p.starts_with(path))
        })
    }

    /// The name for a log line.
    pub fn name_lossy(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: unexpected content")]
    Parse { path: PathBuf },
    #[error("reading /proc/self: {0}")]
    Own(String),
}

/// Gone while we looked: not an error.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ESRCH)
}

/// Where `/proc` is; the tests point it at a broken copy.
fn proc_root() -> PathBuf {
    #[cfg(test)]
    if let Some(root) = tests::PROC_ROOT.with(|r| r.borrow().clone()) {
        return root;
    }
    PathBuf::from("/proc")
}

/// Every process on the host, read now.
pub fn snapshot() -> Result<Vec<Process>, PsError> {
    let root = proc_root();
    let read_err = |path: PathBuf| move |source| PsError::Read { path, source };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(read_err(root.clone()))? {
        let entry = entry.map_err(read_err(root.clone()))?;
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(process) = read(&root, pid)? {
            found.push(process);
        }
    }
    Ok(found)
}

/// One process; `None` when it is gone.
pub fn read_one(pid: i32) -> Result<Option<Process>, PsError> {
    read(&proc_root(), pid)
}

fn read(root: &std::path::Path, pid: i32) -> Result<Option<Process>, PsError> {
    let dir = root.join(pid.to_string());
    let mut texts = Vec::with_capacity(3);
    for file in ["stat", "status", "cgroup"] {
        let path = dir.join(file);
        match std::fs::read(&path) {
            Ok(bytes) => texts.push((path, bytes)),
            Err(e) if vanished(&e) => return Ok(None),
            Err(source) => return Err(PsError::Read { path, source }),
        }
    }
    let [(stat_path, stat), (status_path, status), (_, cgroups)] =
        <[_; 3]>::try_from(texts).expect("three reads");
    let (name, ppid, pgrp, session, zombie) =
        parse_stat(&stat).ok_or(PsError::Parse { path: stat_path })?;
    let uids = parse_uids(&status).ok_or(PsError::Parse { path: status_path })?;
    Ok(Some(Process {
        pid,
        ppid,
        pgrp,
        session,
        zombie,
        uids,
        name,
        cgroups,
    }))
}

/// `/proc/<pid>/cmdline`: the arguments, NUL-separated.
pub fn cmdline(pid: i32) -> io::Result<Vec<u8>> {
    std::fs::read(proc_root().join(pid.to_string()).join("cmdline"))
}

/// `/proc/<pid>/cwd`: where it works.
pub fn cwd(pid: i32) -> io::Result<PathBuf> {
    std::fs::read_link(proc_root().join(pid.to_string()).join("cwd"))
}

/// Whether a process `pid` exists (a zombie too).
pub fn exists(pid: u32) -> bool {
    proc_root().join(pid.to_string()).exists()
}

/// The agent's own mount table and cgroup membership.
pub fn own_mounts_and_cgroups(
) -> Result<(Vec<procfs::process::MountInfo>, Vec<procfs::ProcessCGroup>), PsError> {
    let own = |e: procfs::ProcError| PsError::Own(e.to_string());
    let me = procfs::process::Process::myself().map_err(own)?;
    let mounts = me.mountinfo().map_err(own)?.0;
    let groups = me.cgroups().map_err(own)?.0;
    Ok((mounts, groups))
}

/// The machine's memory (`MemTotal`), in bytes.
pub fn mem_total() -> Option<u64> {
    use procfs::Current;
    Some(procfs::Meminfo::current().ok()?.mem_total)
}

/// `pid (name) state ppid pgrp session ...`: the name may hold spaces and
/// parentheses itself, so the fields are read after the last `)`.
fn parse_stat(stat: &[u8]) -> Option<(Vec<u8>, i32, i32, i32, bool)> {
    let open = stat.iter().position(|b| *b == b'(')?;
    let close = stat.iter().rposition(|b| *b == b')')?;
    let name = stat.get(open + 1..close)?.to_vec();
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let mut number = || fields.next()?.parse::<i32>().ok();
    let (ppid, pgrp, session) = (number()?, number()?, number()?);
    Some((name, ppid, pgrp, session, state == "Z" || state == "X"))
}

/// The `Uid:` line of `status` (real, effective, saved, filesystem). The
/// file also holds the name, unescaped bytes: only this line is decoded.
fn parse_uids(status: &[u8]) -> Option<[u32; 4]> {
    let line = status
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"Uid:"))?;
    let text = std::str::from_utf8(line).ok()?;
    let uids: Vec<u32> = text
        .split_ascii_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    uids.try_into().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        pub(crate) static PROC_ROOT: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }

    /// Points this thread's snapshots at `root` until the guard drops.
    pub(crate) struct FakeProc;
    impl FakeProc {
        pub(crate) fn at(root: PathBuf) -> FakeProc {
            PROC_ROOT.with(|r| *r.borrow_mut() = Some(root));
            FakeProc
        }
    }
    impl Drop for FakeProc {
        fn drop(&mut self) {
            PROC_ROOT.with(|r| *r.borrow_mut() = None);
        }
    }

    #[test]
    fn names_are_bytes_and_fields_follow_the_last_parenthesis() {
        let stat = b"42 (a) b\xff) c) S 7 42 40 0 -1";
        let (name, ppid, pgrp, session, zombie) = parse_stat(stat).unwrap();
        assert_eq!(name, b"a) b\xff) c");
        assert_eq!((ppid, pgrp, session, zombie), (7, 42, 40, false));
        let status = b"Name:\tx\xff\nUid:\t1001\t1001\t0\t1001\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_uids(status), Some([1001, 1001, 0, 1001]));
        assert_eq!(parse_uids(b"Name:\tx\n"), None);
    }

    #[test]
    fn cgroup_membership_is_by_path_in_any_hierarchy() {
        let process = |cgroups: &[u8]| Process {
            pid: 1,
            ppid: 0,
            pgrp: 1,
            session: 1,
            zombie: false,
            uids: [0; 4],
            name: b"x".to_vec(),
            cgroups: cgroups.to_vec(),
        };
        let runner = Path::new("/system.slice/runner-agent.service/runner");
        let v2 = process(b"0::/system.slice/runner-agent.service/runner/sub\n");
        assert!(v2.in_cgroup(runner));
        let v1 = process(b"4:freezer:/system.slice/runner-agent.service/runner\n0::/user.slice\n");
        assert!(v1.in_cgroup(runner));
        // A sibling whose name starts alike is not inside.
        let sibling = process(b"0::/system.slice/runner-agent.service/runner2\n");
        assert!(!sibling.in_cgroup(runner));
        assert!(!process(b"").in_cgroup(runner));
    }

    #[test]
    fn this_process_is_in_the_snapshot_with_its_uid() {
        let all = snapshot().unwrap();
        let me = all
            .iter()
            .find(|p| p.pid == std::process::id() as i32)
            .expect("self in the snapshot");
        assert!(me.has_uid(nix::unistd::getuid().as_raw()));
        assert!(!me.zombie);
    }

    /// A process whose files cannot be read (not gone: unreadable) is an
    /// error, not a missing process.
    #[test]
    fn an_unreadable_process_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("77/stat")).unwrap();
        let _fake = FakeProc::at(root.path().to_owned());
        assert!(matches!(snapshot(), Err(PsError::Read { .. })));
        std::fs::create_dir_all(root.path().join("78")).unwrap();
        std::fs::remove_dir_all(root.path().join("77")).unwrap();
        // Gone while looked at (no files): skipped.
        assert_eq!(snapshot().unwrap(), vec![]);
        std::fs::write(root.path().join("78/stat"), "garbage").unwrap();
        std::fs::write(root.path().join("78/status"), "Uid:\t1\t1\t1\t1\n").unwrap();
        std::fs::write(root.path().join("78/cgroup"), "0::/\n").unwrap();
        assert!(matches!(snapshot(), Err(PsError::Parse { .. })));
    }
}

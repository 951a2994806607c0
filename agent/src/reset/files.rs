//! Files a run leaves: the work directory (but for what is kept as a
//! cache), the runner's diagnostic logs (rotated, not wiped: they are what
//! an operator reads after a failed run), credentials in the runner user's
//! home, and the user's temp files. Links are removed, never followed.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Removes `path`, whatever it is; gone already is fine.
fn remove(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let result = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn with_path(path: &Path) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(with_path(dir)))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(with_path(dir)(e)),
    }
}

/// Empties `work` but for the `keep` paths (relative to it). A kept path
/// deeper down keeps the directories above it, and only them.
pub fn clean_work(work: &Path, keep: &[PathBuf]) -> Result<usize, String> {
    let mut removed = 0;
    for entry in entries(work)? {
        let name = PathBuf::from(entry.file_name().unwrap_or_default());
        if keep.iter().any(|k| k == &name) {
            continue;
        }
        let deeper: Vec<PathBuf> = keep
            .iter()
            .filter_map(|k| k.strip_prefix(&name).ok())
            .filter(|rest| !rest.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        let is_real_dir = std::fs::symlink_metadata(&entry).is_ok_and(|m| m.is_dir());
        if !deeper.is_empty() && is_real_dir {
            removed += clean_work(&entry, &deeper)?;
        } else if remove(&entry).map_err(with_path(&entry))? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Keeps the `keep` newest files of `diag` (and its subdirectories) as
/// long as they fit in `max_bytes`; removes the rest.
pub fn rotate_diag(diag: &Path, keep: usize, max_bytes: u64) -> Result<usize, String> {
    let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    let mut dirs = vec![diag.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for path in entries(&dir)? {
            let meta = std::fs::symlink_metadata(&path).map_err(with_path(&path))?;
            if meta.is_dir() {
                dirs.push(path);
            } else {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                files.push((mtime, meta.len(), path));
            }
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let (mut kept, mut bytes, mut removed) = (0, 0u64, 0);
    for (_, size, path) in files {
        if kept < keep && bytes + size <= max_bytes {
            kept += 1;
            bytes += size;
        } else if remove(&path).map_err(with_path(&path))? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Files under `dir`, relative to it (what `.ssh` held at first start).
pub fn list_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(current) = dirs.pop() {
        for path in entries(&current).unwrap_or_default() {
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                dirs.push(path.clone());
            }
            if let Ok(relative) = path.strip_prefix(dir) {
                found.insert(relative.to_path_buf());
            }
        }
    }
    found
}

/// Removes `paths` from `home`; `.ssh` only loses what `ssh_baseline`
/// (relative to `.ssh`) did not hold.
pub fn clean_home(
    home: &Path,
    paths: &[PathBuf],
    ssh_baseline: &BTreeSet<PathBuf>,
) -> Result<usize, String> {
    let mut removed = 0;
    for relative in paths {
        let path = home.join(relative);
        if relative == Path::new(".ssh") {
            // Deepest first, so a new directory goes after its files.
            for extra in list_files(&path).iter().rev() {
                if !ssh_baseline.contains(extra) {
                    let full = path.join(extra);
                    if remove(&full).map_err(with_path(&full))? {
                        removed += 1;
                    }
                }
            }
        } else if remove(&path).map_err(with_path(&path))? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes what `uid` owns at the top of each temp dir.
pub fn clean_temp(dirs: &[PathBuf], uid: u32) -> Result<usize, String> {
    use std::os::unix::fs::MetadataExt;
    let mut removed = 0;
    for dir in dirs {
        for path in entries(dir)? {
            let owned = std::fs::symlink_metadata(&path).is_ok_and(|m| m.uid() == uid);
            if owned && remove(&path).map_err(with_path(&path))? {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![b'x'; bytes]).unwrap();
    }

    #[test]
    fn work_is_emptied_but_for_the_keep_list_and_links_are_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("_work");
        let outside = root.path().join("outside");
        touch(&outside.join("precious"), 1);
        touch(&work.join("_tool/node/18/bin/node"), 1);
        touch(&work.join("repo/repo/src/main.rs"), 1);
        touch(&work.join("cache/keep/a"), 1);
        touch(&work.join("cache/drop/b"), 1);
        touch(&work.join("_temp/secret"), 1);
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        let keep = [PathBuf::from("_tool"), PathBuf::from("cache/keep")];
        let removed = clean_work(&work, &keep).unwrap();
        assert_eq!(removed, 4, "repo, cache/drop, _temp, link");
        assert!(work.join("_tool/node/18/bin/node").exists());
        assert!(work.join("cache/keep/a").exists());
        assert!(!work.join("cache/drop").exists());
        assert!(!work.join("repo").exists());
        assert!(!work.join("link").exists());
        assert!(outside.join("precious").exists(), "link target untouched");
        assert_eq!(clean_work(&root.path().join("missing"), &keep).unwrap(), 0);
    }

    #[test]
    fn diag_keeps_the_newest_files_within_the_cap() {
        let root = tempfile::tempdir().unwrap();
        let diag = root.path().join("_diag");
        for i in 0..6 {
            let path = diag.join(format!("Worker_{i}.log"));
            touch(&path, 100);
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000 + i);
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        assert_eq!(rotate_diag(&diag, 4, 10_000).unwrap(), 2);
        assert!(diag.join("Worker_5.log").exists());
        assert!(!diag.join("Worker_1.log").exists());
        // The size cap bites first: 250 bytes hold two files.
        assert_eq!(rotate_diag(&diag, 4, 250).unwrap(), 2);
        assert!(diag.join("Worker_5.log").exists() && diag.join("Worker_4.log").exists());
        assert!(!diag.join("Worker_3.log").exists());
    }

    #[test]
    fn home_credentials_go_and_ssh_keeps_what_was_there_first() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        touch(&h.join(".docker/config.json"), 1);
        touch(&h.join(".docker/buildx/keep"), 1);
        touch(&h.join(".aws/credentials"), 1);
        touch(&h.join(".ssh/authorized_keys"), 1);
        let baseline = list_files(&h.join(".ssh"));
        touch(&h.join(".ssh/id_job"), 1);
        touch(&h.join(".ssh/new/key"), 1);
        touch(&h.join(".bashrc"), 1);
        let paths: Vec<PathBuf> = runner_agent_common::config::DEFAULT_HOME_PATHS
            .iter()
            .map(PathBuf::from)
            .collect();
        let removed = clean_home(h, &paths, &baseline).unwrap();
        assert_eq!(removed, 5, "config.json, .aws, id_job, new/key, new");
        assert!(!h.join(".docker/config.json").exists());
        assert!(h.join(".docker/buildx/keep").exists());
        assert!(!h.join(".aws").exists());
        assert!(h.join(".ssh/authorized_keys").exists());
        assert!(!h.join(".ssh/id_job").exists() && !h.join(".ssh/new").exists());
        assert!(h.join(".bashrc").exists());
    }

    #[test]
    fn temp_files_of_the_user_only() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        touch(&tmp.path().join("mine/a"), 1);
        touch(&tmp.path().join("mine.txt"), 1);
        let me = std::fs::metadata(tmp.path().join("mine.txt"))
            .unwrap()
            .uid();
        assert_eq!(clean_temp(&[tmp.path().to_path_buf()], me + 1).unwrap(), 0);
        assert_eq!(clean_temp(&[tmp.path().to_path_buf()], me).unwrap(), 2);
        assert_eq!(entries(tmp.path()).unwrap().len(), 0);
    }
}

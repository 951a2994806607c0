//! From a verified tarball to the install dir: unpacked safely into a
//! staging directory beside it, marked, and renamed into place (root's:
//! `layout.rs` decides what the runner user may write), so the install dir never holds half a runner.

use super::error::{io_err, InstallError};
use super::present::VERSION_MARKER;
use std::path::{Component, Path, PathBuf};

/// What a new runner version takes over from the one it replaces: `_work`
/// (the jobs' tool cache `_work/_tool` and whatever else the reset keeps
/// between runs) and the agent's job hooks. The rest (`_diag` logs, the
/// `.env`/`.path` that config.sh writes) belongs to the old version.
const CARRIED: &[&str] = &["_work", ".runner-agent"];

pub(super) fn unpack_into_place(
    tarball: &Path,
    dir: &Path,
    version: &str,
) -> Result<(), InstallError> {
    let staging = sibling(dir, "partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    let result = (|| {
        let file = std::fs::File::open(tarball).map_err(io_err(tarball))?;
        unpack_safely(flate2::read::GzDecoder::new(file), &staging)?;
        std::fs::write(staging.join(VERSION_MARKER), format!("{version}\n"))
            .map_err(io_err(&staging))?;
        swap_in(&staging, dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// `.<leaf>.<what>-<pid>` beside `dir`: on its filesystem, so renames
/// between them are atomic.
pub(super) fn sibling(dir: &Path, what: &str) -> PathBuf {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let leaf = dir.file_name().unwrap_or_default().to_string_lossy();
    parent.join(format!(".{leaf}.{what}-{}", std::process::id()))
}

/// Renames `staging` to `dir`, moving the `CARRIED` entries of the old
/// `dir` into it first. Any failure puts the old `dir` back as it was: an
/// entry that cannot move (a `_work` that is a mount point: EBUSY) must not
/// be deleted with the old version.
fn swap_in(staging: &Path, dir: &Path) -> Result<(), InstallError> {
    if !dir.exists() {
        return std::fs::rename(staging, dir).map_err(io_err(dir));
    }
    let old = sibling(dir, "old");
    std::fs::rename(dir, &old).map_err(io_err(dir))?;
    let mut carried = Vec::new();
    let mut result = Ok(());
    for name in CARRIED {
        let from = old.join(name);
        // The tarball has none of these; one that does keeps its own.
        if from.symlink_metadata().is_err() || staging.join(name).symlink_metadata().is_ok() {
            continue;
        }
        match std::fs::rename(&from, staging.join(name)) {
            Ok(()) => carried.push(*name),
            Err(e) => {
                result = Err(io_err(&from)(e));
                break;
            }
        }
    }
    if result.is_ok() {
        result = std::fs::rename(staging, dir).map_err(io_err(dir));
    }
    if result.is_err() {
        for name in carried {
            let _ = std::fs::rename(staging.join(name), old.join(name));
        }
        let _ = std::fs::rename(&old, dir);
        return result;
    }
    if let Err(e) = std::fs::remove_dir_all(&old) {
        tracing::warn!(path = %old.display(), error = %e, "could not remove the replaced runner");
    }
    Ok(())
}

/// Unpacks a tar stream into `dest`, refusing absolute paths, `..`, links
/// that point outside `dest`, and device or fifo entries.
pub fn unpack_safely(reader: impl std::io::Read, dest: &Path) -> Result<(), InstallError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(io_err(dest))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(dest))?;
        let path = entry.path().map_err(io_err(dest))?.into_owned();
        let unsafe_entry = |reason: &str| InstallError::UnsafeEntry {
            entry: path.display().to_string(),
            reason: reason.to_owned(),
        };
        let depth =
            lexical_depth(&path).ok_or_else(|| unsafe_entry("path leaves the install dir"))?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(io_err(dest))?
                .ok_or_else(|| unsafe_entry("link without a target"))?
                .into_owned();
            let inside = if kind.is_symlink() {
                // A symlink resolves from its own directory.
                let parent = path.parent().unwrap_or(Path::new(""));
                lexical_depth(&parent.join(&target)).is_some() && depth > 0
            } else {
                lexical_depth(&target).is_some()
            };
            if !inside || target.is_absolute() {
                return Err(unsafe_entry(&format!(
                    "link to {} escapes",
                    target.display()
                )));
            }
        } else if !(kind.is_file()
            || kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink())
        {
            return Err(unsafe_entry("not a file, directory or link"));
        }
        entry.unpack_in(dest).map_err(io_err(dest))?;
    }
    Ok(())
}

/// The number of normal components of `path` after resolving `.` and `..`
/// lexically; `None` if it is absolute or climbs above its root.
fn lexical_depth(path: &Path) -> Option<usize> {
    let mut depth: usize = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_size(if kind.is_file() { 2 } else { 0 });
            // Write the raw name so that hostile paths reach the reader.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            let data: &[u8] = if kind.is_file() { b"hi" } else { b"" };
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn unpack(
        entries: &[(&str, tar::EntryType, Option<&str>)],
    ) -> Result<tempfile::TempDir, InstallError> {
        let dir = tempfile::tempdir().unwrap();
        unpack_safely(&tar_with(entries)[..], dir.path()).map(|()| dir)
    }

    #[test]
    fn regular_layout_unpacks() {
        use tar::EntryType as T;
        let dir = unpack(&[
            ("bin/", T::Directory, None),
            ("bin/Runner.Listener", T::Regular, None),
            ("run.sh", T::Regular, None),
            ("bin/link", T::Symlink, Some("Runner.Listener")),
            ("bin/up", T::Symlink, Some("../run.sh")),
        ])
        .unwrap();
        assert!(dir.path().join("bin/Runner.Listener").is_file());
        assert!(dir.path().join("bin/up").exists());
    }

    #[test]
    fn hostile_entries_are_refused() {
        use tar::EntryType as T;
        let cases: &[&[(&str, T, Option<&str>)]] = &[
            &[("/etc/evil", T::Regular, None)],
            &[("../evil", T::Regular, None)],
            &[("a/../../evil", T::Regular, None)],
            &[("evil", T::Symlink, Some("/etc/passwd"))],
            &[("a/evil", T::Symlink, Some("../../etc"))],
            &[("evil", T::Link, Some("../outside"))],
            &[("dev", T::Char, None)],
        ];
        for case in cases {
            let err = unpack(case).expect_err(&format!("{case:?} must be refused"));
            assert!(matches!(err, InstallError::UnsafeEntry { .. }), "{err}");
        }
    }

    /// A gzipped tarball of `run.sh` (saying `version`) in `root`.
    fn release_tarball(root: &Path, version: &str) -> PathBuf {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_size(version.len() as u64);
        builder
            .append_data(&mut header, "./run.sh", version.as_bytes())
            .unwrap();
        let path = root.join(format!("{version}.tar.gz"));
        std::fs::write(&path, builder.into_inner().unwrap().finish().unwrap()).unwrap();
        path
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_new_version_replaces_the_old_and_keeps_work_and_hooks() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runner");
        unpack_into_place(&release_tarball(root.path(), "1.0.0"), &dir, "1.0.0").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(VERSION_MARKER)).unwrap(),
            "1.0.0\n"
        );
        std::fs::create_dir_all(dir.join("_work/_tool/node")).unwrap();
        std::fs::create_dir_all(dir.join(".runner-agent")).unwrap();
        std::fs::write(dir.join(".runner-agent/job-started.sh"), "hook").unwrap();
        std::fs::create_dir_all(dir.join("_diag")).unwrap();
        std::fs::write(dir.join("only-in-1.0.0"), "").unwrap();

        unpack_into_place(&release_tarball(root.path(), "2.0.0"), &dir, "2.0.0").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("run.sh")).unwrap(),
            "2.0.0"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(VERSION_MARKER)).unwrap(),
            "2.0.0\n"
        );
        assert!(dir.join("_work/_tool/node").is_dir());
        assert_eq!(
            std::fs::read_to_string(dir.join(".runner-agent/job-started.sh")).unwrap(),
            "hook"
        );
        assert_eq!(
            names_in(&dir),
            [".runner-agent", ".runner-agent-version", "_work", "run.sh"]
        );
        // No staging or old copy is left beside it.
        let mut beside = names_in(root.path());
        beside.retain(|n| !n.ends_with(".tar.gz"));
        assert_eq!(beside, ["runner"]);
    }

    #[test]
    fn a_failed_swap_leaves_the_old_version_whole() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("runner");
        unpack_into_place(&release_tarball(root.path(), "1.0.0"), &dir, "1.0.0").unwrap();
        std::fs::create_dir_all(dir.join("_work/_tool")).unwrap();
        // A staging dir that vanished: carrying `_work` into it fails
        // after the old version was moved aside.
        let staging = root.path().join("vanished");
        let err = swap_in(&staging, &dir).unwrap_err();
        assert!(matches!(err, InstallError::Io { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("run.sh")).unwrap(),
            "1.0.0"
        );
        assert!(dir.join("_work/_tool").is_dir(), "_work lost");
        assert_eq!(
            names_in(root.path()).len(),
            2,
            "{:?}",
            names_in(root.path())
        );
    }
}

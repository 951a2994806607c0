//! What rootless Docker needs of the instance, looked at without starting
//! it: Debian's `docker.io` (its `dockerd-rootless.sh`), `rootlesskit`,
//! `slirp4netns`, `uidmap` (setuid `newuidmap`/`newgidmap`), subordinate
//! uid and gid ranges for the runner user, a /dev/net/tun that user can
//! open (slirp4netns's tap device), and unprivileged user namespaces.

use crate::runner::user::RunnerUser;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where Debian's `docker.io` ships the script (not on PATH); Docker's own
/// packages put it on PATH (`/usr/bin/dockerd-rootless.sh`).
pub const DEBIAN_SCRIPT: &str = "/usr/share/docker.io/contrib/dockerd-rootless.sh";
const SCRIPT: &str = "dockerd-rootless.sh";
/// What the script runs, found on the daemon's PATH, and the CLI that the
/// agent (readiness, the reset) and jobs use.
const PROGRAMS: &[&str] = &[
    "docker",
    "dockerd",
    "rootlesskit",
    "slirp4netns",
    "newuidmap",
    "newgidmap",
];

/// Where the host keeps things, so tests can point elsewhere.
#[derive(Debug, Clone)]
pub struct Places {
    pub path: std::ffi::OsString,
    pub debian_script: PathBuf,
    pub subuid: PathBuf,
    pub subgid: PathBuf,
    pub tun: PathBuf,
    pub userns_sysctl: PathBuf,
}

impl Places {
    /// This host, with `path` as the daemon's PATH.
    pub fn host(path: &OsStr) -> Places {
        Places {
            path: path.to_owned(),
            debian_script: DEBIAN_SCRIPT.into(),
            subuid: "/etc/subuid".into(),
            subgid: "/etc/subgid".into(),
            tun: "/dev/net/tun".into(),
            userns_sysctl: "/proc/sys/kernel/unprivileged_userns_clone".into(),
        }
    }
}

/// The script to run, or every piece that is missing (for the log and
/// `check`: one line naming all of them, so an operator fixes them at once).
pub fn find(places: &Places, user: &RunnerUser) -> Result<PathBuf, Vec<String>> {
    let mut missing = Vec::new();
    let script = on_path(&places.path, SCRIPT)
        .or_else(|| executable(&places.debian_script).then(|| places.debian_script.clone()));
    if script.is_none() {
        missing.push(format!("{SCRIPT} (package docker.io)"));
    }
    for program in PROGRAMS {
        if on_path(&places.path, program).is_none() {
            let package = match *program {
                "docker" | "dockerd" => "docker.io",
                "newuidmap" | "newgidmap" => "uidmap",
                other => other,
            };
            missing.push(format!("{program} (package {package})"));
        }
    }
    for (file, what) in [(&places.subuid, "subuid"), (&places.subgid, "subgid")] {
        match has_range(file, user) {
            Ok(true) => {}
            Ok(false) => missing.push(format!(
                "a {what} range for {} in {} (usermod --add-{what}s)",
                user.name,
                file.display()
            )),
            Err(e) => missing.push(format!("{}: {e}", file.display())),
        }
    }
    match std::fs::metadata(&places.tun) {
        // slirp4netns opens it as the runner user; Debian's udev rule
        // makes it 0666, some images ship it 0600.
        Ok(m) if m.permissions().mode() & 0o006 == 0o006 => {}
        Ok(m) => missing.push(format!(
            "{} readable and writable by all (it is {:04o}; chmod 666)",
            places.tun.display(),
            m.permissions().mode() & 0o7777
        )),
        Err(e) => missing.push(format!("{}: {e}", places.tun.display())),
    }
    // Debian's own switch; kernels without it allow them.
    if let Ok(text) = std::fs::read_to_string(&places.userns_sysctl) {
        if text.trim() == "0" {
            missing.push(format!(
                "unprivileged user namespaces ({} is 0)",
                places.userns_sysctl.display()
            ));
        }
    }
    match script {
        Some(script) if missing.is_empty() => Ok(script),
        _ => Err(missing),
    }
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn on_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| executable(p))
}

/// Whether `file` (subuid(5) format: `name-or-uid:first:count`) gives the
/// user a range. A file that does not exist gives none.
fn has_range(file: &Path, user: &RunnerUser) -> std::io::Result<bool> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let uid = user.uid.to_string();
    Ok(text.lines().any(|line| {
        let mut fields = line.trim().split(':');
        let (Some(owner), Some(_first), Some(count)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        (owner == user.name || owner == uid) && count.parse::<u64>().is_ok_and(|n| n > 0)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> RunnerUser {
        RunnerUser {
            name: "runner".into(),
            uid: nix::unistd::Uid::from_raw(1001),
            gid: nix::unistd::Gid::from_raw(1001),
            groups: vec![],
            home: "/home/runner".into(),
        }
    }

    fn exe(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A host laid out in a temp dir: every piece there, then taken away
    /// one by one, each named.
    #[test]
    fn every_missing_piece_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        for p in PROGRAMS {
            exe(&bin.join(p));
        }
        exe(&d.join("contrib.sh"));
        std::fs::write(d.join("subuid"), "other:100000:65536\n1001:165536:65536\n").unwrap();
        std::fs::write(d.join("subgid"), "runner:165536:65536\n").unwrap();
        std::fs::write(d.join("tun"), "").unwrap();
        std::fs::set_permissions(d.join("tun"), std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::write(d.join("userns"), "1\n").unwrap();
        let places = Places {
            path: bin.clone().into_os_string(),
            debian_script: d.join("contrib.sh"),
            subuid: d.join("subuid"),
            subgid: d.join("subgid"),
            tun: d.join("tun"),
            userns_sysctl: d.join("userns"),
        };
        assert_eq!(find(&places, &user()).unwrap(), d.join("contrib.sh"));
        // One on PATH comes first (Docker's own packages).
        exe(&bin.join(SCRIPT));
        assert_eq!(find(&places, &user()).unwrap(), bin.join(SCRIPT));

        std::fs::remove_file(bin.join("slirp4netns")).unwrap();
        std::fs::remove_file(bin.join("newgidmap")).unwrap();
        std::fs::write(d.join("subgid"), "runner:165536:0\n").unwrap();
        std::fs::set_permissions(d.join("tun"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(d.join("userns"), "0\n").unwrap();
        let missing = find(&places, &user()).unwrap_err();
        let text = missing.join("; ");
        assert_eq!(missing.len(), 5, "{text}");
        for part in [
            "slirp4netns (package slirp4netns)",
            "newgidmap (package uidmap)",
            "a subgid range for runner",
            "(it is 0600; chmod 666)",
            "unprivileged user namespaces",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        std::fs::remove_file(d.join("subuid")).unwrap();
        let text = find(&places, &user()).unwrap_err().join("; ");
        assert!(text.contains("a subuid range for runner"), "{text}");
    }
}

//! `[hardening] docker`: the runner user's own Docker daemon (rootless
//! Docker), which hardened mode starts for jobs that the docker group
//! would make root. Its keys live in `[hardening]`; they are parsed here.

use super::keys::Keys;
use super::ConfigError;
use std::path::PathBuf;

/// Where the daemon keeps images, containers and volumes: outside the
/// runner's home (the reset restores the home to its baseline) and outside
/// the agent's state dir (root's, 0700).
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/runner-agent-docker";
/// The daemon's `XDG_RUNTIME_DIR`: its socket, pid file and containerd's
/// sockets. Short: unix socket paths are limited to 108 bytes.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/runner-agent/docker";

/// Whether hardened mode gives jobs a rootless Docker daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootlessMode {
    /// When the packages it needs are installed (and the runner user has
    /// subordinate ids); else none, with one warning at start.
    #[default]
    Auto,
    /// Required: the agent does not start without it.
    Rootless,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootlessSettings {
    pub mode: RootlessMode,
    /// `--data-root`, owned by the runner user (0700).
    pub data_root: PathBuf,
    /// Its parent is made root's, 0755; the dir itself the runner user's.
    pub runtime_dir: PathBuf,
}

impl Default for RootlessSettings {
    fn default() -> Self {
        RootlessSettings {
            mode: RootlessMode::Auto,
            data_root: DEFAULT_DATA_ROOT.into(),
            runtime_dir: DEFAULT_RUNTIME_DIR.into(),
        }
    }
}

impl RootlessSettings {
    /// The daemon's socket, as `DOCKER_HOST` names it.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.runtime_dir.join("docker.sock").display())
    }

    /// From `[hardening]`'s `docker`, `docker_data_root` and
    /// `docker_runtime_dir`.
    pub(super) fn parse(
        at: &Keys,
        mode: Option<&str>,
        data_root: Option<PathBuf>,
        runtime_dir: Option<PathBuf>,
    ) -> Result<RootlessSettings, ConfigError> {
        let mode = match mode.unwrap_or("auto") {
            "auto" => RootlessMode::Auto,
            "rootless" => RootlessMode::Rootless,
            "off" => RootlessMode::Off,
            other => {
                return Err(at.invalid("docker", format!("{other:?}: one of auto, rootless, off")))
            }
        };
        let defaults = RootlessSettings::default();
        let data_root = at.absolute("docker_data_root", data_root.unwrap_or(defaults.data_root))?;
        let runtime_dir = at.absolute(
            "docker_runtime_dir",
            runtime_dir.unwrap_or(defaults.runtime_dir),
        )?;
        // The agent makes the parent root's and the dir the runner user's:
        // `/` itself cannot be either.
        for (key, dir) in [
            ("docker_data_root", &data_root),
            ("docker_runtime_dir", &runtime_dir),
        ] {
            if dir.parent().is_none_or(|p| p.parent().is_none()) {
                return Err(at.invalid(key, "must be a directory below another one than /"));
            }
        }
        // containerd's socket is the longest path below it.
        let longest = runtime_dir.join("docker/containerd/containerd.sock.ttrpc");
        if longest.as_os_str().len() > 107 {
            return Err(at.invalid(
                "docker_runtime_dir",
                "too long: unix sockets below it need paths under 108 bytes",
            ));
        }
        Ok(RootlessSettings {
            mode,
            data_root,
            runtime_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(
        mode: Option<&str>,
        data: Option<&str>,
        run: Option<&str>,
    ) -> Result<RootlessSettings, ConfigError> {
        let at = Keys::new(Path::new("/etc/c.toml"), "hardening");
        RootlessSettings::parse(&at, mode, data.map(Into::into), run.map(Into::into))
    }

    #[test]
    fn defaults_and_each_mode() {
        let s = parse(None, None, None).unwrap();
        assert_eq!(s, RootlessSettings::default());
        assert_eq!(
            s.docker_host(),
            "unix:///run/runner-agent/docker/docker.sock"
        );
        assert_eq!(
            parse(Some("rootless"), None, None).unwrap().mode,
            RootlessMode::Rootless
        );
        assert_eq!(
            parse(Some("off"), None, None).unwrap().mode,
            RootlessMode::Off
        );
        let err = parse(Some("system"), None, None).unwrap_err().to_string();
        assert!(
            err.contains("hardening.docker") && err.contains("auto, rootless, off"),
            "{err}"
        );
    }

    #[test]
    fn directories_are_absolute_below_a_parent_and_short_enough() {
        let s = parse(None, Some("/mnt/docker"), Some("/run/rl")).unwrap();
        assert_eq!(s.data_root, Path::new("/mnt/docker"));
        assert_eq!(s.docker_host(), "unix:///run/rl/docker.sock");
        for (data, run, key) in [
            (Some("docker"), None, "hardening.docker_data_root"),
            (Some("/docker"), None, "hardening.docker_data_root"),
            (None, Some("/"), "hardening.docker_runtime_dir"),
        ] {
            let err = parse(None, data, run).unwrap_err().to_string();
            assert!(err.contains(key), "{data:?} {run:?}: {err}");
        }
        let long = format!("/run/{}", "x".repeat(80));
        let err = parse(None, None, Some(&long)).unwrap_err().to_string();
        assert!(err.contains("108 bytes"), "{err}");
    }
}

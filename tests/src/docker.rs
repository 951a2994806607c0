//! A real Docker engine for the reset's tests: Debian's `dockerd`, started
//! with its own data root, exec root and socket under a temp dir, no bridge
//! and no iptables rules (nothing on the host's network changes), and one
//! image imported from a rootfs made of the static busybox (no registry).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const IMAGE: &str = "ra-busybox:test";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Dockerd {
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Dockerd {
    /// Starts the daemon and imports [`IMAGE`].
    pub fn start() -> Dockerd {
        // Short paths: containerd's sockets live under the exec root and
        // unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ra-dk-")
            .tempdir_in("/tmp")
            .unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("x"))
            .arg("--pidfile")
            .arg(dir.path().join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", dir.path().join("d.sock").display()))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd (Debian docker.io; scripts/setup.sh installs it)");
        let dockerd = Dockerd {
            dir,
            child: Some(child),
        };
        let started = Instant::now();
        while !dockerd.docker(&["version"]).status.success() {
            assert!(
                started.elapsed() < START_TIMEOUT,
                "dockerd did not answer:\n{}",
                dockerd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dockerd.import_busybox();
        dockerd
    }

    pub fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("d.sock").display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Runs the docker CLI against this daemon.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("--host")
            .arg(self.host())
            .args(args)
            .output()
            .expect("docker CLI")
    }

    /// Like [`Dockerd::docker`], asserting success; returns stdout's lines.
    pub fn lines(&self, args: &[&str]) -> Vec<String> {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn import_busybox(&self) {
        import_busybox(&self.host(), self.dir.path());
    }

    /// Stops the daemon (SIGTERM, as systemd would); for tests of a
    /// daemon that goes away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && started.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Imports [`IMAGE`] into the daemon at `host` (as root, which may use
/// any daemon's socket), its rootfs made under `scratch`: the static
/// busybox and a few applets (`nc` for the network tests).
pub fn import_busybox(host: &str, scratch: &Path) {
    let rootfs = scratch.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("data")).unwrap();
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "echo", "cat", "nc", "id"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-cf", "-", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new("docker")
        .args(["--host", host])
        .args(["import", "-", IMAGE])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar of the rootfs");
    assert!(out.status.success(), "docker import: {out:?}");
}

/// The static busybox (Debian busybox-static).
fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox (Debian busybox-static; scripts/setup.sh installs it)")
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // Whatever the daemon left mounted under its roots goes with it
        // (usually nothing: it unmounts at a clean stop).
        for root in ["data", "x"] {
            let _ = Command::new("umount")
                .args(["-R", "-l"])
                .arg(self.dir.path().join(root))
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Whether a process is alive (signal 0).
pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

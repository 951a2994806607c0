//! A throwaway root for running rendered user data as root, the way
//! cloud-init would, without touching the machine: a directory with its own
//! /etc, /var, /opt, /root and /usr/local, the host's /usr read-only, in a
//! private mount namespace (`unshare --mount`) entered with `chroot`. The
//! network is the host's, so the loopback stack is reachable.
//!
//! The one system program replaced is `systemctl` (there is no systemd
//! inside): [`SYSTEMCTL_STUB`] copies what systemd does for the calls the
//! user data makes, and logs each call.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

pub struct Sandbox {
    pub root: PathBuf,
}

/// `systemctl` as the rendered scripts use it, copying systemd:
/// - `daemon-reload`: forgets the loaded units. A unit is loaded (unit
///   file and drop-ins) when first started; a later change on disk is not
///   seen until the next reload, and systemctl warns that it "changed on
///   disk", as systemd does;
/// - `enable UNIT`: the `WantedBy=` symlink in
///   /etc/systemd/system/multi-user.target.wants;
/// - `enable --now` / `start` (`--no-block` queues, returns at once):
///   creates `StateDirectory=`/`ConfigurationDirectory=` under /var/lib and
///   /etc, runs the last `ExecStart=` of the unit and its drop-ins detached
///   (new session, stdin /dev/null, output to the unit's log, as the
///   journal would take it); starting an active unit does nothing;
/// - `is-active --quiet`: whether that process is alive;
/// - `restart`: stop then start;
/// - `stop`: SIGTERM (KillMode=mixed sends it to the main process), then
///   SIGKILL after 30 s (its TimeoutStopSec is 60 s; the agent's own stop
///   budget is 25 s).
///
/// Unlike systemd, the service inherits the caller's environment: that is
/// how the agent gets the loopback endpoints and test credentials.
/// A unit file that does not exist fails like systemd ("Unit file ... does
/// not exist", exit 1).
pub const SYSTEMCTL_STUB: &str = r#"#!/bin/bash
set -euo pipefail
echo "systemctl $*" >>/var/log/systemctl.calls
run=/run/fake-systemd
mkdir -p "$run"
args=()
now=0
for a in "$@"; do
    case "$a" in
        --no-block | --quiet) ;;
        --now) now=1 ;;
        *) args+=("$a") ;;
    esac
done
verb=${args[0]:-}
unit=${args[1]:-}
unit_file() {
    local d
    for d in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
        if [ -f "$d/$unit" ]; then
            echo "$d/$unit"
            return 0
        fi
    done
    echo "Failed to $verb unit: Unit file $unit does not exist." >&2
    exit 1
}
# Running, and not a zombie waiting for a reaper.
alive() {
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 1)
    [ -n "$state" ] && [ "$state" != Z ]
}
active() { [ -f "$run/$unit.pid" ] && alive "$(cat "$run/$unit.pid")"; }
# The unit file and its drop-ins, as systemd would load them now.
on_disk() {
    local f
    for f in "$(unit_file)" /etc/systemd/system/"$unit".d/*.conf; do
        [ ! -f "$f" ] || cat "$f"
    done
}
load() {
    mkdir -p "$run/units"
    if [ ! -f "$run/units/$unit" ]; then
        on_disk >"$run/units/$unit"
    elif ! on_disk | cmp -s - "$run/units/$unit"; then
        echo "Warning: The unit file, source configuration file or drop-ins of $unit changed on disk. Run 'systemctl daemon-reload' to reload units." >&2
    fi
}
start() {
    local file exec
    active && return 0
    file=$(unit_file)
    load
    exec=$(sed -n 's/^ExecStart=//p' "$run/units/$unit" | tail -n 1)
    [ -n "$exec" ] || { echo "$unit has no ExecStart" >&2; exit 1; }
    # Both take space-separated lists, as systemd reads them.
    # shellcheck disable=SC2013
    for d in $(sed -n 's/^StateDirectory=//p' "$file"); do mkdir -p "/var/lib/$d"; done
    # shellcheck disable=SC2013
    for d in $(sed -n 's/^ConfigurationDirectory=//p' "$file"); do mkdir -p "/etc/$d"; done
    # shellcheck disable=SC2086 # ExecStart is a command line
    setsid $exec </dev/null >>"/var/log/$unit.log" 2>&1 &
    echo $! >"$run/$unit.pid"
}
stop() {
    active || return 0
    local pid
    pid=$(cat "$run/$unit.pid")
    kill -TERM "$pid"
    for _ in $(seq 1 300); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        kill -KILL "$pid"
        for _ in $(seq 1 50); do
            alive "$pid" || break
            sleep 0.1
        done
    fi
    rm -f "$run/$unit.pid"
}
case "$verb" in
    daemon-reload) rm -rf "$run/units" ;;
    enable)
        file=$(unit_file)
        mkdir -p /etc/systemd/system/multi-user.target.wants
        ln -sfn "$file" "/etc/systemd/system/multi-user.target.wants/$unit"
        [ "$now" = 0 ] || start
        ;;
    start) start ;;
    restart)
        stop
        start
        ;;
    stop) stop ;;
    is-active) active ;;
    *)
        echo "systemctl stub: $verb is not something the user data should call" >&2
        exit 1
        ;;
esac
"#;

/// Mounts inside the new namespace, then chroot. Mounts made here vanish
/// with the namespace, i.e. when its last process (the agent) exits; the
/// host never sees them.
const ENTER: &str = r#"set -euo pipefail
root=$1
shift
mount --make-rprivate /
mount --bind /usr "$root/usr"
mount -o remount,bind,ro "$root/usr"
mount --bind "$root/.usr-local" "$root/usr/local"
mount --bind /dev "$root/dev"
mount --bind /proc "$root/proc"
# The cgroup hierarchies, as systemd mounts them on an instance: the agent
# refuses to serve without a cgroup for its runner.
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
exec chroot "$root" "$@"
"#;

impl Sandbox {
    /// A fresh root under `parent`, its /etc/os-release saying `os_release`
    /// (`ID-VERSION_ID`, e.g. `ubuntu-24.04`).
    pub fn new(parent: &Path, os_release: &str) -> Sandbox {
        let root = parent.join("root");
        for dir in [
            "usr",
            ".usr-local/bin",
            ".usr-local/sbin",
            "etc/systemd/system",
            "etc/skel",
            "etc/default",
            "var/lib/cloud/instance/scripts",
            "var/log",
            "var/mail",
            "var/tmp",
            "run",
            "tmp",
            "opt",
            "root",
            "home",
            "dev",
            "proc",
            "sys/fs/cgroup",
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        set_mode(&root.join("tmp"), 0o1777);
        for link in ["bin", "sbin", "lib", "lib64"] {
            let target = std::fs::read_link(Path::new("/").join(link))
                .unwrap_or_else(|_| PathBuf::from(format!("usr/{link}")));
            std::os::unix::fs::symlink(target, root.join(link)).unwrap();
        }
        // What useradd, id and getent read; copies, so users created in the
        // sandbox stay there.
        for file in [
            "passwd",
            "group",
            "shadow",
            "gshadow",
            "nsswitch.conf",
            "login.defs",
            "hosts",
            "default/useradd",
        ] {
            let from = Path::new("/etc").join(file);
            if from.exists() {
                std::fs::copy(&from, root.join("etc").join(file)).unwrap();
            }
        }
        // Every instance has a CA store (the agent's HTTPS client needs one).
        copy_tree(Path::new("/etc/ssl/certs"), &root.join("etc/ssl/certs"));
        let (id, version) = os_release.split_once('-').expect("ID-VERSION_ID");
        std::fs::write(
            root.join("etc/os-release"),
            format!("ID={id}\nVERSION_ID=\"{version}\"\nPRETTY_NAME=\"sandbox {os_release}\"\n"),
        )
        .unwrap();
        let stub = root.join(".usr-local/sbin/systemctl");
        std::fs::write(&stub, SYSTEMCTL_STUB).unwrap();
        set_mode(&stub, 0o755);
        Sandbox { root }
    }

    /// The host path of `path` inside the sandbox.
    pub fn path(&self, path: &str) -> PathBuf {
        let relative = path.trim_start_matches('/');
        match relative.strip_prefix("usr/local/") {
            Some(rest) => self.root.join(".usr-local").join(rest),
            None => self.root.join(relative),
        }
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.path(path)).unwrap_or_default()
    }

    /// Runs `args` (a command inside the sandbox) as root with exactly
    /// `env`, waiting at most `timeout` for it and for its output pipes to
    /// close, as cloud-init waits for a user-data script.
    pub async fn run(&self, args: &[&str], env: &[(String, String)], timeout: Duration) -> Output {
        let mut command = tokio::process::Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "bash",
                "-c",
                ENTER,
                "enter",
            ])
            .arg(&self.root)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir("/")
            .kill_on_drop(true);
        match tokio::time::timeout(timeout, command.output()).await {
            Ok(out) => out.expect("running unshare + chroot (needs root)"),
            Err(_) => panic!(
                "{args:?} did not finish (or left its output open) within {timeout:?}; systemctl calls:\n{}",
                self.read("/var/log/systemctl.calls")
            ),
        }
    }

    /// The unit's process, as the stub recorded it.
    pub fn service_pid(&self, unit: &str) -> Option<i32> {
        self.read(&format!("/run/fake-systemd/{unit}.pid"))
            .trim()
            .parse()
            .ok()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
    }
}

/// Copies files and symlinks (the CA store is mostly symlinks into
/// /usr/share, which the sandbox has).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).unwrap();
            std::os::unix::fs::symlink(link, target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

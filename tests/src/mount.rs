//! Mounts a test makes (it runs as root), unmounted however the test ends;
//! lazily, in case something still holds a file in them.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Mount(PathBuf);

impl Mount {
    /// A tmpfs at `at` (made if missing) with `options` (`size=64m`, `ro`).
    pub fn tmpfs(at: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", options, "tmpfs", path_str(at)],
        );
        Mount(at.to_owned())
    }

    /// `at` seen read-only from now on: a read-only bind mount over it.
    /// (A remount of the file system itself is refused while the agent
    /// holds its lock file open for writing; files opened from now on,
    /// like the state's temp file, get EROFS as on a read-only volume.)
    pub fn read_only_over(at: &Path) -> Mount {
        run("mount", &["--bind", path_str(at), path_str(at)]);
        let mount = Mount(at.to_owned());
        run("mount", &["-o", "remount,bind,ro", path_str(at)]);
        mount
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Ignored: a mount already gone needs no unmount, and a drop
        // cannot fail the test.
        let _ = Command::new("umount")
            .args(["-l", path_str(&self.0)])
            .status();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

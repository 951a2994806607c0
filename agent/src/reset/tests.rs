//! The clean-slate check against a real (test-made) runner user: a clean
//! instance passes, and each invariant fails on its own when what its step
//! would have removed is left in place (the step "disabled"). Docker's
//! invariant is covered end to end with a real dockerd (tests/reset.rs).

use super::check::Invariant;
use super::Resetter;
use crate::config::Settings;
use crate::runner::manifest::Manifest;
use crate::runner::user::RunnerUser;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Fixture {
    _root: tempfile::TempDir,
    dir: PathBuf,
    user: RunnerUser,
    resetter: Resetter,
}

struct UserGuard(&'static str);
impl Drop for UserGuard {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-KILL", "-u", self.0]).output();
        let _ = Command::new("userdel").arg(self.0).output();
    }
}

/// A prepared instance: a root-owned install with its manifest, the
/// user's home with its baseline, empty temp dir; `None` when not root.
async fn fixture(name: &'static str, extra_reset: &str) -> Option<(Fixture, UserGuard)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (a user of its own)");
        return None;
    }
    let _ = Command::new("userdel").arg(name).output();
    let made = Command::new("useradd")
        .args(["--system", "--no-create-home", name])
        .status()
        .unwrap();
    assert!(made.success());
    let guard = UserGuard(name);
    let user = RunnerUser::lookup(name).unwrap();
    // Its uid may have been an earlier user's, whose cron and at jobs and
    // IPC objects outlived it: not this test's leftovers.
    super::persist::clear(&user, &super::persist::Places::default()).unwrap();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_owned();
    let install = dir.join("runner");
    std::fs::create_dir_all(install.join("bin")).unwrap();
    std::fs::write(install.join("config.sh"), "#!/bin/sh\n").unwrap();
    std::fs::write(install.join("bin/Runner.Listener"), "listener").unwrap();
    crate::runner::layout::secure(&install, &user).unwrap();
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join(".bashrc"), "ok\n").unwrap();
    for path in [&home, &home.join(".bashrc")] {
        chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    }
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let toml = format!(
        "table = \"pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n\
         [runner]\nversion = \"2.321.0\"\ninstall_dir = \"{}\"\n[agent]\nstate_dir = \"{}\"\n\
         [reset]\nhome = \"{}\"\ntemp_dirs = [\"{}\"]\ndocker = \"off\"\n{extra_reset}",
        install.display(),
        dir.join("state").display(),
        home.display(),
        dir.join("tmp").display(),
    );
    let settings = Settings::from_toml(Path::new("/test.toml"), &toml, []).unwrap();
    let manifest = Manifest::record(&install, None).unwrap();
    std::fs::create_dir_all(&settings.state_dir).unwrap();
    manifest
        .save(&settings.state_dir.join(super::INSTALL_MANIFEST))
        .unwrap();
    let resetter = Resetter::new(
        &settings.reset,
        &settings.runner,
        &settings.state_dir,
        Some(user.clone()),
        None,
    );
    resetter.take_baseline().await;
    Some((
        Fixture {
            _root: root,
            dir,
            user,
            resetter,
        },
        guard,
    ))
}

impl Fixture {
    async fn failing(&self) -> Option<Invariant> {
        self.resetter.check(None).await.err().map(|e| e.invariant)
    }

    fn as_user(&self, path: &Path) {
        chown(
            path,
            Some(self.user.uid.as_raw()),
            Some(self.user.gid.as_raw()),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn each_invariant_fails_on_its_own_leftover() {
    let Some((f, _guard)) = fixture("ra-unit-check", "").await else {
        return;
    };
    assert_eq!(f.failing().await, None, "a prepared instance is clean");

    // Work: a file the job left in _work.
    let left = f.dir.join("runner/_work/left");
    std::fs::write(&left, "x").unwrap();
    assert_eq!(f.failing().await, Some(Invariant::Work));
    std::fs::remove_file(&left).unwrap();

    // Temp: a file of the user's, two levels deep.
    let deep = f.dir.join("tmp/a/b");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("left"), "x").unwrap();
    f.as_user(&deep.join("left"));
    assert_eq!(f.failing().await, Some(Invariant::Temp));
    std::fs::remove_dir_all(f.dir.join("tmp/a")).unwrap();

    // Scheduled: a linger flag (the real spool: the user is this test's).
    let linger = Path::new("/var/lib/systemd/linger").join(&f.user.name);
    std::fs::create_dir_all(linger.parent().unwrap()).unwrap();
    std::fs::write(&linger, "").unwrap();
    assert_eq!(f.failing().await, Some(Invariant::Scheduled));
    std::fs::remove_file(&linger).unwrap();

    // Install: the listener rewritten.
    let listener = f.dir.join("runner/bin/Runner.Listener");
    std::fs::write(&listener, "evil").unwrap();
    assert_eq!(f.failing().await, Some(Invariant::Install));
    std::fs::write(&listener, "listener").unwrap();
    let manifest = Manifest::record(&f.dir.join("runner"), None).unwrap();
    manifest.save(&f.resetter.manifest_path).unwrap();

    // Home: a line added to .bashrc.
    std::fs::write(f.dir.join("home/.gitconfig"), "[core]\n").unwrap();
    assert_eq!(f.failing().await, Some(Invariant::Home));
    std::fs::remove_file(f.dir.join("home/.gitconfig")).unwrap();

    // Processes: one of the user's, left running.
    let mut command = Command::new("sleep");
    command.arg("30");
    crate::runner::user::confine(&mut command, Some(&f.user), Vec::new());
    let mut child = command.spawn().unwrap();
    assert_eq!(f.failing().await, Some(Invariant::Processes));
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(f.failing().await, None, "clean again");
}

#[tokio::test]
async fn too_little_room_fails_the_check() {
    let Some((f, _guard)) = fixture("ra-unit-room", "min_free_space = \"1000PiB\"\n").await else {
        return;
    };
    assert_eq!(f.failing().await, Some(Invariant::Room));
}

/// The whole reset, then the check: what a job left is gone, and the
/// summary says the check ran.
#[tokio::test]
async fn a_reset_leaves_an_instance_that_passes_the_check() {
    let Some((f, _guard)) = fixture("ra-unit-reset", "").await else {
        return;
    };
    std::fs::create_dir_all(f.dir.join("runner/_work/repo")).unwrap();
    std::fs::write(f.dir.join("runner/_work/repo/x"), "x").unwrap();
    std::fs::write(f.dir.join("home/.bashrc"), "evil\n").unwrap();
    std::fs::write(f.dir.join("tmp/left"), "x").unwrap();
    f.as_user(&f.dir.join("tmp/left"));
    let summary = f.resetter.run().await.unwrap();
    assert!(summary.contains("checked clean"), "{summary}");
    assert_eq!(
        std::fs::read_to_string(f.dir.join("home/.bashrc")).unwrap(),
        "ok\n"
    );
    assert_eq!(f.failing().await, None);
}

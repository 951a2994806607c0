//! `config.sh` and the listener's commands: timeouts, the cgroup.

use super::*;
use crate::config::Settings;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn control_in(dir: &Path) -> RunnerControl {
    let toml = format!(
        "table = \"pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n[runner]\nversion = \"2.321.0\"\ninstall_dir = \"{}\"\n",
        dir.display()
    );
    let settings = Settings::from_toml(Path::new("/test.toml"), &toml, []).unwrap();
    control_of(&settings, None)
}

fn control_of(settings: &Settings, cgroup: Option<Arc<RunnerCgroup>>) -> RunnerControl {
    RunnerControl::new(&settings.runner, &settings.github, None, cgroup)
        .for_pool("i-0123", &settings.table)
        .allow_weaker(settings.reset.allow_weaker)
}

/// GitHub never answers the registration: config.sh is killed at the
/// timeout (its child too, the whole group), and the attempt fails, so
/// the machine can retry and then signal `UD_REG_FAILED`.
#[tokio::test]
async fn a_hung_config_sh_is_killed_at_the_timeout_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let control = control_in(dir.path());
    let script = dir.path().join("config.sh");
    let pid_file = dir.path().join("child.pid");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 1000 &\necho $! > '{}.tmp'\nmv '{0}.tmp' '{0}'\nwait\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let started = tokio::time::Instant::now();
    let task = tokio::spawn(async move { control.configure("TOKEN", "i-0123-1", "42").await });
    // In real time until the script and its child run; then the clock
    // is paused, so the 30 s pass at once.
    while !pid_file.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::pause();
    let err = task.await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RunnerError::TimedOut { .. }), "{err}");
    assert!(took >= CONFIGURE_TIMEOUT, "{took:?}");
    assert!(
        took < CONFIGURE_TIMEOUT + Duration::from_secs(1),
        "{took:?}"
    );
    assert!(!err.to_string().contains("TOKEN"));
    let child: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The group got SIGKILL; give the kernel a moment to reap (real time).
    let gone = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
    });
    assert!(gone, "config.sh's child {child} survived the timeout");
}

/// A cgroup that cannot be joined refuses the runner's commands (a
/// process outside it would survive the reset), unless
/// `reset.allow_weaker`.
#[tokio::test]
async fn an_unjoinable_cgroup_refuses_to_start_the_runner() {
    let name = format!("ra-unit-gone-{}", std::process::id());
    let cgroup = match RunnerCgroup::create(&name, Default::default()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    cgroup.remove();
    let dir = tempfile::tempdir().unwrap();
    let settings = |extra: &str| {
        let toml = format!(
            "table = \"pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n[runner]\nversion = \"2.321.0\"\ninstall_dir = \"{}\"\n[reset]\n{extra}",
            dir.path().display()
        );
        Settings::from_toml(Path::new("/test.toml"), &toml, []).unwrap()
    };
    let strict = control_of(&settings(""), Some(cgroup.clone()));
    let err = strict
        .configure("TOKEN", "i-0123-1", "42")
        .await
        .unwrap_err();
    assert!(matches!(err, RunnerError::Cgroup(_)), "{err}");
    assert!(matches!(strict.start(), Err(RunnerError::Cgroup(_))));
    let weaker = control_of(&settings("allow_weaker = true\n"), Some(cgroup));
    // Past the cgroup: there is no config.sh here to start.
    let err = weaker
        .configure("TOKEN", "i-0123-1", "42")
        .await
        .unwrap_err();
    assert!(matches!(err, RunnerError::Spawn { .. }), "{err}");
}

/// GitHub never answers `config.sh remove`: the local registration is
/// removed within the timeouts, so the release's signal is not held.
#[tokio::test(start_paused = true)]
async fn a_hung_removal_on_github_falls_back_to_the_local_one_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "table = \"pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n[runner]\nversion = \"2.321.0\"\ninstall_dir = \"{}\"\n",
        dir.path().display()
    );
    let settings = Settings::from_toml(Path::new("/test.toml"), &toml, []).unwrap();
    let control = control_of(&settings, None);
    let script = dir.path().join("config.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$*\" in *--local*) rm -f .runner; exit 0;; esac\nexec sleep 1000\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join(".runner"), "{}").unwrap();
    let started = tokio::time::Instant::now();
    let outcome = control.remove(Some("TOKEN")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(outcome, RemoveOutcome::LocalOnly);
    assert!(took >= REMOVE_TIMEOUT, "{took:?}");
    assert!(took <= REMOVE_TIMEOUT + LOCAL_REMOVE_TIMEOUT, "{took:?}");
    assert!(!control.is_configured());
}

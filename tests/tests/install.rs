//! End to end, the runner's install against the fake GitHub: a runner
//! baked without runner-agent, `runner.version = "latest"`, and the upgrade
//! to a newer release. The agent runs as a process where the boot matters;
//! the other cases call the library against the same fake GitHub.

use runner_agent::config::{RunnerSettings, Settings};
use runner_agent::install::VERSION_MARKER;
use runner_agent::install::{
    ensure_installed, upgrade, InstallError, InstallOutcome, UpgradeOutcome,
};
use stack::agent::AgentSpec;
use stack::github::{fake_runner_tarball_of, FakeGithub, FAKE_RUNNER_VERSION};
use stack::users::{ensure_user, root_or_skip};
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const NEWER: &str = "2.400.0";

/// Unpacks the fake runner of `version` into `dir` the way an image bake
/// with plain `tar` would: no marker.
fn bake(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let tarball = fake_runner_tarball_of(version);
    tar::Archive::new(flate2::read::GzDecoder::new(&tarball[..]))
        .unpack(dir)
        .unwrap();
    assert!(!dir.join(VERSION_MARKER).exists());
}

fn marker(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(VERSION_MARKER))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// What `bin/Runner.Listener --version` in `dir` prints.
fn listener_version(dir: &Path) -> String {
    let out = std::process::Command::new(dir.join("bin/Runner.Listener"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baked_runner_without_the_marker_is_used_without_a_download() {
    let stack = Stack::start(StackOptions::default()).await;
    bake(&stack.runner_dir(), FAKE_RUNNER_VERSION);
    let agent = stack.spawn_agent(&AgentSpec {
        // The listener's traces would go to stdout: the agent leaves this
        // out of its environment.
        env: vec![("ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT".into(), "1".into())],
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert_eq!(stack.github.downloads(FAKE_RUNNER_VERSION), 0, "downloaded");
    assert_eq!(stack.github.state.lock().unwrap().api_requests, 0);
    assert_eq!(marker(&stack.runner_dir()), None, "marked without a check");
    let log = agent.log_text();
    assert!(log.contains("not verified by runner-agent"), "{log}");
    let queries: Vec<String> = stack
        .runner_events()
        .into_iter()
        .filter_map(|(_, e)| e.strip_prefix("VERSION_QUERY ").map(str::to_owned))
        .collect();
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        queries,
        [format!(
            "version={FAKE_RUNNER_VERSION} uid={uid} print_log="
        )]
    );
    assert_eq!(stack.count_events("CONFIGURE "), 1);
}

/// The listener creates `_diag` when asked its version: it is asked as the
/// runner user, so the runner can still write its logs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baked_runner_is_asked_its_version_as_the_runner_user() {
    if !root_or_skip("switching users needs root") {
        return;
    }
    const USER: &str = "ra-runner";
    let uid = ensure_user(USER);
    let stack = Stack::start(StackOptions::default()).await;
    stack.open_to_runner_user();
    bake(&stack.runner_dir(), FAKE_RUNNER_VERSION);
    let chown = std::process::Command::new("chown")
        .args(["-R", USER])
        .arg(stack.runner_dir())
        .status()
        .unwrap();
    assert!(chown.success());
    let agent = stack.spawn_agent(&AgentSpec {
        user: Some(USER.into()),
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert_eq!(stack.github.downloads(FAKE_RUNNER_VERSION), 0);
    assert_eq!(
        stack.count_events(&format!(
            "VERSION_QUERY version={FAKE_RUNNER_VERSION} uid={uid} "
        )),
        1,
        "{:?}\n{}",
        stack.runner_events(),
        agent.log_text()
    );
    let diag = std::fs::metadata(stack.runner_dir().join("_diag")).unwrap();
    assert_eq!(diag.uid(), uid, "_diag created by root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_installs_the_newest_release_at_boot() {
    let stack = Stack::start(StackOptions::default()).await;
    let digest = stack.github.publish(NEWER);
    let agent = stack.spawn_agent(&AgentSpec {
        runner_version: Some("latest".into()),
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    assert_eq!(stack.github.downloads(NEWER), 1);
    assert_eq!(stack.github.downloads(FAKE_RUNNER_VERSION), 0);
    assert_eq!(marker(&stack.runner_dir()).as_deref(), Some(NEWER));
    assert_eq!(listener_version(&stack.runner_dir()), NEWER);
    let log = agent.log_text();
    let installed = log
        .lines()
        .find(|l| l.contains("runner installed"))
        .unwrap_or_else(|| panic!("no install logged:\n{log}"));
    assert!(installed.contains(NEWER), "{installed}");
    assert!(installed.contains(&digest), "{installed}");
}

/// The runner settings of a stack-less test: the fake GitHub, a runner dir
/// in `root`.
fn settings(github: &FakeGithub, root: &Path, version: &str) -> RunnerSettings {
    let text = format!(
        "table = \"t-pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n[runner]\n\
         version = \"{version}\"\ninstall_dir = \"{}\"\nrelease_base_url = \"{}\"\nrelease_api_url = \"{}\"\n",
        root.join("runner").display(),
        github.release_base_url(),
        github.api_url(),
    );
    Settings::from_toml(&root.join("config.toml"), &text, [])
        .unwrap()
        .runner
}

/// Entries beside the runner dir: staging, download or old copies left.
fn leftovers(root: &Path) -> Vec<String> {
    std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "runner")
        .collect()
}

#[tokio::test]
async fn a_baked_runner_of_another_version_is_replaced() {
    let github = FakeGithub::start().await;
    let root = tempfile::tempdir().unwrap();
    let pinned = settings(&github, root.path(), FAKE_RUNNER_VERSION);
    bake(&pinned.install_dir, "2.398.0");
    let outcome = ensure_installed(&pinned, None).await.unwrap();
    assert_eq!(
        outcome,
        InstallOutcome::Installed {
            version: FAKE_RUNNER_VERSION.into(),
            sha256: github.digest()
        }
    );
    assert_eq!(github.downloads(FAKE_RUNNER_VERSION), 1);
    assert_eq!(listener_version(&pinned.install_dir), FAKE_RUNNER_VERSION);
    assert_eq!(
        marker(&pinned.install_dir).as_deref(),
        Some(FAKE_RUNNER_VERSION)
    );
    // Marked now: found again without asking the listener or GitHub.
    let again = ensure_installed(&pinned, None).await.unwrap();
    assert_eq!(
        again,
        InstallOutcome::AlreadyPresent {
            version: FAKE_RUNNER_VERSION.into(),
            verified: true
        }
    );
    assert_eq!(github.downloads(FAKE_RUNNER_VERSION), 1);
}

#[tokio::test]
async fn latest_follows_the_release_api_and_keeps_a_runner_it_cannot_replace() {
    let github = FakeGithub::start().await;
    let root = tempfile::tempdir().unwrap();
    let latest = settings(&github, root.path(), "latest");
    let dir = latest.install_dir.clone();

    // Rate limited with nothing installed: nothing to run.
    github.state.lock().unwrap().api_rate_limited = true;
    let err = ensure_installed(&latest, None).await.unwrap_err();
    assert!(matches!(err, InstallError::ReleaseApi { .. }), "{err}");
    assert!(err.to_string().contains("403"), "{err}");
    github.state.lock().unwrap().api_rate_limited = false;

    let outcome = ensure_installed(&latest, None).await.unwrap();
    assert_eq!(outcome.version(), FAKE_RUNNER_VERSION);
    assert!(
        matches!(outcome, InstallOutcome::Installed { .. }),
        "{outcome:?}"
    );

    // A newer release while the runner is registered: kept, not replaced.
    github.publish(NEWER);
    std::fs::write(dir.join(".runner"), "{}").unwrap();
    let outcome = ensure_installed(&latest, None).await.unwrap();
    let InstallOutcome::KeptInstalled {
        version, reason, ..
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!(version, FAKE_RUNNER_VERSION);
    assert!(
        reason.contains("registration") && reason.contains(NEWER),
        "{reason}"
    );
    assert_eq!(github.downloads(NEWER), 0);
    std::fs::remove_file(dir.join(".runner")).unwrap();

    // Rate limited with a runner installed: that runner, with a warning.
    github.state.lock().unwrap().api_rate_limited = true;
    let outcome = ensure_installed(&latest, None).await.unwrap();
    let InstallOutcome::KeptInstalled {
        version,
        verified,
        reason,
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((version.as_str(), *verified), (FAKE_RUNNER_VERSION, true));
    assert!(reason.contains("rate limit"), "{reason}");
    github.state.lock().unwrap().api_rate_limited = false;

    // Reachable again: the newer release, verified against the API.
    let outcome = ensure_installed(&latest, None).await.unwrap();
    let digest = github.state.lock().unwrap().releases[NEWER].digest.clone();
    assert_eq!(
        outcome,
        InstallOutcome::Installed {
            version: NEWER.into(),
            sha256: digest
        }
    );
    assert_eq!(listener_version(&dir), NEWER);
    assert_eq!(github.downloads(NEWER), 1);
    assert_eq!(leftovers(root.path()), Vec::<String>::new());
}

#[tokio::test]
async fn upgrade_moves_to_a_newer_release_and_keeps_work() {
    let github = FakeGithub::start().await;
    let root = tempfile::tempdir().unwrap();
    // Pinned: the upgrade follows the release API all the same.
    let pinned = settings(&github, root.path(), FAKE_RUNNER_VERSION);
    let dir = pinned.install_dir.clone();
    ensure_installed(&pinned, None).await.unwrap();
    std::fs::create_dir_all(dir.join("_work/_tool/node/20")).unwrap();
    std::fs::write(dir.join("_work/_tool/node/20/bin"), "node").unwrap();
    std::fs::create_dir_all(dir.join("_diag")).unwrap();

    let outcome = upgrade(&pinned, None, FAKE_RUNNER_VERSION).await.unwrap();
    assert_eq!(
        outcome,
        UpgradeOutcome::NotNewer {
            latest: FAKE_RUNNER_VERSION.into()
        }
    );
    assert_eq!(github.downloads(FAKE_RUNNER_VERSION), 1);

    let digest = github.publish(NEWER);
    let outcome = upgrade(&pinned, None, FAKE_RUNNER_VERSION).await.unwrap();
    assert_eq!(
        outcome,
        UpgradeOutcome::Upgraded {
            version: NEWER.into(),
            sha256: digest
        }
    );
    assert_eq!(github.downloads(NEWER), 1);
    // Before the listener is asked below: that creates a new _diag.
    assert!(!dir.join("_diag").exists(), "the old version's logs stayed");
    assert_eq!(listener_version(&dir), NEWER);
    assert_eq!(marker(&dir).as_deref(), Some(NEWER));
    assert_eq!(
        std::fs::read_to_string(dir.join("_work/_tool/node/20/bin")).unwrap(),
        "node"
    );
    assert_eq!(leftovers(root.path()), Vec::<String>::new());

    // Already there; versions compare as numbers, not text.
    let outcome = upgrade(&pinned, None, NEWER).await.unwrap();
    assert_eq!(
        outcome,
        UpgradeOutcome::NotNewer {
            latest: NEWER.into()
        }
    );
    let outcome = upgrade(&pinned, None, "2.1000.0").await.unwrap();
    assert_eq!(
        outcome,
        UpgradeOutcome::NotNewer {
            latest: NEWER.into()
        }
    );
    assert_eq!(github.downloads(NEWER), 1);
}

#[tokio::test]
async fn an_upgrade_that_fails_verification_leaves_the_runner_as_it_was() {
    let github = FakeGithub::start().await;
    let root = tempfile::tempdir().unwrap();
    let pinned = settings(&github, root.path(), FAKE_RUNNER_VERSION);
    let dir = pinned.install_dir.clone();
    ensure_installed(&pinned, None).await.unwrap();
    github.publish(NEWER);
    github
        .state
        .lock()
        .unwrap()
        .releases
        .get_mut(NEWER)
        .unwrap()
        .tarball
        .extend_from_slice(b"tampered");
    let err = upgrade(&pinned, None, FAKE_RUNNER_VERSION)
        .await
        .unwrap_err();
    assert!(matches!(err, InstallError::DigestMismatch { .. }), "{err}");
    assert_eq!(listener_version(&dir), FAKE_RUNNER_VERSION);
    assert_eq!(marker(&dir).as_deref(), Some(FAKE_RUNNER_VERSION));
    assert_eq!(leftovers(root.path()), Vec::<String>::new());

    // A registration in the dir: the upgrade refuses to touch it.
    github.publish("2.401.0");
    std::fs::write(dir.join(".runner"), "{}").unwrap();
    let err = upgrade(&pinned, None, FAKE_RUNNER_VERSION)
        .await
        .unwrap_err();
    assert!(
        matches!(err, InstallError::ConfiguredElsewhere { .. }),
        "{err}"
    );
    assert_eq!(github.downloads("2.401.0"), 0);
    assert_eq!(listener_version(&dir), FAKE_RUNNER_VERSION);
}

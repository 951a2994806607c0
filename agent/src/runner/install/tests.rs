use super::*;
use crate::config::Settings;
use std::os::unix::fs::PermissionsExt;

/// Settings for a runner in `dir`, whose release API is a loopback port
/// nothing listens on.
fn settings(dir: &Path, version: &str) -> RunnerSettings {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "table = \"t-pool\"\n[github]\nurl = \"https://github.com/acme/widgets\"\n[runner]\n\
         version = \"{version}\"\ninstall_dir = \"{}\"\nrelease_base_url = \"http://{closed}/dl\"\n\
         release_api_url = \"http://{closed}/api\"\n",
        dir.display()
    );
    Settings::from_toml(Path::new("test.toml"), &text, [])
        .unwrap()
        .runner
}

/// An unpacked runner without the marker, whose listener says `version`.
fn baked(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    let listener = dir.join("bin/Runner.Listener");
    std::fs::write(&listener, format!("#!/bin/sh\necho {version}\n")).unwrap();
    std::fs::set_permissions(&listener, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn a_baked_runner_of_the_pinned_version_is_used_unverified_and_unmarked() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("runner");
    baked(&dir, "2.336.0");
    let outcome = ensure_installed(&settings(&dir, "2.336.0"), None)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        InstallOutcome::AlreadyPresent {
            version: "2.336.0".into(),
            verified: false
        }
    );
    assert!(!dir.join(present::VERSION_MARKER).exists());
    // Another version pinned: not installed, so a download is tried
    // (and fails: nothing listens).
    let err = ensure_installed(&settings(&dir, "2.337.0"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            InstallError::NoDigest { .. } | InstallError::ReleaseApi { .. }
        ),
        "{err}"
    );
    assert!(
        dir.join("bin/Runner.Listener").is_file(),
        "the baked runner was touched"
    );
}

/// A runner-agent install of `version` in `dir`: the marker beside a
/// listener that reports it.
fn verified(dir: &Path, version: &str) {
    baked(dir, version);
    std::fs::write(dir.join(present::VERSION_MARKER), format!("{version}\n")).unwrap();
}

#[tokio::test]
async fn the_upgrade_of_a_deprecated_pin_is_kept_while_the_pin_names_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("runner");
    verified(&dir, "2.400.0");
    std::fs::write(dir.join(present::UPGRADED_FROM_MARKER), "2.330.0\n").unwrap();
    // Nothing answers downloads here: keeping it needs none.
    let outcome = ensure_installed(&settings(&dir, "2.330.0"), None)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, InstallOutcome::KeptInstalled { version, verified: true, .. } if version == "2.400.0"),
        "{outcome:?}"
    );
    // Another pin (the operator moved on), an upgrade not recorded, or
    // an older install: the pin is installed, here failing to download.
    for (pin, from) in [("2.350.0", Some("2.330.0")), ("2.330.0", None)] {
        match from {
            Some(from) => std::fs::write(dir.join(present::UPGRADED_FROM_MARKER), from).unwrap(),
            None => std::fs::remove_file(dir.join(present::UPGRADED_FROM_MARKER)).unwrap(),
        }
        let result = ensure_installed(&settings(&dir, pin), None).await;
        assert!(result.is_err(), "{pin} {from:?}: {result:?}");
    }
    verified(&dir, "2.300.0");
    std::fs::write(dir.join(present::UPGRADED_FROM_MARKER), "2.330.0").unwrap();
    assert!(ensure_installed(&settings(&dir, "2.330.0"), None)
        .await
        .is_err());
}

#[tokio::test]
async fn a_registered_runner_of_another_version_is_never_replaced() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("runner");
    baked(&dir, "2.336.0");
    std::fs::write(dir.join(".runner"), "{}").unwrap();
    let err = ensure_installed(&settings(&dir, "2.337.0"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, InstallError::ConfiguredElsewhere { .. }),
        "{err}"
    );
    let err = upgrade(&settings(&dir, "2.336.0"), None, "2.336.0")
        .await
        .unwrap_err();
    // The API is asked first: nothing answers it here.
    assert!(matches!(err, InstallError::ReleaseApi { .. }), "{err}");
}

#[tokio::test]
async fn latest_without_the_api_uses_what_is_installed_or_fails() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("runner");
    let err = ensure_installed(&settings(&dir, "latest"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, InstallError::ReleaseApi { .. }), "{err}");
    assert!(!dir.exists());

    baked(&dir, "2.336.0");
    std::fs::write(dir.join(present::VERSION_MARKER), "2.335.0\n").unwrap();
    let outcome = ensure_installed(&settings(&dir, "latest"), None)
        .await
        .unwrap();
    let InstallOutcome::KeptInstalled {
        version,
        verified,
        reason,
    } = &outcome
    else {
        panic!("{outcome:?}")
    };
    // The marker is what runner-agent verified.
    assert_eq!((version.as_str(), *verified), ("2.335.0", true));
    assert!(reason.contains("release API"), "{reason}");
    assert_eq!(outcome.version(), "2.335.0");
}

//! Installs the `actions/runner` release: use the copy already in the
//! install dir when it is the version wanted, else stream the tarball,
//! verify its SHA-256 while it downloads, unpack it safely and rename it
//! into place (`unpack.rs`). Nothing is unpacked from a tarball whose
//! digest is wrong. The version wanted is the configured one, or with
//! `latest` the release API's latest; `upgrade` moves an installed runner
//! on to the latest release whatever the config says.

mod error;
pub mod present;
pub mod releases;
mod unpack;

use super::user::RunnerUser;
use crate::config::{RunnerSettings, RunnerVersion};
use error::io_err;
pub use error::InstallError;
use present::Found;
use releases::{compare_versions, known_digest, runner_arch, tarball_name, Release};
use runner_agent_common::http_url;
use sha2::{Digest, Sha256};
use std::cmp::Ordering;
use std::io::Write;
use std::path::Path;
use unpack::{sibling, unpack_into_place};

/// The real tarball is ~200 MiB; anything much larger is not a runner.
const MAX_TARBALL_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    /// The install dir already holds the version wanted; `verified: false`
    /// when only the listener's `--version` said so (no marker).
    AlreadyPresent {
        version: String,
        verified: bool,
    },
    Installed {
        version: String,
        sha256: String,
    },
    /// With `latest`: the runner already in the install dir is used as it
    /// is, because of `reason` (the release API could not be asked, or a
    /// registration holds the dir).
    KeptInstalled {
        version: String,
        verified: bool,
        reason: String,
    },
}

impl InstallOutcome {
    /// The version the install dir now holds.
    pub fn version(&self) -> &str {
        match self {
            InstallOutcome::AlreadyPresent { version, .. }
            | InstallOutcome::Installed { version, .. }
            | InstallOutcome::KeptInstalled { version, .. } => version,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeOutcome {
    /// The install dir now holds `version`, verified against `sha256`.
    Upgraded { version: String, sha256: String },
    /// The latest release is not newer than the current version.
    NotNewer { latest: String },
}

/// Makes sure the configured version (with `latest`, the latest release)
/// is unpacked in `settings.install_dir`. A runner found there without
/// runner-agent's marker counts when its listener reports that version
/// (an image baked by other means); it is used as it is and not marked,
/// since the marker asserts a digest check that did not happen.
///
/// With a dedicated runner user the install is made root's (`layout.rs`)
/// before its listener is asked its version and again after an install,
/// so no code the user could have changed runs as root later.
pub async fn ensure_installed(
    settings: &RunnerSettings,
    owner: Option<&RunnerUser>,
) -> Result<InstallOutcome, InstallError> {
    secure(&settings.install_dir, owner)?;
    let outcome = ensure_unpacked(settings, owner).await?;
    secure(&settings.install_dir, owner)?;
    Ok(outcome)
}

fn secure(dir: &Path, owner: Option<&RunnerUser>) -> Result<(), InstallError> {
    match owner {
        Some(owner) => super::layout::secure(dir, owner).map_err(InstallError::Layout),
        None => Ok(()),
    }
}

async fn ensure_unpacked(
    settings: &RunnerSettings,
    owner: Option<&RunnerUser>,
) -> Result<InstallOutcome, InstallError> {
    let dir = &settings.install_dir;
    let found = present::find(dir, owner).await;
    let registered = dir.join(".runner").exists();
    let (http, wanted) = match &settings.version {
        RunnerVersion::Pinned(version) => {
            if let Some(outcome) = already_present(dir, found.as_ref(), version) {
                return Ok(outcome);
            }
            if let Some(found) = found.clone().filter(|f| upgrade_of(dir, f, version)) {
                let reason = format!(
                    "GitHub deprecated runner.version {version} and the runner was upgraded to {}; set runner.version to it, or to latest",
                    found.version
                );
                return Ok(kept(dir, found, reason));
            }
            if registered {
                return Err(InstallError::ConfiguredElsewhere { path: dir.clone() });
            }
            let http = releases::http_client(settings)?;
            let sha256 = pinned_digest(&http, settings, version).await?;
            let release = Release {
                version: version.clone(),
                sha256,
            };
            (http, release)
        }
        RunnerVersion::Latest => {
            let http = releases::http_client(settings)?;
            let latest = releases::latest(&http, &settings.release_api(), runner_arch()).await;
            let latest = match (latest, found) {
                (Ok(latest), found) => {
                    if let Some(outcome) = already_present(dir, found.as_ref(), &latest.version) {
                        return Ok(outcome);
                    }
                    match (registered, found) {
                        (false, _) => latest,
                        // The registration belongs to the runner beside it;
                        // replacing that is the upgrade's business, once it
                        // is gone.
                        (true, Some(found)) => {
                            let reason = format!(
                                "the install dir holds a registration; the latest release is {}",
                                latest.version
                            );
                            return Ok(kept(dir, found, reason));
                        }
                        (true, None) => {
                            return Err(InstallError::ConfiguredElsewhere { path: dir.clone() })
                        }
                    }
                }
                (Err(e), Some(found)) => return Ok(kept(dir, found, e.to_string())),
                (Err(e), None) => return Err(e),
            };
            (http, latest)
        }
    };
    let sha256 = install_release(&http, settings, &wanted).await?;
    Ok(InstallOutcome::Installed {
        version: wanted.version,
        sha256,
    })
}

/// For the listener's exit code 7 (its version is deprecated): moves the
/// install dir on to the latest release, whatever `runner.version` says (a
/// pinned version GitHub no longer accepts must move on too), if that is
/// newer than `current`. The new version is unpacked and verified beside
/// the install dir and swapped in whole; `_work` and the agent's job hooks
/// are carried over. The caller makes sure no runner process is left and
/// no registration is held (a registration is refused as by
/// `ensure_installed`).
pub async fn upgrade(
    settings: &RunnerSettings,
    owner: Option<&RunnerUser>,
    current: &str,
) -> Result<UpgradeOutcome, InstallError> {
    let http = releases::http_client(settings)?;
    let latest = releases::latest(&http, &settings.release_api(), runner_arch()).await?;
    match compare_versions(&latest.version, current) {
        Some(Ordering::Greater) => {}
        Some(_) => {
            return Ok(UpgradeOutcome::NotNewer {
                latest: latest.version,
            })
        }
        // Whatever is installed, the listener said it is too old.
        None => tracing::warn!(
            current,
            latest = %latest.version,
            "the current runner version is not a version; upgrading"
        ),
    }
    let dir = &settings.install_dir;
    if dir.join(".runner").exists() {
        return Err(InstallError::ConfiguredElsewhere { path: dir.clone() });
    }
    let sha256 = install_release(&http, settings, &latest).await?;
    secure(dir, owner)?;
    if let RunnerVersion::Pinned(pinned) = &settings.version {
        let marker = dir.join(present::UPGRADED_FROM_MARKER);
        if let Err(e) = std::fs::write(&marker, format!("{pinned}\n")) {
            // The upgrade stands; a restart would install the pin again.
            tracing::warn!(path = %marker.display(), error = %e, "recording the upgrade of the pinned version");
        }
    }
    Ok(UpgradeOutcome::Upgraded {
        version: latest.version,
        sha256,
    })
}

fn already_present(dir: &Path, found: Option<&Found>, version: &str) -> Option<InstallOutcome> {
    let found = found.filter(|f| f.version == version)?;
    if !found.verified {
        tracing::info!(
            version,
            dir = %dir.display(),
            "runner found unpacked, not verified by runner-agent (no {} marker): its listener reports this version; using it",
            present::VERSION_MARKER
        );
    }
    Some(InstallOutcome::AlreadyPresent {
        version: found.version.clone(),
        verified: found.verified,
    })
}

/// Whether `found` is the verified upgrade of the pinned `version`, made
/// after GitHub deprecated it.
fn upgrade_of(dir: &Path, found: &Found, version: &str) -> bool {
    found.verified
        && present::upgraded_from(dir).as_deref() == Some(version)
        && compare_versions(&found.version, version) == Some(Ordering::Greater)
}

fn kept(dir: &Path, found: Found, reason: String) -> InstallOutcome {
    tracing::warn!(
        version = %found.version,
        dir = %dir.display(),
        %reason,
        "the runner already installed is used, not the one runner.version names"
    );
    InstallOutcome::KeptInstalled {
        version: found.version,
        verified: found.verified,
        reason,
    }
}

/// The SHA-256 a pinned version's tarball must have: `runner.sha256`, the
/// built-in table, or the release API's digest for that tag.
async fn pinned_digest(
    http: &reqwest::Client,
    settings: &RunnerSettings,
    version: &str,
) -> Result<String, InstallError> {
    let arch = runner_arch();
    if let Some(pinned) = &settings.sha256 {
        return Ok(pinned.clone());
    }
    if let Some(known) = known_digest(version, arch) {
        return Ok(known.to_owned());
    }
    match &settings.release_api_url {
        Some(api) => releases::tag_digest(http, api, version, &tarball_name(version, arch)).await,
        None => Err(InstallError::NoDigest {
            version: version.to_owned(),
            arch: arch.to_owned(),
        }),
    }
}

/// Downloads `release` from `release_base_url`, verifies it and unpacks it
/// into the install dir; returns the digest checked.
async fn install_release(
    http: &reqwest::Client,
    settings: &RunnerSettings,
    release: &Release,
) -> Result<String, InstallError> {
    let dir = &settings.install_dir;
    let name = tarball_name(&release.version, runner_arch());
    let url = http_url::join_segments(
        &settings.release_base_url,
        [format!("v{}", release.version).as_str(), &name],
    )
    .to_string();
    let parent = dir.parent().unwrap_or(Path::new("/")).to_owned();
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let download = sibling(dir, "download");
    let result = download_verified(http, &url, &release.sha256, &download).await;
    let result = match result {
        Ok(()) => {
            let (download, dir, version) = (download.clone(), dir.clone(), release.version.clone());
            tokio::task::spawn_blocking(move || unpack_into_place(&download, &dir, &version))
                .await
                .unwrap_or_else(|e| {
                    Err(InstallError::Io {
                        path: parent,
                        source: std::io::Error::other(e),
                    })
                })
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&download);
    result.map(|()| release.sha256.clone())
}

/// Streams `url` into `dest`, hashing as it goes; `dest` is removed by the
/// caller whatever happens.
async fn download_verified(
    http: &reqwest::Client,
    url: &str,
    expected: &str,
    dest: &Path,
) -> Result<(), InstallError> {
    let err = |message: String| InstallError::Download {
        url: url.to_owned(),
        message,
    };
    let mut response = http.get(url).send().await.map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("HTTP {}", response.status())));
    }
    let mut file = std::fs::File::create(dest).map_err(io_err(dest))?;
    let mut hasher = Sha256::new();
    let mut total: u64 = 0;
    while let Some(chunk) = response.chunk().await.map_err(|e| err(e.to_string()))? {
        total += chunk.len() as u64;
        if total > MAX_TARBALL_BYTES {
            return Err(err(format!("larger than {MAX_TARBALL_BYTES} bytes")));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).map_err(io_err(dest))?;
    }
    file.sync_all().map_err(io_err(dest))?;
    let actual = format!("{:x}", hasher.finalize());
    if actual != expected {
        return Err(InstallError::DigestMismatch {
            url: url.to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    tracing::info!(url, bytes = total, sha256 = %actual, "runner tarball verified");
    Ok(())
}

#[cfg(test)]
mod tests;

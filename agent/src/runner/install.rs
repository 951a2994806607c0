//! Installs the `actions/runner` release: use a copy already unpacked (baked
//! into the image) or stream the tarball, verify its SHA-256 while it
//! downloads, unpack it safely into a temporary directory and rename that
//! into place. Nothing is unpacked from a tarball whose digest is wrong.

use crate::config::RunnerSettings;
use crate::runner::user::RunnerUser;
use runner_agent_common::digest::parse_sha256_hex;
use runner_agent_common::http_url::{self, Url};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Written into the install dir after a verified unpack; its content is the
/// runner version. A directory without it is not trusted as an install.
pub const VERSION_MARKER: &str = ".runner-agent-version";

/// The real tarball is ~200 MiB; anything much larger is not a runner.
const MAX_TARBALL_BYTES: u64 = 1 << 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One overall bound for the download, generous for a slow NAT gateway.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(900);

/// SHA-256 of official linux tarballs, as shown on GitHub's "add runner"
/// page and copied into many public setup scripts. Only values seen
/// identically in several independent sources are listed; other versions
/// are verified against `runner.sha256` or the release API's asset digest.
const KNOWN_DIGESTS: &[(&str, &str, &str)] = &[
    (
        "2.321.0",
        "x64",
        "ba46ba7ce3a4d7236b16fbe44419fb453bc08f866b24f04d549ec89f1722a29e",
    ),
    (
        "2.325.0",
        "x64",
        "5020da7139d85c776059f351e0de8fdec753affc9c558e892472d43ebeb518f4",
    ),
    (
        "2.328.0",
        "x64",
        "01066fad3a2893e63e6ca880ae3a1fad5bf9329d60e77ee15f2b97c148c3cd4e",
    ),
    (
        "2.328.0",
        "arm64",
        "b801b9809c4d9301932bccadf57ca13533073b2aa9fa9b8e625a8db905b5d8eb",
    ),
    (
        "2.329.0",
        "x64",
        "194f1e1e4bd02f80b7e9633fc546084d8d4e19f3928a324d512ea53430102e1d",
    ),
    (
        "2.330.0",
        "x64",
        "af5c33fa94f3cc33b8e97937939136a6b04197e6dadfcfb3b6e33ae1bf41e79a",
    ),
    (
        "2.331.0",
        "x64",
        "5fcc01bd546ba5c3f1291c2803658ebd3cedb3836489eda3be357d41bfcf28a7",
    ),
    (
        "2.331.0",
        "arm64",
        "f5863a211241436186723159a111f352f25d5d22711639761ea24c98caef1a9a",
    ),
    (
        "2.332.0",
        "x64",
        "f2094522a6b9afeab07ffb586d1eb3f190b6457074282796c497ce7dce9e0f2a",
    ),
    (
        "2.333.0",
        "x64",
        "7ce6b3fd8f879797fcc252c2918a23e14a233413dc6e6ab8e0ba8768b5d54475",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no SHA-256 known for runner {version} ({arch}): set runner.sha256 or runner.release_api_url")]
    NoDigest { version: String, arch: String },
    #[error("runner tarball {url}: {message}")]
    Download { url: String, message: String },
    #[error("runner tarball {url}: SHA-256 mismatch: expected {expected}, got {actual}; nothing unpacked")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("release API {url}: {message}")]
    ReleaseApi { url: String, message: String },
    #[error("unpacking runner tarball: entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("installing runner into {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds a configured runner of another version; refusing to replace it")]
    ConfiguredElsewhere { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    AlreadyPresent,
    Installed { sha256: String },
}

/// `x64` or `arm64`, as in the release asset names.
pub fn runner_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        "arm" => "arm",
        _ => "x64",
    }
}

pub fn tarball_name(version: &str, arch: &str) -> String {
    format!("actions-runner-linux-{arch}-{version}.tar.gz")
}

pub fn known_digest(version: &str, arch: &str) -> Option<&'static str> {
    KNOWN_DIGESTS
        .iter()
        .find(|(v, a, _)| *v == version && *a == arch)
        .map(|(_, _, d)| *d)
}

pub fn installed_version(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(VERSION_MARKER))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes sure the configured version is unpacked in `settings.install_dir`.
pub async fn ensure_installed(
    settings: &RunnerSettings,
    owner: Option<&RunnerUser>,
) -> Result<InstallOutcome, InstallError> {
    let dir = &settings.install_dir;
    if installed_version(dir).as_deref() == Some(settings.version.as_str()) {
        return Ok(InstallOutcome::AlreadyPresent);
    }
    if dir.join(".runner").exists() {
        return Err(InstallError::ConfiguredElsewhere { path: dir.clone() });
    }
    let arch = runner_arch();
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(DOWNLOAD_TIMEOUT)
        .user_agent(concat!("runner-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| InstallError::Download {
            url: settings.release_base_url.to_string(),
            // rustls reads the system's CA store here; without one (no
            // ca-certificates package) the build fails, even for http URLs.
            message: format!(
                "cannot build the HTTPS client ({}): are the system's CA certificates installed?",
                error_chain(&e)
            ),
        })?;
    let name = tarball_name(&settings.version, arch);
    let expected = match (&settings.sha256, known_digest(&settings.version, arch)) {
        (Some(pinned), _) => pinned.clone(),
        (None, Some(known)) => known.to_owned(),
        (None, None) => match &settings.release_api_url {
            Some(api) => release_api_digest(&http, api, &settings.version, &name).await?,
            None => {
                return Err(InstallError::NoDigest {
                    version: settings.version.clone(),
                    arch: arch.to_owned(),
                })
            }
        },
    };
    let url = http_url::join_segments(
        &settings.release_base_url,
        [format!("v{}", settings.version).as_str(), &name],
    )
    .to_string();
    let parent = dir.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let leaf = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let download = parent.join(format!(".{leaf}.download-{}", std::process::id()));
    let result = download_verified(&http, &url, &expected, &download).await;
    let result = match result {
        Ok(()) => {
            let (download, dir, version) =
                (download.clone(), dir.clone(), settings.version.clone());
            let owner = owner.cloned();
            tokio::task::spawn_blocking(move || {
                unpack_into_place(&download, &dir, &version, owner.as_ref())
            })
            .await
            .unwrap_or_else(|e| {
                Err(InstallError::Io {
                    path: parent.to_owned(),
                    source: std::io::Error::other(e),
                })
            })
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&download);
    result.map(|()| InstallOutcome::Installed { sha256: expected })
}

async fn release_api_digest(
    http: &reqwest::Client,
    api: &Url,
    version: &str,
    asset: &str,
) -> Result<String, InstallError> {
    let tag = format!("v{version}");
    let url = http_url::join_segments(
        api,
        ["repos", "actions", "runner", "releases", "tags", &tag],
    )
    .to_string();
    let err = |message: String| InstallError::ReleaseApi {
        url: url.clone(),
        message,
    };
    let response = http
        .get(&url)
        .header("accept", "application/vnd.github+json")
        .send()
        .await
        .map_err(|e| err(e.to_string()))?;
    if !response.status().is_success() {
        return Err(err(format!("HTTP {}", response.status())));
    }
    let bytes = response.bytes().await.map_err(|e| err(e.to_string()))?;
    let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
    let digest = body["assets"]
        .as_array()
        .and_then(|assets| assets.iter().find(|a| a["name"] == asset))
        .and_then(|a| a["digest"].as_str())
        .ok_or_else(|| err(format!("no digest for asset {asset}")))?;
    digest
        .strip_prefix("sha256:")
        .and_then(|hex| parse_sha256_hex(hex).ok())
        .ok_or_else(|| err(format!("digest {digest:?} is not sha256:<64 hex>")))
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

fn unpack_into_place(
    tarball: &Path,
    dir: &Path,
    version: &str,
    owner: Option<&RunnerUser>,
) -> Result<(), InstallError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let leaf = dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let staging = parent.join(format!(".{leaf}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
    let result = (|| {
        let file = std::fs::File::open(tarball).map_err(io_err(tarball))?;
        unpack_safely(flate2::read::GzDecoder::new(file), &staging)?;
        std::fs::write(staging.join(VERSION_MARKER), format!("{version}\n"))
            .map_err(io_err(&staging))?;
        if let Some(owner) = owner {
            owner.chown_tree(&staging).map_err(io_err(&staging))?;
        }
        if dir.exists() {
            let old = parent.join(format!(".{leaf}.old-{}", std::process::id()));
            std::fs::rename(dir, &old).map_err(io_err(dir))?;
            let _ = std::fs::remove_dir_all(&old);
        }
        std::fs::rename(&staging, dir).map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Unpacks a tar stream into `dest`, refusing absolute paths, `..`, links
/// that point outside `dest`, and device or fifo entries.
pub fn unpack_safely(reader: impl std::io::Read, dest: &Path) -> Result<(), InstallError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(io_err(dest))?;
    for entry in entries {
        let mut entry = entry.map_err(io_err(dest))?;
        let path = entry.path().map_err(io_err(dest))?.into_owned();
        let unsafe_entry = |reason: &str| InstallError::UnsafeEntry {
            entry: path.display().to_string(),
            reason: reason.to_owned(),
        };
        let depth =
            lexical_depth(&path).ok_or_else(|| unsafe_entry("path leaves the install dir"))?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(io_err(dest))?
                .ok_or_else(|| unsafe_entry("link without a target"))?
                .into_owned();
            let inside = if kind.is_symlink() {
                // A symlink resolves from its own directory.
                let parent = path.parent().unwrap_or(Path::new(""));
                lexical_depth(&parent.join(&target)).is_some() && depth > 0
            } else {
                lexical_depth(&target).is_some()
            };
            if !inside || target.is_absolute() {
                return Err(unsafe_entry(&format!(
                    "link to {} escapes",
                    target.display()
                )));
            }
        } else if !(kind.is_file()
            || kind.is_dir()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink())
        {
            return Err(unsafe_entry("not a file, directory or link"));
        }
        entry.unpack_in(dest).map_err(io_err(dest))?;
    }
    Ok(())
}

/// The number of normal components of `path` after resolving `.` and `..`
/// lexically; `None` if it is absolute or climbs above its root.
fn lexical_depth(path: &Path) -> Option<usize> {
    let mut depth: usize = 0;
    for component in path.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth)
}

/// An error and its sources, joined by ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o755);
            header.set_size(if kind.is_file() { 2 } else { 0 });
            // Write the raw name so that hostile paths reach the reader.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            let data: &[u8] = if kind.is_file() { b"hi" } else { b"" };
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn unpack(
        entries: &[(&str, tar::EntryType, Option<&str>)],
    ) -> Result<tempfile::TempDir, InstallError> {
        let dir = tempfile::tempdir().unwrap();
        unpack_safely(&tar_with(entries)[..], dir.path()).map(|()| dir)
    }

    #[test]
    fn regular_layout_unpacks() {
        use tar::EntryType as T;
        let dir = unpack(&[
            ("bin/", T::Directory, None),
            ("bin/Runner.Listener", T::Regular, None),
            ("run.sh", T::Regular, None),
            ("bin/link", T::Symlink, Some("Runner.Listener")),
            ("bin/up", T::Symlink, Some("../run.sh")),
        ])
        .unwrap();
        assert!(dir.path().join("bin/Runner.Listener").is_file());
        assert!(dir.path().join("bin/up").exists());
    }

    #[test]
    fn hostile_entries_are_refused() {
        use tar::EntryType as T;
        let cases: &[&[(&str, T, Option<&str>)]] = &[
            &[("/etc/evil", T::Regular, None)],
            &[("../evil", T::Regular, None)],
            &[("a/../../evil", T::Regular, None)],
            &[("evil", T::Symlink, Some("/etc/passwd"))],
            &[("a/evil", T::Symlink, Some("../../etc"))],
            &[("evil", T::Link, Some("../outside"))],
            &[("dev", T::Char, None)],
        ];
        for case in cases {
            let err = unpack(case).expect_err(&format!("{case:?} must be refused"));
            assert!(matches!(err, InstallError::UnsafeEntry { .. }), "{err}");
        }
    }

    #[test]
    fn names_and_table() {
        assert_eq!(
            tarball_name("2.321.0", "x64"),
            "actions-runner-linux-x64-2.321.0.tar.gz"
        );
        assert!(known_digest("2.321.0", "x64").is_some());
        assert!(known_digest("2.0.0", "x64").is_none());
        for (_, _, d) in KNOWN_DIGESTS {
            assert_eq!(parse_sha256_hex(d).as_deref(), Ok(*d));
        }
    }
}

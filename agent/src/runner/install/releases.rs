//! The `actions/runner` releases: asset names, the built-in digest table,
//! and the release API (a tag's asset digest, the latest release).

use super::error::InstallError;
use crate::config::parse_runner_version;
use crate::config::RunnerSettings;
use runner_agent_common::digest::parse_sha256_hex;
use runner_agent_common::http_url::{self, Url};
use std::cmp::Ordering;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One overall bound per request (the tarball's download included),
/// generous for a slow NAT gateway.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);

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

/// A release to install: its version and the SHA-256 its tarball must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub version: String,
    pub sha256: String,
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

/// How `a` orders against `b` as release numbers (`2.99.0` before
/// `2.100.0`); `None` if either is not a version.
pub fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    Some(parse_runner_version(a)?.cmp(&parse_runner_version(b)?))
}

/// The client for the release API and the downloads.
pub fn http_client(settings: &RunnerSettings) -> Result<reqwest::Client, InstallError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("runner-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| InstallError::Download {
            url: settings.release_base_url.to_string(),
            // rustls reads the system's CA store here; without one (no
            // ca-certificates package) the build fails, even for http URLs.
            message: format!(
                "cannot build the HTTPS client ({}): are the system's CA certificates installed?",
                super::error::error_chain(&e)
            ),
        })
}

/// The digest the release API gives for `asset` of release `v<version>`.
pub async fn tag_digest(
    http: &reqwest::Client,
    api: &Url,
    version: &str,
    asset: &str,
) -> Result<String, InstallError> {
    let tag = format!("v{version}");
    let url = http_url::join_segments(
        api,
        ["repos", "actions", "runner", "releases", "tags", &tag],
    );
    let body = get_json(http, &url).await?;
    asset_digest(&body, asset).map_err(|e| InstallError::ReleaseApi {
        url: url.to_string(),
        message: e.to_string(),
    })
}

/// The latest release (GitHub's: the newest that is neither a draft nor a
/// prerelease) and the digest of its tarball for `arch`.
pub async fn latest(
    http: &reqwest::Client,
    api: &Url,
    arch: &str,
) -> Result<Release, InstallError> {
    let url = http_url::join_segments(api, ["repos", "actions", "runner", "releases", "latest"]);
    let body = get_json(http, &url).await?;
    latest_release(&body, arch).map_err(|e| InstallError::ReleaseApi {
        url: url.to_string(),
        message: e.to_string(),
    })
}

async fn get_json(http: &reqwest::Client, url: &Url) -> Result<serde_json::Value, InstallError> {
    let err = |message: String| InstallError::ReleaseApi {
        url: url.to_string(),
        message,
    };
    let response = http
        .get(url.clone())
        .header("accept", "application/vnd.github+json")
        .send()
        .await
        .map_err(|e| err(super::error::error_chain(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| err(super::error::error_chain(&e)))?;
    if !status.is_success() {
        // GitHub says why in `message` (e.g. "API rate limit exceeded for
        // <ip>"); the body is GitHub's, not a secret, but keep it short.
        let detail: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
        return Err(err(format!("HTTP {status}: {detail}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))
}

/// What a release API answer lacks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no tag_name in the answer")]
    NoTag,
    #[error("tag {0:?} is not v<version>")]
    BadTag(String),
    #[error("no asset {0}")]
    NoAsset(String),
    #[error("no digest for asset {0}")]
    NoDigest(String),
    #[error("digest {0:?} is not sha256:<64 hex>")]
    BadDigest(String),
}

/// From a `releases/latest` answer: the version in `tag_name` (`v2.x.y`)
/// and the digest of that version's tarball for `arch`.
fn latest_release(body: &serde_json::Value, arch: &str) -> Result<Release, AnswerError> {
    let tag = body["tag_name"].as_str().ok_or(AnswerError::NoTag)?;
    let version = tag
        .strip_prefix('v')
        .filter(|v| parse_runner_version(v).is_some())
        .ok_or_else(|| AnswerError::BadTag(tag.to_owned()))?;
    let sha256 = asset_digest(body, &tarball_name(version, arch))?;
    Ok(Release {
        version: version.to_owned(),
        sha256,
    })
}

/// The `digest` (`sha256:<hex>`) of the asset called `asset`.
fn asset_digest(body: &serde_json::Value, asset: &str) -> Result<String, AnswerError> {
    let digest = body["assets"]
        .as_array()
        .and_then(|assets| assets.iter().find(|a| a["name"] == asset))
        .ok_or_else(|| AnswerError::NoAsset(asset.to_owned()))?["digest"]
        .as_str()
        .ok_or_else(|| AnswerError::NoDigest(asset.to_owned()))?;
    digest
        .strip_prefix("sha256:")
        .and_then(|hex| parse_sha256_hex(hex).ok())
        .ok_or_else(|| AnswerError::BadDigest(digest.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn versions_compare_as_numbers_not_text() {
        assert_eq!(
            compare_versions("2.100.0", "2.99.0"),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_versions("2.331.0", "2.331.0"),
            Some(Ordering::Equal)
        );
        assert_eq!(compare_versions("2.331.0", "3.0.0"), Some(Ordering::Less));
        assert_eq!(compare_versions("latest", "2.331.0"), None);
    }

    /// The shape of `GET /repos/actions/runner/releases/latest` (trimmed).
    fn answer(tag: &str, digest: &str) -> serde_json::Value {
        let version = tag.trim_start_matches('v');
        json!({
            "tag_name": tag,
            "draft": false,
            "prerelease": false,
            "assets": [
                { "name": format!("actions-runner-osx-x64-{version}.tar.gz"), "digest": format!("sha256:{}", "b".repeat(64)) },
                { "name": format!("actions-runner-linux-x64-{version}.tar.gz"), "digest": digest,
                  "browser_download_url": "https://github.com/actions/runner/releases/download/x" },
            ]
        })
    }

    #[test]
    fn latest_release_takes_the_tag_and_this_arch_asset_digest() {
        let hex = "A".repeat(64);
        let release = latest_release(&answer("v2.336.0", &format!("sha256:{hex}")), "x64").unwrap();
        assert_eq!(
            release,
            Release {
                version: "2.336.0".into(),
                sha256: "a".repeat(64),
            }
        );
        let err = latest_release(&answer("v2.336.0", &format!("sha256:{hex}")), "arm64");
        assert_eq!(
            err.unwrap_err().to_string(),
            "no asset actions-runner-linux-arm64-2.336.0.tar.gz"
        );
    }

    #[test]
    fn latest_release_refuses_what_it_cannot_verify() {
        let good = format!("sha256:{}", "a".repeat(64));
        for (body, why) in [
            (answer("2.336.0", &good), "is not v<version>"),
            (answer("v2.336", &good), "is not v<version>"),
            (answer("v2.336.0", "md5:abc"), "is not sha256:<64 hex>"),
            (answer("v2.336.0", "sha256:abc"), "is not sha256:<64 hex>"),
            (json!({ "message": "Not Found" }), "no tag_name"),
            (
                json!({ "tag_name": "v2.336.0", "assets": [{ "name": "actions-runner-linux-x64-2.336.0.tar.gz" }] }),
                "no digest for asset",
            ),
        ] {
            let err = latest_release(&body, "x64").unwrap_err().to_string();
            assert!(err.contains(why), "{body}: {err}");
        }
    }
}

//! Fake GitHub for the runner download, copying what runner-agent relies
//! on of the real one:
//! - release assets at
//!   `/actions/runner/releases/download/v<ver>/actions-runner-linux-<arch>-<ver>.tar.gz`
//!   (github.com's download URLs), counted per version;
//! - the release API at `/api` (api.github.com's paths): a release by tag,
//!   `/repos/actions/runner/releases/tags/v<ver>`, and the latest release,
//!   `/repos/actions/runner/releases/latest`, each with `tag_name`
//!   (`v<ver>`) and every asset's `digest` (`sha256:<hex>`), as GitHub has
//!   exposed since mid 2025. "Latest" is the release published last, as
//!   GitHub's is the newest non-draft, non-prerelease one;
//! - the API refusing unauthenticated callers past their rate limit (HTTP
//!   403 with a `message`), when a test says so.
//!
//! Each release's tarball is the fake runner of `fake-runner/`, whose
//! `bin/Runner.Listener --version` prints that release's version.

use crate::http::{reply, serve, Reply};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The release the fake serves from the start, and the version the stack
/// configures.
pub const FAKE_RUNNER_VERSION: &str = "2.399.0";

pub struct FakeRelease {
    /// What the download URL serves (tests may corrupt it).
    pub tarball: Vec<u8>,
    /// The digest the release API reports (of the genuine tarball).
    pub digest: String,
}

#[derive(Default)]
pub struct GithubState {
    /// By version.
    pub releases: BTreeMap<String, FakeRelease>,
    /// The version `releases/latest` names.
    pub latest: String,
    /// Tarball downloads by version.
    pub downloads: BTreeMap<String, u64>,
    /// Release API requests answered (any status).
    pub api_requests: u64,
    /// The API answers 403 "API rate limit exceeded", as GitHub does to an
    /// unauthenticated address past 60 requests an hour.
    pub api_rate_limited: bool,
    /// Other files, by exact path (the agent's release tarball for the
    /// user-data tests).
    pub files: BTreeMap<String, Vec<u8>>,
}

#[derive(Clone)]
pub struct FakeGithub {
    pub state: Arc<Mutex<GithubState>>,
    pub base: String,
}

impl FakeGithub {
    pub async fn start() -> FakeGithub {
        let state = Arc::new(Mutex::new(GithubState::default()));
        let shared = state.clone();
        let addr = serve(move |req| {
            let state = shared.clone();
            async move { handle(&state, req) }
        })
        .await;
        let github = FakeGithub {
            state,
            base: format!("http://{addr}"),
        };
        github.publish(FAKE_RUNNER_VERSION);
        github
    }

    /// Publishes a release of the fake runner saying `version`, which
    /// becomes the latest; returns its tarball's digest.
    pub fn publish(&self, version: &str) -> String {
        let tarball = fake_runner_tarball_of(version);
        let digest = sha256_hex(&tarball);
        let mut s = self.state.lock().unwrap();
        s.releases.insert(
            version.to_owned(),
            FakeRelease {
                tarball,
                digest: digest.clone(),
            },
        );
        s.latest = version.to_owned();
        digest
    }

    pub fn release_base_url(&self) -> String {
        format!("{}/actions/runner/releases/download", self.base)
    }

    pub fn api_url(&self) -> String {
        format!("{}/api", self.base)
    }

    /// The digest of the first release's genuine tarball.
    pub fn digest(&self) -> String {
        self.state.lock().unwrap().releases[FAKE_RUNNER_VERSION]
            .digest
            .clone()
    }

    /// How many times the tarball of `version` was downloaded.
    pub fn downloads(&self, version: &str) -> u64 {
        let s = self.state.lock().unwrap();
        s.downloads.get(version).copied().unwrap_or(0)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The release's assets; the fake serves the same tarball under both linux
/// architectures, so an aarch64 agent (under qemu) finds its `arm64` one.
const ARCHES: [&str; 2] = ["x64", "arm64"];

fn asset_name(arch: &str, version: &str) -> String {
    format!("actions-runner-linux-{arch}-{version}.tar.gz")
}

/// A release as the API shows it (trimmed to what runner-agent reads, and
/// the download URL it does not).
fn release_json(base: &str, version: &str, release: &FakeRelease) -> String {
    let assets: Vec<_> = ARCHES
        .iter()
        .map(|arch| {
            let name = asset_name(arch, version);
            serde_json::json!({
                "name": name,
                "digest": format!("sha256:{}", release.digest),
                "browser_download_url": format!("{base}/actions/runner/releases/download/v{version}/{name}"),
            })
        })
        .collect();
    serde_json::json!({
        "tag_name": format!("v{version}"),
        "draft": false,
        "prerelease": false,
        "assets": assets,
    })
    .to_string()
}

fn handle(state: &Mutex<GithubState>, req: Request<Incoming>) -> Reply {
    let mut s = state.lock().unwrap();
    let path = req.uri().path();
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let base = format!("http://{host}");
    if let Some((tag, name)) = path
        .strip_prefix("/actions/runner/releases/download/v")
        .and_then(|rest| rest.split_once('/'))
    {
        let version = tag.to_owned();
        let is_asset = ARCHES.iter().any(|arch| name == asset_name(arch, &version));
        if let (true, Some(release)) = (is_asset, s.releases.get(&version)) {
            let tarball = release.tarball.clone();
            *s.downloads.entry(version).or_default() += 1;
            return reply(StatusCode::OK, tarball);
        }
    }
    if let Some(api) = path.strip_prefix("/api/repos/actions/runner/releases/") {
        s.api_requests += 1;
        if s.api_rate_limited {
            return reply(
                StatusCode::FORBIDDEN,
                "{\"message\":\"API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit.)\"}",
            );
        }
        let version = match api.strip_prefix("tags/v") {
            Some(version) => Some(version.to_owned()),
            None if api == "latest" => Some(s.latest.clone()),
            None => None,
        };
        if let Some(release) = version.as_ref().and_then(|v| s.releases.get(v)) {
            let body = release_json(&base, version.as_deref().unwrap_or_default(), release);
            return reply(StatusCode::OK, body);
        }
    }
    if let Some(body) = s.files.get(path) {
        return reply(StatusCode::OK, body.clone());
    }
    reply(StatusCode::NOT_FOUND, "{\"message\":\"Not Found\"}")
}

/// The line of the fake listener that holds the version it reports.
const VERSION_LINE: &str = "version=2.399.0";

/// The fake runner as the release tarball of `version`: `./`-prefixed
/// entries, executable scripts, like the real one; its listener's version
/// line says `version`, as a real release's listener has its version built
/// in.
pub fn fake_runner_tarball_of(version: &str) -> Vec<u8> {
    let listener = include_str!("../fake-runner/bin/Runner.Listener");
    assert_eq!(
        listener.matches(&format!("\n{VERSION_LINE}\n")).count(),
        1,
        "the fake listener has no `{VERSION_LINE}` line to substitute"
    );
    let listener = listener.replacen(
        &format!("\n{VERSION_LINE}\n"),
        &format!("\nversion={version}\n"),
        1,
    );
    let files: [(&str, &str); 4] = [
        ("./config.sh", include_str!("../fake-runner/config.sh")),
        ("./run.sh", include_str!("../fake-runner/run.sh")),
        ("./bin/Runner.Listener", &listener),
        (
            "./bin/Runner.Worker",
            include_str!("../fake-runner/bin/Runner.Worker"),
        ),
    ];
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "./bin/", std::io::empty())
        .unwrap();
    for (path, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o755);
        header.set_size(body.len() as u64);
        builder
            .append_data(&mut header, path, body.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

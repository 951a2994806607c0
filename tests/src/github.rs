//! Fake GitHub for the runner download: the release asset
//! (`/actions/runner/releases/download/v<ver>/actions-runner-linux-<arch>-<ver>.tar.gz`)
//! and the release API (`/api/repos/actions/runner/releases/tags/v<ver>`)
//! with each asset's `digest` (`sha256:<hex>`), as GitHub has exposed since
//! mid 2025. The tarball is the fake runner of `fake-runner/`.

use crate::http::{reply, serve, Reply};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

pub const FAKE_RUNNER_VERSION: &str = "2.399.0";

#[derive(Default)]
pub struct GithubState {
    /// What the download URL serves (tests may corrupt it).
    pub tarball: Vec<u8>,
    /// The digest the release API reports (of the genuine tarball).
    pub digest: String,
    pub downloads: u64,
    /// Other files, by exact path (the agent's release tarball for the
    /// user-data tests).
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

#[derive(Clone)]
pub struct FakeGithub {
    pub state: Arc<Mutex<GithubState>>,
    pub base: String,
}

impl FakeGithub {
    pub async fn start() -> FakeGithub {
        let tarball = fake_runner_tarball();
        let digest = sha256_hex(&tarball);
        let state = Arc::new(Mutex::new(GithubState {
            tarball,
            digest,
            downloads: 0,
            files: Default::default(),
        }));
        let shared = state.clone();
        let addr = serve(move |req| {
            let state = shared.clone();
            async move { handle(&state, req) }
        })
        .await;
        FakeGithub {
            state,
            base: format!("http://{addr}"),
        }
    }

    pub fn release_base_url(&self) -> String {
        format!("{}/actions/runner/releases/download", self.base)
    }

    pub fn api_url(&self) -> String {
        format!("{}/api", self.base)
    }

    pub fn digest(&self) -> String {
        self.state.lock().unwrap().digest.clone()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The release's assets; the fake serves the same tarball under both linux
/// architectures, so an aarch64 agent (under qemu) finds its `arm64` one.
const ARCHES: [&str; 2] = ["x64", "arm64"];

fn asset_name(arch: &str) -> String {
    format!("actions-runner-linux-{arch}-{FAKE_RUNNER_VERSION}.tar.gz")
}

fn handle(state: &Mutex<GithubState>, req: Request<Incoming>) -> Reply {
    let mut s = state.lock().unwrap();
    let path = req.uri().path();
    let download = format!("/actions/runner/releases/download/v{FAKE_RUNNER_VERSION}/");
    let is_asset = path
        .strip_prefix(download.as_str())
        .is_some_and(|name| ARCHES.iter().any(|arch| name == asset_name(arch)));
    if is_asset {
        s.downloads += 1;
        return reply(StatusCode::OK, s.tarball.clone());
    }
    if path == format!("/api/repos/actions/runner/releases/tags/v{FAKE_RUNNER_VERSION}") {
        let assets: Vec<_> = ARCHES
            .iter()
            .map(|arch| serde_json::json!({ "name": asset_name(arch), "digest": format!("sha256:{}", s.digest) }))
            .collect();
        let body =
            serde_json::json!({ "tag_name": format!("v{FAKE_RUNNER_VERSION}"), "assets": assets });
        return reply(StatusCode::OK, body.to_string());
    }
    if let Some(body) = s.files.get(path) {
        return reply(StatusCode::OK, body.clone());
    }
    reply(StatusCode::NOT_FOUND, "{\"message\":\"Not Found\"}")
}

/// The fake runner as a release tarball: `./`-prefixed entries, executable
/// scripts, like the real one.
pub fn fake_runner_tarball() -> Vec<u8> {
    let files: [(&str, &str); 4] = [
        ("./config.sh", include_str!("../fake-runner/config.sh")),
        ("./run.sh", include_str!("../fake-runner/run.sh")),
        (
            "./bin/Runner.Listener",
            include_str!("../fake-runner/bin/Runner.Listener"),
        ),
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

//! What jobs leave in docker: containers, volumes, networks, images and
//! build cache.
//!
//! Through the docker CLI rather than the Engine API: it is what the
//! runner itself and every job use (container jobs, `docker run` steps),
//! so it reaches the same daemon through the same DOCKER_HOST, context and
//! TLS settings they do, and it keeps an HTTP-over-unix-socket client and
//! the API's version negotiation out of the agent. Every call is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// One CLI call; `docker rm -f` of a few dozen containers is well inside.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Removal rounds: a container that holds the docker socket can start
/// new ones while we remove, so the reset removes until a listing comes
/// back with nothing of the run's, at most this often.
const ROUNDS: usize = 5;

/// Containers, volumes and networks present before the first run: they
/// belong to the image or the operator (a log shipper, a cache), not to a
/// job.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Inventory {
    pub containers: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub networks: BTreeSet<String>,
    /// Whether the daemon was a swarm node (a job's `docker swarm init`
    /// and services would bring containers back after every removal).
    #[serde(default)]
    pub swarm: bool,
    /// Image tags (`repo:tag`) and the image id each named: a job that
    /// re-tags `node:20` to an image of its own hands that image to every
    /// later job that runs `node:20` without pulling.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

impl Inventory {
    /// What `self` (now) holds beyond `baseline`, named for a message;
    /// empty when nothing. Images beyond the baseline count only when
    /// `images_too` (reset.images = "baseline").
    pub fn beyond(&self, baseline: &Inventory, images_too: bool) -> Vec<String> {
        let mut extra = Vec::new();
        let mut add = |what: &str, now: &BTreeSet<String>, then: &BTreeSet<String>| {
            extra.extend(
                now.difference(then)
                    .map(|id| format!("{what} {}", short(id))),
            );
        };
        add("container", &self.containers, &baseline.containers);
        add("volume", &self.volumes, &baseline.volumes);
        add("network", &self.networks, &baseline.networks);
        if self.swarm && !baseline.swarm {
            extra.push("swarm".to_owned());
        }
        for (tag, id) in &baseline.tags {
            if self.tags.get(tag) != Some(id) {
                extra.push(format!("tag {tag}"));
            }
        }
        if images_too {
            let then: BTreeSet<&String> = baseline.tags.values().collect();
            for (tag, id) in &self.tags {
                if !then.contains(id) {
                    extra.push(format!("image {tag}"));
                }
            }
        }
        extra
    }
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

#[derive(Debug, Clone)]
pub struct Docker {
    pub cli: PathBuf,
    pub host: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub containers: usize,
    pub volumes: usize,
    pub networks: usize,
    pub images: usize,
    pub tags: usize,
    pub rounds: usize,
    pub swarm_left: bool,
}

/// A docker CLI call that failed, or a clean-up that did not finish.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{call}: no answer in {CALL_TIMEOUT:?}")]
    NoAnswer { call: String },
    #[error("{call}: {source}")]
    Spawn {
        call: String,
        source: std::io::Error,
    },
    #[error("{call}: {status}: {stderr}")]
    Failed {
        call: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("docker image inspect: unexpected line {0:?}")]
    Listing(String),
    #[error("docker: still there after {ROUNDS} rounds of removal: {}", .0.join(", "))]
    Left(Vec<String>),
}

impl Docker {
    /// Whether the CLI is installed at all (no CLI: docker is not used).
    pub fn installed(&self) -> bool {
        if self.cli.components().count() > 1 {
            return self.cli.exists();
        }
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(&self.cli).is_file())
        })
    }

    async fn call(&self, args: &[&str]) -> Result<String, DockerError> {
        let mut command = Command::new(&self.cli);
        if let Some(host) = &self.host {
            command.args(["--host", host]);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let call = || format!("docker {}", args.join(" "));
        let out = tokio::time::timeout(CALL_TIMEOUT, command.output())
            .await
            .map_err(|_| DockerError::NoAnswer { call: call() })?
            .map_err(|source| DockerError::Spawn {
                call: call(),
                source,
            })?;
        if !out.status.success() {
            return Err(DockerError::Failed {
                call: call(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn ids(&self, args: &[&str]) -> Result<Vec<String>, DockerError> {
        Ok(self
            .call(args)
            .await?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The daemon's version, if it answers.
    pub async fn ping(&self) -> Result<String, DockerError> {
        Ok(self
            .call(&["version", "--format", "{{.Server.Version}}"])
            .await?
            .trim()
            .to_owned())
    }

    pub async fn inventory(&self) -> Result<Inventory, DockerError> {
        let swarm = self
            .call(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .await?;
        let tags = self
            .ids(&[
                "image",
                "ls",
                "--no-trunc",
                "--format",
                "{{.Repository}}:{{.Tag}} {{.ID}}",
            ])
            .await?
            .into_iter()
            .filter_map(|line| {
                let (tag, id) = line.split_once(' ')?;
                // Dangling images have no name to poison.
                (!tag.contains("<none>")).then(|| (tag.to_owned(), id.trim().to_owned()))
            })
            .collect();
        Ok(Inventory {
            swarm: matches!(swarm.trim(), "active" | "pending" | "locked" | "error"),
            tags,
            containers: self
                .ids(&["ps", "-aq", "--no-trunc"])
                .await?
                .into_iter()
                .collect(),
            volumes: self
                .ids(&["volume", "ls", "-q"])
                .await?
                .into_iter()
                .collect(),
            // User-defined ones only: `bridge`, `host` and `none` are
            // the daemon's, cannot be removed, and `bridge` gets a new id
            // whenever the daemon starts (the rootless daemon is restarted
            // by every reset).
            networks: self
                .ids(&[
                    "network",
                    "ls",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    "type=custom",
                ])
                .await?
                .into_iter()
                .collect(),
        })
    }

    /// Everything of the run's: the swarm it made (its services with it),
    /// containers (running ones killed), volumes, networks; baseline tags
    /// pointed back at their images; with `images_too`, every image the
    /// baseline did not have. Round after round until a listing shows
    /// nothing of the run's (a container holding the socket may start
    /// more while we remove), at most `ROUNDS`. Required: a failure here
    /// fails the reset.
    pub async fn clean(
        &self,
        baseline: &Inventory,
        images_too: bool,
    ) -> Result<Cleaned, DockerError> {
        let mut cleaned = Cleaned::default();
        for round in 1..=ROUNDS {
            let now = self.inventory().await?;
            if now.beyond(baseline, images_too).is_empty() {
                return Ok(cleaned);
            }
            cleaned.rounds = round;
            self.clean_once(&now, baseline, images_too, &mut cleaned)
                .await?;
        }
        let left = self.inventory().await?.beyond(baseline, images_too);
        if left.is_empty() {
            Ok(cleaned)
        } else {
            Err(DockerError::Left(left))
        }
    }

    async fn clean_once(
        &self,
        now: &Inventory,
        baseline: &Inventory,
        images_too: bool,
        cleaned: &mut Cleaned,
    ) -> Result<(), DockerError> {
        if now.swarm && !baseline.swarm {
            // Leaving takes the node's services and their tasks along.
            self.call(&["swarm", "leave", "--force"]).await?;
            cleaned.swarm_left = true;
        }
        let containers: Vec<&str> = now
            .containers
            .difference(&baseline.containers)
            .map(String::as_str)
            .collect();
        if !containers.is_empty() {
            // -f kills running ones (a job's container has no state worth
            // a graceful stop); -v takes their anonymous volumes along.
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(&containers);
            self.call(&args).await?;
            cleaned.containers += containers.len();
        }
        // Listed again: removed containers freed their volumes/networks.
        let now = self.inventory().await?;
        let volumes: Vec<&str> = now
            .volumes
            .difference(&baseline.volumes)
            .map(String::as_str)
            .collect();
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(&volumes);
            self.call(&args).await?;
            cleaned.volumes += volumes.len();
        }
        let networks: Vec<&str> = now
            .networks
            .difference(&baseline.networks)
            .map(String::as_str)
            .collect();
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(&networks);
            self.call(&args).await?;
            cleaned.networks += networks.len();
        }
        for (tag, id) in &baseline.tags {
            if now.tags.get(tag) != Some(id) {
                self.call(&["tag", id, tag]).await?;
                cleaned.tags += 1;
            }
        }
        if images_too {
            let keep: BTreeSet<&String> = baseline.tags.values().collect();
            let extra: BTreeSet<&str> = now
                .tags
                .iter()
                .filter(|(tag, id)| !keep.contains(id) && !baseline.tags.contains_key(*tag))
                .map(|(tag, _)| tag.as_str())
                .collect();
            if !extra.is_empty() {
                let mut args = vec!["image", "rm", "-f"];
                args.extend(&extra);
                self.call(&args).await?;
                cleaned.images += extra.len();
            }
            // What no tag names any more (built, pulled by digest, the
            // re-tagged job image): untagged and not the baseline's.
            self.call(&["image", "prune", "-f"]).await?;
        }
        Ok(())
    }

    /// Keeps images (the cache that makes reuse worth it) up to `cap`
    /// bytes, removing the oldest first but never a `protected` one (the
    /// baseline's). Returns how many went.
    pub async fn cap_images(
        &self,
        cap: u64,
        protected: &BTreeSet<String>,
    ) -> Result<usize, DockerError> {
        let ids = self.ids(&["image", "ls", "-q", "--no-trunc"]).await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut args = vec![
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Size}} {{.Created}}",
        ];
        let unique: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        args.extend(unique.iter().copied());
        let listing = self.call(&args).await?;
        let mut images = parse_images(&listing)?;
        // Newest first; what is kept is the newest that fits.
        images.sort_by(|a, b| b.2.cmp(&a.2));
        let mut total = 0u64;
        let mut over = Vec::new();
        for (id, size, _) in &images {
            total += size;
            if total > cap && !protected.contains(id) {
                over.push(id.as_str());
            }
        }
        if over.is_empty() {
            return Ok(0);
        }
        let mut args = vec!["image", "rm", "-f"];
        args.extend(&over);
        self.call(&args).await?;
        Ok(over.len())
    }

    /// Prunes the build cache down to `cap` bytes.
    pub async fn cap_build_cache(&self, cap: u64) -> Result<(), DockerError> {
        let keep = cap.to_string();
        self.call(&["builder", "prune", "-f", "--keep-storage", &keep])
            .await
            .map(|_| ())
    }
}

/// `<id> <size> <created>` lines; the RFC 3339 timestamps sort as text.
fn parse_images(listing: &str) -> Result<Vec<(String, u64, String)>, DockerError> {
    listing
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split_whitespace();
            match (
                fields.next(),
                fields.next().map(str::parse::<u64>),
                fields.next(),
            ) {
                (Some(id), Some(Ok(size)), Some(created)) => {
                    Ok((id.to_owned(), size, created.to_owned()))
                }
                _ => Err(DockerError::Listing(line.to_owned())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_listing_is_parsed_or_refused() {
        let listing = "sha256:aa 100 2026-01-02T00:00:00Z\nsha256:bb 7 2025-12-31T23:59:59.5Z\n";
        let images = parse_images(listing).unwrap();
        assert_eq!(
            images[0],
            ("sha256:aa".into(), 100, "2026-01-02T00:00:00Z".into())
        );
        assert_eq!(images.len(), 2);
        assert!(parse_images("sha256:aa lots 2026").is_err());
    }

    #[tokio::test]
    async fn a_missing_cli_is_not_installed_and_says_so() {
        let docker = Docker {
            cli: "/nonexistent/docker".into(),
            host: None,
        };
        assert!(!docker.installed());
        let err = docker.ping().await.unwrap_err().to_string();
        assert!(err.starts_with("docker version"), "{err}");
    }
}

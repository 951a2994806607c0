//! `[github]`: the repository the runner registers with, as a URL (GitHub
//! or a GitHub Enterprise Server) or as `owner` and `repo` on github.com.

use super::keys::Keys;
use super::{ConfigError, DEFAULT_GITHUB_SERVER};
use crate::http_url;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGithub {
    pub url: Option<String>,
    pub owner: Option<String>,
    pub repo: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubRepo {
    pub owner: String,
    pub repo: String,
    /// `https://github.com` or a GitHub Enterprise Server base.
    pub server: String,
}

impl GithubRepo {
    pub fn url(&self) -> String {
        format!("{}/{}/{}", self.server, self.owner, self.repo)
    }
}

impl RawGithub {
    pub(super) fn into_settings(self, at: &Keys) -> Result<GithubRepo, ConfigError> {
        match (&self.url, &self.owner, &self.repo) {
            (Some(text), None, None) => from_url(at, text),
            (None, Some(owner), Some(repo)) => from_owner_and_repo(at, owner, repo),
            _ => Err(at.invalid_section("give either `url` or both `owner` and `repo`")),
        }
    }
}

fn from_url(at: &Keys, text: &str) -> Result<GithubRepo, ConfigError> {
    let url = http_url::parse(text).map_err(|e| at.invalid("url", e))?;
    let shape = || {
        at.invalid(
            "url",
            format!("{text:?} is not https://<host>/<owner>/<repo>"),
        )
    };
    // Credentials, a query or a fragment would be dropped from the
    // runner's URL without a word: refuse them.
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(shape());
    }
    let mut segments: Vec<&str> = url.path_segments().into_iter().flatten().collect();
    // `.../widgets/` is the same repository.
    while segments.last() == Some(&"") {
        segments.pop();
    }
    let [owner, repo] = segments[..] else {
        return Err(shape());
    };
    if !is_github_name(owner) || !is_github_name(repo) {
        return Err(shape());
    }
    Ok(GithubRepo {
        owner: owner.to_owned(),
        repo: repo.trim_end_matches(".git").to_owned(),
        server: url.origin().ascii_serialization(),
    })
}

fn from_owner_and_repo(at: &Keys, owner: &str, repo: &str) -> Result<GithubRepo, ConfigError> {
    if !is_github_name(owner) {
        return Err(at.invalid("owner", format!("{owner:?} is not a GitHub owner")));
    }
    if !is_github_name(repo) {
        return Err(at.invalid("repo", format!("{repo:?} is not a repository name")));
    }
    Ok(GithubRepo {
        owner: owner.to_owned(),
        repo: repo.to_owned(),
        server: DEFAULT_GITHUB_SERVER.into(),
    })
}

/// An owner or repository name as GitHub allows it; also keeps the name
/// safe in a path and a URL.
fn is_github_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

//! The agent downloaded at boot: the input's `[agent.download.<arch>]`
//! table, validated, and the one bash function that fetches and verifies
//! it, used by the `shell` and `pool-manager` scripts alike.

use runner_agent_common::{digest, http_url};
use std::collections::BTreeMap;

pub const ARCHES: &[&str] = &["x86_64", "aarch64"];

/// A download as written in the input.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDownload {
    url: String,
    sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub url: String,
    /// 64 lower-case hexadecimal characters, as `sha256sum` prints them.
    pub sha256: String,
}

impl Download {
    /// curl's `--proto`: redirects must not leave the URL's own scheme.
    pub fn proto(&self) -> &'static str {
        if self.url.starts_with("https://") {
            "https"
        } else {
            "http"
        }
    }

    /// [`FETCH_AGENT`]'s `t`: 1 for a release tarball (by its path:
    /// presigned URLs carry a query), 0 for the bare binary.
    pub fn tarball_flag(&self) -> u8 {
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        u8::from(path.ends_with(".tar.gz") || path.ends_with(".tgz"))
    }
}

/// Validates the table by arch; errors name the field.
pub(crate) fn downloads(
    raw: &BTreeMap<String, RawDownload>,
) -> Result<BTreeMap<String, Download>, (String, String)> {
    let mut out = BTreeMap::new();
    for (arch, d) in raw {
        let field = |k: &str| format!("agent.download.{arch}.{k}");
        if !ARCHES.contains(&arch.as_str()) {
            return Err((
                format!("agent.download.{arch}"),
                format!("unknown arch; use {}", ARCHES.join(" or ")),
            ));
        }
        check_url(&d.url).map_err(|r| (field("url"), r))?;
        let sha256 = digest::parse_sha256_hex(&d.sha256).map_err(|r| (field("sha256"), r))?;
        out.insert(
            arch.clone(),
            Download {
                url: d.url.clone(),
                sha256,
            },
        );
    }
    Ok(out)
}

/// https anywhere; plain http only to a loopback address (a local mirror,
/// the tests' server), since nothing else would protect the download in
/// transit before the checksum is checked. The URL goes into the script
/// single-quoted; the characters refused here would still make a reader of
/// the script look twice.
fn check_url(text: &str) -> Result<(), String> {
    if text.contains(['\'', '"', '\\', '`', '$']) {
        return Err(format!("{text:?} has characters a URL does not"));
    }
    let url = http_url::parse(text)?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if url.scheme() == "https" || loopback {
        Ok(())
    } else {
        Err(format!(
            "{text:?}: use https (plain http only to a loopback address)"
        ))
    }
}

/// Downloads `$u` into `$w/d`, leaves there the agent only if the
/// download's SHA-256 is `$h` (otherwise fails, saying both digests: the
/// URL is in the line before, the script's or its log's), and
/// unpacks it first when `$t` is 1; `$p` is the URL's scheme, which
/// redirects may not leave. Both the `shell` and the `pool-manager` scripts
/// run this block, after `log` and `fail` are defined.
///
/// The pool-manager script has about 3 KB for everything, so this is terse,
/// reads one-letter variables (a function and its arguments would cost
/// ~100 bytes more) and carries no comments. No `--retry-delay`: curl's own
/// backoff (1 s, doubling) waits 31 s over the 5 retries, where a fixed 2 s
/// would give up after 10 s on a network that is still coming up at boot.
pub const FETCH_AGENT: &str = r#"curl -fsSL --proto "=$p" --proto-redir "=$p" --connect-timeout 10 -m 300 --retry 5 --retry-all-errors -o "$w/d" "$u" || fail "downloading $u"
x=$(sha256sum <"$w/d" | cut -c-64)
[ "$x" = "$h" ] || fail "SHA-256 differs: SHA-256 $x, expected $h; not installed"
if [ "$t" = 1 ]; then
    tar -xzf "$w/d" -C "$w" --no-same-owner --wildcards --strip-components=1 '*/runner-agent' || fail "no */runner-agent in $u"
    mv "$w/runner-agent" "$w/d"
fi
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_downloads_only_from_loopback() {
        for ok in [
            "https://example.com/x.tar.gz",
            "http://127.0.0.1:8080/x.tar.gz",
            "http://[::1]:80/x",
            "http://localhost/x",
        ] {
            check_url(ok).unwrap();
        }
        for bad in [
            "http://10.0.0.1/x",
            "http://127.0.0.1.example.com/x",
            "ftp://127.0.0.1/x",
            "https://x/$(reboot)",
            "https:///x",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tarballs_by_the_path_alone() {
        let d = |url: &str| Download {
            url: url.into(),
            sha256: String::new(),
        };
        assert_eq!(d("https://h/a.tar.gz?X-Amz-Signature=1").tarball_flag(), 1);
        assert_eq!(d("https://h/a.tgz").tarball_flag(), 1);
        assert_eq!(d("https://h/runner-agent?x=.tar.gz").tarball_flag(), 0);
    }
}

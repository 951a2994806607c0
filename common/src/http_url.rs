//! http(s) URLs from the config and the generator's input, parsed by the
//! `url` crate.

/// Re-exported so that users name the same `url` as the config's fields.
pub use url::Url;

/// Parses an http or https URL with a host.
///
/// WHATWG parsing, which the `url` crate follows, repairs what in a config
/// file is more likely a typo: it drops tabs and newlines and reads
/// `https:x` and `https:///x` as host `x`. Those are refused here, so that
/// the URL used is the one written.
pub fn parse(text: &str) -> Result<Url, String> {
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{text:?} has characters a URL does not"));
    }
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http(s) URL"));
    }
    let authority_written = text
        .split_once("://")
        .is_some_and(|(_, rest)| !rest.starts_with(['/', '\\']));
    if !authority_written || url.host().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    Ok(url)
}

/// `base` with `segments` appended to its path, each percent-encoded where
/// needed. A trailing slash on `base` adds no empty segment.
pub fn join_segments<'a>(base: &Url, segments: impl IntoIterator<Item = &'a str>) -> Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("an http(s) URL has a path")
        .pop_if_empty()
        .extend(segments);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_with_a_written_host() {
        for ok in [
            "https://github.com/actions/runner/releases/download",
            "http://127.0.0.1:8080/api",
            "http://[::1]/x",
        ] {
            parse(ok).unwrap();
        }
        for bad in [
            "github.com/acme",
            "ftp://example.com/x",
            "https:///x",
            "https:x",
            "https://",
            "https://exa mple.com/",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segments_join_under_the_base_path() {
        for base in ["https://h/a/b", "https://h/a/b/"] {
            let url = join_segments(&parse(base).unwrap(), ["v2.321.0", "x.tar.gz"]);
            assert_eq!(url.as_str(), "https://h/a/b/v2.321.0/x.tar.gz");
        }
        let api = join_segments(&parse("http://127.0.0.1:1").unwrap(), ["repos", "o"]);
        assert_eq!(api.as_str(), "http://127.0.0.1:1/repos/o");
    }
}

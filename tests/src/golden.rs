//! Golden files (tests/golden): what a test's output is compared with, or,
//! with `RA_UPDATE_GOLDEN` set (to anything), what the output is written
//! to, the test then passing. Review the diff before committing it.

use std::path::PathBuf;

/// The switch that rewrites every golden file instead of comparing.
pub const UPDATE_ENV: &str = "RA_UPDATE_GOLDEN";

/// tests/golden: the golden files and the inputs they come from.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden")
}

pub fn updating() -> bool {
    std::env::var_os(UPDATE_ENV).is_some()
}

/// Whether `actual` is what golden file `name` holds; with
/// `RA_UPDATE_GOLDEN` set, `actual` is written to it first, and so it is.
pub fn matches(name: &str, actual: &[u8]) -> bool {
    let path = dir().join(name);
    if updating() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return true;
    }
    std::fs::read(&path).ok().as_deref() == Some(actual)
}

/// `actual` is golden file `name`'s text, or (with `RA_UPDATE_GOLDEN`
/// set) becomes it; else panics with the difference and `context`.
pub fn assert_text(name: &str, actual: &str, context: &str) {
    if matches(name, actual.as_bytes()) {
        return;
    }
    let path = dir().join(name);
    let golden =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        actual,
        golden,
        "{} differs; review the change, then {UPDATE_ENV}=1 scripts/test\n{context}",
        path.display()
    );
}

//! Durations in the config and on the command line (`pool --watch`), in
//! `humantime`'s syntax: `250ms`, `5s`, `2m`, `1h30m`. The one duration
//! parser: nothing else calls humantime.

use std::time::Duration;

/// Longer than any sensible interval or timeout; keeps instant arithmetic
/// far from overflow.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses one value, without spaces inside: humantime would read `1 0s` as
/// `10s`, and an environment override with a stray space is more likely a
/// mistake than a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.contains(char::is_whitespace) {
        return Err(format!(
            "{text:?}: write a duration without spaces, like 250ms, 5s, 10m"
        ));
    }
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 250ms, 5s, 10m: {e}"))?;
    if d > MAX_DURATION {
        return Err(format!("{text:?} is longer than a week"));
    }
    Ok(d)
}

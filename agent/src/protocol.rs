//! The pool protocol's vocabulary (see PROTOCOL.md): item keys, signal
//! names, the timestamp format, and the typed view of the items the control
//! plane writes. Everything here is pure; I/O is in `table`.

use std::fmt;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const PK_INSTANCE: &str = "TYPE#INSTANCE";
pub const PK_HEARTBEAT: &str = "TYPE#HEARTBEAT";
pub const PK_WORKER_SIGNAL: &str = "TYPE#WS";
pub const PK_METADATA: &str = "TYPE#METADATA";
pub const SK_REGISTRATION_TOKEN: &str = "ID#gh_registration_token";
pub const ENTITY_HEARTBEAT: &str = "HEARTBEAT";
pub const ENTITY_WORKER_SIGNAL: &str = "WS";
pub const HEARTBEAT_VALUE: &str = "PING";
/// The control plane counts a heartbeat older than this as unhealthy
/// (`heartbeat-operations.ts`: a 5 s period times 3).
pub const HEARTBEAT_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(15);

pub fn instance_sk(instance_id: &str) -> String {
    format!("ID#{instance_id}")
}

/// Worker signals. The first eight are the control plane's; it ignores
/// names it does not know, which makes `SpotInterrupted` safe to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Ok,
    Failed,
    RegOk,
    RegFailed,
    RemoveRegOk,
    RemoveRegFailed,
    RemoveRegRemoveRunOk,
    RemoveRegRemoveRunFailed,
    SpotInterrupted,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Ok => "UD_OK",
            Signal::Failed => "UD_FAILED",
            Signal::RegOk => "UD_REG_OK",
            Signal::RegFailed => "UD_REG_FAILED",
            Signal::RemoveRegOk => "UD_REMOVE_REG_OK",
            Signal::RemoveRegFailed => "UD_REMOVE_REG_FAILED",
            Signal::RemoveRegRemoveRunOk => "UD_REMOVE_REG_REMOVE_RUN_OK",
            Signal::RemoveRegRemoveRunFailed => "UD_REMOVE_REG_REMOVE_RUN_FAILED",
            Signal::SpotInterrupted => "UD_SPOT_INTERRUPTED",
        }
    }
}

impl Signal {
    const ALL: [Signal; 9] = [
        Signal::Ok,
        Signal::Failed,
        Signal::RegOk,
        Signal::RegFailed,
        Signal::RemoveRegOk,
        Signal::RemoveRegFailed,
        Signal::RemoveRegRemoveRunOk,
        Signal::RemoveRegRemoveRunFailed,
        Signal::SpotInterrupted,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

impl std::str::FromStr for Signal {
    type Err = UnknownSignal;

    fn from_str(s: &str) -> Result<Signal, UnknownSignal> {
        Signal::ALL
            .into_iter()
            .find(|signal| signal.as_str() == s)
            .ok_or_else(|| UnknownSignal(s.to_owned()))
    }
}

// Stored under the wire names, so the state file reads like the table.
impl serde::Serialize for Signal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Signal {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Signal, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `2025-04-24T18:31:04Z`: UTC, no fractional seconds, as the control plane
/// writes `updatedAt` and compares thresholds (as strings).
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

pub fn now_timestamp() -> String {
    format_timestamp(OffsetDateTime::now_utc())
}

/// Parses an RFC 3339 instant, with or without fractional seconds (the
/// token's `expires_at` keeps milliseconds, thresholds do not).
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok()
}

/// What the agent needs from the instance record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InstanceRecord {
    /// `None` for a missing or empty `runId`: the instance is not claimed.
    pub run_id: Option<String>,
    /// The raw `threshold`, as written; parsed only where it is used so that
    /// a garbage value can be reported as such.
    pub threshold: Option<String>,
    pub state: Option<String>,
}

/// The registration token item's `value` map.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationToken {
    pub token: String,
    pub expires_at: Option<String>,
    pub timestamp: Option<String>,
}

impl fmt::Debug for RegistrationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationToken")
            .field("token", &"** redacted **")
            .field("expires_at", &self.expires_at)
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenProblem {
    Missing,
    Empty,
    NoExpiry,
    UnparseableExpiry(String),
    Expired(String),
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Missing => f.write_str("no registration token item in the table"),
            TokenProblem::Empty => f.write_str("the registration token is empty"),
            TokenProblem::NoExpiry => f.write_str("the registration token has no expires_at"),
            TokenProblem::UnparseableExpiry(v) => {
                write!(
                    f,
                    "the registration token's expires_at {v:?} is not a timestamp"
                )
            }
            TokenProblem::Expired(v) => write!(f, "the registration token expired at {v}"),
        }
    }
}

/// Margin so that a token expiring while `config.sh` talks to GitHub is not
/// used: registration takes a few seconds on a real runner.
pub const TOKEN_EXPIRY_MARGIN: time::Duration = time::Duration::seconds(30);

impl RegistrationToken {
    /// Checks the token is usable at `now`.
    pub fn usable_at(&self, now: OffsetDateTime) -> Result<(), TokenProblem> {
        if self.token.trim().is_empty() {
            return Err(TokenProblem::Empty);
        }
        let raw = self.expires_at.as_deref().ok_or(TokenProblem::NoExpiry)?;
        let expires =
            parse_timestamp(raw).ok_or_else(|| TokenProblem::UnparseableExpiry(raw.to_owned()))?;
        if expires <= now + TOKEN_EXPIRY_MARGIN {
            return Err(TokenProblem::Expired(raw.to_owned()));
        }
        Ok(())
    }
}

/// The verdict on the expiry threshold. Only `Expired` may lead to
/// self-termination; everything else names why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    NotExpired { threshold: OffsetDateTime },
    Expired { threshold: OffsetDateTime },
    NoThreshold,
    Unparseable(String),
}

pub fn judge_expiry(
    threshold: Option<&str>,
    now: OffsetDateTime,
    grace: std::time::Duration,
) -> Expiry {
    let raw = match threshold.map(str::trim) {
        None | Some("") => return Expiry::NoThreshold,
        Some(raw) => raw,
    };
    let Some(threshold) = parse_timestamp(raw) else {
        return Expiry::Unparseable(raw.to_owned());
    };
    let grace = time::Duration::try_from(grace).unwrap_or(time::Duration::MAX);
    if now > threshold.saturating_add(grace) {
        Expiry::Expired { threshold }
    } else {
        Expiry::NotExpired { threshold }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn signals_round_trip_by_wire_name() {
        for signal in Signal::ALL {
            assert_eq!(signal.as_str().parse::<Signal>(), Ok(signal));
            let json = serde_json::to_string(&signal).unwrap();
            assert_eq!(json, format!("\"{}\"", signal.as_str()));
            assert_eq!(serde_json::from_str::<Signal>(&json).unwrap(), signal);
        }
        assert!("UD_NOPE".parse::<Signal>().is_err());
    }

    #[test]
    fn timestamps_have_no_fraction_and_end_in_z() {
        let at = datetime!(2025-04-24 18:31:04.987 UTC);
        assert_eq!(format_timestamp(at), "2025-04-24T18:31:04Z");
        let offset = datetime!(2025-04-24 20:31:04 +02:00);
        assert_eq!(format_timestamp(offset), "2025-04-24T18:31:04Z");
        assert_eq!(now_timestamp().len(), 20);
    }

    #[test]
    fn parses_with_and_without_fraction() {
        assert_eq!(
            parse_timestamp("2025-04-24T18:31:04Z"),
            Some(datetime!(2025-04-24 18:31:04 UTC))
        );
        assert_eq!(
            parse_timestamp("2025-04-24T18:31:04.111Z"),
            Some(datetime!(2025-04-24 18:31:04.111 UTC))
        );
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp(""), None);
    }

    #[test]
    fn expiry_needs_a_readable_threshold_and_the_grace() {
        let now = datetime!(2025-04-24 18:31:04 UTC);
        let grace = std::time::Duration::from_secs(60);
        assert_eq!(judge_expiry(None, now, grace), Expiry::NoThreshold);
        assert_eq!(judge_expiry(Some(""), now, grace), Expiry::NoThreshold);
        assert_eq!(
            judge_expiry(Some("soon"), now, grace),
            Expiry::Unparseable("soon".into())
        );
        assert!(matches!(
            judge_expiry(Some("2025-04-24T18:30:30Z"), now, grace),
            Expiry::NotExpired { .. }
        ));
        assert!(matches!(
            judge_expiry(Some("2025-04-24T18:30:03Z"), now, grace),
            Expiry::Expired { .. }
        ));
    }

    #[test]
    fn token_checks() {
        let now = datetime!(2025-04-24 18:31:04 UTC);
        let token = |t: &str, e: Option<&str>| RegistrationToken {
            token: t.into(),
            expires_at: e.map(Into::into),
            timestamp: None,
        };
        assert_eq!(
            token("AB", Some("2025-04-24T19:31:04.000Z")).usable_at(now),
            Ok(())
        );
        assert_eq!(
            token("", Some("2025-04-24T19:31:04Z")).usable_at(now),
            Err(TokenProblem::Empty)
        );
        assert!(matches!(
            token("AB", Some("2025-04-24T18:31:10Z")).usable_at(now),
            Err(TokenProblem::Expired(_))
        ));
        assert!(matches!(
            token("AB", Some("x")).usable_at(now),
            Err(TokenProblem::UnparseableExpiry(_))
        ));
        assert_eq!(
            token("AB", None).usable_at(now),
            Err(TokenProblem::NoExpiry)
        );
        assert!(!format!("{:?}", token("SECRET", None)).contains("SECRET"));
    }
}

//! One run's session: its token, and a task that assumes the role, keeps
//! the credentials fresh and retries failures until the run ends. The
//! claim never waits for it: the session starts with nothing to serve, and
//! a job's request waits a moment for the first credentials
//! (`server.rs`).

use super::assume::{Assume, AssumeError, Issued, SessionRequest};
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Failed AssumeRole calls are retried after 1 s, doubling, at most 30 s
/// apart, for as long as the run lasts (each call has the SDK's own
/// timeouts and retries inside).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// Refreshed when this much of the session is left (less for a short
/// session: see `refresh_in`). botocore (the AWS CLI, boto3) fetches again
/// at every call once less than 15 min are left, and refuses credentials
/// with less than 10 min: served credentials keep more than that.
const REFRESH_AHEAD: Duration = Duration::from_secs(20 * 60);
const REFRESH_SHORT_SESSION_AFTER: Duration = Duration::from_secs(4 * 60);
/// Never sooner than this after a success, whatever STS said.
const REFRESH_MIN: Duration = Duration::from_secs(30);
/// Token length in random bytes (hex in the environment).
const TOKEN_BYTES: usize = 32;

/// What a job's request gets now.
#[derive(Debug, Clone)]
pub enum Served {
    /// The first AssumeRole has not answered yet.
    Pending,
    Ready(Arc<Issued>),
    /// The last AssumeRole failed (why: no secret in it).
    Failed(Arc<str>),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the OS random source: {0}")]
    Random(getrandom::Error),
}

pub struct Session {
    pub run_id: String,
    pub session_name: String,
    token: String,
    pub served: watch::Receiver<Served>,
    /// Cancelled when the run ends: the token stops working, the refresh
    /// task stops.
    pub ended: CancellationToken,
}

impl Session {
    /// A session for `request`; its refresh task runs until `end`.
    pub fn start<A: Assume>(
        assumer: Arc<A>,
        run_id: &str,
        request: SessionRequest,
        metrics: Metrics,
    ) -> Result<Session, TokenError> {
        let token = new_token()?;
        let (tx, served) = watch::channel(Served::Pending);
        let ended = CancellationToken::new();
        let session = Session {
            run_id: run_id.to_owned(),
            session_name: request.session_name.clone(),
            token,
            served,
            ended: ended.clone(),
        };
        let run_id = run_id.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = keep_fresh(&*assumer, &run_id, &request, &tx, &metrics) => {}
                () = ended.cancelled() => {}
            }
        });
        Ok(session)
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `presented` is this session's token, in time independent of
    /// where they differ.
    pub fn accepts(&self, presented: &str) -> bool {
        !self.ended.is_cancelled() && bool::from(presented.as_bytes().ct_eq(self.token.as_bytes()))
    }

    pub fn end(&self) {
        self.ended.cancel();
    }
}

/// A fresh token from the OS CSPRNG, hex-encoded (the SDKs put it in an
/// HTTP header as is: no characters that need escaping).
fn new_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::getrandom(&mut bytes).map_err(TokenError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Assumes the role, then again before each expiry; failures are retried
/// (`RETRY_*`). Returns never: the caller stops it when the run ends.
async fn keep_fresh<A: Assume>(
    assumer: &A,
    run_id: &str,
    request: &SessionRequest,
    tx: &watch::Sender<Served>,
    metrics: &Metrics,
) {
    let mut retry = RETRY_FIRST;
    loop {
        let wait = match assumer.assume(request).await {
            Ok(issued) => {
                metrics.assume_role(true);
                let now = OffsetDateTime::now_utc();
                let wait = refresh_in(now, issued.expiration);
                tracing::info!(
                    run_id,
                    arn = %issued.arn,
                    expiration = %issued.expiration,
                    refresh_in_s = wait.as_secs(),
                    "job credentials ready"
                );
                tx.send_replace(Served::Ready(Arc::new(issued)));
                retry = RETRY_FIRST;
                wait
            }
            Err(e) => {
                metrics.assume_role(false);
                failed(tx, &e);
                tracing::error!(run_id, error = %e, retry_in_s = retry.as_secs(), "job credentials: AssumeRole failed");
                let wait = retry;
                retry = (retry * 2).min(RETRY_CAP);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// A failure replaces what is served unless the last credentials are still
/// good for a while (a failed refresh is retried long before they expire).
fn failed(tx: &watch::Sender<Served>, error: &AssumeError) {
    tx.send_if_modified(|served| match served {
        Served::Ready(issued) if servable(issued, OffsetDateTime::now_utc()) => false,
        _ => {
            *served = Served::Failed(error.to_string().into());
            true
        }
    });
}

/// Whether `issued` may still be handed out at `now`: not within the last
/// minute of its life (a client would get credentials that fail at once).
pub fn servable(issued: &Issued, now: OffsetDateTime) -> bool {
    issued.expiration - now > time::Duration::MINUTE
}

/// How long credentials expiring at `expiration` are served before the
/// next AssumeRole: until `REFRESH_AHEAD` is left, or, for sessions too
/// short for that, `REFRESH_SHORT_SESSION_AFTER` after issue.
pub fn refresh_in(now: OffsetDateTime, expiration: OffsetDateTime) -> Duration {
    let lifetime = Duration::try_from(expiration - now).unwrap_or_default();
    let ahead = REFRESH_AHEAD.min(lifetime.saturating_sub(REFRESH_SHORT_SESSION_AFTER));
    lifetime.saturating_sub(ahead).max(REFRESH_MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_leaves_botocore_more_than_ten_minutes() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let at = |secs: u64| now + Duration::from_secs(secs);
        // An hour: refreshed with 20 min left.
        assert_eq!(refresh_in(now, at(3600)), Duration::from_secs(40 * 60));
        // The 15 min minimum: every 4 min, 11 min left.
        assert_eq!(refresh_in(now, at(900)), Duration::from_secs(4 * 60));
        // 12 h.
        assert_eq!(
            refresh_in(now, at(12 * 3600)),
            Duration::from_secs(12 * 3600 - 1200)
        );
        // Nonsense from STS (expired, or nearly): not a hot loop.
        assert_eq!(refresh_in(now, now), REFRESH_MIN);
        assert_eq!(refresh_in(now, at(10)), REFRESH_MIN);
    }

    #[test]
    fn tokens_are_random_hex() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

//! The loopback endpoint the AWS SDKs and CLI read as container
//! credentials (`AWS_CONTAINER_CREDENTIALS_FULL_URI`): `GET` with the run's
//! token as the whole `Authorization` header (what the SDKs send from
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN`), answered with the JSON of the
//! ECS credential endpoint. One request per connection, the head parsed by
//! `httparse`, as the metrics endpoint does.

use super::session::{servable, Served, Session};
use super::JobCredentials;
use crate::credentials::assume::Assume;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The path in the URI given to jobs.
pub const PATH: &str = "/credentials";
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;
/// How long a request waits for the run's first credentials: under
/// botocore's 2 s per attempt (it tries 3 times), so a job that starts
/// right after the claim gets a clear 503 rather than a timeout.
pub const PENDING_WAIT: Duration = Duration::from_millis(1500);

/// An answer: status line and JSON body.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: &'static str,
    pub body: serde_json::Value,
}

fn error(status: &'static str, message: impl Into<String>) -> Answer {
    Answer {
        status,
        body: json!({ "code": status, "message": message.into() }),
    }
}

/// Serves requests until `stop`.
pub async fn serve<A: Assume>(
    listener: TcpListener,
    credentials: JobCredentials<A>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        match stream {
            Ok((stream, _)) => {
                let credentials = credentials.clone();
                tokio::spawn(async move {
                    if let Err(e) = respond(stream, &credentials).await {
                        tracing::debug!(error = %e, "job credentials request");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a job credentials connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn respond<A: Assume>(
    mut stream: TcpStream,
    credentials: &JobCredentials<A>,
) -> std::io::Result<()> {
    let head = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in 5 s"))??;
    let answer = match head {
        None => error("400 Bad Request", "malformed request"),
        Some(head) => answer(credentials, &head).await,
    };
    let body = answer.body.to_string();
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        answer.status,
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// The request's parts that matter.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

/// What a request gets: the run's credentials for its token, else why not.
pub async fn answer<A: Assume>(credentials: &JobCredentials<A>, head: &Head) -> Answer {
    let path = head.path.split('?').next().unwrap_or_default();
    if path != PATH {
        return error("404 Not Found", format!("GET {PATH}"));
    }
    if head.method != "GET" {
        return error("405 Method Not Allowed", format!("GET {PATH}"));
    }
    let session = head
        .authorization
        .as_deref()
        .and_then(|token| credentials.session_for(token));
    let Some(session) = session else {
        // Missing, wrong, or of a run that ended: the same answer.
        return error(
            "403 Forbidden",
            "no valid AWS_CONTAINER_AUTHORIZATION_TOKEN for a current run",
        );
    };
    served(&session).await
}

async fn served(session: &Arc<Session>) -> Answer {
    let mut served = session.served.clone();
    let ready = tokio::select! {
        r = served.wait_for(|s| !matches!(s, Served::Pending)) => r.map(|s| s.clone()).ok(),
        () = tokio::time::sleep(PENDING_WAIT) => None,
        () = session.ended.cancelled() => None,
    };
    // Ended while waiting (the session's task, and with it the sender,
    // is gone too): the token is dead.
    if session.ended.is_cancelled() {
        return error("403 Forbidden", "the run ended");
    }
    match ready {
        Some(Served::Ready(issued)) if servable(&issued, OffsetDateTime::now_utc()) => Answer {
            status: "200 OK",
            body: json!({
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": issued.access_key_id,
                "SecretAccessKey": issued.secret_access_key,
                "Token": issued.session_token,
                "Expiration": issued.expiration.format(&Rfc3339).unwrap_or_default(),
            }),
        },
        Some(Served::Ready(_)) => error(
            "503 Service Unavailable",
            "the run's credentials expired and AssumeRole has not renewed them yet; the agent's log says why",
        ),
        Some(Served::Failed(why)) => error(
            "502 Bad Gateway",
            format!("the agent could not get credentials for this run: {why}"),
        ),
        Some(Served::Pending) | None => error(
            "503 Service Unavailable",
            "the run's credentials are not ready yet (AssumeRole in progress); try again",
        ),
    }
}

/// Reads until the request head is complete, or `None` for a malformed or
/// oversized one.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Head>> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let authorization = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(|v| v.trim().to_owned());
                return Ok(Some(Head {
                    method: request.method.unwrap_or_default().to_owned(),
                    path: request.path.unwrap_or_default().to_owned(),
                    authorization,
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Ok(None),
        }
    }
}

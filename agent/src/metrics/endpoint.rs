//! The scrape endpoint: `GET /metrics` over HTTP/1.x on the configured
//! address, one request per connection (`Connection: close`), which is all
//! a Prometheus scraper or the CloudWatch agent needs. The request head is
//! parsed by `httparse`; a client that sends nothing useful within
//! `READ_TIMEOUT` or more than `MAX_HEAD` bytes is dropped.

use super::Metrics;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 8 * 1024;
/// The classic text format's media type: what Prometheus negotiates down
/// to when a target does not speak OpenMetrics.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves scrapes until `stop`.
pub async fn serve(listener: TcpListener, metrics: Metrics, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        match stream {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &metrics).await {
                        tracing::debug!(error = %e, "metrics request");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, say: do not spin.
                tracing::warn!(error = %e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let request = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in 5 s"))??;
    let (status, body) = match request {
        Some((method, path)) => route(&method, &path, metrics),
        None => ("400 Bad Request", String::new()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !body.is_empty() {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn route(method: &str, path: &str, metrics: &Metrics) -> (&'static str, String) {
    // A query string (Prometheus adds none, some tools do) is ignored.
    let path = path.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics.render()),
        (_, "/metrics") => ("405 Method Not Allowed", String::new()),
        _ => ("404 Not Found", "GET /metrics\n".to_owned()),
    }
}

/// Reads until the request head is complete: its method and path, or
/// `None` for a malformed or oversized head.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(String, String)>> {
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
                return Ok(Some((
                    request.method.unwrap_or_default().to_owned(),
                    request.path.unwrap_or_default().to_owned(),
                )))
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            _ => return Ok(None),
        }
    }
}

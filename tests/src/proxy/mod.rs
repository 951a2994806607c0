//! A loopback proxy in front of moto that parses each request the agent
//! sends, counts AWS operations (`X-Amz-Target` for DynamoDB, `Action=` for
//! EC2) and consistent reads, and can play "AWS is down" by cutting
//! connections. Counting here, outside the agent, is what makes the
//! benchmark's read-unit figures and the IAM policy check honest: each call
//! is also kept with what IAM authorizes it by (call.rs), for the policy
//! evaluator (tests/src/iam).
//!
//! It also injects DynamoDB's faults (`Faults`): throttling by operation
//! or by a token-bucket budget per partition key (read and write units as
//! DynamoDB charges them), 5xx answers, added latency, connections closed
//! without an answer, and answers cut short of their `Content-Length`.
//!
//! The faults live in faults.rs; here, the relay and what it counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub mod call;
mod faults;

pub use call::Call;
use faults::Verdict;
pub use faults::{Budget, Faults, Usage};

#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Operation name → requests (e.g. `GetItem`, `TerminateInstances`).
    pub operations: BTreeMap<String, u64>,
    /// Every call as IAM names it (`dynamodb:GetItem`, `ec2:DescribeTags`).
    pub iam_actions: std::collections::BTreeSet<String>,
    /// Every call, in order, with what IAM authorizes it by (tests/src/iam).
    pub calls: Vec<Call>,
    /// Requests carrying `"ConsistentRead":true`, by operation.
    pub consistent: BTreeMap<String, u64>,
    /// TCP connections the agent opened.
    pub connections: u64,
    /// When each DynamoDB read was sent, for rate limits over any window.
    pub read_times: Vec<std::time::Instant>,
}

impl Counts {
    pub fn get(&self, op: &str) -> u64 {
        self.operations.get(op).copied().unwrap_or(0)
    }

    /// DynamoDB read units: 0.5 per eventually consistent item read, 1 per
    /// consistent one (items here are far below 4 KiB). BatchGetItem is
    /// counted as the agent sends it: two consistent items.
    pub fn read_units(&self) -> f64 {
        let gets = self.get("GetItem") as f64;
        let consistent_gets = self.consistent.get("GetItem").copied().unwrap_or(0) as f64;
        let batches = self.get("BatchGetItem") as f64;
        (gets - consistent_gets) * 0.5 + consistent_gets + batches * 2.0
    }

    /// The most DynamoDB reads sent within any `window`.
    pub fn max_reads_within(&self, window: std::time::Duration) -> usize {
        let t = &self.read_times;
        (0..t.len())
            .map(|i| {
                t[i..]
                    .iter()
                    .take_while(|x| x.duration_since(t[i]) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    pub fn dynamodb_reads(&self) -> u64 {
        self.get("GetItem") + self.get("BatchGetItem") + self.get("Query") + self.get("Scan")
    }
}

#[derive(Clone)]
pub struct Proxy {
    pub endpoint: String,
    counts: Arc<Mutex<Counts>>,
    down: Arc<AtomicBool>,
    denied: Denied,
    faults: Arc<Mutex<Faults>>,
}

/// DynamoDB operations answered as a policy without them would be.
type Denied = Arc<Mutex<std::collections::HashSet<String>>>;

/// DynamoDB's answer to a call the caller's IAM policy does not allow:
/// HTTP 400 with the JSON protocol's error shape, `__type` naming
/// AccessDeniedException (what the SDK reads as the error code).
fn access_denied(op: &str) -> Vec<u8> {
    let body = format!(
        "{{\"__type\":\"com.amazon.coral.service#AccessDeniedException\",\"Message\":\"User: arn:aws:sts::123456789012:assumed-role/runner/i-test is not authorized to perform: dynamodb:{op}\"}}"
    );
    format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: DENIED\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy {
            endpoint: format!("http://{addr}"),
            counts: Arc::default(),
            down: Arc::default(),
            denied: Arc::default(),
            faults: Arc::default(),
        };
        let (counts, down, denied, faults) = (
            proxy.counts.clone(),
            proxy.down.clone(),
            proxy.denied.clone(),
            proxy.faults.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                counts.lock().unwrap().connections += 1;
                let shared = Shared {
                    counts: counts.clone(),
                    down: down.clone(),
                    denied: denied.clone(),
                    faults: faults.clone(),
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = relay(client, upstream, shared).await;
                });
            }
        });
        proxy
    }

    pub fn counts(&self) -> Counts {
        self.counts.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        *self.counts.lock().unwrap() = Counts::default();
    }

    /// Answers DynamoDB's `op` with AccessDeniedException from now on.
    pub fn deny(&self, op: &str) {
        self.denied.lock().unwrap().insert(op.to_owned());
    }

    /// While down, connections are cut before any request reaches moto.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Changes the faults (`f` gets the current ones).
    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults.lock().unwrap());
    }

    /// No faults from now on (what was seen is kept).
    pub fn clear_faults(&self) {
        self.faults.lock().unwrap().clear();
    }

    pub fn usage(&self) -> Usage {
        self.faults.lock().unwrap().usage.clone()
    }
}

/// What every connection's relay shares with the proxy.
struct Shared {
    counts: Arc<Mutex<Counts>>,
    down: Arc<AtomicBool>,
    denied: Denied,
    faults: Arc<Mutex<Faults>>,
}

async fn relay(client: TcpStream, upstream: String, shared: Shared) -> std::io::Result<()> {
    let Shared {
        counts,
        down,
        denied,
        faults,
    } = shared;
    let (client_read, mut client_write) = client.into_split();
    let mut reader = BufReader::new(client_read);
    loop {
        let Some((head, body, op)) = read_request(&mut reader).await? else {
            return Ok(());
        };
        if down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&body);
        // JSON protocol services name the call in X-Amz-Target, the query
        // protocol (EC2, STS) in the form body; the SigV4 scope names the
        // service.
        let call = call::parse(&head, &body, op.as_deref());
        let dynamodb_op = call
            .as_ref()
            .filter(|c| op.is_some() && c.service == "dynamodb")
            .map(|c| c.operation.clone());
        if let Some(name) = &dynamodb_op {
            if denied.lock().unwrap().contains(name) {
                client_write.write_all(&access_denied(name)).await?;
                continue;
            }
        }
        // Counted as sent, whatever the faults answer: the agent's rate.
        if let Some(call) = call {
            let mut c = counts.lock().unwrap();
            c.iam_actions.insert(call.action());
            let op = call.operation.clone();
            c.calls.push(call);
            if matches!(op.as_str(), "GetItem" | "BatchGetItem" | "Query" | "Scan") {
                c.read_times.push(std::time::Instant::now());
            }
            *c.operations.entry(op.clone()).or_default() += 1;
            if text.contains("\"ConsistentRead\":true") {
                *c.consistent.entry(op).or_default() += 1;
            }
        }
        let mut truncate = false;
        if let Some(name) = &dynamodb_op {
            let (verdict, latency) = {
                let mut f = faults.lock().unwrap();
                (f.judge(name, &body), f.latency)
            };
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            match verdict {
                Verdict::Forward => {}
                Verdict::Truncate => truncate = true,
                Verdict::Answer(answer) => {
                    client_write.write_all(&answer).await?;
                    continue;
                }
                Verdict::Reset => return Ok(()),
            }
        }
        // moto answers every request with `Connection: close`; DynamoDB
        // keeps connections alive. One upstream connection per request, and
        // the agent's connection kept open, so that the agent's cost per
        // request is what it is against the real service.
        let mut server = TcpStream::connect(&upstream).await?;
        server.write_all(&head).await?;
        server.write_all(&body).await?;
        let response = read_response(&mut server).await?;
        if truncate {
            // The head says the whole length; half the body comes, then
            // the connection ends.
            let head_end = response
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(response.len(), |i| i + 4);
            let cut = head_end + (response.len() - head_end) / 2;
            client_write.write_all(&response[..cut]).await?;
            return Ok(());
        }
        client_write.write_all(&response).await?;
    }
}

type Request = (Vec<u8>, Vec<u8>, Option<String>);

async fn read_request(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<Request>> {
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut op = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-target:") {
            op = line.trim().rsplit('.').next().map(str::to_owned);
        }
        head.extend_from_slice(line.as_bytes());
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Some((head, body, op)))
}

/// Reads one response and re-frames it without `Connection: close`.
async fn read_response(server: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut reader = BufReader::new(server);
    let mut head = Vec::new();
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if line == "\r\n" || line == "\n" {
            break;
        }
        if lower.starts_with("connection:") || lower.starts_with("content-length:") {
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            }
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).await?;
        }
        None => {
            reader.read_to_end(&mut body).await?;
        }
    }
    head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    head.extend_from_slice(&body);
    Ok(head)
}

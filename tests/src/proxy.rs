//! A loopback proxy in front of moto that parses each request the agent
//! sends, counts AWS operations (`X-Amz-Target` for DynamoDB, `Action=` for
//! EC2) and consistent reads, and can play "AWS is down" by cutting
//! connections. Counting here, outside the agent, is what makes the
//! benchmark's read-unit figures and the IAM policy check honest.
//!
//! It also injects DynamoDB's faults (`Faults`): throttling by operation
//! or by a token-bucket budget per partition key (read and write units as
//! DynamoDB charges them), 5xx answers, added latency, connections closed
//! without an answer, and answers cut short of their `Content-Length`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Default, Clone)]
pub struct Counts {
    /// Operation name → requests (e.g. `GetItem`, `TerminateInstances`).
    pub operations: BTreeMap<String, u64>,
    /// Every call as IAM names it (`dynamodb:GetItem`, `ec2:DescribeTags`).
    pub iam_actions: std::collections::BTreeSet<String>,
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

/// DynamoDB's per-partition limits, scaled: read and write units per
/// second, each a token bucket holding one second's worth (DynamoDB's own
/// burst allowance is larger; one second makes throttling start sooner).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub read_units_per_s: f64,
    pub write_units_per_s: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes `units` if the bucket holds them after refilling at `rate`.
    fn take(&mut self, units: f64, rate: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + rate * now.duration_since(self.at).as_secs_f64()).min(rate);
        self.at = now;
        if self.tokens >= units {
            self.tokens -= units;
            true
        } else {
            false
        }
    }
}

/// What the proxy does to DynamoDB requests; `Faults::default()` is none.
#[derive(Debug, Default)]
pub struct Faults {
    /// Operations (e.g. `GetItem`) answered as throttled, every time.
    pub throttle_ops: HashSet<String>,
    /// Per partition key budgets; requests beyond them are throttled.
    pub budget: Option<Budget>,
    /// Every n-th DynamoDB request is answered with HTTP 500.
    pub server_error_every: Option<u64>,
    /// Added before each DynamoDB request is forwarded.
    pub latency: Duration,
    /// Every n-th DynamoDB request: the connection is closed, no answer.
    pub reset_every: Option<u64>,
    /// Every n-th DynamoDB request: half the answer, then the connection
    /// is closed.
    pub truncate_every: Option<u64>,
    requests: u64,
    buckets: HashMap<(String, bool), Bucket>,
    usage: Usage,
}

/// What the proxy saw per partition key.
#[derive(Debug, Default, Clone)]
pub struct Usage {
    /// (when, partition key, read units, write units) of each request
    /// served; throttled ones cost nothing, as in DynamoDB.
    pub served: Vec<(Instant, String, f64, f64)>,
    /// Throttled requests by partition key (`op:` keys for whole
    /// operations throttled).
    pub throttled: BTreeMap<String, u64>,
    /// When each throttled request was answered.
    pub throttled_at: Vec<Instant>,
    pub server_errors: u64,
    pub resets: u64,
    pub truncated: u64,
}

impl Usage {
    /// Units per second used under `pk` in the window (reads, writes).
    pub fn units_per_s(&self, pk: &str, from: Instant, to: Instant) -> (f64, f64) {
        let secs = to.duration_since(from).as_secs_f64().max(1e-9);
        let (r, w) = self
            .served
            .iter()
            .filter(|(at, p, ..)| p == pk && *at >= from && *at < to)
            .fold((0.0, 0.0), |(r, w), (_, _, ur, uw)| (r + ur, w + uw));
        (r / secs, w / secs)
    }

    pub fn throttled_total(&self) -> u64 {
        self.throttled.values().sum()
    }

    pub fn throttled_in(&self, from: Instant, to: Instant) -> usize {
        self.throttled_at
            .iter()
            .filter(|at| **at >= from && **at < to)
            .count()
    }
}

/// What one DynamoDB request costs, per partition key, as DynamoDB charges
/// items under 4 KiB (reads) and 1 KiB (writes): 0.5 read unit per
/// eventually consistent item, 1 per strongly consistent, 1 write unit per
/// PutItem; a Query 0.5 or 1 per page read (our pages are small).
fn cost(op: &str, body: &serde_json::Value) -> Vec<(String, f64, f64)> {
    let pk = |key: &serde_json::Value| key["PK"]["S"].as_str().unwrap_or("?").to_owned();
    let read = |consistent: bool| if consistent { 1.0 } else { 0.5 };
    let consistent = body["ConsistentRead"].as_bool().unwrap_or(false);
    match op {
        "GetItem" => vec![(pk(&body["Key"]), read(consistent), 0.0)],
        "PutItem" => vec![(pk(&body["Item"]), 0.0, 1.0)],
        "BatchGetItem" => body["RequestItems"]
            .as_object()
            .into_iter()
            .flat_map(|tables| tables.values())
            .flat_map(|t| {
                let c = read(t["ConsistentRead"].as_bool().unwrap_or(false));
                t["Keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(move |k| (pk(k), c, 0.0))
            })
            .collect(),
        "Query" => {
            let pk = body["ExpressionAttributeValues"][":pk"]["S"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            vec![(pk, read(consistent), 0.0)]
        }
        _ => vec![],
    }
}

/// A DynamoDB error answer in the JSON protocol's shape (`__type` is what
/// the SDK reads as the error code).
fn dynamodb_error(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{code}\",\"message\":\"{message}\"}}"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-RequestId: FAULT\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// DynamoDB's throttling answer (the message is the service's own).
fn throttled() -> Vec<u8> {
    dynamodb_error(
        "400 Bad Request",
        "ProvisionedThroughputExceededException",
        "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
    )
}

/// What the faults decide for one request.
enum Verdict {
    Forward,
    Answer(Vec<u8>),
    Reset,
    Truncate,
}

impl Faults {
    fn judge(&mut self, op: &str, body: &[u8]) -> Verdict {
        let usage = &mut self.usage;
        self.requests += 1;
        let n = self.requests;
        let every = |k: Option<u64>| k.is_some_and(|k| k > 0 && n.is_multiple_of(k));
        if every(self.reset_every) {
            usage.resets += 1;
            return Verdict::Reset;
        }
        if every(self.server_error_every) {
            usage.server_errors += 1;
            return Verdict::Answer(dynamodb_error(
                "500 Internal Server Error",
                "InternalServerError",
                "Internal server error",
            ));
        }
        if self.throttle_ops.contains(op) {
            *usage.throttled.entry(format!("op:{op}")).or_default() += 1;
            usage.throttled_at.push(Instant::now());
            return Verdict::Answer(throttled());
        }
        let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let costs = cost(op, &body);
        if let Some(budget) = self.budget {
            for (pk, r, w) in &costs {
                for (units, rate, write) in [
                    (*r, budget.read_units_per_s, false),
                    (*w, budget.write_units_per_s, true),
                ] {
                    if units == 0.0 {
                        continue;
                    }
                    let bucket = self.buckets.entry((pk.clone(), write)).or_insert(Bucket {
                        tokens: rate,
                        at: Instant::now(),
                    });
                    if !bucket.take(units, rate) {
                        *usage.throttled.entry(pk.clone()).or_default() += 1;
                        usage.throttled_at.push(Instant::now());
                        return Verdict::Answer(throttled());
                    }
                }
            }
        }
        let now = Instant::now();
        usage
            .served
            .extend(costs.into_iter().map(|(pk, r, w)| (now, pk, r, w)));
        if every(self.truncate_every) {
            usage.truncated += 1;
            return Verdict::Truncate;
        }
        Verdict::Forward
    }
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
        let mut faults = self.faults.lock().unwrap();
        let usage = std::mem::take(&mut faults.usage);
        *faults = Faults {
            usage,
            ..Faults::default()
        };
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
        // JSON protocol services name the call in X-Amz-Target, EC2's query
        // protocol in the form body; the agent talks to no other service.
        let op = match op {
            Some(op) => Some(("dynamodb", op)),
            None => text
                .split('&')
                .find_map(|kv| kv.strip_prefix("Action="))
                .map(|op| ("ec2", op.to_owned())),
        };
        let dynamodb_op = match &op {
            Some(("dynamodb", name)) => Some(name.clone()),
            _ => None,
        };
        if let Some(name) = &dynamodb_op {
            if denied.lock().unwrap().contains(name) {
                client_write.write_all(&access_denied(name)).await?;
                continue;
            }
        }
        // Counted as sent, whatever the faults answer: the agent's rate.
        if let Some((service, op)) = op {
            let mut c = counts.lock().unwrap();
            c.iam_actions.insert(format!("{service}:{op}"));
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

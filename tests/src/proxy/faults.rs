//! DynamoDB's faults as the proxy plays them: throttling by operation or
//! by a token-bucket budget per partition key, 5xx answers, added latency,
//! connections closed without an answer, answers cut short; and what each
//! partition key used.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

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
    pub(super) usage: Usage,
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
pub(super) enum Verdict {
    Forward,
    Answer(Vec<u8>),
    Reset,
    Truncate,
}

impl Faults {
    /// No faults from now on (what was seen is kept).
    pub(super) fn clear(&mut self) {
        let usage = std::mem::take(&mut self.usage);
        *self = Faults {
            usage,
            ..Faults::default()
        };
    }

    pub(super) fn judge(&mut self, op: &str, body: &[u8]) -> Verdict {
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

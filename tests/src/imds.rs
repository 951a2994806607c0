//! Fake IMDSv2, copying the real service's observable behaviour: a token
//! from `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`
//! (1..=21600, else 400; the TTL echoed in the response header, which the
//! AWS SDK needs), 401 for a missing, unknown or expired token, 404 for
//! anything not set (a missing tag, no spot notice), and
//! `meta-data/tags/instance` 404 when instance-metadata tags are off.
//!
//! Faults, each a way the real service is seen to fail: not reachable yet
//! early in boot (`set_down`: connections closed unanswered, a dispatch
//! failure to the SDK, as with nothing listening); tokens refused
//! (`reject_next`: 401 to GETs even with a token it issued, as after the
//! instance's tokens were invalidated by a stop/start); server errors
//! (`fail_next`: 500, which the SDK's IMDS client retries as a server-side
//! error); slow answers (`delay`); and tokens that stop working before
//! the TTL it echoed (`token_lifetime`: 401 once past it).

use crate::http::{reply, serve_gated, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct ImdsState {
    pub instance_id: String,
    pub region: String,
    pub tags: BTreeMap<String, String>,
    pub tags_in_metadata: bool,
    pub spot_notice: Option<String>,
    /// `events/recommendations/rebalance`: `{"noticeTime": ..}` once EC2
    /// recommends it, 404 before, as the real endpoint.
    pub rebalance: Option<String>,
    /// Answer every request this much later.
    pub delay: Duration,
    /// The next this many GETs get 401 whatever their token.
    pub reject_next: u32,
    /// The next this many requests (PUT or GET) get 500.
    pub fail_next: u32,
    /// Tokens stop working after this, whatever TTL was asked and echoed.
    pub token_lifetime: Option<Duration>,
    tokens: HashMap<String, Instant>,
    issued: u64,
    pub requests: u64,
    pub unauthorized: u64,
}

#[derive(Clone)]
pub struct FakeImds {
    pub state: Arc<Mutex<ImdsState>>,
    pub endpoint: String,
    /// False: the service does not answer at all (`set_down`).
    up: Arc<AtomicBool>,
}

impl FakeImds {
    pub async fn start(
        instance_id: &str,
        region: &str,
        tags: &[(&str, &str)],
        tags_in_metadata: bool,
    ) -> FakeImds {
        let state = Arc::new(Mutex::new(ImdsState {
            instance_id: instance_id.into(),
            region: region.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            tags_in_metadata,
            ..Default::default()
        }));
        let shared = state.clone();
        let up = Arc::new(AtomicBool::new(true));
        let addr = serve_gated(
            move |req| {
                let state = shared.clone();
                async move {
                    let (reply, delay) = {
                        let reply = handle(&state, req);
                        (reply, state.lock().unwrap().delay)
                    };
                    tokio::time::sleep(delay).await;
                    reply
                }
            },
            up.clone(),
        )
        .await;
        FakeImds {
            state,
            endpoint: format!("http://{addr}"),
            up,
        }
    }

    /// Down (`true`): every connection is closed unanswered.
    pub fn set_down(&self, down: bool) {
        self.up.store(!down, Ordering::SeqCst);
    }

    pub fn set_rebalance(&self, notice: &str) {
        self.state.lock().unwrap().rebalance = Some(notice.into());
    }

    pub fn set_spot_notice(&self, notice: &str) {
        self.state.lock().unwrap().spot_notice = Some(notice.into());
    }

    /// Invalidates every token, as an expired TTL would.
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }
}

fn handle(state: &Mutex<ImdsState>, req: Request<Incoming>) -> Reply {
    let mut s = state.lock().unwrap();
    s.requests += 1;
    if s.fail_next > 0 {
        s.fail_next -= 1;
        return reply(StatusCode::INTERNAL_SERVER_ERROR, "");
    }
    let path = req.uri().path().to_owned();
    if req.method() == Method::PUT && path == "/latest/api/token" {
        let ttl = req
            .headers()
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
            return reply(StatusCode::BAD_REQUEST, "");
        };
        s.issued += 1;
        let token = format!("fake-imds-token-{}", s.issued);
        let lifetime = Duration::from_secs(ttl).min(s.token_lifetime.unwrap_or(Duration::MAX));
        s.tokens.insert(token.clone(), Instant::now() + lifetime);
        let mut r = reply(StatusCode::OK, token);
        r.headers_mut()
            .insert("x-aws-ec2-metadata-token-ttl-seconds", ttl.into());
        return r;
    }
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let token_ok = req
        .headers()
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| s.tokens.get(t))
        .is_some_and(|exp| *exp > Instant::now());
    let rejected = s.reject_next > 0;
    if rejected {
        s.reject_next -= 1;
    }
    if !token_ok || rejected {
        s.unauthorized += 1;
        return reply(StatusCode::UNAUTHORIZED, "");
    }
    let Some(rest) = path.strip_prefix("/latest/meta-data/") else {
        return reply(StatusCode::NOT_FOUND, "");
    };
    let found = match rest {
        "instance-id" => Some(s.instance_id.clone()),
        "placement/region" => Some(s.region.clone()),
        "tags/instance" | "tags/instance/" if s.tags_in_metadata => {
            Some(s.tags.keys().cloned().collect::<Vec<_>>().join("\n"))
        }
        "spot/instance-action" => s.spot_notice.clone(),
        "events/recommendations/rebalance" => s.rebalance.clone(),
        other => other
            .strip_prefix("tags/instance/")
            .filter(|_| s.tags_in_metadata)
            .and_then(|k| s.tags.get(k).cloned()),
    };
    match found {
        Some(body) => reply(StatusCode::OK, body),
        None => reply(StatusCode::NOT_FOUND, ""),
    }
}

//! The endpoint over real loopback TCP, with a fake STS: who gets what,
//! and that a run's start never waits for STS.

use super::assume::{AssumeError, Issued, SessionRequest};
use super::*;
use crate::metrics::{sample, Metrics};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the fake STS does.
#[derive(Clone, Copy)]
enum Sts {
    Answer,
    Fail,
    /// Never answers (a hung STS).
    Hang,
}

struct FakeSts {
    mode: Sts,
    calls: AtomicU32,
    requests: Mutex<Vec<SessionRequest>>,
}

impl Assume for FakeSts {
    async fn assume(&self, request: &SessionRequest) -> Result<Issued, AssumeError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        self.requests.lock().unwrap().push(request.clone());
        match self.mode {
            Sts::Answer => Ok(Issued {
                access_key_id: format!("ASIA{n}"),
                secret_access_key: format!("secret-{n}"),
                session_token: format!("token-{n}"),
                expiration: time::OffsetDateTime::now_utc() + Duration::from_secs(3600),
                arn: format!(
                    "arn:aws:sts::123456789012:assumed-role/ci/{}",
                    request.session_name
                ),
            }),
            Sts::Fail => Err(AssumeError::Call {
                role_arn: request.role_arn.clone(),
                reason: "AccessDenied: not authorized to perform sts:AssumeRole".into(),
            }),
            Sts::Hang => std::future::pending().await,
        }
    }
}

async fn start(mode: Sts) -> (JobCredentials<FakeSts>, Metrics, CancellationToken) {
    let settings = JobCredentialsSettings {
        role_arn: "arn:aws:iam::123456789012:role/ci".into(),
        duration: Duration::from_secs(3600),
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let fake = FakeSts {
        mode,
        calls: AtomicU32::new(0),
        requests: Mutex::new(Vec::new()),
    };
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    let (creds, serve) = JobCredentials::start(
        settings,
        fake,
        "i-0123456789abcdef0",
        "acme/widgets",
        metrics.clone(),
        stop.clone(),
    )
    .await
    .unwrap();
    tokio::spawn(serve);
    (creds, metrics, stop)
}

/// The run's (URI, token) from the runner's environment.
fn env_of(creds: &JobCredentials<FakeSts>) -> (String, String) {
    let env = creds.run_env();
    assert_eq!(env.remove, SHADOWING_ENV);
    let get = |name| {
        env.set
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    (get(ENV_FULL_URI).unwrap(), get(ENV_TOKEN).unwrap())
}

/// GET `uri` with `token` as the Authorization header, as botocore and the
/// Rust SDK send it: (status code, JSON body).
async fn get(uri: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let rest = uri.strip_prefix("http://").unwrap();
    let (address, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\n{auth}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(body).unwrap())
}

#[tokio::test]
async fn only_the_current_runs_token_gets_its_credentials() {
    let (creds, metrics, _stop) = start(Sts::Answer).await;
    creds.begin("4242");
    let (uri, token) = env_of(&creds);
    assert!(
        uri.starts_with("http://127.0.0.1:") && uri.ends_with("/credentials"),
        "{uri}"
    );

    assert_eq!(get(&uri, None).await.0, 403);
    assert_eq!(get(&uri, Some("0123")).await.0, 403);
    let mut wrong = token.clone();
    wrong.replace_range(63.., if token.ends_with('0') { "1" } else { "0" });
    assert_eq!(get(&uri, Some(&wrong)).await.0, 403);
    let (code, body) = get(&uri, Some(&token)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["AccessKeyId"], "ASIA0");
    assert_eq!(body["SecretAccessKey"], "secret-0");
    assert_eq!(body["Token"], "token-0");
    let expiration = body["Expiration"].as_str().unwrap();
    time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
        .unwrap();
    // The same run again (a runner restart, a second registration): the
    // same session.
    creds.begin("4242");
    assert_eq!(env_of(&creds).1, token);

    let requests = creds.inner.assumer.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].session_name, "run-4242-i-0123456789abcdef0");
    assert_eq!(
        requests[0].tags,
        vec![
            ("Repository", "acme/widgets".to_owned()),
            ("RunId", "4242".to_owned())
        ]
    );

    // Released: the token stops working at once.
    creds.end();
    assert_eq!(get(&uri, Some(&token)).await.0, 403);
    assert!(creds.run_env().set.is_empty());
    // The next run: a new token and a new session.
    creds.begin("4243");
    let (_, next) = env_of(&creds);
    assert_ne!(next, token);
    assert_eq!(get(&uri, Some(&token)).await.0, 403);
    let (code, body) = get(&uri, Some(&next)).await;
    assert_eq!((code, body["AccessKeyId"].as_str()), (200, Some("ASIA1")));
    let text = metrics.render();
    assert_eq!(
        sample(
            &text,
            "runner_agent_job_credentials_assume_role_total{result=\"ok\"}"
        ),
        Some(2.0)
    );
    // Nothing secret in the metrics.
    for secret in [token.as_str(), next.as_str(), "secret-0", "token-1"] {
        assert!(!text.contains(secret));
    }
}

#[tokio::test]
async fn wrong_method_or_path_is_refused() {
    let (creds, _, _stop) = start(Sts::Answer).await;
    creds.begin("1");
    let (uri, token) = env_of(&creds);
    let other = uri.replace("/credentials", "/latest/meta-data");
    assert_eq!(get(&other, Some(&token)).await.0, 404);
}

/// A hung STS: the run starts at once (the claim does not wait), and a
/// job's request gets a 503 after a bounded wait, then 403 once released.
#[tokio::test]
async fn a_hung_sts_holds_up_neither_the_claim_nor_the_job_for_long() {
    let (creds, _, _stop) = start(Sts::Hang).await;
    let began = std::time::Instant::now();
    creds.begin("7");
    // Not a performance figure: `begin` must not await STS at all, which
    // here never answers.
    assert!(began.elapsed() < Duration::from_secs(1));
    let (uri, token) = env_of(&creds);
    let (code, body) = get(&uri, Some(&token)).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("not ready"),
        "{body}"
    );
    // Released while a request waits: 403, not the 503.
    let waiting = tokio::spawn({
        let (uri, token) = (uri.clone(), token.clone());
        async move { get(&uri, Some(&token)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    creds.end();
    assert_eq!(waiting.await.unwrap().0, 403);
}

#[tokio::test]
async fn a_failing_assume_role_is_a_clear_5xx_and_counted() {
    let (creds, metrics, _stop) = start(Sts::Fail).await;
    creds.begin("9");
    let (uri, token) = env_of(&creds);
    let (code, body) = get(&uri, Some(&token)).await;
    assert_eq!(code, 502, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("AccessDenied") && message.contains("role/ci"),
        "{message}"
    );
    let failed = sample(
        &metrics.render(),
        "runner_agent_job_credentials_assume_role_total{result=\"failed\"}",
    );
    assert!(failed >= Some(1.0), "{failed:?}");
    // Retried meanwhile, not given up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(creds.inner.assumer.calls.load(Ordering::SeqCst) >= 2);
    // The retries stop with the run.
    creds.end();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let calls = creds.inner.assumer.calls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(creds.inner.assumer.calls.load(Ordering::SeqCst), calls);
}

//! Per-run AWS credentials for jobs (`[job_credentials]`): the shipped
//! agent assumes the job role in moto's STS for each run and serves the
//! session on its loopback endpoint; a job runs the real AWS CLI, which
//! finds the endpoint and the run's token in its environment.

use stack::agent::AgentSpec;
use stack::{Stack, StackOptions, CLAIM_WAIT, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/ci-jobs";
/// The instance role the agent runs with (moto's answer to the static
/// test keys); a job must never see it.
const INSTANCE_IDENTITY: &str = "user/moto";

/// The AWS CLI scripts/setup.sh installs (`RA_AWS_CLI`), else the venv's.
fn aws_cli() -> PathBuf {
    let cli = std::env::var_os("RA_AWS_CLI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/aws"));
    assert!(
        cli.exists(),
        "{} missing: scripts/setup.sh installs it",
        cli.display()
    );
    cli
}

fn spec(env: Vec<(String, String)>) -> AgentSpec {
    AgentSpec {
        extra: vec![
            "[job_credentials]".into(),
            format!("role_arn = \"{ROLE_ARN}\""),
            "duration = \"15m\"".into(),
            // Any free port: tests run side by side.
            "listen = \"127.0.0.1:0\"".into(),
        ],
        env,
        ..Default::default()
    }
}

/// A job's steps: what its environment holds, then who the AWS CLI says
/// it is (moto straight, IMDS off: the container endpoint or nothing).
fn caller_identity_job(stack: &Stack) -> String {
    format!(
        "echo \"uri=$AWS_CONTAINER_CREDENTIALS_FULL_URI\"\n\
         echo \"token=$AWS_CONTAINER_AUTHORIZATION_TOKEN\"\n\
         echo \"static=${{AWS_ACCESS_KEY_ID:-none}}\"\n\
         export AWS_ENDPOINT_URL={moto} AWS_EC2_METADATA_DISABLED=true AWS_DEFAULT_REGION=us-east-1\n\
         {aws} sts get-caller-identity --query Arn --output text 2>&1 | sed 's/^/arn=/' || true\n\
         echo steps done\n",
        moto = stack.moto.endpoint,
        aws = aws_cli().display(),
    )
}

/// The value of `key=` in the steps' output.
fn field(log: &str, key: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the job's output:\n{log}"))
        .to_owned()
}

/// GET the endpoint with `token`: the status code.
async fn status_with(uri: &str, token: &str) -> u16 {
    let rest = uri.strip_prefix("http://").expect("an http URI");
    let (address, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {token}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

async fn run_job(stack: &Stack, run_id: &str) -> String {
    stack.queue_steps(run_id, &caller_identity_job(stack));
    stack.wait_steps(run_id).await;
    stack.steps_log(run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_gets_its_runs_assumed_role_and_the_token_dies_with_the_run() {
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.spawn_agent(&spec(Vec::new()));
    let id = stack.instance_id.clone();
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;

    let first = run_job(&stack, INITIAL_RUN_ID).await;
    let session = format!("run-{INITIAL_RUN_ID}-{id}");
    assert_eq!(
        field(&first, "arn"),
        format!("arn:aws:sts::123456789012:assumed-role/ci-jobs/{session}"),
        "{first}"
    );
    assert!(!first.contains(INSTANCE_IDENTITY), "{first}");
    // The agent's own keys are not passed on.
    assert_eq!(field(&first, "static"), "none");
    let (uri, old_token) = (field(&first, "uri"), field(&first, "token"));
    assert!(uri.starts_with("http://127.0.0.1:"), "{uri}");
    assert_eq!(old_token.len(), 64);
    assert_eq!(status_with(&uri, &old_token).await, 200);
    assert_eq!(status_with(&uri, "not-the-token").await, 403);

    // Released: the old token stops working; the next run gets a new
    // token and a session of its own.
    stack.release_initial().await;
    assert_eq!(status_with(&uri, &old_token).await, 403);
    stack.cp.claim(&id, "2000").await;
    stack.assert_signal("UD_REG_OK", "2000", CLAIM_WAIT).await;
    let second = run_job(&stack, "2000").await;
    assert_eq!(
        field(&second, "arn"),
        format!("arn:aws:sts::123456789012:assumed-role/ci-jobs/run-2000-{id}"),
        "{second}"
    );
    let new_token = field(&second, "token");
    assert_ne!(new_token, old_token);
    assert_eq!(field(&second, "uri"), uri);
    assert_eq!(status_with(&uri, &old_token).await, 403);
    assert_eq!(status_with(&uri, &new_token).await, 200);

    // Never in the log or the state file.
    let state = std::fs::read_to_string(stack.dir.path().join("state/state.json")).unwrap();
    for token in [&old_token, &new_token] {
        assert!(!agent.log_text().contains(token.as_str()));
        assert!(!state.contains(token.as_str()));
    }
    assert_eq!(
        stack.proxy.counts().get("AssumeRole"),
        2,
        "one session a run"
    );
    // Both AssumeRole calls (with their session tags: sts:TagSession) and
    // every table and EC2 call are allowed by the generated policy for this
    // job role, condition keys included; without the job role, the STS
    // calls are not.
    let policy = stack.instance_role_policy_with(Some(ROLE_ARN)).await;
    let checked = stack.assert_calls_allowed(&policy).await;
    assert!(checked >= 4, "{checked} authorizations checked");
    let (denied, _) = stack
        .denied_calls(&stack.instance_role_policy().await)
        .await;
    let denied: Vec<String> = denied.iter().map(|(_, r)| r.action.clone()).collect();
    assert!(
        !denied.is_empty() && denied.iter().all(|a| a.starts_with("sts:")),
        "{denied:?}"
    );
}

/// An STS that accepts connections and never answers: what the claim must
/// not wait for.
async fn silent_sts() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (endpoint, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_sts_holds_up_no_claim_and_the_job_gets_a_clear_error() {
    let stack = Stack::start(StackOptions::default()).await;
    let (sts, calls) = silent_sts().await;
    let agent = stack.spawn_agent(&spec(vec![("AWS_ENDPOINT_URL_STS".into(), sts)]));
    let id = stack.instance_id.clone();
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, SIGNAL_WAIT)
        .await;
    stack.release_initial().await;
    stack.cp.claim(&id, "3000").await;
    stack.assert_signal("UD_REG_OK", "3000", CLAIM_WAIT).await;
    // Registered while the run's AssumeRole was still waiting for STS: the
    // claim went on without it.
    assert!(calls.load(Ordering::SeqCst) >= 1, "AssumeRole was tried");
    let log = agent.log_text();
    let claimed_failures = log
        .lines()
        .filter(|l| l.contains("AssumeRole failed") && l.contains("3000"))
        .count();
    assert_eq!(claimed_failures, 0, "{log}");

    let job = run_job(&stack, "3000").await;
    // botocore's error carries the endpoint's answer.
    assert!(
        job.contains("not ready yet") || job.contains("could not get credentials"),
        "{job}"
    );
    assert!(!job.contains(INSTANCE_IDENTITY), "{job}");
}

//! The agent's metrics, scraped from the shipped binary's endpoint and
//! read from its node_exporter textfile after a lifecycle the control-plane
//! driver plays: each count is checked against what the test made happen,
//! and the DynamoDB errors against what the fault proxy refused.

use stack::agent::AgentSpec;
use stack::{Stack, StackOptions, INITIAL_RUN_ID, SIGNAL_WAIT};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request as a scraper sends it; the status line and body.
async fn request(address: &str, head: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

async fn scrape(address: &str) -> String {
    let (status, body) = request(
        address,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

/// The port the agent logged (the config asks for port 0: any free one).
fn logged_address(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "serving metrics at GET /metrics")
        .and_then(|v| v["address"].as_str().map(str::to_owned))
}

fn value(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// The sum of every series of a family with `label` among its labels.
fn total(text: &str, family: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_is_counted_on_the_endpoint_and_in_the_textfile() {
    let stack = Stack::start(StackOptions::default()).await;
    let textfile = stack.dir.path().join("textfile/runner-agent.prom");
    let spec = AgentSpec {
        timing: vec!["heartbeat_interval = \"1s\"".into()],
        extra: vec![
            "[metrics]".into(),
            "listen = \"127.0.0.1:0\"".into(),
            format!("textfile = \"{}\"", textfile.display()),
        ],
        ..Default::default()
    };
    let mut agent = stack.boot_agent(&spec).await;
    let id = stack.instance_id.clone();
    let address = logged_address(&agent.log_text()).expect("the endpoint's address is logged");

    // The listener exits 2 once (restarted), a job runs 2-3 s (the fake's
    // clock counts whole seconds; the agent checks the hooks' marker every
    // 250 ms), the initial
    // run is released, then one more claim and release.
    std::fs::write(stack.jobs_dir().join(format!("{INITIAL_RUN_ID}.exit")), "2").unwrap();
    stack.wait_events("LISTENER_START", 2).await;
    stack.queue_job(INITIAL_RUN_ID, 3);
    stack.wait_events("JOB_END", 1).await;
    stack.release_initial().await;
    stack.cp.claim(&id, "2000-1").await;
    stack
        .assert_signal("UD_REG_OK", "2000-1", SIGNAL_WAIT)
        .await;
    stack.release_run("2000-1", "claimed").await;
    // The signal is stored before the metrics see it stored.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let text = scrape(&address).await;
    for (series, expected) in [
        ("runner_agent_registrations_total{result=\"ok\"}", 2.0),
        ("runner_agent_registrations_total{result=\"failed\"}", 0.0),
        ("runner_agent_claim_to_register_seconds_count", 2.0),
        ("runner_agent_signals_total{signal=\"UD_OK\"}", 1.0),
        ("runner_agent_signals_total{signal=\"UD_REG_OK\"}", 2.0),
        (
            "runner_agent_signals_total{signal=\"UD_REMOVE_REG_REMOVE_RUN_OK\"}",
            2.0,
        ),
        ("runner_agent_jobs_started_total", 1.0),
        ("runner_agent_jobs_finished_total", 1.0),
        ("runner_agent_job_duration_seconds_count", 1.0),
        ("runner_agent_runner_exits_total{code=\"2\"}", 1.0),
        ("runner_agent_release_seconds_count", 2.0),
        ("runner_agent_resets_total{result=\"ok\"}", 2.0),
        ("runner_agent_resets_total{result=\"failed\"}", 0.0),
        ("runner_agent_reset_seconds_count", 2.0),
        ("runner_agent_state{state=\"idle\"}", 1.0),
        ("runner_agent_state{state=\"registered\"}", 0.0),
        ("runner_agent_heartbeat_failures_total", 0.0),
    ] {
        assert_eq!(value(&text, series), expected, "{series}\n{text}");
    }
    let ran = value(&text, "runner_agent_job_duration_seconds_sum");
    assert!((1.5..5.0).contains(&ran), "{ran}");
    let claims = value(&text, "runner_agent_claim_to_register_seconds_sum");
    assert!(claims > 0.0 && claims < 20.0, "{claims}");
    assert_eq!(
        total(&text, "runner_agent_dynamodb_errors_total", ""),
        0.0,
        "{text}"
    );

    // DynamoDB throttles every read and write for 3 s: the agent counts
    // exactly what the proxy refused, heartbeats among them.
    stack.proxy.faults(|f| {
        for op in ["GetItem", "BatchGetItem", "PutItem"] {
            f.throttle_ops.insert(op.into());
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.proxy.clear_faults();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = stack.proxy.usage().throttled_total() as f64;
    let text = scrape(&address).await;
    let counted = total(
        &text,
        "runner_agent_dynamodb_errors_total",
        "kind=\"throttled\"",
    );
    assert!(refused >= 3.0, "{refused}");
    assert_eq!(counted, refused, "\n{text}");
    let heartbeats = value(&text, "runner_agent_heartbeat_failures_total");
    assert!(heartbeats >= 1.0, "{text}");
    assert_eq!(
        total(
            &text,
            "runner_agent_dynamodb_errors_total",
            "operation=\"PutItem(heartbeat)\""
        ),
        heartbeats
    );

    // Only GET /metrics.
    let (status, _) = request(&address, "GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _) = request(
        &address,
        "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");

    // The textfile catches up within its 5 s check, and is written once
    // more at stop.
    let started = Instant::now();
    loop {
        let file = std::fs::read_to_string(&textfile).unwrap_or_default();
        if sample(&file, "runner_agent_heartbeat_failures_total") == Some(heartbeats) {
            assert_eq!(
                value(&file, "runner_agent_registrations_total{result=\"ok\"}"),
                2.0
            );
            assert_eq!(value(&file, "runner_agent_jobs_finished_total"), 1.0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "textfile not updated:\n{file}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    agent.kill(libc::SIGTERM);
    agent.wait_exit(WAIT).await.expect("agent exits");
    let file = std::fs::read_to_string(&textfile).unwrap();
    assert_eq!(
        value(&file, "runner_agent_state{state=\"stopping\"}"),
        1.0,
        "{file}"
    );
    assert!(
        tokio::net::TcpStream::connect(&address).await.is_err(),
        "the endpoint closes with the agent"
    );
}

/// The value of one series in `text` (the Prometheus text format), named
/// as rendered: `name{label="value"}`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

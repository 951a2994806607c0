use super::*;
use crate::table::ErrorKind;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[test]
fn every_series_is_rendered_with_its_counts() {
    let m = Metrics::new();
    let text = m.render();
    // Compared series exist at 0 before their first count.
    assert_eq!(
        sample(&text, "runner_agent_registrations_total{result=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "runner_agent_resets_total{result=\"failed\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "runner_agent_jobs_started_total"), Some(0.0));
    assert_eq!(
        sample(&text, "runner_agent_firewall_restores_total{result=\"ok\"}"),
        Some(0.0)
    );
    let info = format!(
        "runner_agent_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &info), Some(1.0));

    m.state(None, "idle");
    m.state(Some("idle"), "registering");
    m.registered(Some(Duration::from_millis(300)));
    m.registration_failed();
    m.signal_stored(Signal::RegOk);
    m.job_started();
    m.job_finished(Duration::from_secs(42));
    m.runner_exited(ListenerExit::Retryable);
    m.runner_exited(ListenerExit::Signalled(9));
    m.released(Duration::from_millis(700));
    m.reset(true, Duration::from_millis(200));
    m.dynamodb_error("GetItem", ErrorKind::Throttled.label());
    m.dynamodb_error("GetItem", ErrorKind::Throttled.label());
    m.dynamodb_error("PutItem", ErrorKind::Server.label());
    m.notice("rebalance");
    m.heartbeat_failed();
    m.left_pool(crate::orphan::Orphan::TableGone);
    m.self_terminated("expired");
    m.firewall_restored(true);
    m.firewall_restored(true);
    m.firewall_restored(false);
    let text = m.render();
    for (series, value) in [
        ("runner_agent_state{state=\"idle\"}", 0.0),
        ("runner_agent_state{state=\"registering\"}", 1.0),
        ("runner_agent_registrations_total{result=\"ok\"}", 1.0),
        ("runner_agent_registrations_total{result=\"failed\"}", 1.0),
        ("runner_agent_claim_to_register_seconds_count", 1.0),
        (
            "runner_agent_claim_to_register_seconds_bucket{le=\"0.25\"}",
            0.0,
        ),
        (
            "runner_agent_claim_to_register_seconds_bucket{le=\"0.5\"}",
            1.0,
        ),
        ("runner_agent_signals_total{signal=\"UD_REG_OK\"}", 1.0),
        ("runner_agent_jobs_finished_total", 1.0),
        ("runner_agent_job_duration_seconds_sum", 42.0),
        ("runner_agent_runner_exits_total{code=\"2\"}", 1.0),
        ("runner_agent_runner_exits_total{code=\"signal_9\"}", 1.0),
        ("runner_agent_release_seconds_count", 1.0),
        ("runner_agent_resets_total{result=\"ok\"}", 1.0),
        ("runner_agent_reset_seconds_count", 1.0),
        (
            "runner_agent_dynamodb_errors_total{kind=\"throttled\",operation=\"GetItem\"}",
            2.0,
        ),
        (
            "runner_agent_dynamodb_errors_total{kind=\"server_error\",operation=\"PutItem\"}",
            1.0,
        ),
        ("runner_agent_notices_total{kind=\"rebalance\"}", 1.0),
        ("runner_agent_firewall_restores_total{result=\"ok\"}", 2.0),
        (
            "runner_agent_firewall_restores_total{result=\"failed\"}",
            1.0,
        ),
        ("runner_agent_heartbeat_failures_total", 1.0),
        ("runner_agent_left_pool_total{reason=\"table_gone\"}", 1.0),
        (
            "runner_agent_self_terminations_total{reason=\"expired\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
    }
    assert!(text.contains("# TYPE runner_agent_job_duration_seconds histogram"));
    assert!(text.contains("# TYPE runner_agent_jobs_started_total counter"));
}

/// One request on a fresh connection; the whole answer.
async fn request(address: std::net::SocketAddr, raw: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn the_endpoint_serves_get_metrics_only_and_outlives_bad_clients() {
    let m = Metrics::new();
    m.job_started();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(listener, m.clone(), stop.clone()));

    // A client that connects and says nothing holds no one up.
    let _silent = tokio::net::TcpStream::connect(address).await.unwrap();
    let ok = request(
        address,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(
        ok.contains("Content-Type: text/plain; version=0.0.4"),
        "{ok}"
    );
    let body = ok.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(sample(body, "runner_agent_jobs_started_total"), Some(1.0));
    let length: usize = ok
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, body.len());

    // A request head that arrives in pieces is read whole.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /metrics?x=1 HT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"TP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");

    for (raw, status) in [
        (&b"POST /metrics HTTP/1.1\r\n\r\n"[..], "405"),
        (b"GET / HTTP/1.1\r\n\r\n", "404"),
        (b"\x16\x03\x01 not http\r\n\r\n", "400"),
    ] {
        let answer = request(address, raw).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
    // A head past 8 KiB is refused, not buffered for ever.
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 10_000));
    let answer = request(address, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    stop.cancel();
    server.await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "closed at stop"
    );
}

#[tokio::test(start_paused = true)]
async fn the_textfile_is_rewritten_when_a_figure_changes_and_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("collector/runner-agent.prom");
    let m = Metrics::new();
    let stop = CancellationToken::new();
    let task = tokio::spawn(keep_written(path.clone(), m.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let first = std::fs::read_to_string(&path).unwrap();
    assert_eq!(sample(&first, "runner_agent_jobs_started_total"), Some(0.0));
    let written_at = || std::fs::metadata(&path).unwrap().modified().unwrap();
    let before = written_at();
    // Nothing changed: nothing written.
    tokio::time::sleep(textfile::CHECK_EVERY * 3).await;
    assert_eq!(written_at(), before);
    m.job_started();
    tokio::time::sleep(textfile::CHECK_EVERY + Duration::from_millis(10)).await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(sample(&text, "runner_agent_jobs_started_total"), Some(1.0));
    m.job_finished(Duration::from_secs(1));
    stop.cancel();
    task.await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        sample(&text, "runner_agent_jobs_finished_total"),
        Some(1.0),
        "final write"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
}

#[tokio::test(start_paused = true)]
async fn an_unwritable_textfile_is_retried_and_the_agent_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the directory should be: every write fails.
    std::fs::write(dir.path().join("collector"), "").unwrap();
    let path = dir.path().join("collector/runner-agent.prom");
    let stop = CancellationToken::new();
    let task = tokio::spawn(keep_written(path.clone(), Metrics::new(), stop.clone()));
    tokio::time::sleep(textfile::CHECK_EVERY * 2).await;
    assert!(!task.is_finished());
    std::fs::remove_file(dir.path().join("collector")).unwrap();
    tokio::time::sleep(textfile::CHECK_EVERY + Duration::from_millis(10)).await;
    assert!(path.exists(), "written once the directory can be made");
    stop.cancel();
    task.await.unwrap();
}

//! What the machine counts, through a claim, a job, a runner exit, a
//! release with a slow reset, a failed reset and the refused claim after
//! it. The clock is paused, so durations are exact to the machine's own
//! wake-ups (250 ms).

use super::*;
use crate::metrics::sample;

fn value(h: &Harness, series: &str) -> f64 {
    let text = h.metrics.render();
    sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Each series at its value.
fn expect(h: &Harness, series: &[(&str, f64)]) {
    for (name, want) in series {
        assert_eq!(value(h, name), *want, "{name}");
    }
}

fn within(value: f64, low: f64, high: f64) -> bool {
    (low..=high).contains(&value)
}

#[tokio::test(start_paused = true)]
async fn the_lifecycle_is_counted() {
    let h = Harness::started_and_serving().await;
    expect(
        &h,
        &[
            ("runner_agent_registrations_total{result=\"ok\"}", 1.0),
            ("runner_agent_claim_to_register_seconds_count", 1.0),
            ("runner_agent_signals_total{signal=\"UD_REG_OK\"}", 1.0),
            ("runner_agent_state{state=\"registered\"}", 1.0),
            ("runner_agent_state{state=\"idle\"}", 0.0),
        ],
    );

    // A job of 42 s.
    h.host.lock().job_active = true;
    h.wait_until("job counted", |h| {
        sample(&h.metrics.render(), "runner_agent_jobs_started_total") == Some(1.0)
    })
    .await;
    h.idle_for(Duration::from_secs(42)).await;
    h.host.lock().job_active = false;
    h.wait_until("job end counted", |h| {
        sample(&h.metrics.render(), "runner_agent_jobs_finished_total") == Some(1.0)
    })
    .await;
    let ran = value(&h, "runner_agent_job_duration_seconds_sum");
    assert!(within(ran, 41.75, 42.5), "{ran}");

    // The listener exits 2 (restarted), then is killed.
    h.host.runner_exits(2);
    h.idle_for(Duration::from_secs(2)).await;
    h.host.runner_killed(9);
    h.idle_for(Duration::from_secs(3)).await;
    assert_eq!(
        value(&h, "runner_agent_runner_exits_total{code=\"2\"}"),
        1.0
    );
    assert_eq!(
        value(&h, "runner_agent_runner_exits_total{code=\"signal_9\"}"),
        1.0
    );

    // A release whose reset takes 3 s: the release takes at least that.
    h.host.lock().reset_delay = Duration::from_secs(3);
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.wait_phase("idle").await;
    assert_eq!(value(&h, "runner_agent_resets_total{result=\"ok\"}"), 1.0);
    assert!(within(
        value(&h, "runner_agent_reset_seconds_sum"),
        3.0,
        3.1
    ));
    assert_eq!(value(&h, "runner_agent_release_seconds_count"), 1.0);
    let release = value(&h, "runner_agent_release_seconds_sum");
    assert!(within(release, 3.0, 4.0), "{release}");

    // A claim, then a reset that fails: the next claim is refused.
    h.host.lock().reset_delay = Duration::ZERO;
    h.pool.claim("2000-1");
    h.wait_signal(Signal::RegOk, "2000-1").await;
    let claim = value(&h, "runner_agent_claim_to_register_seconds_sum");
    assert_eq!(
        value(&h, "runner_agent_claim_to_register_seconds_count"),
        2.0
    );
    assert!(claim < 2.0, "fakes answer at once: {claim}");
    h.host
        .lock()
        .reset_results
        .push_back(Err(crate::reset::ResetError::TimedOut(
            Duration::from_secs(600),
        )));
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunFailed, "2000-1")
        .await;
    h.pool.claim("2000-2");
    h.wait_signal(Signal::RegFailed, "2000-2").await;
    expect(
        &h,
        &[
            ("runner_agent_resets_total{result=\"failed\"}", 1.0),
            ("runner_agent_registrations_total{result=\"failed\"}", 1.0),
            ("runner_agent_registrations_total{result=\"ok\"}", 2.0),
            ("runner_agent_jobs_started_total", 1.0),
            ("runner_agent_signals_total{signal=\"UD_REG_OK\"}", 2.0),
            (
                "runner_agent_signals_total{signal=\"UD_REMOVE_REG_REMOVE_RUN_OK\"}",
                1.0,
            ),
            (
                "runner_agent_signals_total{signal=\"UD_REMOVE_REG_REMOVE_RUN_FAILED\"}",
                1.0,
            ),
        ],
    );
}

/// A job the release interrupts (the runner stopped mid-job) still ends.
#[tokio::test(start_paused = true)]
async fn a_job_cut_short_by_the_release_is_counted_as_finished() {
    let h = Harness::started_and_serving().await;
    h.host.lock().job_active = true;
    h.idle_for(Duration::from_secs(10)).await;
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert_eq!(value(&h, "runner_agent_jobs_started_total"), 1.0);
    assert_eq!(value(&h, "runner_agent_jobs_finished_total"), 1.0);
}

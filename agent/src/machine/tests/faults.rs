//! The fault matrix (docs/faults.md), in-process: faults of the runner
//! process, of config.sh and of the clock, where the machine's decisions
//! are what matters and virtual time makes minutes of back-off instant.
//! Each checks, besides its outcome, the invariants every fault keeps:
//! the awaited signal written, no stray failure signal, no panic (the
//! machine's task is joined).

use super::fakes::{token, FakeHost};
use super::*;
use crate::runner::{RunnerError, CONFIGURE_TIMEOUT};

/// The control plane waits this long for `UD_REG_OK` after a launch.
const LAUNCH_WAIT: Duration = Duration::from_secs(180);

async fn wait_starts(h: &Harness, starts: usize) {
    h.wait_until(&format!("{starts} runner starts"), |h| {
        h.host.lock().starts >= starts
    })
    .await;
}

fn running(host: &FakeHost) -> usize {
    host.running().len()
}

/// Every way the listener can end other than 5 (session conflict) and 7
/// (deprecated version), which register again: 0 and the runner's other
/// codes (actions/runner `ReturnCode`), a code it does not define, and a
/// kill by a signal. Each is restarted under the same registration: no
/// config.sh, no signal; the release is then answered as usual.
#[tokio::test(start_paused = true)]
async fn every_listener_exit_but_5_and_7_restarts_it_under_the_same_registration() {
    let mut h = Harness::started_and_serving().await;
    let signals = h.pool.signals();
    let removes = h.host.lock().removes.len();
    let codes = [0, 1, 2, 3, 4, 6, 42, 255];
    for (n, code) in codes.into_iter().enumerate() {
        h.host.runner_exits(code);
        wait_starts(&h, n + 2).await;
    }
    // SIGKILL, SIGSEGV: killed, not exited.
    for (n, signal) in [9, 11].into_iter().enumerate() {
        h.host.runner_killed(signal);
        wait_starts(&h, codes.len() + n + 2).await;
    }
    assert_eq!(running(&h.host), 1);
    assert_eq!(h.host.lock().configures.len(), 1, "registered again");
    assert_eq!(h.host.lock().removes.len(), removes, "deregistered");
    assert_eq!(h.pool.signals(), signals, "a signal for a restart");
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    assert_eq!(h.stop().await, Interrupt::Shutdown);
}

/// The threshold passes while a job could run: the machine leaves the
/// decision to the watchdog (and the control plane): the runner is not
/// stopped, nothing is signalled, and the release is still answered.
#[tokio::test(start_paused = true)]
async fn a_threshold_passing_while_serving_leaves_the_runner_running() {
    let mut h = Harness::started_and_serving().await;
    let signals = h.pool.signals();
    h.pool.set_threshold(Some(&h.clock.stamp(-3600)));
    h.idle_for(Duration::from_secs(120)).await;
    assert_eq!(running(&h.host), 1);
    assert!(h.host.lock().stops.is_empty());
    assert_eq!(h.pool.signals(), signals);
    h.pool.release();
    h.wait_signal(Signal::RemoveRegRemoveRunOk, INITIAL_RUN)
        .await;
    h.stop().await;
}

/// Thresholds hours and centuries ahead are simply not expired: claims
/// register at once.
#[tokio::test(start_paused = true)]
async fn thresholds_far_in_the_future_register_as_usual() {
    let mut h = Harness::started_and_idle().await;
    for (run, threshold) in [
        ("2001", h.clock.stamp(10 * 3600)),
        ("2002", "9999-12-31T23:59:59Z".to_owned()),
    ] {
        h.pool.set_threshold(Some(&threshold));
        h.pool.claim(run);
        h.wait_signal(Signal::RegOk, run).await;
        h.pool.release();
        h.wait_signal(Signal::RemoveRegRemoveRunOk, run).await;
    }
    assert_eq!(h.pool.count(Signal::RegFailed, "2001"), 0);
    h.stop().await;
}

/// GitHub takes 25 s to register (under config.sh's 30 s bound): one
/// registration, one `UD_REG_OK`, no failure.
#[tokio::test(start_paused = true)]
async fn a_slow_config_sh_registers_once_and_signals_ud_reg_ok() {
    let mut h = Harness::new();
    h.host.lock().configure_delay = Duration::from_secs(25);
    h.pool.claim(INITIAL_RUN);
    h.start();
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    assert_eq!(h.host.lock().configures.len(), 1);
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 0);
    h.stop().await;
}

/// config.sh hangs every time: each attempt ends at the bound
/// (`RunnerControl::configure` kills it then; its unit test proves that),
/// and `UD_REG_FAILED` is written within the control plane's 180 s wait
/// after a launch, never lost to a hang; a fresh token then registers.
#[tokio::test(start_paused = true)]
async fn a_hanging_config_sh_signals_ud_reg_failed_within_the_launch_wait() {
    let mut h = Harness::new();
    {
        let mut host = h.host.lock();
        host.configure_delay = CONFIGURE_TIMEOUT;
        for _ in 0..3 {
            host.configure_results.push_back(Err(RunnerError::TimedOut {
                what: "config.sh",
                timeout: CONFIGURE_TIMEOUT,
            }));
        }
    }
    h.pool.claim(INITIAL_RUN);
    let started = tokio::time::Instant::now();
    h.start();
    h.wait_signal(Signal::RegFailed, INITIAL_RUN).await;
    let took = started.elapsed();
    assert!(took < LAUNCH_WAIT, "UD_REG_FAILED after {took:?}");
    assert_eq!(h.host.lock().configures.len(), 3);
    assert_eq!(h.pool.count(Signal::RegOk, INITIAL_RUN), 0);
    h.host.lock().configure_delay = Duration::ZERO;
    h.pool.set_token(Some(token(&h.clock, "TOKEN-2")));
    h.wait_signal(Signal::RegOk, INITIAL_RUN).await;
    assert_eq!(h.pool.count(Signal::RegFailed, INITIAL_RUN), 1);
    h.stop().await;
}

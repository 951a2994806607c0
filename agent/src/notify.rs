//! systemd notifications (READY, STATUS, WATCHDOG), only when
//! `NOTIFY_SOCKET` is set; without it every call is a no-op.

use std::time::Duration;

pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

pub fn ready(status: &str) {
    if enabled() {
        let _ = sd_notify::notify(
            false,
            &[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(status),
            ],
        );
    }
}

pub fn status(status: &str) {
    if enabled() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
    }
}

pub fn stopping() {
    if enabled() {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }
}

/// The unit's watchdog period, as `sd_watchdog_enabled(3)` reads it: from
/// `WATCHDOG_USEC`, for this process unless `WATCHDOG_PID` names another.
fn watchdog_period() -> Option<Duration> {
    if !enabled() {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// Variables meant for the agent alone: the runner, its jobs and the
/// pre-runner script must not talk to systemd on the agent's behalf.
pub const PRIVATE_ENV: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Pings the systemd watchdog at half its period for as long as the
/// runtime schedules tasks, if the unit has `WatchdogSec`, until `stop`.
pub async fn watchdog_loop(stop: tokio_util::sync::CancellationToken) {
    let Some(period) = watchdog_period() else {
        return;
    };
    loop {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.cancelled() => return,
        }
    }
}

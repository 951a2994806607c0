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

/// Pings the systemd watchdog at half its period for as long as the
/// runtime schedules tasks, if the unit has `WatchdogSec`.
pub async fn watchdog_loop() {
    let mut usec = 0;
    if !enabled() || !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec) / 2;
    loop {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        tokio::time::sleep(period).await;
    }
}

//! The OS signals the agent acts on: SIGTERM and SIGINT stop it, SIGHUP is
//! only logged. Listened for from the agent's first moment, so a stop
//! during the start (IMDS can be slow at boot) is not lost.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The signals the agent handles, listened for from its first moment.
pub(crate) struct OsSignals {
    /// `None`: tokio could not listen (logged); the default action stays.
    term: Option<Signal>,
    int: Option<Signal>,
    hangup: Option<Signal>,
}

impl OsSignals {
    pub(crate) fn listen() -> OsSignals {
        let listen = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|e| tracing::error!(error = %e, "cannot listen for {name}: it would stop the agent"))
                .ok()
        };
        OsSignals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
            hangup: listen(SignalKind::hangup(), "SIGHUP"),
        }
    }
}

impl OsSignals {
    /// Resolves at SIGTERM or SIGINT (SIGHUP is only logged).
    pub(crate) async fn stopping(&mut self) {
        loop {
            tokio::select! {
                _ = next(&mut self.term) => tracing::info!("SIGTERM: stopping"),
                _ = next(&mut self.int) => tracing::info!("SIGINT: stopping"),
                _ = next(&mut self.hangup) => {
                    tracing::warn!("SIGHUP: configuration reload is not supported; restart the service to apply changes (systemctl restart runner-agent)");
                    continue;
                }
            }
            return;
        }
    }
}

/// Resolves at the next `signal`; never when it could not be listened for.
async fn next(signal: &mut Option<Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT stop the agent. SIGHUP, the conventional "reload",
/// is logged and otherwise ignored: the configuration shapes the runner's
/// registration, install and reset, and changing it under a registered
/// runner is not safe; a restart (which deregisters cleanly) applies it.
pub(crate) async fn forward_os_signals(
    shutdown: CancellationToken,
    stop: CancellationToken,
    mut signals: OsSignals,
) {
    tokio::select! {
        () = signals.stopping() => shutdown.cancel(),
        _ = stop.cancelled() => {}
    }
}

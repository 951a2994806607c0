//! Logging: to journald when the agent's stderr is the journal (systemd
//! sets `JOURNAL_STREAM`), to stderr otherwise, as text or JSON lines.
//! `RUST_LOG` style targets (`info`, `runner_agent=debug`) set the level.

use std::str::FromStr;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| Targets::from_str(&s).ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    if format == LogFormat::Text && std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            registry
                .with(journald.with_syslog_identifier("runner-agent".into()))
                .init();
            return;
        }
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true),
            )
            .init(),
        LogFormat::Text => registry.with(fmt.with_ansi(false)).init(),
    }
}

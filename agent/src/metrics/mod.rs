//! What the agent counts for operators: claims, registrations, jobs,
//! releases, resets, runner exits, DynamoDB errors, notices, heartbeats,
//! firewall restores.
//! The figures live in one registry, always kept (a few atomics); they
//! leave the process only when `[metrics]` asks for it: a scrape endpoint
//! (`endpoint.rs`) or a node_exporter textfile (`textfile.rs`).
//! docs/operations.md, "Metrics", lists every series.

mod endpoint;
mod textfile;

pub use endpoint::serve;
pub use textfile::keep_written;

use crate::orphan::Orphan;
use crate::protocol::Signal;
use crate::runner::exit::ListenerExit;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use std::time::Duration;

/// Seconds. Claims: config.sh takes about a second against GitHub, and the
/// control plane gives up after 10 s. Releases and resets: deregistration,
/// then the reset (docker prune can take a minute). Jobs: minutes to hours.
const CLAIM_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const RELEASE_BUCKETS: &[f64] = &[0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const JOB_BUCKETS: &[f64] = &[
    10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
];

/// Handles to every series; clones share them.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    state: IntGaugeVec,
    claim_to_register: Histogram,
    registrations: IntCounterVec,
    signals: IntCounterVec,
    release: Histogram,
    jobs_started: IntCounter,
    jobs_finished: IntCounter,
    job_duration: Histogram,
    runner_exits: IntCounterVec,
    resets: IntCounterVec,
    reset_duration: Histogram,
    dynamodb_errors: IntCounterVec,
    notices: IntCounterVec,
    heartbeat_failures: IntCounter,
    left_pool: IntCounterVec,
    self_terminations: IntCounterVec,
    assume_role: IntCounterVec,
    firewall_restores: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("runner_agent".into()), None)
            .expect("a constant, valid namespace");
        let reg = Registrar(&registry);
        let info = reg.gauge_vec("info", "The agent's version (always 1).", &["version"]);
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let metrics = Metrics {
            state: reg.gauge_vec(
                "state",
                "1 for the lifecycle state the agent is in (runner-agent status names them).",
                &["state"],
            ),
            claim_to_register: reg.histogram(
                "claim_to_register_seconds",
                "From reading a claim to UD_REG_OK stored.",
                CLAIM_BUCKETS,
            ),
            registrations: reg.counter_vec(
                "registrations_total",
                "Registration attempts for a claim, by result (failed: refused token, config.sh failing after its retries, no runner, an unclean instance).",
                &["result"],
            ),
            signals: reg.counter_vec(
                "signals_total",
                "Signals stored in the table, by signal.",
                &["signal"],
            ),
            release: reg.histogram(
                "release_seconds",
                "From seeing a release to its signal stored (deregistration and reset included).",
                RELEASE_BUCKETS,
            ),
            jobs_started: reg.counter("jobs_started_total", "Jobs the runner's job-started hook reported."),
            jobs_finished: reg.counter(
                "jobs_finished_total",
                "Jobs that ended: the job-completed hook, or the runner stopped or exited mid-job.",
            ),
            job_duration: reg.histogram(
                "job_duration_seconds",
                "How long jobs ran, from the started hook to their end.",
                JOB_BUCKETS,
            ),
            runner_exits: reg.counter_vec(
                "runner_exits_total",
                "Runner.Listener exits the agent did not ask for, by exit code (signal_N: killed by signal N).",
                &["code"],
            ),
            resets: reg.counter_vec("resets_total", "Resets between runs, by result.", &["result"]),
            reset_duration: reg.histogram(
                "reset_seconds",
                "How long resets between runs took.",
                RELEASE_BUCKETS,
            ),
            dynamodb_errors: reg.counter_vec(
                "dynamodb_errors_total",
                "Failed DynamoDB calls, by operation and kind (throttled, server_error, unreachable, table_missing, refused).",
                &["operation", "kind"],
            ),
            notices: reg.counter_vec(
                "notices_total",
                "Notices read from EC2, by kind (spot_interruption, rebalance).",
                &["kind"],
            ),
            heartbeat_failures: reg.counter(
                "heartbeat_failures_total",
                "Heartbeat writes that failed (each retried within the 15 s the control plane allows).",
            ),
            left_pool: reg.counter_vec(
                "left_pool_total",
                "Times the instance left the pool for good, by reason (table_gone, record_gone, max_idle).",
                &["reason"],
            ),
            self_terminations: reg.counter_vec(
                "self_terminations_total",
                "TerminateInstances calls EC2 accepted for this instance, by reason (expired, table_gone, record_gone, max_idle).",
                &["reason"],
            ),
            assume_role: reg.counter_vec(
                "job_credentials_assume_role_total",
                "AssumeRole calls for jobs' per-run credentials, by result (ok, failed).",
                &["result"],
            ),
            firewall_restores: reg.counter_vec(
                "firewall_restores_total",
                "Hardened mode: times the firewall table was found missing or changed and installed again, by result.",
                &["result"],
            ),
            registry,
        };
        // Series a dashboard compares are shown at 0 before they first count.
        for result in ["ok", "failed"] {
            metrics.registrations.with_label_values(&[result]);
            metrics.resets.with_label_values(&[result]);
            metrics.assume_role.with_label_values(&[result]);
            metrics.firewall_restores.with_label_values(&[result]);
        }
        metrics
    }

    /// The text exposition format (version 0.0.4): what Prometheus scrapes
    /// and node_exporter's textfile collector reads.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) =
            prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut text)
        {
            tracing::error!(error = %e, "encoding metrics");
        }
        text
    }

    /// The lifecycle moved from `from` (`None` at start) to `to`.
    pub fn state(&self, from: Option<&str>, to: &str) {
        if let Some(from) = from {
            self.state.with_label_values(&[from]).set(0);
        }
        self.state.with_label_values(&[to]).set(1);
    }

    pub fn registered(&self, since_claim: Option<Duration>) {
        self.registrations.with_label_values(&["ok"]).inc();
        if let Some(took) = since_claim {
            self.claim_to_register.observe(took.as_secs_f64());
        }
    }

    pub fn registration_failed(&self) {
        self.registrations.with_label_values(&["failed"]).inc();
    }

    pub fn signal_stored(&self, signal: Signal) {
        self.signals.with_label_values(&[signal.as_str()]).inc();
    }

    pub fn released(&self, took: Duration) {
        self.release.observe(took.as_secs_f64());
    }

    pub fn job_started(&self) {
        self.jobs_started.inc();
    }

    pub fn job_finished(&self, ran: Duration) {
        self.jobs_finished.inc();
        self.job_duration.observe(ran.as_secs_f64());
    }

    pub fn runner_exited(&self, exit: ListenerExit) {
        let code = match exit {
            ListenerExit::Success => "0".to_owned(),
            ListenerExit::Terminated => "1".to_owned(),
            ListenerExit::Retryable => "2".to_owned(),
            ListenerExit::SessionConflict => "5".to_owned(),
            ListenerExit::VersionDeprecated => "7".to_owned(),
            ListenerExit::Updating(code) | ListenerExit::Other(code) => code.to_string(),
            ListenerExit::Signalled(signal) => format!("signal_{signal}"),
            ListenerExit::Unknown => "unknown".to_owned(),
        };
        self.runner_exits.with_label_values(&[&code]).inc();
    }

    pub fn reset(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "failed" };
        self.resets.with_label_values(&[result]).inc();
        self.reset_duration.observe(took.as_secs_f64());
    }

    /// `kind` is `table::ErrorKind::label`.
    pub fn dynamodb_error(&self, operation: &str, kind: &str) {
        self.dynamodb_errors
            .with_label_values(&[operation, kind])
            .inc();
    }

    pub fn notice(&self, kind: &str) {
        self.notices.with_label_values(&[kind]).inc();
    }

    pub fn heartbeat_failed(&self) {
        self.heartbeat_failures.inc();
    }

    pub fn left_pool(&self, reason: Orphan) {
        self.left_pool.with_label_values(&[reason.label()]).inc();
    }

    /// An AssumeRole for a run's job credentials (`credentials/`).
    pub fn assume_role(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.assume_role.with_label_values(&[result]).inc();
    }

    /// `reason` is `expiry::Reason::label`.
    pub fn self_terminated(&self, reason: &str) {
        self.self_terminations.with_label_values(&[reason]).inc();
    }

    /// Hardened mode's firewall was found missing or changed and installed
    /// again (`ok`), or could not be (`failed`).
    pub fn firewall_restored(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.firewall_restores.with_label_values(&[result]).inc();
    }
}

/// Creates series in a registry. Every name and help text is a constant,
/// so a failure is a bug of this file, caught by its tests.
struct Registrar<'a>(&'a Registry);

impl Registrar<'_> {
    fn add<M: prometheus::core::Collector + Clone + 'static>(&self, metric: M) -> M {
        self.0
            .register(Box::new(metric.clone()))
            .expect("each series registered once");
        metric
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::new(name, help).expect("a valid name"))
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("a valid name"))
    }

    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid name"))
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("a valid name"))
    }
}

/// The value of one series in `text` (the exposition format), named as
/// rendered: `name{label="value"}`. For tests that read what was exposed
/// (the test stack has its own copy: it reads the agent from outside).
#[cfg(test)]
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests;

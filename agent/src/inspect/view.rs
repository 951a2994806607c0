//! The pool as rows: one per instance, from its record, its heartbeat and
//! its last signal, as of one `now`. Pure (no I/O), so the output is tested
//! against fixed items and a fixed clock.

use crate::protocol::{parse_timestamp, HEARTBEAT_STALE_AFTER};
use aws_sdk_dynamodb::types::AttributeValue;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use time::OffsetDateTime;

pub type Item = HashMap<String, AttributeValue>;

/// The table's three item kinds, by instance id.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub records: BTreeMap<String, Item>,
    pub heartbeats: BTreeMap<String, Item>,
    pub signals: BTreeMap<String, Item>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub instance_id: String,
    /// The record's `state`; `None` when there is no record (a heartbeat or
    /// signal left after the control plane removed it).
    pub state: Option<String>,
    pub run_id: Option<String>,
    /// Seconds until the threshold; negative once past.
    pub threshold_in_s: Option<i64>,
    pub expired: bool,
    pub heartbeat_age_s: Option<i64>,
    /// No heartbeat within the control plane's 15 s (or none at all) while
    /// the instance should be alive.
    pub stale: bool,
    pub signal: Option<String>,
    pub signal_run_id: Option<String>,
    pub signal_age_s: Option<i64>,
    /// What this agent adds to its heartbeats; `None` for the bash agent.
    pub agent: Option<AgentFields>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AgentFields {
    pub version: String,
    pub state: Option<String>,
    pub job_active: Option<bool>,
    pub runner_version: Option<String>,
    pub free_disk_bytes: Option<u64>,
    pub last_reset: Option<String>,
    /// The clean-slate check (`--json` only: the line keeps `reset ...`,
    /// which names a failed check too).
    pub last_check: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub total: usize,
    pub idle: usize,
    pub claimed: usize,
    pub running: usize,
    /// `created` (launched for a run, not yet registered) and any state
    /// this version does not know.
    pub other: usize,
    pub stale: usize,
    pub expired: usize,
}

#[derive(Debug, Serialize)]
pub struct View {
    pub at: String,
    pub instances: Vec<Row>,
    pub summary: Summary,
}

fn s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn age(now: OffsetDateTime, stamp: Option<&str>) -> Option<i64> {
    stamp
        .and_then(parse_timestamp)
        .map(|t| (now - t).whole_seconds())
}

pub fn view(snapshot: &Snapshot, now: OffsetDateTime) -> View {
    let mut ids: Vec<&String> = snapshot
        .records
        .keys()
        .chain(snapshot.heartbeats.keys())
        .chain(snapshot.signals.keys())
        .collect();
    ids.sort();
    ids.dedup();
    let instances: Vec<Row> = ids.into_iter().map(|id| row(snapshot, id, now)).collect();
    let mut summary = Summary {
        total: instances.len(),
        ..Summary::default()
    };
    for r in &instances {
        match r.state.as_deref() {
            Some("idle") => summary.idle += 1,
            Some("claimed") => summary.claimed += 1,
            Some("running") => summary.running += 1,
            _ => summary.other += 1,
        }
        summary.stale += usize::from(r.stale);
        summary.expired += usize::from(r.expired);
    }
    View {
        at: crate::protocol::format_timestamp(now),
        instances,
        summary,
    }
}

fn row(snapshot: &Snapshot, id: &str, now: OffsetDateTime) -> Row {
    let record = snapshot.records.get(id);
    let beat = snapshot.heartbeats.get(id);
    let signal = snapshot.signals.get(id);
    let state = record.and_then(|r| s(r, "state")).map(str::to_owned);
    let threshold = record
        .and_then(|r| s(r, "threshold"))
        .and_then(parse_timestamp);
    let threshold_in_s = threshold.map(|t| (t - now).whole_seconds());
    let heartbeat_age_s = age(now, beat.and_then(|b| s(b, "updatedAt")));
    let alive = state.as_deref().is_some_and(|s| s != "terminated");
    let stale = alive && heartbeat_age_s.is_none_or(|a| a > HEARTBEAT_STALE_AFTER.as_secs() as i64);
    let value = signal.and_then(|i| i.get("value")?.as_m().ok());
    Row {
        instance_id: id.to_owned(),
        run_id: record
            .and_then(|r| s(r, "runId"))
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        expired: alive && threshold_in_s.is_some_and(|left| left < 0),
        state,
        threshold_in_s,
        heartbeat_age_s,
        stale,
        signal: value.and_then(|v| s(v, "state")).map(str::to_owned),
        signal_run_id: value.and_then(|v| s(v, "runId")).map(str::to_owned),
        signal_age_s: age(now, signal.and_then(|i| s(i, "updatedAt"))),
        agent: beat.and_then(agent_fields),
    }
}

fn agent_fields(beat: &Item) -> Option<AgentFields> {
    Some(AgentFields {
        version: s(beat, "agentVersion")?.to_owned(),
        state: s(beat, "agentState").map(str::to_owned),
        job_active: beat
            .get("jobActive")
            .and_then(|v| v.as_bool().ok())
            .copied(),
        runner_version: s(beat, "runnerVersion").map(str::to_owned),
        free_disk_bytes: beat
            .get("freeDiskBytes")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok()),
        last_reset: s(beat, "lastReset").map(str::to_owned),
        last_check: s(beat, "lastCheck").map(str::to_owned),
    })
}

/// `45s`, `4m12s`, `3h05m`, `2d04h`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".to_owned())
}

/// One line per instance under a header, then the summary line.
pub fn text(view: &View) -> String {
    let header = [
        "INSTANCE",
        "STATE",
        "RUN",
        "THRESHOLD",
        "HEARTBEAT",
        "LAST SIGNAL",
        "AGENT",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(str::to_owned)];
    for r in &view.instances {
        let threshold = r.threshold_in_s.map(|left| match left {
            l if l < 0 => format!("expired {} ago", duration(l)),
            l => format!("in {}", duration(l)),
        });
        let heartbeat = match (r.heartbeat_age_s, r.stale) {
            (None, true) => "none STALE".to_owned(),
            (None, false) => "-".to_owned(),
            (Some(a), true) => format!("{} STALE", duration(a)),
            (Some(a), false) => duration(a),
        };
        let signal = r.signal.as_ref().map(|sig| {
            let run = r.signal_run_id.as_deref().unwrap_or("?");
            let ago = r.signal_age_s.map(duration).unwrap_or_else(|| "?".into());
            format!("{sig} ({run}, {ago} ago)")
        });
        lines.push([
            r.instance_id.clone(),
            or_dash(r.state.clone()),
            or_dash(r.run_id.clone()),
            or_dash(threshold),
            heartbeat,
            or_dash(signal),
            or_dash(r.agent.as_ref().map(agent_text)),
        ]);
    }
    let mut widths = [0usize; 7];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (cell, w) in line.iter().zip(widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    let sum = &view.summary;
    let _ = writeln!(
        out,
        "{} instances: {} idle, {} claimed, {} running, {} other; {} stale, {} expired (at {})",
        sum.total, sum.idle, sum.claimed, sum.running, sum.other, sum.stale, sum.expired, view.at
    );
    out
}

fn agent_text(a: &AgentFields) -> String {
    let mut parts = vec![format!("v{}", a.version)];
    if let Some(state) = &a.state {
        parts.push(state.clone());
    }
    if a.job_active == Some(true) {
        parts.push("job".into());
    }
    if let Some(v) = &a.runner_version {
        parts.push(format!("runner {v}"));
    }
    if let Some(bytes) = a.free_disk_bytes {
        parts.push(format!("{} free", bytesize::ByteSize::b(bytes)));
    }
    if let Some(reset) = &a.last_reset {
        parts.push(format!("reset {reset}"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-28 16:00:00 UTC);

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn st(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }

    fn record(state: &str, run: &str, threshold: &str) -> Item {
        item(&[
            ("state", st(state)),
            ("runId", st(run)),
            ("threshold", st(threshold)),
        ])
    }

    fn signal(state: &str, run: &str, at: &str) -> Item {
        let value = HashMap::from([
            ("state".to_owned(), st(state)),
            ("runId".to_owned(), st(run)),
        ]);
        item(&[("value", AttributeValue::M(value)), ("updatedAt", st(at))])
    }

    /// Four instances: ours idle and ours running a job, the bash agent's
    /// (no extra attributes) claimed, and one expired with a stale
    /// heartbeat; plus a signal left by an instance whose record is gone.
    fn snapshot() -> Snapshot {
        let ours = |state: &str, job: bool, reset: Option<&str>| {
            let mut beat = item(&[
                ("updatedAt", st("2026-11-28T15:59:57Z")),
                ("value", st("PING")),
                ("agentVersion", st("0.1.0")),
                ("agentState", st(state)),
                ("jobActive", AttributeValue::Bool(job)),
                ("runnerVersion", st("2.330.0")),
                ("freeDiskBytes", AttributeValue::N("21474836480".into())),
            ]);
            if let Some(reset) = reset {
                beat.insert("lastReset".into(), st(reset));
            }
            beat
        };
        let mut s = Snapshot::default();
        s.records
            .insert("i-0aaa".into(), record("idle", "", "2026-11-28T16:09:30Z"));
        s.heartbeats
            .insert("i-0aaa".into(), ours("idle", false, Some("ok")));
        s.signals.insert(
            "i-0aaa".into(),
            signal(
                "UD_REMOVE_REG_REMOVE_RUN_OK",
                "901-1",
                "2026-11-28T15:58:10Z",
            ),
        );
        s.records.insert(
            "i-0bbb".into(),
            record("running", "902-1", "2026-11-28T17:00:00Z"),
        );
        s.heartbeats
            .insert("i-0bbb".into(), ours("registered", true, None));
        s.signals.insert(
            "i-0bbb".into(),
            signal("UD_REG_OK", "902-1", "2026-11-28T15:50:00Z"),
        );
        s.records.insert(
            "i-0ccc".into(),
            record("claimed", "903-1", "2026-11-28T16:04:00Z"),
        );
        s.heartbeats.insert(
            "i-0ccc".into(),
            item(&[
                ("updatedAt", st("2026-11-28T15:59:59Z")),
                ("value", st("PING")),
            ]),
        );
        s.records
            .insert("i-0ddd".into(), record("idle", "", "2026-11-28T15:55:00Z"));
        s.heartbeats.insert(
            "i-0ddd".into(),
            item(&[
                ("updatedAt", st("2026-11-28T15:58:00Z")),
                ("value", st("PING")),
            ]),
        );
        s.signals.insert(
            "i-0eee".into(),
            signal("UD_SPOT_INTERRUPTED", "800-2", "2026-11-28T13:00:00Z"),
        );
        s
    }

    /// `RA_UPDATE_GOLDEN=1` (the switch of the tests crate's golden files)
    /// writes the output to golden.txt instead of comparing.
    #[test]
    fn text_matches_the_golden_output() {
        let text = text(&view(&snapshot(), NOW));
        if std::env::var_os("RA_UPDATE_GOLDEN").is_some() {
            let path =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/inspect/golden.txt");
            std::fs::write(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            return;
        }
        let golden = include_str!("golden.txt");
        assert_eq!(
            text, golden,
            "\n{text}\ngolden.txt differs; review the change, then RA_UPDATE_GOLDEN=1 cargo test -p runner-agent --lib inspect"
        );
    }

    #[test]
    fn json_has_one_object_per_instance_and_the_summary() {
        let json = serde_json::to_value(view(&snapshot(), NOW)).unwrap();
        assert_eq!(json["at"], "2026-11-28T16:00:00Z");
        let rows = json["instances"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[1]["instance_id"], "i-0bbb");
        assert_eq!(rows[1]["run_id"], "902-1");
        assert_eq!(rows[1]["agent"]["job_active"], true);
        assert_eq!(rows[1]["agent"]["free_disk_bytes"], 21474836480u64);
        assert_eq!(rows[2]["agent"], serde_json::Value::Null, "bash agent");
        assert_eq!(rows[3]["expired"], true);
        assert_eq!(rows[3]["stale"], true);
        assert_eq!(rows[4]["state"], serde_json::Value::Null);
        assert_eq!(
            json["summary"],
            serde_json::json!({"total": 5, "idle": 2, "claimed": 1, "running": 1, "other": 1, "stale": 1, "expired": 1})
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(-252), "4m12s");
        assert_eq!(duration(11_100), "3h05m");
        assert_eq!(duration(187_200), "2d04h");
    }
}

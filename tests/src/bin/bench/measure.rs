//! What the bench reads its figures from: the agent's JSON log (its own
//! timestamps), /proc, and a deterministic jitter so runs are comparable.

use serde_json::Value;
use stack::agent::AgentProcess;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Deterministic jitter (so runs are comparable): claims land at spread-out
/// phases of the agent's poll cycle.
pub struct Jitter(pub u64);
impl Jitter {
    pub fn next(&mut self, max: Duration) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        max.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

pub fn log_entries(agent: &AgentProcess) -> Vec<Value> {
    agent
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

pub fn unix_of(entry: &Value) -> f64 {
    let ts = entry["timestamp"].as_str().unwrap_or_default();
    let at =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    at.unix_timestamp_nanos() as f64 / 1e9
}

pub fn find<'a>(entries: &'a [Value], message: &str, key: &str, value: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|e| e["message"] == message && e[key] == value)
}

/// The agent's log once it holds the write of `signal` for `run` (at most
/// 5 s after the item was seen in the table).
pub async fn logged(agent: &AgentProcess, signal: &str, run: &str) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let entries = log_entries(agent);
        let found = entries.iter().any(|e| {
            e["message"] == "signal written" && e["signal"] == signal && e["run_id"] == run
        });
        if found || started.elapsed() > Duration::from_secs(5) {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When the agent logged writing `signal` for `run` (the latest such line).
pub fn signal_logged(entries: &[Value], signal: &str, run: &str) -> f64 {
    let entry = entries
        .iter()
        .rev()
        .find(|e| e["message"] == "signal written" && e["signal"] == signal && e["run_id"] == run)
        .unwrap_or_else(|| panic!("{signal} for {run} not logged"));
    unix_of(entry)
}

pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * (samples.len() as f64 - 1.0)).round() as usize;
    samples[rank]
}

pub fn proc_stat_cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

pub fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

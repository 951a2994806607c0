//! The fleet simulation (`scripts/fleet-sim`, i.e. `ra-bench fleet`; a
//! mode of the bench, so that the suite links no extra binary): a fleet of real agents against
//! one moto behind one proxy that holds DynamoDB's per-partition limits,
//! scaled down, while a control-plane driver claims and releases
//! instances; a throttling episode and an outage in the middle. Prints
//! what the issue asks for: claims answered within the control plane's
//! 10 s, signals lost, units used against the budget, throttled requests,
//! claim latency per phase, stale heartbeats, wrong terminations, and the
//! pool one table serves at DynamoDB's real limits from the measured
//! per-agent cost. Bounded in agents and time; loopback only.
//!
//! Settings (environment): FLEET_AGENTS (50, at most 200), FLEET_SCALE
//! (20: budgets are DynamoDB's ÷ 20), FLEET_CLAIMS_PER_S (1), FLEET_JOB_S
//! (3), FLEET_PHASE_S (30: the length of the before and after phases; the
//! throttling episode and the outage take half of it each).

use crate::agent::{AgentProcess, AgentSpec};
use crate::proxy::Budget;
use crate::{Stack, StackOptions, INITIAL_RUN_ID};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;

/// DynamoDB's limits per partition (per second).
const DYNAMODB_READ_UNITS: f64 = 3000.0;
const DYNAMODB_WRITE_UNITS: f64 = 1000.0;
/// The control plane's patience for UD_REG_OK after claiming an idle
/// instance, and for the release signal.
const CLAIM_WINDOW: Duration = Duration::from_secs(10);
const RELEASE_WINDOW: Duration = Duration::from_secs(120);
/// The control plane counts an older heartbeat as unhealthy.
const HEARTBEAT_FRESH: i64 = 15;
const MAX_AGENTS: usize = 200;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Phase {
    Before,
    Throttled,
    Between,
    Outage,
    After,
}

const PHASES: [Phase; 5] = [
    Phase::Before,
    Phase::Throttled,
    Phase::Between,
    Phase::Outage,
    Phase::After,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::Throttled => "throttled (budget ÷10)",
            Phase::Between => "between",
            Phase::Outage => "outage (proxy down)",
            Phase::After => "after",
        }
    }
}

/// When each (instance, signal, run) was first seen in the table.
type Seen = Arc<Mutex<HashMap<(String, String, String), Instant>>>;

#[derive(Debug, Clone)]
struct Claim {
    phase: Phase,
    /// Claim to UD_REG_OK, if it came.
    latency: Option<Duration>,
    released: bool,
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    if sorted.is_empty() {
        return "-".into();
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    format!("{:.0} ms", sorted[i].as_secs_f64() * 1000.0)
}

async fn wait_seen(
    seen: &Seen,
    key: (String, String, String),
    patience: Duration,
) -> Option<Instant> {
    let started = Instant::now();
    while started.elapsed() < patience {
        if let Some(at) = seen.lock().unwrap().get(&key) {
            return Some(*at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Every 200 ms, one Query of the worker signals, straight to moto (the
/// driver's reads are not the fleet's and are not budgeted).
fn watch_signals(
    cp: crate::control::ControlPlane,
    seen: Seen,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(items) = query(&cp, "TYPE#WS").await {
                let now = Instant::now();
                let mut seen = seen.lock().unwrap();
                for (id, item) in items {
                    let value = item.get("value").and_then(|v| v.as_m().ok());
                    let field = |k: &str| {
                        value
                            .and_then(|m| m.get(k))
                            .and_then(|v| v.as_s().ok())
                            .cloned()
                    };
                    if let (Some(state), Some(run)) = (field("state"), field("runId")) {
                        seen.entry((id, state, run)).or_insert(now);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

type Item = HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

/// Every item under `pk`, by instance id: the inspector's paged Query.
async fn query(
    cp: &crate::control::ControlPlane,
    pk: &str,
) -> anyhow::Result<BTreeMap<String, Item>> {
    runner_agent::query(&cp.ddb, &cp.table, pk).await
}

/// Every second, the heartbeats' ages: per phase, the instances whose
/// heartbeat was ever older than the control plane's 15 s.
fn watch_heartbeats(
    cp: crate::control::ControlPlane,
    phase: Arc<Mutex<Option<Phase>>>,
    stale: Arc<Mutex<BTreeMap<Phase, HashSet<String>>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    tokio::spawn(async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let current = *phase.lock().unwrap();
            if let (Some(current), Ok(items)) = (current, query(&cp, "TYPE#HEARTBEAT").await) {
                let now = OffsetDateTime::now_utc();
                for (id, item) in items {
                    let at = item
                        .get("updatedAt")
                        .and_then(|v| v.as_s().ok())
                        .and_then(|s| {
                            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                                .ok()
                        });
                    if let Some(at) = at {
                        if (now - at).whole_seconds() > HEARTBEAT_FRESH {
                            stale.lock().unwrap().entry(current).or_default().insert(id);
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

pub async fn simulate() -> anyhow::Result<()> {
    let agents = env_or("FLEET_AGENTS", 50usize).clamp(1, MAX_AGENTS);
    let scale = env_or("FLEET_SCALE", 20.0f64).max(1.0);
    let claims_per_s = env_or("FLEET_CLAIMS_PER_S", 1.0f64).clamp(0.05, 20.0);
    let job = Duration::from_secs(env_or("FLEET_JOB_S", 3u64).min(60));
    let phase_len = Duration::from_secs(env_or("FLEET_PHASE_S", 30u64).clamp(10, 300));
    let budget = Budget {
        read_units_per_s: DYNAMODB_READ_UNITS / scale,
        write_units_per_s: DYNAMODB_WRITE_UNITS / scale,
    };
    println!(
        "fleet: {agents} agents; per-partition budget {:.0} read / {:.0} write units/s (DynamoDB's 3,000 / 1,000 ÷ {scale}); {claims_per_s} claims/s; jobs {} s; phases {} s / {} s",
        budget.read_units_per_s,
        budget.write_units_per_s,
        job.as_secs(),
        phase_len.as_secs(),
        phase_len.as_secs() / 2
    );

    let first = Stack::start(StackOptions::default()).await;
    first.proxy.faults(|f| f.budget = Some(budget));
    let mut stacks = vec![];
    for _ in 1..agents {
        stacks.push(first.sibling().await);
    }
    stacks.insert(0, first);
    let ids: Vec<String> = stacks.iter().map(|s| s.instance_id.clone()).collect();
    let spec = AgentSpec {
        production_timing: true,
        ..Default::default()
    };
    let mut processes: Vec<AgentProcess> = stacks.iter().map(|s| s.spawn_agent(&spec)).collect();
    let cp = stacks[0].cp.clone();
    let proxy = stacks[0].proxy.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Seen = Arc::default();
    watch_signals(cp.clone(), seen.clone(), stop.clone());

    // Boot: every agent registers for its initial run; then all released.
    let boot = Instant::now();
    let booted = futures_all(ids.iter().map(|id| {
        wait_seen(
            &seen,
            (id.clone(), "UD_REG_OK".into(), INITIAL_RUN_ID.into()),
            Duration::from_secs(120),
        )
    }))
    .await;
    let booted = booted.iter().filter(|b| b.is_some()).count();
    println!(
        "boot: {booted}/{agents} registered for the initial run in {:.1} s",
        boot.elapsed().as_secs_f64()
    );
    for id in &ids {
        cp.release(id, INITIAL_RUN_ID, "created").await;
    }
    let released = futures_all(ids.iter().map(|id| {
        wait_seen(
            &seen,
            (
                id.clone(),
                "UD_REMOVE_REG_REMOVE_RUN_OK".into(),
                INITIAL_RUN_ID.into(),
            ),
            Duration::from_secs(120),
        )
    }))
    .await;
    println!(
        "idle: {}/{agents} released",
        released.iter().filter(|r| r.is_some()).count()
    );

    // The per-agent idle cost, measured at the proxy over 10 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let usage = proxy.usage();
    let (idle_reads, _) = usage.units_per_s("TYPE#INSTANCE", from, Instant::now());
    let (_, beat_writes) = usage.units_per_s("TYPE#HEARTBEAT", from, Instant::now());
    let per_agent_read = idle_reads / agents as f64;
    let per_agent_write = beat_writes / agents as f64;

    // The phases, with claims throughout.
    let phase: Arc<Mutex<Option<Phase>>> = Arc::new(Mutex::new(Some(Phase::Before)));
    let stale: Arc<Mutex<BTreeMap<Phase, HashSet<String>>>> = Arc::default();
    watch_heartbeats(cp.clone(), phase.clone(), stale.clone(), stop.clone());
    let claims: Arc<Mutex<Vec<Claim>>> = Arc::default();
    let idle: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(ids.clone()));
    let mut windows: BTreeMap<Phase, (Instant, Instant)> = BTreeMap::new();
    let throttled_before = proxy.usage().throttled.clone();
    let mut tasks = tokio::task::JoinSet::new();
    let mut run = 2000u64;
    for p in PHASES {
        let length = match p {
            Phase::Before | Phase::After => phase_len,
            _ => phase_len / 2,
        };
        match p {
            Phase::Throttled => proxy.faults(|f| {
                f.budget = Some(Budget {
                    read_units_per_s: budget.read_units_per_s / 10.0,
                    write_units_per_s: budget.write_units_per_s / 10.0,
                })
            }),
            Phase::Between => proxy.faults(|f| f.budget = Some(budget)),
            Phase::Outage => proxy.set_down(true),
            Phase::After => proxy.set_down(false),
            Phase::Before => {}
        }
        *phase.lock().unwrap() = Some(p);
        let start = Instant::now();
        while start.elapsed() < length {
            let pick = {
                let mut idle = idle.lock().unwrap();
                (!idle.is_empty()).then(|| {
                    let i = fastrand::usize(..idle.len());
                    idle.swap_remove(i)
                })
            };
            if let Some(id) = pick {
                run += 1;
                let run_id = format!("{run}-1");
                tasks.spawn(drive_claim(
                    cp.clone(),
                    seen.clone(),
                    claims.clone(),
                    idle.clone(),
                    id,
                    run_id,
                    p,
                    job,
                ));
            }
            tokio::time::sleep(Duration::from_secs_f64(1.0 / claims_per_s)).await;
        }
        windows.insert(p, (start, Instant::now()));
    }
    *phase.lock().unwrap() = None;
    // Every claim gets its answers or its patience runs out.
    while tasks.join_next().await.is_some() {}
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    // Wrong terminations: every threshold was in the future.
    let mut terminated = 0;
    for id in &ids {
        if cp.instance_state(id).await != "running" {
            terminated += 1;
        }
    }
    for p in &mut processes {
        p.kill(libc::SIGTERM);
    }
    for p in &mut processes {
        p.wait_exit(Duration::from_secs(30)).await;
    }
    let panics = processes
        .iter()
        .filter(|p| p.log_text().contains("panicked"))
        .count();

    report(Report {
        agents,
        scale,
        budget,
        per_agent_read,
        per_agent_write,
        claims: claims.lock().unwrap().clone(),
        windows,
        usage: proxy.usage(),
        throttled_before,
        stale: stale.lock().unwrap().clone(),
        terminated,
        panics,
    });
    Ok(())
}

async fn futures_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

/// One claim as the control plane makes it: claim, wait for UD_REG_OK
/// (counted in time within 10 s; waited for up to the release window),
/// let the job run, release, wait for the release signal.
#[allow(clippy::too_many_arguments)]
async fn drive_claim(
    cp: crate::control::ControlPlane,
    seen: Seen,
    claims: Arc<Mutex<Vec<Claim>>>,
    idle: Arc<Mutex<Vec<String>>>,
    id: String,
    run_id: String,
    phase: Phase,
    job: Duration,
) {
    let claimed = Instant::now();
    cp.claim(&id, &run_id).await;
    let ok = wait_seen(
        &seen,
        (id.clone(), "UD_REG_OK".into(), run_id.clone()),
        RELEASE_WINDOW,
    )
    .await;
    let latency = ok.map(|at| at.saturating_duration_since(claimed));
    tokio::time::sleep(job).await;
    cp.release(&id, &run_id, "claimed").await;
    let released = wait_seen(
        &seen,
        (
            id.clone(),
            "UD_REMOVE_REG_REMOVE_RUN_OK".into(),
            run_id.clone(),
        ),
        RELEASE_WINDOW,
    )
    .await
    .is_some();
    claims.lock().unwrap().push(Claim {
        phase,
        latency,
        released,
    });
    if released {
        idle.lock().unwrap().push(id);
    }
}

struct Report {
    agents: usize,
    scale: f64,
    budget: Budget,
    per_agent_read: f64,
    per_agent_write: f64,
    claims: Vec<Claim>,
    windows: BTreeMap<Phase, (Instant, Instant)>,
    usage: crate::proxy::Usage,
    throttled_before: BTreeMap<String, u64>,
    stale: BTreeMap<Phase, HashSet<String>>,
    terminated: usize,
    panics: usize,
}

fn report(r: Report) {
    println!();
    println!("| phase | claims | UD_REG_OK within 10 s | later | never | p50 | p99 | read units/s on TYPE#INSTANCE (budget) | write units/s on TYPE#HEARTBEAT (budget) | throttled requests | instances with a stale heartbeat |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut lost = 0;
    for p in PHASES {
        let claims: Vec<&Claim> = r.claims.iter().filter(|c| c.phase == p).collect();
        let mut latencies: Vec<Duration> = claims.iter().filter_map(|c| c.latency).collect();
        latencies.sort();
        let within = latencies.iter().filter(|l| **l <= CLAIM_WINDOW).count();
        let never = claims.iter().filter(|c| c.latency.is_none()).count();
        lost += never + claims.iter().filter(|c| !c.released).count();
        let (budget_r, budget_w) = match p {
            Phase::Throttled => (
                r.budget.read_units_per_s / 10.0,
                r.budget.write_units_per_s / 10.0,
            ),
            _ => (r.budget.read_units_per_s, r.budget.write_units_per_s),
        };
        let (from, to) = r.windows[&p];
        let (reads, _) = r.usage.units_per_s("TYPE#INSTANCE", from, to);
        let (_, writes) = r.usage.units_per_s("TYPE#HEARTBEAT", from, to);
        let throttled = r.usage.throttled_in(from, to);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} ({:.0}) | {:.1} ({:.0}) | {} | {} |",
            p.name(),
            claims.len(),
            within,
            latencies.len() - within,
            never,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            reads,
            budget_r,
            writes,
            budget_w,
            throttled,
            r.stale.get(&p).map_or(0, HashSet::len),
        );
    }
    let throttled_total = r.usage.throttled_total() - r.throttled_before.values().sum::<u64>();
    println!();
    println!("signals lost (UD_REG_OK or the release signal never seen): {lost}");
    println!("wrong terminations: {}", r.terminated);
    println!("agents that panicked: {}", r.panics);
    println!("throttled requests in all phases: {throttled_total}");
    println!();
    println!(
        "measured idle cost per agent: {:.3} read units/s (instance record polls), {:.3} write units/s (heartbeats)",
        r.per_agent_read, r.per_agent_write
    );
    // The record polls scale with the idle poll; heartbeats do not.
    for (label, poll_factor) in [
        ("default timing (idle poll 250 ms)", 1.0),
        ("idle poll 1 s", 0.25),
    ] {
        let read = r.per_agent_read * poll_factor;
        let by_reads = DYNAMODB_READ_UNITS / read;
        let by_writes = DYNAMODB_WRITE_UNITS / r.per_agent_write;
        println!(
            "largest idle pool one table serves, {label}: {:.0} instances (reads allow {:.0}, heartbeats {:.0}; DynamoDB's per-partition 3,000 / 1,000 units/s)",
            by_reads.min(by_writes),
            by_reads,
            by_writes
        );
    }
    println!(
        "(this run: {} agents at budgets ÷{}, i.e. as {} instances against DynamoDB's real limits)",
        r.agents,
        r.scale,
        (r.agents as f64 * r.scale) as u64
    );
}

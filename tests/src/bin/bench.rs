//! `scripts/bench`: the agent's speed and cost on the local stack, printed
//! as a table against the targets of the agent issue. Bounded: a fixed
//! number of claims and fixed windows, then it stops by itself.
//!
//! Latencies come from the agent's own log timestamps (when the signal was
//! stored) minus the moment the control plane's write was acknowledged, and
//! `config.sh` time (logged by the agent) is subtracted, as the targets say.
//! Read units come from the proxy in front of moto, not from the agent.

use serde_json::Value;
use stack::agent::{AgentProcess, AgentSpec};
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WAIT: Duration = Duration::from_secs(60);

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Deterministic jitter (so runs are comparable): claims land at spread-out
/// phases of the agent's poll cycle.
struct Jitter(u64);
impl Jitter {
    fn next(&mut self, max: Duration) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        max.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

fn log_entries(agent: &AgentProcess) -> Vec<Value> {
    agent
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn unix_of(entry: &Value) -> f64 {
    let ts = entry["timestamp"].as_str().unwrap_or_default();
    let at =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap();
    at.unix_timestamp_nanos() as f64 / 1e9
}

fn find<'a>(entries: &'a [Value], message: &str, key: &str, value: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|e| e["message"] == message && e[key] == value)
}

/// The agent's log once it holds the write of `signal` for `run` (at most
/// 5 s after the item was seen in the table).
async fn logged(agent: &AgentProcess, signal: &str, run: &str) -> Vec<Value> {
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
fn signal_logged(entries: &[Value], signal: &str, run: &str) -> f64 {
    let entry = entries
        .iter()
        .rev()
        .find(|e| e["message"] == "signal written" && e["signal"] == signal && e["run_id"] == run)
        .unwrap_or_else(|| panic!("{signal} for {run} not logged"));
    unix_of(entry)
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * (samples.len() as f64 - 1.0)).round() as usize;
    samples[rank]
}

fn proc_stat_cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Row {
    name: &'static str,
    measured: f64,
    target: f64,
    unit: &'static str,
}

/// Files in the dedicated runner user's home, and bytes added to its
/// install: what the clean-slate check walks after every run.
const HOME_FILES: usize = 5_000;
const INSTALL_PAD_MIB: usize = 200;

/// The runner user's home of `HOME_FILES` small files (its baseline), and
/// the install padded to `INSTALL_PAD_MIB` more (its manifest).
async fn dedicated_user(stack: &Stack, spec: &AgentSpec) -> stack::users::TestUser {
    use std::os::unix::fs::{lchown, PermissionsExt};
    let user = stack::users::TestUser::with_home("ra-bench", &stack.home_dir());
    let dir = stack.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(stack.runner_log(), "").unwrap();
    std::fs::set_permissions(stack.runner_log(), std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(stack.jobs_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let home = stack.home_dir();
    for d in 0..HOME_FILES / 100 {
        let sub = home.join(format!("d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        lchown(&sub, Some(user.uid), Some(user.gid)).unwrap();
        for f in 0..100 {
            let file = sub.join(format!("f{f}"));
            std::fs::write(&file, format!("{d}/{f}\n")).unwrap();
            lchown(&file, Some(user.uid), Some(user.gid)).unwrap();
        }
    }
    stack.preinstall_runner(spec).await;
    let pad = stack.runner_dir().join("externals/pad");
    std::fs::create_dir_all(&pad).unwrap();
    let mib = vec![0x5a_u8; 1 << 20];
    for i in 0..INSTALL_PAD_MIB {
        std::fs::write(pad.join(format!("blob-{i}")), &mib).unwrap();
    }
    user
}

/// Release -> signal with the reset doing real work: each run's job leaves
/// ten running containers, each with a volume of its own, in a real
/// dockerd; the reset removes them all before the signal. With
/// `dedicated`, the runner runs as a user of its own (a 5,000-file home
/// restored, a 200 MB install checked against its manifest, the user's
/// processes, temp files and scheduled jobs swept and checked).
async fn reset_release_ms(runs: usize, dedicated: bool) -> Vec<f64> {
    let dockerd = stack::docker::Dockerd::start();
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.instance_id.clone();
    let cp = &stack.cp;
    let host = dockerd.host();
    let mut spec = AgentSpec {
        production_timing: true,
        reset: vec![
            "docker = \"required\"".into(),
            format!("docker_host = \"{host}\""),
        ],
        ..Default::default()
    };
    let _user = if dedicated {
        // The job's docker calls come from the runner user.
        use std::os::unix::fs::PermissionsExt;
        let socket = std::path::PathBuf::from(host.trim_start_matches("unix://"));
        let open = |path: &std::path::Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        open(socket.parent().unwrap(), 0o755);
        open(&socket, 0o666);
        let user = dedicated_user(&stack, &spec).await;
        spec.user = Some(user.name.into());
        Some(user)
    } else {
        None
    };
    let agent = stack.spawn_agent(&spec);
    let mut run = INITIAL_RUN_ID.to_owned();
    let mut from = "created";
    cp.wait_signal(&id, "UD_REG_OK", &run, WAIT)
        .await
        .expect("registered");
    let mut samples = Vec::new();
    for n in 0..runs {
        let mut steps: String = (0..10)
            .map(|i| {
                format!(
                    "docker --host '{host}' run -d --network none -v job-{n}-{i}:/data {} sleep 1000 >/dev/null\n",
                    stack::docker::IMAGE
                )
            })
            .collect();
        if dedicated {
            // What a job does to a home: a changed file, a new one.
            steps.push_str("echo changed >> \"$HOME/d1/f1\"\necho new > \"$HOME/d2/new\"\n");
        }
        stack.queue_steps(&run, &format!("{steps}echo steps done\n"));
        stack.wait_steps(&run).await;
        cp.release(&id, &run, from).await;
        let released = now_unix();
        cp.wait_signal(&id, "UD_REMOVE_REG_REMOVE_RUN_OK", &run, WAIT)
            .await
            .expect("released after a reset");
        let entries = logged(&agent, "UD_REMOVE_REG_REMOVE_RUN_OK", &run).await;
        let signalled = entries
            .iter()
            .find(|e| {
                e["message"] == "signal written"
                    && e["signal"] == "UD_REMOVE_REG_REMOVE_RUN_OK"
                    && e["run_id"] == run.as_str()
            })
            .expect("REMOVE_RUN_OK logged");
        samples.push((unix_of(signalled) - released) * 1000.0);
        assert_eq!(dockerd.lines(&["ps", "-aq"]).len(), 0, "containers left");
        run = format!("7000-{n}");
        from = "claimed";
        cp.claim(&id, &run).await;
        cp.wait_signal(&id, "UD_REG_OK", &run, WAIT)
            .await
            .expect("registered");
    }
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("fleet") {
        if let Err(e) = stack::fleet::simulate().await {
            eprintln!("fleet simulation: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let claims = arg("--claims", 20) as usize;
    let idle_secs = arg("--idle-seconds", 60);
    let job_secs = arg("--job-seconds", 30) as u32;
    let starts = arg("--starts", 5) as usize;
    let mut jitter = Jitter(42);
    let mut rows = Vec::new();

    println!("runner-agent bench: {claims} claims, {idle_secs} s idle, {job_secs} s job, {starts} cold starts");
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.instance_id.clone();
    let cp = &stack.cp;
    let spec = AgentSpec {
        pre_runner: Some(String::new()),
        production_timing: true,
        ..Default::default()
    };
    stack.preinstall_runner(&spec).await;

    // Start -> UD_OK, runner already unpacked, empty pre-runner script. Each
    // start is a first boot: the state dir is removed in between.
    let mut start_ms = Vec::new();
    for n in 0..starts {
        let _ = std::fs::remove_dir_all(stack.dir.path().join("state"));
        let spawned = now_unix();
        let mut agent = stack.spawn_agent(&spec);
        cp.wait_signal(&id, "UD_OK", INITIAL_RUN_ID, WAIT)
            .await
            .expect("UD_OK");
        let entries = log_entries(&agent);
        let ok = entries
            .iter()
            .filter(|e| e["message"] == "signal written" && e["signal"] == "UD_OK")
            .nth(n)
            .expect("UD_OK logged");
        start_ms.push((unix_of(ok) - spawned) * 1000.0);
        cp.wait_signal(&id, "UD_REG_OK", INITIAL_RUN_ID, WAIT)
            .await
            .expect("registered");
        agent.kill(libc::SIGTERM);
        agent.wait_exit(WAIT).await.expect("stops");
        // Clear the signal so the next start's UD_OK is seen afresh.
        cp.put_instance(
            &id,
            "created",
            INITIAL_RUN_ID,
            &stack::control::iso(time::OffsetDateTime::now_utc() + Duration::from_secs(3600)),
        )
        .await;
    }
    rows.push(Row {
        name: "start -> UD_OK p50",
        measured: percentile(&mut start_ms, 50.0),
        target: 300.0,
        unit: "ms",
    });

    // The long-lived agent for the remaining phases.
    let _ = std::fs::remove_dir_all(stack.dir.path().join("state"));
    let agent = stack.spawn_agent(&spec);
    cp.wait_signal(&id, "UD_REG_OK", INITIAL_RUN_ID, WAIT)
        .await
        .expect("registered");
    cp.release(&id, INITIAL_RUN_ID, "created").await;
    cp.wait_signal(&id, "UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID, WAIT)
        .await
        .expect("released");
    let pid = agent.pid();

    // Idle: CPU and read units over the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.proxy.reset();
    let cpu0 = proc_stat_cpu_seconds(pid);
    let wall0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle_cpu = (proc_stat_cpu_seconds(pid) - cpu0) / wall0.elapsed().as_secs_f64() * 100.0;
    let idle_counts = stack.proxy.counts();
    let minutes = wall0.elapsed().as_secs_f64() / 60.0;
    rows.push(Row {
        name: "CPU while idle",
        measured: idle_cpu,
        target: 0.5,
        unit: "% core",
    });
    rows.push(Row {
        name: "read units per idle minute",
        measured: idle_counts.read_units() / minutes,
        target: 120.0,
        unit: "RCU",
    });

    // Claims and releases at spread-out phases.
    let mut claim_ms = Vec::new();
    let mut claim_total_ms = Vec::new();
    let mut release_ms = Vec::new();
    let mut release_total_ms = Vec::new();
    for n in 0..claims {
        let run = format!("5000-{n}");
        tokio::time::sleep(Duration::from_millis(300) + jitter.next(Duration::from_millis(250)))
            .await;
        cp.claim(&id, &run).await;
        let claimed = now_unix();
        cp.wait_signal(&id, "UD_REG_OK", &run, WAIT)
            .await
            .expect("UD_REG_OK");
        tokio::time::sleep(Duration::from_millis(200) + jitter.next(Duration::from_millis(1000)))
            .await;
        cp.release(&id, &run, "claimed").await;
        let released = now_unix();
        cp.wait_signal(&id, "UD_REMOVE_REG_REMOVE_RUN_OK", &run, WAIT)
            .await
            .expect("released");
        // The agent logs the write after DynamoDB answered it: the driver's
        // poll can see the item first.
        let entries = logged(&agent, "UD_REMOVE_REG_REMOVE_RUN_OK", &run).await;
        let config_ms = entries
            .iter()
            .filter(|e| e["message"] == "config.sh finished")
            .nth(n + 1)
            .and_then(|e| e["elapsed_ms"].as_f64())
            .unwrap_or(0.0);
        let total = (signal_logged(&entries, "UD_REG_OK", &run) - claimed) * 1000.0;
        claim_total_ms.push(total);
        claim_ms.push(total - config_ms);
        let remove_ms = find(&entries, "deregistered", "run_id", &run)
            .and_then(|e| e["elapsed_ms"].as_f64())
            .unwrap_or(0.0);
        let total =
            (signal_logged(&entries, "UD_REMOVE_REG_REMOVE_RUN_OK", &run) - released) * 1000.0;
        release_total_ms.push(total);
        release_ms.push(total - remove_ms);
    }
    rows.push(Row {
        name: "claim -> UD_REG_OK p50",
        measured: percentile(&mut claim_ms, 50.0),
        target: 150.0,
        unit: "ms",
    });
    rows.push(Row {
        name: "claim -> UD_REG_OK p90",
        measured: percentile(&mut claim_ms, 90.0),
        target: 300.0,
        unit: "ms",
    });
    rows.push(Row {
        name: "release -> REMOVE_RUN_OK p50",
        measured: percentile(&mut release_ms, 50.0),
        target: 1500.0,
        unit: "ms",
    });

    // The run just released claims the instance again at once, as several
    // provision jobs of one workflow run (and re-runs) do: the control
    // plane's run id is the workflow run's.
    let mut reclaim_ms = Vec::new();
    for n in 0..(claims / 4).max(3) {
        let run = format!("5500-{n}");
        cp.claim(&id, &run).await;
        cp.wait_signal(&id, "UD_REG_OK", &run, WAIT)
            .await
            .expect("UD_REG_OK");
        tokio::time::sleep(Duration::from_millis(200) + jitter.next(Duration::from_millis(500)))
            .await;
        cp.release(&id, &run, "claimed").await;
        cp.wait_signal(&id, "UD_REMOVE_REG_REMOVE_RUN_OK", &run, WAIT)
            .await
            .expect("released");
        cp.claim(&id, &run).await;
        let claimed = now_unix();
        cp.wait_signal(&id, "UD_REG_OK", &run, WAIT)
            .await
            .expect("UD_REG_OK after the same run's release");
        let entries = logged(&agent, "UD_REG_OK", &run).await;
        let config_ms = entries
            .iter()
            .rev()
            .find(|e| e["message"] == "config.sh finished")
            .and_then(|e| e["elapsed_ms"].as_f64())
            .unwrap_or(0.0);
        reclaim_ms
            .push((signal_logged(&entries, "UD_REG_OK", &run) - claimed) * 1000.0 - config_ms);
        cp.release(&id, &run, "claimed").await;
        cp.wait_signal(&id, "UD_REMOVE_REG_REMOVE_RUN_OK", &run, WAIT)
            .await
            .expect("released");
    }
    rows.push(Row {
        name: "same-run re-claim -> UD_REG_OK p50",
        measured: percentile(&mut reclaim_ms, 50.0),
        target: 300.0,
        unit: "ms",
    });

    // A job: DynamoDB reads while it runs.
    let run = "6000-1".to_owned();
    cp.claim(&id, &run).await;
    cp.wait_signal(&id, "UD_REG_OK", &run, WAIT)
        .await
        .expect("UD_REG_OK");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.queue_job(&run, job_secs);
    while stack.count_events("JOB_START") == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Count from one poll period into the job (the agent notices the job at
    // its next marker check) to its end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.proxy.reset();
    let job_window = Instant::now();
    while stack.count_events("JOB_END") == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job_counts = stack.proxy.counts();
    let job_rate = job_counts.dynamodb_reads() as f64 / job_window.elapsed().as_secs_f64() * 10.0;
    rows.push(Row {
        name: "max DynamoDB reads in any 10 s of a job",
        measured: job_counts.max_reads_within(Duration::from_secs(10)) as f64,
        target: 1.0,
        unit: "reads",
    });
    cp.release(&id, &run, "claimed").await;
    cp.wait_signal(&id, "UD_REMOVE_REG_REMOVE_RUN_OK", &run, WAIT)
        .await
        .expect("released");

    let reset_runs = arg("--reset-runs", 5) as usize;
    let mut reset_ms = reset_release_ms(reset_runs, false).await;
    rows.push(Row {
        name: "release -> REMOVE_RUN_OK, 10 ctr+vol p50",
        measured: percentile(&mut reset_ms, 50.0),
        target: 1500.0,
        unit: "ms",
    });
    let mut checked_ms = reset_release_ms(reset_runs, true).await;
    rows.push(Row {
        name: "same, own user, home+install checked p50",
        measured: percentile(&mut checked_ms, 50.0),
        target: 1500.0,
        unit: "ms",
    });

    let peak = peak_rss_kib(pid) as f64 / 1024.0;
    rows.push(Row {
        name: "agent peak memory (VmHWM)",
        measured: peak,
        target: 15.0,
        unit: "MiB",
    });

    println!(
        "\n{:<38} {:>10} {:>10}  {:<7} {:>7}  verdict",
        "figure", "measured", "target", "unit", "ratio"
    );
    for r in &rows {
        let ratio = r.measured / r.target;
        println!(
            "{:<38} {:>10.2} {:>10.2}  {:<7} {:>7.2}  {}",
            r.name,
            r.measured,
            r.target,
            r.unit,
            ratio,
            if ratio <= 1.0 { "ok" } else { "OVER" }
        );
    }
    println!(
        "\nincluding config.sh (fake, bash): claim -> UD_REG_OK p50 {:.1} ms; release -> REMOVE_RUN_OK p50 {:.1} ms",
        percentile(&mut claim_total_ms, 50.0),
        percentile(&mut release_total_ms, 50.0)
    );
    println!(
        "idle requests by operation: {:?}; TCP connections opened: {}",
        idle_counts.operations, idle_counts.connections
    );
    println!(
        "during the job: {} DynamoDB reads, {job_rate:.2} per 10 s on average",
        job_counts.dynamodb_reads()
    );
    println!("(ratio = measured / target: machine-independent; <= 1 meets the target)");
}

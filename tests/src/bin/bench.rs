//! `scripts/bench`: the agent's speed and cost on the local stack, printed
//! as a table against the targets of the agent issue. Bounded: a fixed
//! number of claims and fixed windows, then it stops by itself.
//!
//! Latencies come from the agent's own log timestamps (when the signal was
//! stored) minus the moment the control plane's write was acknowledged, and
//! `config.sh` time (logged by the agent) is subtracted, as the targets say.
//! Read units come from the proxy in front of moto, not from the agent.

// The driver's parts, in bench/ (a crate root's modules are looked up
// beside it, so the paths are spelled out).
#[path = "bench/claims.rs"]
mod claims;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/reset.rs"]
mod reset;

use measure::{
    log_entries, logged, now_unix, peak_rss_kib, percentile, proc_stat_cpu_seconds, signal_logged,
    unix_of, Jitter,
};
use stack::agent::AgentSpec;
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    name: &'static str,
    measured: f64,
    target: f64,
    unit: &'static str,
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
        cp.wait_signal(&id, "UD_REG_OK", INITIAL_RUN_ID, WAIT)
            .await
            .expect("registered");
        // Read once UD_REG_OK is stored: the agent logs UD_OK after
        // DynamoDB answered, and the driver's poll can see the item first.
        let entries = log_entries(&agent);
        let ok = entries
            .iter()
            .filter(|e| e["message"] == "signal written" && e["signal"] == "UD_OK")
            .nth(n)
            .expect("UD_OK logged");
        start_ms.push((unix_of(ok) - spawned) * 1000.0);
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

    // Back-to-back: 300-550 ms after the previous release signal, at
    // phases of the idle polling that follow the release, not random ones.
    let mut back = claims::run(&stack, &agent, "5000", claims, &mut jitter, |j| {
        Duration::from_millis(300) + j.next(Duration::from_millis(250))
    })
    .await;
    // Claims as a pool makes them: after an idle gap of 1.5-4.5 s, so each
    // lands at a random moment of the agent's idle polling (a jitter of
    // its own: the rows before and after keep their sequence).
    let gap = claims::run(&stack, &agent, "4000", claims, &mut Jitter(7), |j| {
        Duration::from_millis(1500) + j.next(Duration::from_millis(3000))
    })
    .await;
    rows.push(Row {
        name: "claim -> UD_REG_OK p50",
        measured: percentile(&mut gap.claim_ms(), 50.0),
        target: 200.0,
        unit: "ms",
    });
    rows.push(Row {
        name: "claim -> UD_REG_OK p90",
        measured: percentile(&mut gap.claim_ms(), 90.0),
        target: 300.0,
        unit: "ms",
    });
    rows.push(Row {
        name: "claim back-to-back -> UD_REG_OK p50",
        measured: percentile(&mut back.claim_ms(), 50.0),
        target: 150.0,
        unit: "ms",
    });
    rows.push(Row {
        name: "claim back-to-back -> UD_REG_OK p90",
        measured: percentile(&mut back.claim_ms(), 90.0),
        target: 300.0,
        unit: "ms",
    });
    rows.push(Row {
        name: "release -> REMOVE_RUN_OK p50",
        measured: percentile(&mut back.release_ms, 50.0),
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
    let mut reset_ms = reset::reset_release_ms(reset_runs, false).await;
    rows.push(Row {
        name: "release -> REMOVE_RUN_OK, 10 ctr+vol p50",
        measured: percentile(&mut reset_ms, 50.0),
        target: 1500.0,
        unit: "ms",
    });
    let mut checked_ms = reset::reset_release_ms(reset_runs, true).await;
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
        "\nincluding config.sh (fake, bash): claim -> UD_REG_OK p50 {:.1} ms, p90 {:.1} ms; back-to-back p50 {:.1} ms; release -> REMOVE_RUN_OK p50 {:.1} ms",
        percentile(&mut gap.claim_total_ms(), 50.0),
        percentile(&mut gap.claim_total_ms(), 90.0),
        percentile(&mut back.claim_total_ms(), 50.0),
        percentile(&mut back.release_total_ms, 50.0)
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
    gap.print_breakdown("claim after an idle gap of 1.5-4.5 s, by stage");
    back.print_breakdown("claim back-to-back, by stage");
}

//! `scripts/demo`: one instance's life on the local stack, printed as a
//! timeline. Everything is real but GitHub and IMDS: the static agent
//! binary, moto's DynamoDB and EC2, the control plane's conditional writes.

use stack::agent::AgentSpec;
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

struct Timeline {
    start: Instant,
}

impl Timeline {
    fn at(&self, who: &str, what: &str) {
        println!(
            "{:>8.3} s  {who:<14} {what}",
            self.start.elapsed().as_secs_f64()
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let stack = Stack::start(StackOptions::default()).await;
    let id = stack.instance_id.clone();
    let cp = &stack.cp;
    println!(
        "local stack: moto {} (via proxy {}), IMDS {}, GitHub {}",
        stack.moto.endpoint, stack.proxy.endpoint, stack.imds.endpoint, stack.github.base
    );
    println!(
        "instance {id} in table {}, tags InitialRunId={INITIAL_RUN_ID} AllowSelfTermination=true\n",
        cp.table
    );
    let t = Timeline {
        start: Instant::now(),
    };
    t.at(
        "control-plane",
        &format!("launched instance, record state=created runId={INITIAL_RUN_ID}"),
    );
    let mut agent = stack.spawn_agent(&AgentSpec {
        pre_runner: Some("echo pre-runner: installing build tools\n".into()),
        ..Default::default()
    });
    t.at(
        "agent",
        "started (downloads, verifies and unpacks the runner)",
    );
    let wait = |state: &'static str, run: String| {
        let cp = cp.clone();
        let id = id.clone();
        async move {
            cp.wait_signal(&id, state, &run, WAIT)
                .await
                .unwrap_or_else(|last| {
                    panic!("no {state} for {run}: last {last:?}; see agent log")
                });
        }
    };
    wait("UD_OK", INITIAL_RUN_ID.into()).await;
    t.at("agent", &format!("signal UD_OK runId={INITIAL_RUN_ID}"));
    wait("UD_REG_OK", INITIAL_RUN_ID.into()).await;
    t.at(
        "agent",
        &format!("signal UD_REG_OK runId={INITIAL_RUN_ID} (runner registered, listening)"),
    );
    stack.queue_job(INITIAL_RUN_ID, 2);
    t.at("github", "job queued for the runner (2 s)");
    while stack.count_events("JOB_END") == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.at("runner", "job finished");
    cp.release(&id, INITIAL_RUN_ID, "created").await;
    t.at(
        "control-plane",
        "released the instance to the pool (runId=\"\")",
    );
    wait("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID.into()).await;
    t.at(
        "agent",
        "signal UD_REMOVE_REG_REMOVE_RUN_OK (deregistered, runner stopped)",
    );
    for n in 1..=2 {
        let run = format!("2000-{n}");
        cp.claim(&id, &run).await;
        let claimed = Instant::now();
        t.at(
            "control-plane",
            &format!("claimed idle instance for runId={run}"),
        );
        wait("UD_REG_OK", run.clone()).await;
        t.at(
            "agent",
            &format!(
                "signal UD_REG_OK runId={run} ({} ms after the claim)",
                claimed.elapsed().as_millis()
            ),
        );
        cp.release(&id, &run, "claimed").await;
        let released = Instant::now();
        t.at("control-plane", "released");
        wait("UD_REMOVE_REG_REMOVE_RUN_OK", run.clone()).await;
        t.at(
            "agent",
            &format!(
                "signal UD_REMOVE_REG_REMOVE_RUN_OK runId={run} ({} ms after the release)",
                released.elapsed().as_millis()
            ),
        );
    }
    let hb = cp
        .heartbeat(&id)
        .await
        .and_then(|h| h.get("updatedAt").and_then(|v| v.as_s().ok()).cloned());
    t.at(
        "control-plane",
        &format!("heartbeat updatedAt={}", hb.unwrap_or_default()),
    );
    stack.cp.set_threshold(&id, "2020-01-01T00:00:00Z").await;
    t.at(
        "control-plane",
        "threshold set in the past (instance expired)",
    );
    let started = Instant::now();
    while cp.instance_state(&id).await != "terminated" && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t.at(
        "ec2",
        &format!(
            "instance state: {} (self-termination, tag AllowSelfTermination=true)",
            cp.instance_state(&id).await
        ),
    );
    agent.kill(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    t.at("agent", &format!("SIGTERM -> exited {status:?}"));
    let counts = stack.proxy.counts();
    println!("\nAWS requests the agent made: {:?}", counts.operations);
    println!(
        "registrations by the fake runner: {}",
        stack.count_events("CONFIGURE ")
    );
    println!("agent log: {} (kept)", agent.log.display());
    let mut stack = stack;
    stack.dir.disable_cleanup(true);
    println!("stack dir kept at {}", stack.dir.path().display());
}

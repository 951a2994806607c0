//! Release -> signal with the reset doing real work: containers and
//! volumes in a real dockerd, and a dedicated runner user's home and
//! install checked.

use crate::measure::{logged, now_unix, unix_of};
use crate::WAIT;
use stack::agent::AgentSpec;
use stack::{Stack, StackOptions, INITIAL_RUN_ID};

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
pub async fn reset_release_ms(runs: usize, dedicated: bool) -> Vec<f64> {
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

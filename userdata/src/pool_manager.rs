//! The `pre-runner-script` for fleet-actions/ec2-runner-pool-manager.
//!
//! That control plane's user data is a bash agent (its
//! `src/refresh/manage-lt/userdata-v2/main-script.ts`): it makes a working
//! directory `actions-runner`, writes its helpers there (`heartbeat.sh`,
//! `self-termination.sh`, ...), embeds the operator's script as
//! `user-script.sh` with `cat <<'EOF'`, runs it as a child, signals UD_OK
//! (UD_FAILED and exit if it failed), then heartbeats, self-terminates and
//! registers runners in loops for ever, so cloud-init's final stage never
//! ends.
//!
//! This script installs and starts runner-agent, then ends the wrapper (its
//! parent) with SIGTERM. The wrapper does nothing while it waits for its
//! child, so none of its loops ever start: runner-agent alone heartbeats,
//! registers and signals (UD_OK included, for the InitialRunId), and
//! cloud-init gets its script back. Should anything fail before, the
//! wrapper signals UD_FAILED as it would for any pre-runner script.
//!
//! The wrapper takes about 13 KB of EC2's 16 KB of user data, so this
//! script is terse and written for one boot (cloud-init runs user data once
//! per instance); the `shell` format is the commented, idempotent one.

use crate::download::FETCH_AGENT;
use crate::input::{Plan, PRE_RUNNER_PATH};
use crate::shell::{self, quote, CONFIG_PATH, SUDOERS_PATH, UNIT_DROP_IN, UNIT_PATH};
use std::fmt::Write;

pub fn render(plan: &Plan) -> String {
    let mut s = format!(
        "#!/bin/bash\n# runner-userdata {} (pool-manager, os {}): starts runner-agent, ends the pool manager's agent.\nset -euo pipefail\nlog() {{ echo \"runner-userdata: $*\" >&2; }}\nfail() {{ log \"error: $*\"; exit 1; }}\n",
        env!("CARGO_PKG_VERSION"),
        plan.os.name()
    );
    // The wrapper exports the table it polls; a script rendered for another
    // pool fails here, and the wrapper reports UD_FAILED.
    let table = quote(&plan.table);
    let _ = writeln!(
        s,
        "[ -z \"${{TABLE_NAME:-}}\" ] || [ \"$TABLE_NAME\" = {table} ] || fail \"the pool manager's table is $TABLE_NAME, not \"{table}"
    );
    if plan.packages {
        shell::packages(&mut s, plan);
    }
    if let Some(user) = &plan.runner_user {
        let q = quote(user);
        let _ = writeln!(
            s,
            "id -u {q} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {q}"
        );
        if plan.hardened {
            // The docker socket is root: hardened mode keeps the user out.
            let _ = writeln!(
                s,
                "! id -nG {q} | tr ' ' '\\n' | grep -qx docker || gpasswd -d {q} docker >/dev/null"
            );
            // Rootless docker's slirp4netns opens it as the user (shell.rs).
            s.push_str("[ ! -c /dev/net/tun ] || chmod 666 /dev/net/tun\n");
        } else {
            let _ = writeln!(
                s,
                "! getent group docker >/dev/null || usermod -aG docker {q}"
            );
        }
        if plan.runner_user_sudo {
            heredoc(&mut s, SUDOERS_PATH, "440", &shell::sudoers_line(user));
        }
    }
    let _ = writeln!(s, "a={}", quote(&plan.agent_path));
    if plan.downloads.is_empty() {
        s.push_str(
            "[ -x \"$a\" ] || fail \"$a is missing: render with [agent.download] to fetch it\"\n",
        );
    } else {
        s.push_str("case $(uname -m) in\n");
        for (arch, d) in &plan.downloads {
            let _ = writeln!(
                s,
                "{arch}) u={} h={} p={} t={} ;;",
                quote(&d.url),
                d.sha256,
                d.proto(),
                d.tarball_flag()
            );
        }
        s.push_str("*) fail \"no agent download for $(uname -m)\" ;;\nesac\nw=$(mktemp -d)\n");
        s.push_str(FETCH_AGENT);
        s.push_str("install -D -m 755 \"$w/d\" \"$a\"\nrm -rf \"$w\"\n");
    }
    s.push_str("\"$a\" --version || fail \"$a does not run\"\n");
    heredoc(&mut s, CONFIG_PATH, "600", &plan.config_toml);
    if let Some(script) = &plan.pre_runner {
        heredoc(&mut s, PRE_RUNNER_PATH, "700", script);
    }
    s.push_str("f=\nfor x in {/etc,/usr/lib,/lib}/systemd/system/runner-agent.service; do\n    if [ -f \"$x\" ]; then f=$x && break; fi\ndone\nif [ -z \"$f\" ]; then\n");
    heredoc(
        &mut s,
        UNIT_PATH,
        "644",
        &crate::unit::unit_text(&plan.agent_path, false),
    );
    s.push_str("elif ! grep -qxF \"ExecStart=$a run\" \"$f\"; then\n");
    heredoc(
        &mut s,
        UNIT_DROP_IN,
        "644",
        &crate::unit::drop_in_text(&plan.agent_path),
    );
    s.push_str(TAKE_OVER);
    s
}

/// The wrapper is recognised as bash (its executable: the script's own
/// name is its `comm`) in a directory `actions-runner`
/// holding files every version of its user data (v2, 2025) writes. Under
/// another parent with the wrapper's `TABLE_NAME` two agents could end up
/// driving one runner: fail before starting anything. Start before ending
/// the wrapper, so that a failure to start is still its to report
/// (UD_FAILED). `--no-block`: cloud-init's final stage may be what the
/// start job waits for.
const TAKE_OVER: &str = r#"fi
w=$PPID
d=$(readlink "/proc/$w/cwd" || true)
e=$(readlink "/proc/$w/exe" || true)
if [ "${e##*/}" = bash ] && [ "${d##*/}" = actions-runner ] && [ -f "$d/user-script.sh" ] && [ -f "$d/heartbeat.sh" ]; then
    k=1
elif [ -n "${TABLE_NAME:-}" ]; then
    fail "TABLE_NAME is set but pid $w is not the pool manager's bash agent"
fi
systemctl daemon-reload
systemctl enable --now --no-block runner-agent.service
log "runner-agent started"
if [ -n "${k:-}" ]; then
    log "ending the pool manager's bash agent (pid $w)"
    kill -TERM "$w"
    sleep 1
    ! kill -0 "$w" 2>/dev/null || kill -KILL "$w"
fi
"#;

fn heredoc(s: &mut String, path: &str, mode: &str, content: &str) {
    let content = shell::with_final_newline(content);
    let delim = shell::delimiter(&content);
    let _ = write!(
        s,
        "install -D -m {mode} /dev/stdin {path} <<'{delim}'\n{content}{delim}\n"
    );
}

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

use crate::input::{Plan, PRE_RUNNER_PATH};
use crate::shell::{self, quote, CONFIG_PATH, UNIT_PATH};
use std::fmt::Write;

pub fn render(plan: &Plan) -> String {
    let mut s = format!(
        "#!/bin/bash\n# runner-agent for fleet-actions/ec2-runner-pool-manager, rendered by runner-userdata {} (os {}).\n# Installs and starts runner-agent, then ends the pool manager's bash agent (our\n# parent) so that runner-agent alone heartbeats, registers and signals.\nset -euo pipefail\nlog() {{ echo \"runner-userdata: $*\" >&2; }}\nfail() {{\n    log \"error: $*\"\n    exit 1\n}}\n",
        env!("CARGO_PKG_VERSION"),
        plan.os.name()
    );
    if plan.packages {
        shell::packages(&mut s, plan);
    }
    if let Some(user) = &plan.runner_user {
        let q = quote(user);
        let _ = writeln!(
            s,
            "id -u {q} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {q}\n! getent group docker >/dev/null || usermod -aG docker {q}"
        );
        if plan.runner_user_sudo {
            heredoc(
                &mut s,
                "/etc/sudoers.d/90-runner-agent",
                "440",
                &format!("{user} ALL=(ALL) NOPASSWD:ALL"),
            );
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
            let proto = if d.url.starts_with("https://") {
                "https"
            } else {
                "http"
            };
            let _ = writeln!(s, "{arch}) u={} h={} p={proto} ;;", quote(&d.url), d.sha256);
        }
        s.push_str(
            r#"*) fail "no agent download for $(uname -m)" ;;
esac
w=$(mktemp -d)
curl -fsSL --proto "=$p" --proto-redir "=$p" --retry 5 -o "$w/d" "$u" || fail "downloading $u"
echo "$h  $w/d" | sha256sum -c --quiet || fail "$u: SHA-256 differs from $h; not installed"
case $u in *.tar.gz | *.tgz)
    tar -xzf "$w/d" -C "$w" --no-same-owner --wildcards --strip-components=1 '*/runner-agent'
    mv "$w/runner-agent" "$w/d"
    ;;
esac
install -D -m 755 "$w/d" "$a"
rm -rf "$w"
"#,
        );
    }
    heredoc(&mut s, CONFIG_PATH, "600", &plan.config_toml);
    if let Some(script) = &plan.pre_runner {
        heredoc(&mut s, PRE_RUNNER_PATH, "700", script);
    }
    s.push_str("f=\nfor x in {/etc,/usr/lib,/lib}/systemd/system/runner-agent.service; do\n    if [ -f \"$x\" ]; then f=$x && break; fi\ndone\nif [ -z \"$f\" ]; then\n");
    heredoc(
        &mut s,
        UNIT_PATH,
        "644",
        &shell::unit_text(&plan.agent_path, false),
    );
    s.push_str("elif ! grep -qx \"ExecStart=$a run\" \"$f\"; then\n");
    heredoc(
        &mut s,
        "/etc/systemd/system/runner-agent.service.d/10-runner-userdata.conf",
        "644",
        &format!("[Service]\nExecStart=\nExecStart={} run", plan.agent_path),
    );
    s.push_str(TAKE_OVER);
    s
}

/// The wrapper's working directory holds these in every version of its
/// user data (v2, 2025).
const TAKE_OVER: &str = r#"fi
w=$PPID
d=$(readlink "/proc/$w/cwd" || true)
if [ "${d##*/}" = actions-runner ] && [ -f "$d/user-script.sh" ] && [ -f "$d/heartbeat.sh" ]; then
    log "ending the pool manager's bash agent (pid $w): runner-agent takes over"
    kill -TERM "$w"
    sleep 1
    kill -KILL "$w" 2>/dev/null || true
else
    log "parent $w is not the pool manager's bash agent; leaving it be"
fi
systemctl daemon-reload
# --no-block: cloud-init's final stage may be what the start job waits for.
systemctl enable --now --no-block runner-agent.service
log "runner-agent started"
"#;

fn heredoc(s: &mut String, path: &str, mode: &str, content: &str) {
    let content = shell::with_final_newline(content);
    let delim = shell::delimiter(&content);
    let _ = write!(
        s,
        "install -D -m {mode} /dev/stdin {path} <<'{delim}'\n{content}{delim}\n"
    );
}

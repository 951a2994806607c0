#!/bin/bash
# runner-agent for fleet-actions/ec2-runner-pool-manager, rendered by runner-userdata 0.1.0 (os ubuntu-24.04).
# Installs and starts runner-agent, then ends the pool manager's bash agent (our
# parent) so that runner-agent alone heartbeats, registers and signals.
set -euo pipefail
log() { echo "runner-userdata: $*" >&2; }
fail() {
    log "error: $*"
    exit 1
}
a='/usr/local/bin/runner-agent'
case $(uname -m) in
x86_64) u='https://github.com/runner-agent/runner-agent/releases/download/v0.1.0/runner-agent-0.1.0-x86_64-linux-musl.tar.gz' h=5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef p=https ;;
*) fail "no agent download for $(uname -m)" ;;
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
install -D -m 600 /dev/stdin /etc/runner-agent/config.toml <<'RUNNER_USERDATA_EOF'
# Written by runner-userdata; keys in docs/config.md.
table = "acme-widgets-pool"

[github]
url = "https://github.com/acme/widgets"

[runner]
allow_run_as_root = true
version = "2.331.0"
RUNNER_USERDATA_EOF
f=
for x in {/etc,/usr/lib,/lib}/systemd/system/runner-agent.service; do
    if [ -f "$x" ]; then f=$x && break; fi
done
if [ -z "$f" ]; then
install -D -m 644 /dev/stdin /etc/systemd/system/runner-agent.service <<'RUNNER_USERDATA_EOF'
[Unit]
Description=GitHub Actions runner pool agent
Wants=network-online.target
After=network-online.target
After=docker.service
[Service]
Type=notify
ExecStart=/usr/local/bin/runner-agent run
WatchdogSec=60
Restart=on-failure
RestartSec=5
TimeoutStopSec=60
KillMode=mixed
StateDirectory=runner-agent
ConfigurationDirectory=runner-agent
OOMPolicy=continue
TasksMax=infinity
RestrictRealtime=yes
LockPersonality=yes
[Install]
WantedBy=multi-user.target
RUNNER_USERDATA_EOF
elif ! grep -qx "ExecStart=$a run" "$f"; then
install -D -m 644 /dev/stdin /etc/systemd/system/runner-agent.service.d/10-runner-userdata.conf <<'RUNNER_USERDATA_EOF'
[Service]
ExecStart=
ExecStart=/usr/local/bin/runner-agent run
RUNNER_USERDATA_EOF
fi
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

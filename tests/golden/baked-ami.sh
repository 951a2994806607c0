#!/bin/bash
# runner-agent bootstrap, rendered by runner-userdata 0.1.0 (shell, os al2023).
# Re-render rather than edit. Running it again changes nothing that is
# already in place. Its log lines start with "runner-userdata:".
set -euo pipefail
umask 022
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'runner-userdata: %s\n' "$*" >&2; }
fail() {
    log "error: $*"
    exit 1
}

# put_file PATH MODE < CONTENT: replaces PATH (atomically) only when its
# content or mode differ; sets put_file_changed to 1 or 0.
put_file() {
    local path=$1 mode=$2 tmp
    mkdir -p "${path%/*}" || fail "cannot create ${path%/*}"
    tmp=$(mktemp "${path%/*}/.runner-userdata.XXXXXX") || fail "cannot write in ${path%/*}"
    cat >"$tmp"
    if [ -f "$path" ] && cmp -s "$tmp" "$path" && [ "$(stat -c %a "$path")" = "$mode" ]; then
        rm -f "$tmp"
        put_file_changed=0
        return 0
    fi
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path" || fail "cannot replace $path"
    log "wrote $path"
    put_file_changed=1
}

# remove_file PATH: removes what an earlier run wrote and this one does not;
# sets put_file_changed likewise.
remove_file() {
    put_file_changed=0
    if [ -e "$1" ]; then
        rm -f "$1" || fail "cannot remove $1"
        log "removed $1"
        put_file_changed=1
    fi
}

config_changed=0
agent_changed=0
unit_changed=0

# The runner's user; the agent needs it to exist when it starts.
if ! id -u 'runner' >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash 'runner'
    log "created user "'runner'
fi
if getent group docker >/dev/null && ! id -nG 'runner' | tr ' ' '\n' | grep -qx docker; then
    usermod -aG docker 'runner'
    log "added "'runner'" to group docker"
fi
remove_file /etc/sudoers.d/90-runner-agent
[ "$put_file_changed" = 0 ] || config_changed=1

agent='/usr/bin/runner-agent'
# The agent comes with the image (Packer recipe or package).
[ -x "$agent" ] || fail "$agent is missing: this user data expects an image with runner-agent installed; render with [agent.download] to fetch it instead"
version=$("$agent" --version) || fail "$agent does not run on $(uname -m)"
log "using $version at $agent"

# The agent's configuration (secrets never go here: the registration token
# comes from DynamoDB at claim time).
put_file /etc/runner-agent/config.toml 600 <<'RUNNER_USERDATA_EOF'
# Written by runner-userdata; keys in docs/config.md.
table = "acme-widgets-pool"

[agent]
pre_runner_script = "/etc/runner-agent/pre-runner.sh"

[github]
url = "https://github.com/acme/widgets"

[runner]
user = "runner"
version = "2.331.0"
RUNNER_USERDATA_EOF
[ "$put_file_changed" = 0 ] || config_changed=1

# The operator's script: the agent runs it once, at first boot, and
# signals UD_OK or UD_FAILED with its outcome.
put_file /etc/runner-agent/pre-runner.sh 700 <<'RUNNER_USERDATA_EOF'
#!/bin/bash
# The operator's own preparation: runs once per instance, before the first
# registration; its exit status becomes UD_OK or UD_FAILED.
set -euo pipefail
mkdir -p /mnt/cache
echo "instance ready: $(uname -m)"
RUNNER_USERDATA_EOF
[ "$put_file_changed" = 0 ] || config_changed=1

# The unit: ours when there is none (or the one we wrote before); a
# packaged unit stays, with a drop-in if the agent lives elsewhere.
unit_file=
for dir in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    if [ -f "$dir/runner-agent.service" ]; then
        unit_file=$dir/runner-agent.service
        break
    fi
done
if [ -z "$unit_file" ] || { [ "$unit_file" = /etc/systemd/system/runner-agent.service ] && head -n 1 "$unit_file" | grep -qxF '# Written by runner-userdata: the agent'\''s unit, with ExecStart at the agent'\''s path.'; }; then
put_file /etc/systemd/system/runner-agent.service 644 <<'RUNNER_USERDATA_EOF'
# Written by runner-userdata: the agent's unit, with ExecStart at the agent's path.
[Unit]
Description=GitHub Actions runner pool agent
Wants=network-online.target
After=network-online.target
After=docker.service
After=nftables.service
[Service]
Type=notify
ExecStart=/usr/bin/runner-agent run
WatchdogSec=60
Restart=on-failure
RestartSec=5
TimeoutStopSec=60
KillMode=mixed
Delegate=yes
StateDirectory=runner-agent
ConfigurationDirectory=runner-agent
OOMPolicy=continue
TasksMax=infinity
RestrictRealtime=yes
LockPersonality=yes
[Install]
WantedBy=multi-user.target
RUNNER_USERDATA_EOF
[ "$put_file_changed" = 0 ] || unit_changed=1
remove_file /etc/systemd/system/runner-agent.service.d/10-runner-userdata.conf
[ "$put_file_changed" = 0 ] || unit_changed=1
elif grep -qxF "ExecStart=$agent run" "$unit_file"; then
remove_file /etc/systemd/system/runner-agent.service.d/10-runner-userdata.conf
[ "$put_file_changed" = 0 ] || unit_changed=1
else
put_file /etc/systemd/system/runner-agent.service.d/10-runner-userdata.conf 644 <<'RUNNER_USERDATA_EOF'
[Service]
ExecStart=
ExecStart=/usr/bin/runner-agent run
RUNNER_USERDATA_EOF
[ "$put_file_changed" = 0 ] || unit_changed=1
fi

if [ "$unit_changed" = 1 ]; then
    systemctl daemon-reload
fi
systemctl enable runner-agent.service
if [ "$config_changed$agent_changed$unit_changed" != 000 ]; then
    systemctl restart --no-block runner-agent.service
    log "runner-agent (re)started; follow it with: journalctl -u runner-agent -f"
else
    systemctl start --no-block runner-agent.service
    log "nothing changed; runner-agent is started if it was not"
fi

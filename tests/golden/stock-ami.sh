#!/bin/bash
# runner-agent bootstrap, rendered by runner-userdata 0.1.0 (shell, os auto).
# Re-render rather than edit. Running it again changes nothing that is
# already in place. Its log lines start with "runner-userdata:".
# RUNNER_USERDATA_SKIP_PACKAGES=1 skips (and logs skipping) the package installation.
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

# Packages the runner and its jobs need.
os_release=$(
    # shellcheck source=/dev/null
    . /etc/os-release && printf '%s-%s' "${ID:-}" "${VERSION_ID:-}"
)
case "$os_release" in
    amzn-2023) os=al2023 ;;
    ubuntu-22.04) os=ubuntu-22.04 ;;
    ubuntu-24.04) os=ubuntu-24.04 ;;
    debian-12) os=debian-12 ;;
    *) fail "unsupported OS $os_release: supported are al2023, ubuntu-22.04, ubuntu-24.04, debian-12; for another, install the packages in the image and render with packages = false" ;;
esac
missing_packages() {
    local p
    for p in "$@"; do
        case "$os" in
            al2023) rpm -q --whatprovides "$p" >/dev/null 2>&1 || printf '%s\n' "$p" ;;
            *) dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || printf '%s\n' "$p" ;;
        esac
    done
}
# An image with Docker's own packages (docker-ce) has docker already: its
# docker.io would conflict with them.
skip_docker() {
    local p
    for p in "$@"; do
        case "$p" in
            docker | docker.io) command -v docker >/dev/null || printf '%s\n' "$p" ;;
            *) printf '%s\n' "$p" ;;
        esac
    done
}
case "$os" in
    al2023) packages=(docker git gzip krb5-libs libicu openssl-libs shadow-utils tar zlib jq unzip) ;;
    ubuntu-22.04) packages=(ca-certificates curl docker.io git gzip libicu70 libkrb5-3 libssl3 tar zlib1g jq unzip) ;;
    ubuntu-24.04) packages=(ca-certificates curl docker.io git gzip libicu74 libkrb5-3 libssl3t64 tar zlib1g jq unzip) ;;
    debian-12) packages=(ca-certificates curl docker.io git gzip libicu72 libkrb5-3 libssl3 tar zlib1g jq unzip) ;;
esac
if [ "${RUNNER_USERDATA_SKIP_PACKAGES:-0}" = 1 ]; then
    log "RUNNER_USERDATA_SKIP_PACKAGES=1: not installing ${packages[*]}"
else
    mapfile -t wanted < <(skip_docker "${packages[@]}")
    mapfile -t missing < <(missing_packages "${wanted[@]}")
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages already installed"
    else
        log "installing ${missing[*]}"
        case "$os" in
            al2023) dnf install -y -q --allowerasing --setopt=install_weak_deps=False "${missing[@]}" ;;
            ubuntu-22.04 | ubuntu-24.04 | debian-12)
                export DEBIAN_FRONTEND=noninteractive
                tries=0
                until apt-get -o DPkg::Lock::Timeout=600 update -qq; do
                    tries=$((tries + 1))
                    [ "$tries" -lt 30 ] || fail "apt-get update kept failing"
                    sleep 10
                done
                apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
                ;;
        esac
    fi
    # Jobs expect a running docker; --no-block: this may run inside
    # cloud-init's final stage, which systemd jobs may be ordered after.
    systemctl enable --now --no-block docker.service
fi

# The runner's user; the agent needs it to exist when it starts.
if ! id -u 'runner' >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash 'runner'
    log "created user "'runner'
fi
if getent group docker >/dev/null && ! id -nG 'runner' | tr ' ' '\n' | grep -qx docker; then
    usermod -aG docker 'runner'
    log "added "'runner'" to group docker"
fi
# Passwordless sudo, as on GitHub's hosted runners.
put_file /etc/sudoers.d/90-runner-agent 440 <<'RUNNER_USERDATA_EOF'
runner ALL=(ALL) NOPASSWD:ALL
RUNNER_USERDATA_EOF
[ "$put_file_changed" = 0 ] || config_changed=1

agent='/usr/local/bin/runner-agent'
# The agent is downloaded, and used only if its SHA-256 matches.
case "$(uname -m)" in
    aarch64) agent_url='https://github.com/runner-agent/runner-agent/releases/download/v0.1.0/runner-agent-0.1.0-aarch64-linux-musl.tar.gz'; agent_sha256=3a6eb0790f39ac87c94f3856b2dd2c5d110e6811602261a9a923d3bb23adc8b7; agent_proto=https; agent_tarball=1 ;;
    x86_64) agent_url='https://github.com/runner-agent/runner-agent/releases/download/v0.1.0/runner-agent-0.1.0-x86_64-linux-musl.tar.gz'; agent_sha256=5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef; agent_proto=https; agent_tarball=1 ;;
    *) fail "no agent download for $(uname -m) in this user data (have: aarch64, x86_64)" ;;
esac
stamp=/var/lib/runner-userdata/agent.sha256
installed_sha256() { sha256sum <"$agent" | cut -d ' ' -f 1; }
if [ -x "$agent" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$agent_sha256 $(installed_sha256)" ]; then
    log "agent already installed from $agent_url"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    log "downloading $agent_url"
    # The download block the pool-manager script shares reads short names.
    u=$agent_url h=$agent_sha256 p=$agent_proto t=$agent_tarball w=$work
    curl -fsSL --proto "=$p" --proto-redir "=$p" --connect-timeout 10 -m 300 --retry 5 --retry-all-errors -o "$w/d" "$u" || fail "downloading $u"
    x=$(sha256sum <"$w/d" | cut -c-64)
    [ "$x" = "$h" ] || fail "SHA-256 differs: SHA-256 $x, expected $h; not installed"
    if [ "$t" = 1 ]; then
        tar -xzf "$w/d" -C "$w" --no-same-owner --wildcards --strip-components=1 '*/runner-agent' || fail "no */runner-agent in $u"
        mv "$w/runner-agent" "$w/d"
    fi
    new_agent=$work/d
    chmod 0755 "$new_agent"
    "$new_agent" --version >/dev/null || fail "the downloaded agent does not run on $(uname -m)"
    mkdir -p "${agent%/*}" /var/lib/runner-userdata
    install -m 0755 "$new_agent" "$agent.new"
    mv -f "$agent.new" "$agent"
    printf '%s %s\n' "$agent_sha256" "$(installed_sha256)" >"$stamp"
    agent_changed=1
    log "installed $("$agent" --version) at $agent"
fi

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
extra_labels = ["linux"]
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
ExecStart=/usr/local/bin/runner-agent run
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
ExecStart=/usr/local/bin/runner-agent run
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

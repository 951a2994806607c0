#!/usr/bin/env bash
# Packer provisioner of runner-agent.pkr.hcl, run as root on the build
# instance (scripts/check-dist runs it on the CI host too). Installs a
# release tarball, verified first, the way an image needs it: the
# binaries in /usr/bin, the unit in /etc/systemd/system, not enabled
# (first-boot user data writes the config and enables it). Optionally
# bakes actions/runner in with `runner-agent install`.
#
# Environment (the template's variables):
#   AGENT_URL, AGENT_SHA256   the tarball (http(s) or file URL) and its digest
#   PACKAGES                  OS packages to install, space-separated
#   RUNNER_VERSION            actions/runner to bake in; empty: none
#   RUNNER_SHA256             its tarball's digest; empty: the agent's table
#   RUNNER_USER               owner of the baked runner, created if missing;
#                             empty: root
#   RUNNER_INSTALL_DIR, RUNNER_RELEASE_BASE_URL  runner.* for the bake
set -euo pipefail
fail() { echo "provision: $*" >&2; exit 1; }
log() { echo "provision: $*"; }

[ "$(id -u)" -eq 0 ] || fail "must run as root"
: "${AGENT_URL:?}" "${AGENT_SHA256:?}"
[[ $AGENT_SHA256 =~ ^[0-9a-f]{64}$ ]] || fail "AGENT_SHA256 is not 64 lower-case hex digits"
RUNNER_VERSION=${RUNNER_VERSION:-}
RUNNER_SHA256=${RUNNER_SHA256:-}
RUNNER_USER=${RUNNER_USER:-}
RUNNER_INSTALL_DIR=${RUNNER_INSTALL_DIR:-/opt/actions-runner}
RUNNER_RELEASE_BASE_URL=${RUNNER_RELEASE_BASE_URL:-https://github.com/actions/runner/releases/download}
# These go into a TOML file below: no quotes or backslashes get that far.
if [ -n "$RUNNER_VERSION" ]; then
    [[ $RUNNER_VERSION =~ ^[0-9]{1,6}\.[0-9]{1,6}\.[0-9]{1,6}$ ]] || fail "RUNNER_VERSION $RUNNER_VERSION is not like 2.331.0"
    [[ -z $RUNNER_SHA256 || $RUNNER_SHA256 =~ ^[0-9a-f]{64}$ ]] || fail "RUNNER_SHA256 is not 64 lower-case hex digits"
    [[ -z $RUNNER_USER || $RUNNER_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || fail "RUNNER_USER $RUNNER_USER is not a user name"
    [[ $RUNNER_INSTALL_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || fail "RUNNER_INSTALL_DIR $RUNNER_INSTALL_DIR is not a plain absolute path"
    [[ $RUNNER_RELEASE_BASE_URL =~ ^https?://[A-Za-z0-9._~:/?#@!\&+,\;=%-]+$ ]] || fail "RUNNER_RELEASE_BASE_URL is not a plain http(s) URL"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ -n "${PACKAGES:-}" ]; then
    read -ra packages <<<"$PACKAGES"
    log "installing ${packages[*]}"
    if command -v dnf >/dev/null; then
        dnf install -y -q "${packages[@]}"
    elif command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${packages[@]}"
    else
        fail "neither dnf nor apt-get: cannot install ${packages[*]}"
    fi
fi

# Nothing is unpacked before its digest matches.
log "downloading $AGENT_URL"
curl --fail --silent --show-error --location --retry 5 --output "$work/agent.tar.gz" "$AGENT_URL"
if ! echo "$AGENT_SHA256  $work/agent.tar.gz" | sha256sum --check --strict --quiet; then
    fail "$AGENT_URL: SHA-256 $(sha256sum <"$work/agent.tar.gz" | cut -d ' ' -f 1), expected $AGENT_SHA256"
fi
mkdir "$work/release"
tar -xzf "$work/agent.tar.gz" -C "$work/release" --no-same-owner --strip-components=1
release=$work/release
# Of the wrong arch, it fails here rather than at first boot.
"$release/runner-agent" --version >/dev/null || fail "the tarball's runner-agent does not run on $(uname -m)"

install -m 0755 "$release/runner-agent" "$release/runner-userdata" /usr/bin/
install -m 0644 "$release/runner-agent.service" /etc/systemd/system/runner-agent.service
install -d -m 0755 /etc/runner-agent
install -d -m 0700 /var/lib/runner-agent
install -d -m 0755 /usr/share/doc/runner-agent/docs
install -m 0644 "$release/README.md" "$release/LICENSE" "$release/config.example.toml" /usr/share/doc/runner-agent/
install -m 0644 "$release"/docs/*.md /usr/share/doc/runner-agent/docs/
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
log "installed $(/usr/bin/runner-agent --version); runner-agent.service is not enabled"

if [ -n "$RUNNER_VERSION" ]; then
    if [ -n "$RUNNER_USER" ] && ! id -u "$RUNNER_USER" >/dev/null 2>&1; then
        useradd --create-home --shell /bin/bash "$RUNNER_USER"
        log "created user $RUNNER_USER"
    fi
    # `install` needs a valid config, but reads only [runner]: the table
    # and repository are placeholders. The instance gets its own config
    # from its user data.
    {
        echo 'table = "image-bake"'
        echo '[github]'
        echo 'url = "https://github.com/image-bake/image-bake"'
        echo '[runner]'
        echo "version = \"$RUNNER_VERSION\""
        echo "install_dir = \"$RUNNER_INSTALL_DIR\""
        echo "release_base_url = \"$RUNNER_RELEASE_BASE_URL\""
        [ -z "$RUNNER_SHA256" ] || echo "sha256 = \"$RUNNER_SHA256\""
        [ -z "$RUNNER_USER" ] || echo "user = \"$RUNNER_USER\""
    } >"$work/bake.toml"
    /usr/bin/runner-agent install --config "$work/bake.toml"
    # The marker the agent trusts at boot instead of downloading again.
    [ "$(cat "$RUNNER_INSTALL_DIR/.runner-agent-version")" = "$RUNNER_VERSION" ] ||
        fail "$RUNNER_INSTALL_DIR/.runner-agent-version does not say $RUNNER_VERSION"
    log "baked actions/runner $RUNNER_VERSION into $RUNNER_INSTALL_DIR${RUNNER_USER:+, owned by $RUNNER_USER}"
fi

# Sourced by the scripts: installs what the build and the test stack need,
# once, and exports where things are. Safe to run again.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/runner-agent/target}
MUSL_TARGET=x86_64-unknown-linux-musl
export RA_AGENT_BIN=$CARGO_TARGET_DIR/$MUSL_TARGET/release/runner-agent
export RA_USERDATA_BIN=$CARGO_TARGET_DIR/$MUSL_TARGET/release/runner-userdata
VENV=$ROOT/.venv

need_debs=()
command -v musl-gcc >/dev/null || need_debs+=(musl-tools)
command -v shellcheck >/dev/null || need_debs+=(shellcheck)
command -v systemd-analyze >/dev/null || need_debs+=(systemd)
# runner-userdata's cloud-config is checked by cloud-init's own schema.
command -v cloud-init >/dev/null || need_debs+=(cloud-init)
# The reset's tests run a real dockerd (own data root and socket, no
# bridge, no iptables) and import an image made from a static busybox.
command -v dockerd >/dev/null || need_debs+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || need_debs+=(busybox-static)
# The hardened-mode tests: nft in a private network namespace (unshare,
# ip), clients as the runner user (setpriv), check's sudo probe.
command -v nft >/dev/null || need_debs+=(nftables)
command -v ip >/dev/null || need_debs+=(iproute2)
{ command -v unshare && command -v setpriv; } >/dev/null || need_debs+=(util-linux)
command -v sudo >/dev/null || need_debs+=(sudo)
# Hardened mode's rootless Docker for the runner user (tests/tests/
# rootless.rs): docker.io's dockerd-rootless.sh runs rootlesskit, which
# needs slirp4netns and uidmap's setuid newuidmap/newgidmap.
command -v rootlesskit >/dev/null || need_debs+=(rootlesskit)
command -v slirp4netns >/dev/null || need_debs+=(slirp4netns)
command -v newuidmap >/dev/null || need_debs+=(uidmap)
# Hostile jobs persist through the real crontab and at (their spools are
# what the reset clears); ipcmk (util-linux) makes their SysV objects.
command -v crontab >/dev/null || need_debs+=(cron)
command -v at >/dev/null || need_debs+=(at)
if [ ${#need_debs[@]} -gt 0 ]; then
    echo "setup: installing ${need_debs[*]}" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_debs[@]}" >/dev/null
fi
# slirp4netns opens /dev/net/tun as the runner user: Debian's udev rule
# makes it 0666, but CI containers often have it 0600 (root only), and
# the rootless tests would fail to start their daemon.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO chmod 666 /dev/net/tun
fi
rustup target list --installed | grep -qx "$MUSL_TARGET" || rustup target add "$MUSL_TARGET"
if [ ! -x "$VENV/bin/moto_server" ]; then
    echo "setup: creating $VENV with moto[server]" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q 'moto[server]>=5,<6'
fi
export RA_MOTO_SERVER=$VENV/bin/moto_server
# The job credentials tests run the AWS CLI as a job would; v1 from PyPI
# (1.46 carries its own botocore, so moto's is left as it is), pinned.
if [ ! -x "$VENV/bin/aws" ]; then
    echo "setup: installing the AWS CLI into $VENV" >&2
    "$VENV/bin/pip" install -q 'awscli==1.46.3'
fi
export RA_AWS_CLI=$VENV/bin/aws

# One build serves everything: the shipped static binaries, the demo and
# bench drivers and the tests are all built with these flags and
# `--workspace`, so cargo resolves one feature set and compiles the AWS
# crates once (default features off; a cold build takes ~11 min and ~8 GB
# RAM on 2 cores). A `-p` selection or another profile would resolve other
# features or another profile and build them all again.
CARGO_BUILD_FLAGS=(--release --locked --target "$MUSL_TARGET" --workspace)
export RA_BIN_DIR=$CARGO_TARGET_DIR/$MUSL_TARGET/release
# The static runner-agent and runner-userdata.
build_agent() {
    cargo build "${CARGO_BUILD_FLAGS[@]}" --bin runner-agent --bin runner-userdata
}

# Those and one of the stack's drivers (ra-demo, ra-bench): each binary is
# a release link of its own, so only the one that runs is built.
build_with_driver() {
    cargo build "${CARGO_BUILD_FLAGS[@]}" --bin runner-agent --bin runner-userdata --bin "$1"
}

# Starts one moto server for the whole run and exports its endpoint; it
# stops when the calling script exits.
start_moto() {
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$RA_MOTO_SERVER" -H 127.0.0.1 -p "$port" >"$CARGO_TARGET_DIR/moto.log" 2>&1 &
    MOTO_PID=$!
    trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            export RA_MOTO_ENDPOINT=http://127.0.0.1:$port
            return 0
        fi
        sleep 0.1
    done
    echo "moto_server did not start; see $CARGO_TARGET_DIR/moto.log" >&2
    return 1
}

# The tests, on the same build (see CARGO_BUILD_FLAGS); arguments go to
# cargo test.
run_tests() {
    cargo test "${CARGO_BUILD_FLAGS[@]}" "$@"
}

# The aarch64 (Graviton) static binary, cross-compiled with cargo-zigbuild:
# zig is the C cross-compiler aws-lc-sys needs. Both come from PyPI into
# the venv.
AARCH64_TARGET=aarch64-unknown-linux-musl
export RA_AGENT_BIN_AARCH64=$CARGO_TARGET_DIR/$AARCH64_TARGET/release/runner-agent
build_agent_aarch64() {
    rustup target list --installed | grep -qx "$AARCH64_TARGET" || rustup target add "$AARCH64_TARGET"
    [ -x "$VENV/bin/cargo-zigbuild" ] || "$VENV/bin/pip" install -q 'ziglang>=0.13' 'cargo-zigbuild>=0.19'
    PATH=$VENV/bin:$PATH cargo zigbuild --release --locked --target "$AARCH64_TARGET" -p runner-agent -p runner-userdata
}

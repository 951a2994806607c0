//! The bash bootstrap every format is built from: packages, the runner's
//! user, the agent binary (found or downloaded and verified), its config and
//! unit, then `systemctl enable` + start. Each step checks before it
//! changes anything, so a second run changes nothing.

use crate::download::FETCH_AGENT;
use crate::input::{Plan, PRE_RUNNER_PATH};
use crate::os::{OsChoice, OsFamily, PackageManager};

use crate::unit::{drop_in_text, unit_text, UNIT_MARKER};
use std::fmt::Write;

pub use runner_agent_common::config::DEFAULT_CONFIG_PATH as CONFIG_PATH;
pub const UNIT_PATH: &str = "/etc/systemd/system/runner-agent.service";
pub const SUDOERS_PATH: &str = "/etc/sudoers.d/90-runner-agent";
pub const UNIT_DROP_IN: &str = "/etc/systemd/system/runner-agent.service.d/10-runner-userdata.conf";
/// Runtime switch for tests and for images that already carry every
/// package; the script says so in its log when it is set.
pub const SKIP_PACKAGES_ENV: &str = "RUNNER_USERDATA_SKIP_PACKAGES";

/// What the script leaves to someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Everything (`shell`, `mime`).
    Full,
    /// cloud-config's write_files already wrote the config and the
    /// pre-runner script, and its `packages` module installed the packages
    /// of a fixed OS.
    CloudConfigRuncmd,
}

pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A quoted here-document delimiter that no line of `content` equals.
pub(crate) fn delimiter(content: &str) -> String {
    let mut name = String::from("RUNNER_USERDATA_EOF");
    let mut n = 1;
    while content.lines().any(|l| l == name) {
        n += 1;
        name = format!("RUNNER_USERDATA_EOF_{n}");
    }
    name
}

/// Content that ends in exactly one newline, as a heredoc delivers it.
pub fn with_final_newline(content: &str) -> String {
    let mut s = content.to_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// `put_file PATH MODE` fed by a here-document; sets `$var` to 1 when the
/// file changed.
fn put_file(out: &mut String, path: &str, mode: &str, content: &str, var: &str) {
    let content = with_final_newline(content);
    let delim = delimiter(&content);
    let _ = write!(
        out,
        "put_file {path} {mode} <<'{delim}'\n{content}{delim}\n[ \"$put_file_changed\" = 0 ] || {var}=1\n"
    );
}

const PRELUDE: &str = r#"set -euo pipefail
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
"#;

pub fn render(plan: &Plan, variant: Variant) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(
        s,
        "# runner-agent bootstrap, rendered by runner-userdata {} ({}, os {}).",
        env!("CARGO_PKG_VERSION"),
        match variant {
            // Also the mime format's part: the same bytes as `shell`.
            Variant::Full => "shell",
            Variant::CloudConfigRuncmd => "cloud-config runcmd",
        },
        plan.os.name()
    );
    s.push_str(
        "# Re-render rather than edit. Running it again changes nothing that is\n\
         # already in place. Its log lines start with \"runner-userdata:\".\n",
    );
    let packages_here = plan.packages
        && !(variant == Variant::CloudConfigRuncmd && matches!(plan.os, OsChoice::Fixed(_)));
    if packages_here {
        let _ = writeln!(
            s,
            "# {SKIP_PACKAGES_ENV}=1 skips (and logs skipping) the package installation."
        );
    }
    s.push_str(PRELUDE);
    if packages_here {
        packages(&mut s, plan);
    } else if plan.packages {
        // cloud-init's packages module installed docker; dnf does not
        // enable what it installs (apt does).
        s.push_str("\n# Jobs expect a running docker (cloud-init installed it).\nsystemctl enable --now --no-block docker.service\n");
    }
    if let Some(user) = &plan.runner_user {
        runner_user(&mut s, plan, user);
    }
    agent_binary(&mut s, plan);
    if variant != Variant::CloudConfigRuncmd {
        s.push_str("\n# The agent's configuration (secrets never go here: the registration token\n# comes from DynamoDB at claim time).\n");
        put_file(
            &mut s,
            CONFIG_PATH,
            "600",
            &plan.config_toml,
            "config_changed",
        );
        if let Some(script) = &plan.pre_runner {
            s.push_str("\n# The operator's script: the agent runs it once, at first boot, and\n# signals UD_OK or UD_FAILED with its outcome.\n");
            put_file(&mut s, PRE_RUNNER_PATH, "700", script, "config_changed");
        }
    }
    unit(&mut s, plan);
    s.push_str(START);
    s
}

pub(crate) fn packages(s: &mut String, plan: &Plan) {
    s.push_str("\n# Packages the runner and its jobs need.\n");
    match plan.os {
        OsChoice::Auto => {
            s.push_str("os_release=$(\n    # shellcheck source=/dev/null\n    . /etc/os-release && printf '%s-%s' \"${ID:-}\" \"${VERSION_ID:-}\"\n)\ncase \"$os_release\" in\n");
            for family in OsFamily::ALL {
                let (id, version) = family.os_release();
                let _ = writeln!(s, "    {id}-{version}) os={} ;;", family.name());
            }
            let names: Vec<&str> = OsFamily::ALL.iter().map(|f| f.name()).collect();
            let _ = writeln!(
                s,
                "    *) fail \"unsupported OS $os_release: supported are {}; for another, install the packages in the image and render with packages = false\" ;;\nesac",
                names.join(", ")
            );
        }
        OsChoice::Fixed(family) => {
            let (id, version) = family.os_release();
            let _ = writeln!(s, "os={}", family.name());
            let _ = writeln!(
                s,
                "os_release=$(\n    # shellcheck source=/dev/null\n    . /etc/os-release && printf '%s-%s' \"${{ID:-}}\" \"${{VERSION_ID:-}}\"\n)\n[ \"$os_release\" = {id}-{version} ] || log \"warning: rendered for $os, this is $os_release; package names may not match\""
            );
        }
    }
    s.push_str(
        r#"missing_packages() {
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
"#,
    );
    s.push_str("case \"$os\" in\n");
    for family in plan.os.families() {
        let list = plan.package_list(family);
        let _ = writeln!(s, "    {}) packages=({}) ;;", family.name(), list.join(" "));
    }
    s.push_str("esac\n");
    let _ = write!(
        s,
        r#"if [ "${{{SKIP_PACKAGES_ENV}:-0}}" = 1 ]; then
    log "{SKIP_PACKAGES_ENV}=1: not installing ${{packages[*]}}"
else
    mapfile -t wanted < <(skip_docker "${{packages[@]}}")
    mapfile -t missing < <(missing_packages "${{wanted[@]}}")
    if [ ${{#missing[@]}} -eq 0 ]; then
        log "packages already installed"
    else
        log "installing ${{missing[*]}}"
        case "$os" in
"#
    );
    let families = plan.os.families();
    let dnf: Vec<&str> = families
        .iter()
        .filter(|f| f.package_manager() == PackageManager::Dnf)
        .map(|f| f.name())
        .collect();
    let apt: Vec<&str> = families
        .iter()
        .filter(|f| f.package_manager() == PackageManager::Apt)
        .map(|f| f.name())
        .collect();
    if !dnf.is_empty() {
        let _ = writeln!(
            s,
            // --allowerasing: `curl` or `gnupg2` replace the preinstalled
            // -minimal packages instead of failing on the conflict.
            "            {}) dnf install -y -q --allowerasing --setopt=install_weak_deps=False \"${{missing[@]}}\" ;;",
            dnf.join(" | ")
        );
    }
    if !apt.is_empty() {
        // Another apt (cloud-init's, unattended-upgrades) may hold the locks
        // at boot: DPkg::Lock::Timeout waits for dpkg's, but `update` fails
        // at once on the lists lock, so it is retried.
        let _ = writeln!(
            s,
            "            {})\n                export DEBIAN_FRONTEND=noninteractive\n                tries=0\n                until apt-get -o DPkg::Lock::Timeout=600 update -qq; do\n                    tries=$((tries + 1))\n                    [ \"$tries\" -lt 30 ] || fail \"apt-get update kept failing\"\n                    sleep 10\n                done\n                apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \"${{missing[@]}}\"\n                ;;",
            apt.join(" | ")
        );
    }
    s.push_str(
        "        esac\n    fi\n    # Jobs expect a running docker; --no-block: this may run inside\n    # cloud-init's final stage, which systemd jobs may be ordered after.\n    systemctl enable --now --no-block docker.service\nfi\n",
    );
}

fn runner_user(s: &mut String, plan: &Plan, user: &str) {
    let q = quote(user);
    let _ = write!(
        s,
        r#"
# The runner's user; the agent needs it to exist when it starts.
if ! id -u {q} >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash {q}
    log "created user "{q}
fi
"#
    );
    if plan.hardened {
        // The docker socket is root: hardened mode keeps the user out, and
        // the agent runs a rootless daemon as the user instead, whose
        // slirp4netns opens /dev/net/tun as the user (Debian and Ubuntu
        // make it 0666; some images 0600).
        let _ = write!(
            s,
            r#"if id -nG {q} | tr ' ' '\n' | grep -qx docker; then
    gpasswd -d {q} docker >/dev/null
    log "removed "{q}" from group docker (hardened mode)"
fi
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    chmod 666 /dev/net/tun
    log "/dev/net/tun made 0666 for rootless docker (hardened mode)"
fi
"#
        );
    } else {
        let _ = write!(
            s,
            r#"if getent group docker >/dev/null && ! id -nG {q} | tr ' ' '\n' | grep -qx docker; then
    usermod -aG docker {q}
    log "added "{q}" to group docker"
fi
"#
        );
    }
    if plan.runner_user_sudo {
        s.push_str("# Passwordless sudo, as on GitHub's hosted runners.\n");
        put_file(
            s,
            SUDOERS_PATH,
            "440",
            &sudoers_line(user),
            "config_changed",
        );
    } else {
        remove_file(s, SUDOERS_PATH, "config_changed");
    }
}

/// Passwordless sudo for the runner's user, as on GitHub's hosted runners.
pub fn sudoers_line(user: &str) -> String {
    format!("{user} ALL=(ALL) NOPASSWD:ALL")
}

/// `remove_file PATH`; sets `$var` to 1 when there was one.
fn remove_file(s: &mut String, path: &str, var: &str) {
    let _ = writeln!(
        s,
        "remove_file {path}\n[ \"$put_file_changed\" = 0 ] || {var}=1"
    );
}

fn agent_binary(s: &mut String, plan: &Plan) {
    let agent = quote(&plan.agent_path);
    let _ = writeln!(s, "\nagent={agent}");
    if plan.downloads.is_empty() {
        let _ = write!(
            s,
            r#"# The agent comes with the image (Packer recipe or package).
[ -x "$agent" ] || fail "$agent is missing: this user data expects an image with runner-agent installed; render with [agent.download] to fetch it instead"
version=$("$agent" --version) || fail "$agent does not run on $(uname -m)"
log "using $version at $agent"
"#
        );
        return;
    }
    s.push_str("# The agent is downloaded, and used only if its SHA-256 matches.\ncase \"$(uname -m)\" in\n");
    for (arch, d) in &plan.downloads {
        let _ = writeln!(
            s,
            "    {arch}) agent_url={}; agent_sha256={}; agent_proto={}; agent_tarball={} ;;",
            quote(&d.url),
            d.sha256,
            d.proto(),
            d.tarball_flag()
        );
    }
    let _ =
        writeln!(
        s,
        "    *) fail \"no agent download for $(uname -m) in this user data (have: {})\" ;;\nesac",
        plan.downloads.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    s.push_str(
        r#"stamp=/var/lib/runner-userdata/agent.sha256
installed_sha256() { sha256sum <"$agent" | cut -d ' ' -f 1; }
if [ -x "$agent" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$agent_sha256 $(installed_sha256)" ]; then
    log "agent already installed from $agent_url"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    log "downloading $agent_url"
    # The download block the pool-manager script shares reads short names.
    u=$agent_url h=$agent_sha256 p=$agent_proto t=$agent_tarball w=$work
"#,
    );
    // Indented as the `else` branch it is in; the same lines otherwise.
    for line in FETCH_AGENT.lines() {
        let _ = writeln!(s, "    {line}");
    }
    s.push_str(
        r#"    new_agent=$work/d
    chmod 0755 "$new_agent"
    "$new_agent" --version >/dev/null || fail "the downloaded agent does not run on $(uname -m)"
    mkdir -p "${agent%/*}" /var/lib/runner-userdata
    install -m 0755 "$new_agent" "$agent.new"
    mv -f "$agent.new" "$agent"
    printf '%s %s\n' "$agent_sha256" "$(installed_sha256)" >"$stamp"
    agent_changed=1
    log "installed $("$agent" --version) at $agent"
fi
"#,
    );
}

fn unit(s: &mut String, plan: &Plan) {
    s.push_str(
        "\n# The unit: ours when there is none (or the one we wrote before); a\n# packaged unit stays, with a drop-in if the agent lives elsewhere.\nunit_file=\nfor dir in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do\n    if [ -f \"$dir/runner-agent.service\" ]; then\n        unit_file=$dir/runner-agent.service\n        break\n    fi\ndone\n",
    );
    let _ = writeln!(
        s,
        "if [ -z \"$unit_file\" ] || {{ [ \"$unit_file\" = {UNIT_PATH} ] && head -n 1 \"$unit_file\" | grep -qxF {}; }}; then",
        quote(UNIT_MARKER)
    );
    put_file(
        s,
        UNIT_PATH,
        "644",
        &unit_text(&plan.agent_path, true),
        "unit_changed",
    );
    remove_file(s, UNIT_DROP_IN, "unit_changed");
    s.push_str("elif grep -qxF \"ExecStart=$agent run\" \"$unit_file\"; then\n");
    remove_file(s, UNIT_DROP_IN, "unit_changed");
    s.push_str("else\n");
    put_file(
        s,
        UNIT_DROP_IN,
        "644",
        &drop_in_text(&plan.agent_path),
        "unit_changed",
    );
    s.push_str("fi\n");
}

/// `--no-block`: from cloud-init's final stage, waiting for the job could
/// wait on cloud-init itself. `start` of a running (or still activating)
/// unit does nothing; a change restarts it.
const START: &str = r#"
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
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn delimiter_avoids_content_lines() {
        assert_eq!(delimiter("a\nb\n"), "RUNNER_USERDATA_EOF");
        assert_eq!(
            delimiter("RUNNER_USERDATA_EOF\nRUNNER_USERDATA_EOF_2\n"),
            "RUNNER_USERDATA_EOF_3"
        );
    }
}

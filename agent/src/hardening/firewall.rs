//! The nftables rule set that keeps the runner user away from the instance
//! metadata service (and so from the instance role's credentials).
//!
//! Installed through the `nft` CLI (`nft -f -`, the rules on stdin), not a
//! library: the `nftables` package ships `nft` on every distribution we
//! support, its text syntax is the documented interface (operators read the
//! same rules back with `nft list table inet runner_agent`), and one `-f`
//! file is one kernel transaction. The Rust libraries are no better fit for
//! a static musl binary built for two arches: `nftnl` and `rustables` bind
//! the C libraries libnftnl and libmnl (linked through pkg-config), which
//! we would have to cross-build statically, and the pure-Rust netlink
//! bindings leave us to assemble the rules' bytecode that `nft` compiles
//! for us.

use super::targets::Blocked;
use std::net::IpAddr;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Our table: only the agent writes it, so replacing it whole never touches
/// anyone else's rules.
pub const TABLE: &str = "runner_agent";
/// `inet`: one table filters both IPv4 and IPv6.
pub const FAMILY: &str = "inet";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running nft (is the nftables package installed?): {0}")]
    Spawn(std::io::Error),
    #[error("nft failed ({status}): {stderr}")]
    Nft {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The whole transaction that (re)installs the table: declaring the table
/// first makes the `delete` succeed whether or not it was there, so
/// applying twice leaves one copy, and nothing is unprotected in between
/// (`nft -f` commits the file atomically).
///
/// Two chains. `output`: what the runner user's own sockets send
/// (`meta skuid`), rootless containers included, whose traffic leaves
/// through their user's slirp4netns or pasta. `forward`: what the host
/// routes for others (containers on a bridge, VMs), which has no socket
/// here and so no uid: all of it to the blocked addresses is rejected.
/// Loopback traffic is never forwarded, so the port rules are output-only.
pub fn apply_script(uid: u32, blocked: &Blocked) -> String {
    let mut text = remove_script();
    text.push_str(&format!("table {FAMILY} {TABLE} {{\n"));
    let owner = format!("meta skuid {uid} ");
    text.push_str(&chain("output", &owner, blocked, true));
    text.push_str(&chain("forward", "", blocked, false));
    text.push_str("}\n");
    text
}

/// One base chain: `matching` (say, the socket owner) before each rule.
fn chain(hook: &str, matching: &str, blocked: &Blocked, ports: bool) -> String {
    let mut text = format!(
        "    chain {hook} {{\n        type filter hook {hook} priority 0; policy accept;\n"
    );
    let family = |v4: bool| -> Vec<String> {
        blocked
            .addresses
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(IpAddr::to_string)
            .collect()
    };
    for (selector, list) in [("ip daddr", family(true)), ("ip6 daddr", family(false))] {
        if list.is_empty() {
            continue;
        }
        let set = list.join(", ");
        // TCP gets a reset, so a job's connect fails at once with
        // "connection refused" instead of hanging; anything else (UDP,
        // ICMP) an ICMP port-unreachable.
        text.push_str(&format!(
            "        {matching}{selector} {{ {set} }} meta l4proto tcp reject with tcp reset\n        {matching}{selector} {{ {set} }} reject\n"
        ));
    }
    for socket in blocked.ports.iter().filter(|_| ports) {
        let selector = if socket.is_ipv4() { "ip" } else { "ip6" };
        text.push_str(&format!(
            "        {matching}{selector} daddr {} tcp dport {} reject with tcp reset\n",
            socket.ip(),
            socket.port()
        ));
    }
    text.push_str("    }\n");
    text
}

/// Removes the table if it is there (see [`apply_script`] for the trick).
pub fn remove_script() -> String {
    format!("table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
}

/// Rejects `uid`'s traffic (and forwarded traffic) to `blocked`,
/// replacing any earlier copy.
pub async fn apply(uid: u32, blocked: &Blocked) -> Result<(), FirewallError> {
    nft(&["-f", "-"], Some(&apply_script(uid, blocked))).await?;
    Ok(())
}

/// Removes the table; nothing to do when it is not there.
pub async fn remove() -> Result<(), FirewallError> {
    nft(&["-f", "-"], Some(&remove_script())).await?;
    Ok(())
}

/// The table as the kernel holds it (`nft list table`), `None` when it is
/// not there. Two listings of the same rules are the same text.
pub async fn list() -> Result<Option<String>, FirewallError> {
    match nft(&["list", "table", FAMILY, TABLE], None).await {
        Ok(text) => Ok(Some(text)),
        // nft's words for ENOENT, whatever its version's wording around it.
        Err(FirewallError::Nft { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Runs `nft args`, `script` on its stdin; its stdout.
async fn nft(args: &[&str], script: Option<&str>) -> Result<String, FirewallError> {
    let mut child = Command::new("nft")
        .args(args)
        // `list` reads "No such file or directory" from its stderr.
        .env("LC_ALL", "C")
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let Some(script) = script {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(FirewallError::Spawn)?;
        // EOF: nft reads the whole file before it commits.
        drop(stdin);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(FirewallError::Spawn)?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(FirewallError::Nft {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(addresses: &[&str], ports: &[&str]) -> Blocked {
        Blocked {
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            ports: ports.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_user_is_rejected_and_forwarded_traffic_too() {
        let text = apply_script(
            1001,
            &blocked(
                &["169.254.169.254", "fd00:ec2::254", "10.0.0.1"],
                &["127.0.0.9:1338", "[::1]:80"],
            ),
        );
        let expected = "\
table inet runner_agent
delete table inet runner_agent
table inet runner_agent {
    chain output {
        type filter hook output priority 0; policy accept;
        meta skuid 1001 ip daddr { 169.254.169.254, 10.0.0.1 } meta l4proto tcp reject with tcp reset
        meta skuid 1001 ip daddr { 169.254.169.254, 10.0.0.1 } reject
        meta skuid 1001 ip6 daddr { fd00:ec2::254 } meta l4proto tcp reject with tcp reset
        meta skuid 1001 ip6 daddr { fd00:ec2::254 } reject
        meta skuid 1001 ip daddr 127.0.0.9 tcp dport 1338 reject with tcp reset
        meta skuid 1001 ip6 daddr ::1 tcp dport 80 reject with tcp reset
    }
    chain forward {
        type filter hook forward priority 0; policy accept;
        ip daddr { 169.254.169.254, 10.0.0.1 } meta l4proto tcp reject with tcp reset
        ip daddr { 169.254.169.254, 10.0.0.1 } reject
        ip6 daddr { fd00:ec2::254 } meta l4proto tcp reject with tcp reset
        ip6 daddr { fd00:ec2::254 } reject
    }
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_family_without_addresses_gets_no_rule() {
        let text = apply_script(7, &blocked(&["fd00:ec2::254"], &[]));
        assert!(!text.contains("ip daddr"), "{text}");
        assert_eq!(text.matches("ip6 daddr").count(), 4, "{text}");
        let text = apply_script(7, &blocked(&[], &[]));
        assert!(!text.contains("skuid"), "{text}");
        assert!(!text.contains("daddr"), "{text}");
    }

    #[test]
    fn removal_is_idempotent_by_declaring_first() {
        assert_eq!(
            remove_script(),
            "table inet runner_agent\ndelete table inet runner_agent\n"
        );
        assert!(apply_script(1, &Blocked::default()).starts_with(&remove_script()));
    }
}

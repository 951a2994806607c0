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
    #[error("nft -f - failed ({status}): {stderr}")]
    Nft {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// The whole transaction that (re)installs the table: declaring the table
/// first makes the `delete` succeed whether or not it was there, so
/// applying twice leaves one copy, and nothing is unprotected in between
/// (`nft -f` commits the file atomically).
pub fn apply_script(uid: u32, addresses: &[IpAddr]) -> String {
    let mut text = remove_script();
    text.push_str(&format!(
        "table {FAMILY} {TABLE} {{\n    chain output {{\n        type filter hook output priority 0; policy accept;\n"
    ));
    let v4: Vec<String> = addresses
        .iter()
        .filter(|a| a.is_ipv4())
        .map(IpAddr::to_string)
        .collect();
    let v6: Vec<String> = addresses
        .iter()
        .filter(|a| a.is_ipv6())
        .map(IpAddr::to_string)
        .collect();
    for (selector, list) in [("ip daddr", v4), ("ip6 daddr", v6)] {
        if list.is_empty() {
            continue;
        }
        let set = list.join(", ");
        // TCP gets a reset, so a job's connect fails at once with
        // "connection refused" instead of hanging; anything else (UDP,
        // ICMP) an ICMP port-unreachable.
        text.push_str(&format!(
            "        meta skuid {uid} {selector} {{ {set} }} meta l4proto tcp reject with tcp reset\n        meta skuid {uid} {selector} {{ {set} }} reject\n"
        ));
    }
    text.push_str("    }\n}\n");
    text
}

/// Removes the table if it is there (see [`apply_script`] for the trick).
pub fn remove_script() -> String {
    format!("table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")
}

/// Rejects `uid`'s traffic to `addresses`, replacing any earlier copy.
pub async fn apply(uid: u32, addresses: &[IpAddr]) -> Result<(), FirewallError> {
    nft(&apply_script(uid, addresses)).await
}

/// Removes the table; nothing to do when it is not there.
pub async fn remove() -> Result<(), FirewallError> {
    nft(&remove_script()).await
}

async fn nft(script: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(FirewallError::Spawn)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(FirewallError::Spawn)?;
    // EOF: nft reads the whole file before it commits.
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(FirewallError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    Err(FirewallError::Nft {
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn both_families_are_rejected_for_the_user_only() {
        let text = apply_script(
            1001,
            &addrs(&["169.254.169.254", "fd00:ec2::254", "10.0.0.1"]),
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
    }
}
";
        assert_eq!(text, expected);
    }

    #[test]
    fn a_family_without_addresses_gets_no_rule() {
        let text = apply_script(7, &addrs(&["fd00:ec2::254"]));
        assert!(!text.contains("ip daddr"), "{text}");
        assert_eq!(text.matches("ip6 daddr").count(), 2, "{text}");
        let text = apply_script(7, &[]);
        assert!(!text.contains("skuid"), "{text}");
    }

    #[test]
    fn removal_is_idempotent_by_declaring_first() {
        assert_eq!(
            remove_script(),
            "table inet runner_agent\ndelete table inet runner_agent\n"
        );
        assert!(apply_script(1, &[]).starts_with(&remove_script()));
    }
}

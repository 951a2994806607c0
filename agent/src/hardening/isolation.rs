//! How far jobs are kept from root: the decision (a pure function of what
//! was found) and the probing of the system that finds it.

use nix::unistd::{Group, Uid, User};
use std::fmt;

/// Members of these groups can sudo under the distributions' default
/// sudoers (Debian/Ubuntu: sudo, admin on old Ubuntu; Amazon Linux: wheel).
const SUDO_GROUPS: &[&str] = &["sudo", "wheel", "admin"];
/// Groups that are root in all but name: the docker socket (`docker run
/// -v /:/host --privileged`), lxd's socket (a privileged container), raw
/// block devices (`disk`: any file of the root filesystem, read and
/// written under the kernel's file permissions).
const ROOT_GROUPS: &[&str] = &["docker", "lxd", "disk"];
/// Reads the system logs (/var/log, the whole journal): other services'
/// secrets, and what the agent logs about the pool.
const LOG_GROUP: &str = "adm";

/// What `sudo -l -U <user>` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SudoRules {
    /// sudo is not installed: no sudoers rule can apply.
    NotInstalled,
    Allowed,
    NotAllowed,
    /// The probe did not tell (not run as root, unexpected output).
    Unknown(String),
}

/// What the probe found about the user jobs run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub name: String,
    pub uid: u32,
    /// Names of the user's groups, the primary one included.
    pub groups: Vec<String>,
    pub sudo: SudoRules,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// No runner user, or one with uid 0.
    Root,
    /// A job can make itself root; the reasons, as phrases.
    CanBecomeRoot(Vec<String>),
    /// A job cannot become root but can read every log; the reasons.
    ReadsLogs(Vec<String>),
    Isolated,
}

impl Isolation {
    pub fn is_isolated(&self) -> bool {
        *self == Isolation::Isolated
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Isolation::Root => f.write_str("jobs run as root"),
            Isolation::CanBecomeRoot(reasons) => write!(
                f,
                "the runner user {}: jobs can become root",
                reasons.join(" and ")
            ),
            Isolation::ReadsLogs(reasons) => write!(
                f,
                "the runner user {}: jobs can read the system logs",
                reasons.join(" and ")
            ),
            Isolation::Isolated => f.write_str("isolated"),
        }
    }
}

/// The decision. A sudo probe that did not tell counts against isolation:
/// "isolated" is a promise, made only when every door was seen shut.
pub fn decide(facts: &Facts) -> Isolation {
    if facts.uid == 0 {
        return Isolation::Root;
    }
    let in_group = |names: &[&str]| {
        facts
            .groups
            .iter()
            .find(|g| names.contains(&g.as_str()))
            .cloned()
    };
    let mut reasons = Vec::new();
    match (&facts.sudo, in_group(SUDO_GROUPS)) {
        (SudoRules::Allowed, _) => reasons.push("can sudo".to_owned()),
        (_, Some(group)) => reasons.push(format!("can sudo (group {group})")),
        (SudoRules::Unknown(why), None) => {
            reasons.push(format!("may be able to sudo (sudo -l did not tell: {why})"))
        }
        (SudoRules::NotInstalled | SudoRules::NotAllowed, None) => {}
    }
    for group in ROOT_GROUPS {
        if in_group(&[group]).is_some() {
            reasons.push(format!("is in the {group} group"));
        }
    }
    let logs = in_group(&[LOG_GROUP]).map(|g| format!("is in the {g} group"));
    match (reasons.is_empty(), logs) {
        (false, logs) => Isolation::CanBecomeRoot(reasons.into_iter().chain(logs).collect()),
        (true, Some(logs)) => Isolation::ReadsLogs(vec![logs]),
        (true, None) => Isolation::Isolated,
    }
}

/// Reads `sudo -l`'s answer. It exits 0 whether or not the user may run
/// anything, so the text decides (the probe runs it with `LC_ALL=C`).
pub fn parse_sudo_list(status_ok: bool, stdout: &str, stderr: &str) -> SudoRules {
    if !status_ok {
        let why = stderr.trim();
        return SudoRules::Unknown(if why.is_empty() {
            "sudo -l failed".into()
        } else {
            why.to_owned()
        });
    }
    if stdout.contains("is not allowed to run sudo") {
        SudoRules::NotAllowed
    } else if stdout.contains("may run the following commands") {
        SudoRules::Allowed
    } else {
        SudoRules::Unknown(format!(
            "unexpected output: {}",
            stdout.lines().next().unwrap_or("").trim()
        ))
    }
}

/// Why the runner user's facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("looking up the runner user: {0}")]
    Lookup(nix::Error),
    #[error("runner user {0:?} does not exist")]
    NoUser(String),
    #[error("user name {0:?} has a NUL")]
    BadName(String),
    #[error("groups of {name}: {source}")]
    Groups { name: String, source: nix::Error },
}

/// The facts about `name` (the agent's own user when `None`, as the
/// runner then runs as the agent).
pub async fn probe(name: Option<&str>) -> Result<Facts, ProbeError> {
    let user = match name {
        Some(name) => User::from_name(name),
        None => User::from_uid(Uid::effective()),
    }
    .map_err(ProbeError::Lookup)?
    .ok_or_else(|| ProbeError::NoUser(name.unwrap_or("?").to_owned()))?;
    let c_name = std::ffi::CString::new(user.name.clone())
        .map_err(|_| ProbeError::BadName(user.name.clone()))?;
    let gids =
        nix::unistd::getgrouplist(&c_name, user.gid).map_err(|source| ProbeError::Groups {
            name: user.name.clone(),
            source,
        })?;
    let mut groups = Vec::new();
    for gid in gids {
        // A gid without a name is no group a sudoers rule or docker names.
        if let Ok(Some(group)) = Group::from_gid(gid) {
            groups.push(group.name);
        }
    }
    let sudo = probe_sudo(&user.name).await;
    Ok(Facts {
        name: user.name,
        uid: user.uid.as_raw(),
        groups,
        sudo,
    })
}

/// `sudo -n -l -U <user>`: as root, lists what sudoers grants the user
/// (`-n`: never prompt).
async fn probe_sudo(user: &str) -> SudoRules {
    let out = tokio::process::Command::new("sudo")
        .args(["-n", "-l", "-U", user])
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SudoRules::NotInstalled,
        Err(e) => SudoRules::Unknown(format!("running sudo: {e}")),
        Ok(out) => parse_sudo_list(
            out.status.success(),
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(uid: u32, groups: &[&str], sudo: SudoRules) -> Facts {
        Facts {
            name: "runner".into(),
            uid,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            sudo,
        }
    }

    #[test]
    fn uid_zero_is_root_whatever_else() {
        let level = decide(&facts(0, &["root"], SudoRules::NotAllowed));
        assert_eq!(level, Isolation::Root);
        assert_eq!(level.to_string(), "jobs run as root");
    }

    #[test]
    fn sudo_rules_or_sudo_groups_or_docker_let_jobs_become_root() {
        let cases: &[(&[&str], SudoRules, &str)] = &[
            (
                &["runner"],
                SudoRules::Allowed,
                "the runner user can sudo: jobs can become root",
            ),
            (
                &["runner", "wheel"],
                SudoRules::NotInstalled,
                "the runner user can sudo (group wheel): jobs can become root",
            ),
            (
                &["runner", "sudo"],
                SudoRules::NotAllowed,
                "can sudo (group sudo)",
            ),
            (
                &["runner", "admin"],
                SudoRules::NotAllowed,
                "can sudo (group admin)",
            ),
            (
                &["runner", "docker"],
                SudoRules::NotAllowed,
                "the runner user is in the docker group: jobs can become root",
            ),
            (
                &["runner", "docker"],
                SudoRules::Allowed,
                "the runner user can sudo and is in the docker group: jobs can become root",
            ),
            (
                &["runner", "lxd"],
                SudoRules::NotAllowed,
                "the runner user is in the lxd group: jobs can become root",
            ),
            (
                &["runner", "disk", "adm"],
                SudoRules::NotInstalled,
                "the runner user is in the disk group and is in the adm group: jobs can become root",
            ),
            (
                &["runner", "adm"],
                SudoRules::NotAllowed,
                "the runner user is in the adm group: jobs can read the system logs",
            ),
            (
                &["runner"],
                SudoRules::Unknown("no tty".into()),
                "may be able to sudo (sudo -l did not tell: no tty)",
            ),
        ];
        for (groups, sudo, expected) in cases {
            let level = decide(&facts(1001, groups, sudo.clone()));
            assert!(!level.is_isolated(), "{groups:?} {sudo:?}");
            assert!(
                level.to_string().contains(expected),
                "{level} (wanted {expected})"
            );
        }
    }

    #[test]
    fn a_plain_user_is_isolated() {
        for sudo in [SudoRules::NotAllowed, SudoRules::NotInstalled] {
            let groups = ["runner", "users", "dockerish", "lxd-users", "admins"];
            let level = decide(&facts(1001, &groups, sudo));
            assert_eq!(level, Isolation::Isolated);
            assert_eq!(level.to_string(), "isolated");
        }
    }

    #[test]
    fn sudo_list_output_is_read() {
        let denied = "User runner is not allowed to run sudo on ip-10-0-0-1.\n";
        assert_eq!(parse_sudo_list(true, denied, ""), SudoRules::NotAllowed);
        let allowed = "Matching Defaults entries for runner on vm:\n    env_reset\n\nUser runner may run the following commands on vm:\n    (ALL : ALL) ALL\n";
        assert_eq!(parse_sudo_list(true, allowed, ""), SudoRules::Allowed);
        assert_eq!(
            parse_sudo_list(false, "", "sudo: you must be root\n"),
            SudoRules::Unknown("sudo: you must be root".into())
        );
        assert!(matches!(
            parse_sudo_list(true, "what?\n", ""),
            SudoRules::Unknown(_)
        ));
    }

    /// The probe on this machine: root is root.
    #[tokio::test]
    async fn probing_root_finds_uid_zero() {
        let facts = probe(Some("root")).await.unwrap();
        assert_eq!(facts.uid, 0);
        assert!(facts.groups.iter().any(|g| g == "root"), "{facts:?}");
        assert_eq!(decide(&facts), Isolation::Root);
        assert!(probe(Some("no-such-user-ra")).await.is_err());
    }
}

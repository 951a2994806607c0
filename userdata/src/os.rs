//! The OS families we render for, and what a runner needs on each.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OsFamily {
    AmazonLinux2023,
    Ubuntu2204,
    Ubuntu2404,
    Debian12,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsChoice {
    /// Read /etc/os-release at boot and pick the family.
    Auto,
    Fixed(OsFamily),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Dnf,
    Apt,
}

impl OsFamily {
    pub const ALL: [OsFamily; 4] = [
        OsFamily::AmazonLinux2023,
        OsFamily::Ubuntu2204,
        OsFamily::Ubuntu2404,
        OsFamily::Debian12,
    ];

    /// The name in the input file and in the rendered script.
    pub fn name(self) -> &'static str {
        match self {
            OsFamily::AmazonLinux2023 => "al2023",
            OsFamily::Ubuntu2204 => "ubuntu-22.04",
            OsFamily::Ubuntu2404 => "ubuntu-24.04",
            OsFamily::Debian12 => "debian-12",
        }
    }

    /// `ID` and `VERSION_ID` of its /etc/os-release.
    pub fn os_release(self) -> (&'static str, &'static str) {
        match self {
            OsFamily::AmazonLinux2023 => ("amzn", "2023"),
            OsFamily::Ubuntu2204 => ("ubuntu", "22.04"),
            OsFamily::Ubuntu2404 => ("ubuntu", "24.04"),
            OsFamily::Debian12 => ("debian", "12"),
        }
    }

    pub fn package_manager(self) -> PackageManager {
        match self {
            OsFamily::AmazonLinux2023 => PackageManager::Dnf,
            _ => PackageManager::Apt,
        }
    }

    /// What a runner and the usual jobs need: git, docker, tar/gzip/curl
    /// for the runner's own tarball and actions, and the runner's .NET
    /// dependencies (ICU, Kerberos, OpenSSL, zlib; the list of the runner's
    /// installdependencies.sh, with each release's package names).
    /// Amazon Linux 2023 ships curl-minimal, which conflicts with `curl`.
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            OsFamily::AmazonLinux2023 => &[
                "docker",
                "git",
                "gzip",
                "krb5-libs",
                "libicu",
                "openssl-libs",
                "shadow-utils",
                "tar",
                "zlib",
            ],
            OsFamily::Ubuntu2204 => &[
                "ca-certificates",
                "curl",
                "docker.io",
                "git",
                "gzip",
                "libicu70",
                "libkrb5-3",
                "libssl3",
                "tar",
                "zlib1g",
            ],
            OsFamily::Ubuntu2404 => &[
                "ca-certificates",
                "curl",
                "docker.io",
                "git",
                "gzip",
                "libicu74",
                "libkrb5-3",
                "libssl3t64",
                "tar",
                "zlib1g",
            ],
            OsFamily::Debian12 => &[
                "ca-certificates",
                "curl",
                "docker.io",
                "git",
                "gzip",
                "libicu72",
                "libkrb5-3",
                "libssl3",
                "tar",
                "zlib1g",
            ],
        }
    }
}

impl OsFamily {
    /// What hardened mode's rootless Docker for the runner user needs
    /// beyond `packages` (the agent runs `docker.io`'s
    /// `dockerd-rootless.sh`): rootlesskit, slirp4netns for the daemon's
    /// network, uidmap's setuid `newuidmap`/`newgidmap`. Amazon Linux 2023
    /// packages none of them: there hardened jobs get no docker (the
    /// agent's `hardening.docker = "auto"` warns).
    pub fn rootless_packages(self) -> &'static [&'static str] {
        match self {
            OsFamily::AmazonLinux2023 => &[],
            _ => &["rootlesskit", "slirp4netns", "uidmap"],
        }
    }
}

impl OsChoice {
    pub fn parse(text: &str) -> Result<OsChoice, String> {
        if text == "auto" {
            return Ok(OsChoice::Auto);
        }
        OsFamily::ALL
            .into_iter()
            .find(|f| f.name() == text)
            .map(OsChoice::Fixed)
            .ok_or_else(|| {
                let names: Vec<&str> = OsFamily::ALL.iter().map(|f| f.name()).collect();
                format!("{text:?}: use auto or one of {}", names.join(", "))
            })
    }

    pub fn name(self) -> &'static str {
        match self {
            OsChoice::Auto => "auto",
            OsChoice::Fixed(f) => f.name(),
        }
    }

    /// The families the rendered script has to handle.
    pub fn families(self) -> Vec<OsFamily> {
        match self {
            OsChoice::Auto => OsFamily::ALL.to_vec(),
            OsChoice::Fixed(f) => vec![f],
        }
    }
}

//! What hardened mode's firewall keeps the runner user from: the
//! configured metadata addresses (IMDS, the ECS and EKS credential
//! endpoints), and wherever the agent's own IMDS client is pointed, from
//! the environment or from the AWS config file (the SDK honours both).

use aws_runtime::env_config::file::EnvConfigFiles;
use aws_types::os_shim_internal::{Env, Fs};
use runner_agent_common::http_url;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The IMDS endpoint override the AWS SDK (and so the agent) honours first.
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// The same override in the AWS config file's selected profile, which the
/// SDK reads when the variable is unset.
pub const ENDPOINT_PROFILE_KEY: &str = "ec2_metadata_service_endpoint";

/// Where the runner user may not connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocked {
    /// Every protocol and port to these (and forwarded traffic to them).
    pub addresses: Vec<IpAddr>,
    /// Only TCP to these: an endpoint override on a loopback address. The
    /// whole address would cut jobs off everything they serve themselves
    /// on the loopback host (test servers, the job credentials endpoint).
    pub ports: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{source_name}={endpoint:?}: {reason}")]
    BadEndpoint {
        source_name: String,
        endpoint: String,
        reason: String,
    },
    #[error("resolving {host} from {source_name}: {error}")]
    Resolve {
        host: String,
        source_name: String,
        error: std::io::Error,
    },
    /// Fail closed: an unreadable config file may name an endpoint.
    #[error("reading the AWS config file for {ENDPOINT_PROFILE_KEY}: {0}")]
    Profile(String),
}

impl Blocked {
    fn add_address(&mut self, address: IpAddr) {
        if !self.addresses.contains(&address) {
            self.addresses.push(address);
        }
    }

    fn add_port(&mut self, socket: SocketAddr) {
        if !self.ports.contains(&socket) && !self.addresses.contains(&socket.ip()) {
            self.ports.push(socket);
        }
    }

    /// Adds the endpoint at `url` (named by `source_name` in errors): a
    /// loopback address by its port, any other whole. A name is resolved
    /// now: the firewall matches addresses.
    pub fn add_endpoint(&mut self, url: &str, source_name: &str) -> Result<(), TargetError> {
        let bad = |reason: String| TargetError::BadEndpoint {
            source_name: source_name.to_owned(),
            endpoint: url.to_owned(),
            reason,
        };
        // The SDK reaches IMDS over http(s) only, so the common parser's
        // refusals are of endpoints the agent could not use either.
        let parsed = http_url::parse(url.trim()).map_err(|e| bad(e.to_string()))?;
        let host = parsed.host_str().ok_or_else(|| bad("no host".to_owned()))?;
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| bad("no port".to_owned()))?;
        // An IPv6 host keeps its brackets in the URL's text.
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let sockets: Vec<SocketAddr> = match literal.parse::<IpAddr>() {
            Ok(address) => vec![SocketAddr::new(address, port)],
            Err(_) => (host, port)
                .to_socket_addrs()
                .map_err(|error| TargetError::Resolve {
                    host: host.to_owned(),
                    source_name: source_name.to_owned(),
                    error,
                })?
                .collect(),
        };
        for socket in sockets {
            if socket.ip().is_loopback() {
                self.add_port(socket);
            } else {
                self.add_address(socket.ip());
            }
        }
        Ok(())
    }
}

/// The configured addresses plus both endpoint overrides, when set
/// (`env_endpoint`: the variable; `profile_endpoint`: the config file's).
pub fn blocked(
    configured: &[IpAddr],
    env_endpoint: Option<&str>,
    profile_endpoint: Option<&str>,
) -> Result<Blocked, TargetError> {
    let mut blocked = Blocked::default();
    for address in configured {
        blocked.add_address(*address);
    }
    let profile_source = format!("{ENDPOINT_PROFILE_KEY} in the AWS config file");
    for (url, source_name) in [
        (env_endpoint, ENDPOINT_ENV),
        (profile_endpoint, profile_source.as_str()),
    ] {
        if let Some(url) = url.filter(|u| !u.trim().is_empty()) {
            blocked.add_endpoint(url, source_name)?;
        }
    }
    Ok(blocked)
}

/// `ec2_metadata_service_endpoint` of the selected profile, read as the
/// SDK reads it (`AWS_CONFIG_FILE`, `AWS_PROFILE`, `~/.aws/config`).
pub async fn profile_endpoint(fs: &Fs, env: &Env) -> Result<Option<String>, TargetError> {
    let profiles = aws_config::profile::load(fs, env, &EnvConfigFiles::default(), None)
        .await
        .map_err(|e| TargetError::Profile(e.to_string()))?;
    Ok(profiles.get(ENDPOINT_PROFILE_KEY).map(str::to_owned))
}

/// [`blocked`] from this process's environment and AWS config file.
pub async fn from_env(configured: &[IpAddr]) -> Result<Blocked, TargetError> {
    let env_endpoint = std::env::var(ENDPOINT_ENV).ok();
    let profile = profile_endpoint(&Fs::real(), &Env::real()).await?;
    blocked(configured, env_endpoint.as_deref(), profile.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn sockets(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn a_loopback_override_is_blocked_by_its_port_only() {
        let conf = ips(&["169.254.169.254", "fd00:ec2::254"]);
        let got = blocked(&conf, None, None).unwrap();
        assert_eq!(got.addresses, conf);
        assert!(got.ports.is_empty());

        let got = blocked(&conf, Some("http://127.0.0.9:8123/"), None).unwrap();
        assert_eq!(got.addresses, conf, "the loopback host stays reachable");
        assert_eq!(got.ports, sockets(&["127.0.0.9:8123"]));
        // No port in the URL: the scheme's.
        let got = blocked(&conf, Some("http://[::1]"), None).unwrap();
        assert_eq!(got.ports, sockets(&["[::1]:80"]));
        let got = blocked(&conf, Some("http://localhost:1338"), None).unwrap();
        assert!(!got.ports.is_empty(), "{got:?}");
        assert!(
            got.ports
                .iter()
                .all(|s| s.ip().is_loopback() && s.port() == 1338),
            "{got:?}"
        );
        assert_eq!(got.addresses, conf);
    }

    #[test]
    fn another_override_is_blocked_whole_without_duplicates() {
        let conf = ips(&["169.254.169.254", "fd00:ec2::254"]);
        let got = blocked(&conf, Some("http://10.1.2.3:8080"), None).unwrap();
        assert_eq!(
            got.addresses,
            ips(&["169.254.169.254", "fd00:ec2::254", "10.1.2.3"])
        );
        assert!(got.ports.is_empty());
        let got = blocked(&conf, Some("http://[fd00:ec2::254]"), None).unwrap();
        assert_eq!(got.addresses.len(), 2, "no duplicates: {got:?}");
        // A configured loopback address is blocked whole, so no port rule.
        let got = blocked(&ips(&["127.0.0.2"]), Some("http://127.0.0.2:9"), None).unwrap();
        assert!(got.ports.is_empty(), "{got:?}");
        for bad in ["not a url", "https:127.0.0.9", "ftp://127.0.0.9/"] {
            let err = blocked(&conf, Some(bad), None).unwrap_err();
            assert!(err.to_string().contains(ENDPOINT_ENV), "{err}");
        }
        assert_eq!(blocked(&conf, Some(" "), None).unwrap().addresses.len(), 2);
    }

    #[test]
    fn both_overrides_are_blocked() {
        let got = blocked(
            &[],
            Some("http://127.0.0.9:1"),
            Some("http://169.254.1.1:80"),
        )
        .unwrap();
        assert_eq!(got.ports, sockets(&["127.0.0.9:1"]));
        assert_eq!(got.addresses, ips(&["169.254.1.1"]));
        let err = blocked(&[], None, Some("gopher://x")).unwrap_err();
        assert!(err.to_string().contains(ENDPOINT_PROFILE_KEY), "{err}");
    }

    #[tokio::test]
    async fn the_endpoint_is_read_from_the_selected_profile() {
        let config = "[default]\nec2_metadata_service_endpoint = http://127.0.0.7:1338\n\
                      [profile other]\nec2_metadata_service_endpoint = http://10.9.8.7\n";
        let fs = Fs::from_slice(&[("/conf", config)]);
        let env = Env::from_slice(&[("AWS_CONFIG_FILE", "/conf"), ("HOME", "/nowhere")]);
        let got = profile_endpoint(&fs, &env).await.unwrap();
        assert_eq!(got.as_deref(), Some("http://127.0.0.7:1338"));
        let env = Env::from_slice(&[
            ("AWS_CONFIG_FILE", "/conf"),
            ("AWS_PROFILE", "other"),
            ("HOME", "/nowhere"),
        ]);
        let got = profile_endpoint(&fs, &env).await.unwrap();
        assert_eq!(got.as_deref(), Some("http://10.9.8.7"));
        // No file: nothing set, no error.
        let env = Env::from_slice(&[("AWS_CONFIG_FILE", "/absent"), ("HOME", "/nowhere")]);
        assert_eq!(profile_endpoint(&fs, &env).await.unwrap(), None);
    }
}

//! `[metrics]`: where the agent's metrics go, if anywhere. Both outlets
//! are off by default: a Prometheus scrape endpoint (`listen`) and a
//! node_exporter textfile (`textfile`); docs/operations.md, "Metrics".

use super::keys::Keys;
use super::ConfigError;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: Option<String>,
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Serve `GET /metrics` here (port 0: any free port, logged).
    pub listen: Option<SocketAddr>,
    /// Keep this file up to date for node_exporter's textfile collector.
    pub textfile: Option<PathBuf>,
}

impl RawMetrics {
    pub(super) fn into_settings(self, at: &Keys) -> Result<MetricsSettings, ConfigError> {
        let listen = match self.listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                at.invalid(
                    "listen",
                    format!("{text:?} is not an address and port like 127.0.0.1:9464"),
                )
            })?),
        };
        let textfile = match self.textfile {
            None => None,
            Some(file) if file.as_os_str().is_empty() => None,
            Some(file) => Some(textfile(at, file)?),
        };
        Ok(MetricsSettings { listen, textfile })
    }
}

fn textfile(at: &Keys, file: PathBuf) -> Result<PathBuf, ConfigError> {
    let file = at.absolute("textfile", file)?;
    // The collector reads `*.prom` only: any other name would be written
    // and never collected.
    if file.extension().is_none_or(|e| e != "prom") {
        return Err(at.invalid(
            "textfile",
            format!(
                "{}: node_exporter's textfile collector reads only *.prom files",
                file.display()
            ),
        ));
    }
    Ok(file)
}

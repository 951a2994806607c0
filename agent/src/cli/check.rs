//! `runner-agent check`: preflight checks, one line each, exit 1 if any
//! failed.

use crate::config::{RunnerVersion, Settings};
use crate::hardening::isolation;
use crate::imds::{Imds, TagSource, TAG_INITIAL_RUN_ID};
use crate::runner::install::{present, releases};
use crate::runner::user::RunnerUser;
use std::path::Path;
use std::process::ExitCode;

struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => println!("ok    {name}: {detail}"),
            Err(reason) => {
                self.failed += 1;
                println!("FAIL  {name}: {reason}");
            }
        }
    }
}

pub async fn run(config: &Path) -> ExitCode {
    let mut report = Report { failed: 0 };
    let settings = match Settings::load(config) {
        Ok(s) => {
            report.line("config", Ok(config.display().to_string()));
            s
        }
        Err(e) => {
            report.line("config", Err(e.to_string()));
            return ExitCode::FAILURE;
        }
    };
    report.line(
        "runner user",
        crate::runner::user::RunnerUser::resolve(settings.runner.user.as_deref())
            .map(|u| {
                u.map_or("the agent's own user".into(), |u| {
                    format!("{} (uid {})", u.name, u.uid)
                })
            })
            .map_err(|e| e.to_string()),
    );
    report.line("isolation", isolation(&settings).await);
    if settings.hardening.enabled {
        report.line("firewall", nft_version().await);
        report.line("docker", crate::hardening::rootless::describe(&settings));
    }
    report.line("state dir", writable(&settings.state_dir));
    report.line("runner dir", runner_dir(&settings).await);

    let imds = Imds::from_env();
    let identity = crate::agent::identity_once(&imds).await;
    match identity {
        Err(e) => report.line("imds", Err(format!("{e:#}"))),
        Ok(id) => {
            report.line(
                "imds",
                Ok(format!("instance {} in {}", id.instance_id, id.region)),
            );
            report.line(
                "tag InitialRunId",
                id.initial_run_id.clone().ok_or_else(|| {
                    format!(
                        "instance has no {TAG_INITIAL_RUN_ID} tag: no boot signal can be written"
                    )
                }),
            );
            let tags = match imds.tag_source().await {
                Ok(TagSource::Metadata(_)) => "instance-metadata tags on".to_owned(),
                Ok(TagSource::Ec2Api) => {
                    "instance-metadata tags off; the agent asks ec2:DescribeTags".to_owned()
                }
                Err(e) => e.to_string(),
            };
            let sdk = crate::agent::aws_config(&id.region).await;
            // The same reading the expiry watchdog makes (metadata tags, or
            // ec2:DescribeTags when they are off).
            let terminator = crate::expiry::SelfTermination {
                imds: imds.clone(),
                ec2: aws_sdk_ec2::Client::new(&sdk),
                instance_id: id.instance_id.clone(),
            };
            let allow = match terminator.permission().await {
                crate::expiry::Permission::Allowed => {
                    "true: the agent terminates this instance once expired".to_owned()
                }
                crate::expiry::Permission::Denied(why) => {
                    format!("{why}: the agent will never terminate this instance")
                }
            };
            report.line("tag AllowSelfTermination", Ok(format!("{allow} ({tags})")));
            let table = crate::table::Table::new(
                aws_sdk_dynamodb::Client::new(&sdk),
                &settings.table,
                &id.instance_id,
            );
            report.line(
                "table",
                match table.read_instance(false).await {
                    Ok(Some(r)) => Ok(format!(
                        "{}: instance record found (state {:?})",
                        settings.table,
                        r.state.unwrap_or_default()
                    )),
                    Ok(None) => Ok(format!(
                        "{}: readable; no instance record yet",
                        settings.table
                    )),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{} check(s) failed", report.failed);
        ExitCode::FAILURE
    }
}

/// The isolation level, one line. It fails only when hardened mode is on
/// and jobs can become root (or read the logs) anyway: then the firewall
/// protects nothing, and the agent refuses to start.
async fn isolation(settings: &Settings) -> Result<String, String> {
    let facts = isolation::probe(settings.runner.user.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let level = isolation::decide(&facts);
    if settings.hardening.enabled && !level.is_isolated() {
        return Err(format!("{level}, which hardened mode cannot allow"));
    }
    Ok(level.to_string())
}

/// Hardened mode installs its rules with `nft`: it must be there.
async fn nft_version() -> Result<String, String> {
    let out = tokio::process::Command::new("nft")
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("nft: {e} (install the nftables package)"))?;
    if !out.status.success() {
        return Err(format!("nft --version failed: {}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn writable(dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let probe = dir.join(".check");
    std::fs::write(&probe, b"").map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(dir.display().to_string())
}

async fn runner_dir(settings: &Settings) -> Result<String, String> {
    let runner = &settings.runner;
    let dir = &runner.install_dir;
    // The listener is asked as the runner user, as the agent asks it; a
    // user that cannot be resolved is reported on its own line.
    let owner = RunnerUser::resolve(runner.user.as_deref()).ok().flatten();
    let found = present::find(dir, owner.as_ref()).await;
    let holds = match &found {
        Some(f) if f.verified => format!("{} holds runner {}", dir.display(), f.version),
        Some(f) => format!(
            "{} holds runner {} (unpacked without runner-agent: not verified)",
            dir.display(),
            f.version
        ),
        None => format!("{} holds no runner", dir.display()),
    };
    let version = match &runner.version {
        RunnerVersion::Latest => {
            return Ok(format!(
                "{holds}; the latest release is asked of {} at boot and installed if it differs",
                runner.release_api()
            ))
        }
        RunnerVersion::Pinned(version) => version,
    };
    if found.as_ref().is_some_and(|f| &f.version == version) {
        for script in ["config.sh", "bin/Runner.Listener"] {
            if !dir.join(script).is_file() {
                return Err(format!("{} lacks {script}", dir.display()));
            }
        }
        return Ok(holds);
    }
    let arch = releases::runner_arch();
    let digest = if runner.sha256.is_some() {
        "pinned in config"
    } else if releases::known_digest(version, arch).is_some() {
        "from the built-in table"
    } else if runner.release_api_url.is_some() {
        "from the release API"
    } else {
        return Err(format!(
            "runner {version} is not installed in {} and no SHA-256 is known for it: set runner.sha256",
            dir.display()
        ));
    };
    Ok(format!(
        "{holds}; {version} will be downloaded (checksum {digest})"
    ))
}

//! runner-userdata: renders what goes on a runner instance at boot (user
//! data, cloud-config, MIME, or a pre-runner script for
//! fleet-actions/ec2-runner-pool-manager) and the IAM policy the agent
//! needs. Same input, same bytes.

pub mod cli;
pub mod cloud_config;
pub mod download;
pub mod input;
pub mod mime;
pub mod os;
pub mod policy;
pub mod pool_manager;
pub mod shell;
pub mod unit;

use input::{Format, Plan};
use sha2::{Digest, Sha256};
use std::io::Write;

/// EC2 rejects user data over 16 KB (before base64).
pub const USER_DATA_LIMIT: usize = 16_384;
/// fleet-actions' bash wrapper embeds a pre-runner script in about 13 KB of
/// its own (its userdata-v2 templates, 13,304 characters before the table
/// and repository names at 78af40a, July 2025), all within the same 16 KB.
pub const POOL_MANAGER_WRAPPER_SIZE: usize = 13_304;
pub const POOL_MANAGER_BUDGET: usize = USER_DATA_LIMIT - POOL_MANAGER_WRAPPER_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the {format} output is {size} bytes, over EC2's user-data limit of {USER_DATA_LIMIT} bytes{hint}{culprit}")]
    TooLarge {
        format: &'static str,
        size: usize,
        hint: &'static str,
        /// The input that makes up most of it, when one does.
        culprit: String,
    },
    #[error(
        "`{0}`: has a line `EOF`, which would end fleet-actions' here-document (cat <<'EOF') early"
    )]
    EofLine(&'static str),
    #[error("--gzip: the pool-manager script is embedded in the control plane's own user data, which cloud-init would not decompress")]
    GzipPoolManager,
}

pub struct Rendered {
    pub bytes: Vec<u8>,
    /// Warnings for stderr.
    pub warnings: Vec<String>,
}

impl Rendered {
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(&self.bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

pub fn render(plan: &Plan, gzip: bool) -> Result<Rendered, RenderError> {
    let text = match plan.format {
        Format::Shell => shell::render(plan, shell::Variant::Full),
        Format::CloudConfig => cloud_config::render(plan),
        Format::Mime => mime::render(&shell::render(plan, shell::Variant::Full), &plan.mime_parts),
        Format::PoolManager => {
            if gzip {
                return Err(RenderError::GzipPoolManager);
            }
            let script = pool_manager::render(plan);
            if script.lines().any(|l| l == "EOF") {
                let eof_line = |text: &str| text.lines().any(|l| l == "EOF");
                let field = if plan.pre_runner.as_deref().is_some_and(eof_line) {
                    "pre_runner_script"
                } else {
                    "agent_config"
                };
                return Err(RenderError::EofLine(field));
            }
            script
        }
    };
    let bytes = if gzip {
        gzip_bytes(text.as_bytes())
    } else {
        text.into_bytes()
    };
    let mut warnings = Vec::new();
    if bytes.len() > USER_DATA_LIMIT {
        return Err(RenderError::TooLarge {
            format: plan.format.name(),
            size: bytes.len(),
            hint: if gzip || plan.format == Format::PoolManager {
                ""
            } else {
                " (try --gzip)"
            },
            culprit: largest_input(plan),
        });
    }
    if plan.format == Format::PoolManager && bytes.len() > POOL_MANAGER_BUDGET {
        warnings.push(format!(
            "the pool-manager script is {} bytes; fleet-actions wraps it in about {POOL_MANAGER_WRAPPER_SIZE} bytes of its own, and EC2 rejects user data over {USER_DATA_LIMIT} bytes: keep it under about {POOL_MANAGER_BUDGET} (bake the packages into the image: packages = false; shorten pre_runner_script)",
            bytes.len()
        ));
    }
    Ok(Rendered { bytes, warnings })
}

/// Names the operator's input that takes most of the output, if one takes
/// a third or more of the limit: what to shorten.
fn largest_input(plan: &Plan) -> String {
    let inputs = [
        (
            "pre_runner_script",
            plan.pre_runner.as_deref().map_or(0, str::len),
        ),
        (
            "mime_parts",
            plan.mime_parts.iter().map(|p| p.body.len()).sum(),
        ),
        ("agent_config", plan.config_toml.len()),
    ];
    match inputs.iter().max_by_key(|(_, size)| *size) {
        Some((field, size)) if *size >= USER_DATA_LIMIT / 3 => {
            format!("; `{field}` alone is {size} bytes")
        }
        _ => String::new(),
    }
}

/// gzip with no name and a zero timestamp, so the bytes depend on the
/// input alone.
fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

//! Command line: `run`, `status`, `check`, `pool`, `install` (and the hidden
//! `firewall`). Exit codes: 0 ok,
//! 1 failure (error chain on stderr, or a failed check), 2 usage error.

mod check;
mod firewall;
mod pool;
mod status;

use crate::config::{Settings, DEFAULT_CONFIG_PATH};
use crate::logging::LogFormat;
use anyhow::Context;
use clap::{Parser, Subcommand};
use runner_agent_common::cli::parse_args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "runner-agent",
    version,
    about = "On-instance agent for a pool of self-hosted GitHub Actions runners on EC2"
)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "RUNNER_AGENT_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log format on stderr (under systemd, text goes to the journal).
    #[arg(
        long,
        global = true,
        env = "RUNNER_AGENT_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (what the systemd unit starts).
    Run,
    /// Show what the agent is doing, from its state file.
    Status {
        /// Machine-readable output on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Preflight: config, IMDS, tags, table, runner directory. Exits 1 if
    /// any check fails.
    Check,
    /// The whole pool from its table, one line per instance (read-only;
    /// needs dynamodb:Query only).
    Pool(pool::PoolArgs),
    /// Download, verify and unpack the configured runner version (for
    /// baking images), then exit.
    Install,
    /// Hardened mode's firewall by hand: `apply` installs the table the
    /// agent installs at start, `remove` removes it (the agent leaves it
    /// in place when it stops). For maintenance, packaging and tests.
    #[command(hide = true)]
    Firewall {
        #[arg(value_enum)]
        action: firewall::Action,
    },
}

pub fn main() -> ExitCode {
    let cli: Cli = match parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    crate::logging::init(cli.log_format);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("runner-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let load = || Settings::load(&cli.config).context("loading configuration");
    match cli.command {
        Command::Run => crate::agent::run(load()?).await.map(|()| ExitCode::SUCCESS),
        Command::Status { json } => status::run(&load()?, json),
        Command::Check => Ok(check::run(&cli.config).await),
        Command::Pool(args) => pool::run(args).await,
        Command::Install => {
            let settings = load()?;
            let user = crate::runner::user::RunnerUser::resolve(settings.runner.user.as_deref())?;
            let outcome = crate::runner::install::ensure_installed(&settings.runner, user.as_ref())
                .await
                .context("installing the runner")?;
            println!("{outcome:?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Firewall { action } => firewall::run(&cli.config, action)
            .await
            .map(|()| ExitCode::SUCCESS),
    }
}

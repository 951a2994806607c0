//! Command line: `render` and `iam-policy`. Exit codes: 0 ok, 1 bad input
//! or a failed write (the reason on stderr, nothing written), 2 usage.

use crate::input::{Format, Overrides, Plan};
use crate::policy::{self, Scope};
use anyhow::{anyhow, Context};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "runner-userdata",
    version,
    about = "Renders runner-agent's boot scripts (user data, cloud-config, MIME, fleet-actions pre-runner script) and its IAM policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render user data (stdout, or --output). Its SHA-256 goes to stderr.
    Render(RenderArgs),
    /// Print the IAM policy the instance role needs (or, with
    /// --control-plane, the control plane's pass-role statement; with
    /// --operator, what `runner-agent pool` needs).
    IamPolicy(PolicyArgs),
}

#[derive(Debug, Args)]
struct RenderArgs {
    /// Input TOML (see docs/userdata.md). Flags override its values.
    input: Option<PathBuf>,
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// auto, al2023, ubuntu-22.04, ubuntu-24.04 or debian-12.
    #[arg(long)]
    os: Option<String>,
    /// agent_config.table
    #[arg(long)]
    table: Option<String>,
    /// agent_config.github.url
    #[arg(long, conflicts_with_all = ["owner", "repo"])]
    github_url: Option<String>,
    /// agent_config.github.owner (github.com)
    #[arg(long)]
    owner: Option<String>,
    /// agent_config.github.repo (github.com)
    #[arg(long)]
    repo: Option<String>,
    /// agent_config.runner.version
    #[arg(long)]
    runner_version: Option<String>,
    /// agent_config.runner.sha256
    #[arg(long)]
    runner_sha256: Option<String>,
    /// agent_config.runner.user (created at boot when missing)
    #[arg(long)]
    runner_user: Option<String>,
    /// agent.path: where the agent binary is (or is installed to).
    #[arg(long)]
    agent_path: Option<String>,
    /// Hardened mode (the input's `hardened = true`).
    #[arg(long)]
    hardened: bool,
    /// gzip the output (cloud-init decompresses it).
    #[arg(long)]
    gzip: bool,
    /// Write here (atomically) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct PolicyArgs {
    /// Input TOML: the table comes from its agent_config.
    input: Option<PathBuf>,
    #[arg(long)]
    table: Option<String>,
    #[arg(long, default_value = "*")]
    region: String,
    #[arg(long, default_value = "*")]
    account: String,
    #[arg(long, default_value = "aws")]
    partition: String,
    /// The control plane's side: iam:PassRole on --role-arn, to EC2.
    #[arg(long, requires = "role_arn", conflicts_with = "operator")]
    control_plane: bool,
    /// An operator's read-only policy for `runner-agent pool` (Query on
    /// the table).
    #[arg(long)]
    operator: bool,
    /// The instance role's ARN (with --control-plane).
    #[arg(long)]
    role_arn: Option<String>,
    /// The `[job_credentials]` role the agent assumes for each run: adds
    /// sts:AssumeRole (and sts:TagSession) on it, and on nothing else.
    /// Default: the input's agent_config.job_credentials.role_arn.
    #[arg(long, conflicts_with_all = ["control_plane", "operator"])]
    job_role_arn: Option<String>,
}

pub fn main() -> ExitCode {
    let cli: Cli = match runner_agent_common::cli::parse_args() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Render(args) => render(args),
        Command::IamPolicy(args) => iam_policy(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runner-userdata: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn render(args: RenderArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        format: args.format,
        os: args.os,
        table: args.table,
        github_url: args.github_url,
        github_owner: args.owner,
        github_repo: args.repo,
        runner_version: args.runner_version,
        runner_sha256: args.runner_sha256,
        runner_user: args.runner_user,
        agent_path: args.agent_path,
        hardened: args.hardened,
    };
    let plan = Plan::load(args.input.as_deref(), &overrides)?;
    let rendered = crate::render(&plan, args.gzip)?;
    for warning in &rendered.warnings {
        eprintln!("runner-userdata: warning: {warning}");
    }
    emit(args.output.as_deref(), &rendered.bytes)?;
    eprintln!(
        "sha256 {}  {} bytes ({}{})",
        rendered.sha256_hex(),
        rendered.bytes.len(),
        plan.format.name(),
        if args.gzip { ", gzip" } else { "" }
    );
    Ok(())
}

fn iam_policy(args: PolicyArgs) -> anyhow::Result<()> {
    let document = if args.control_plane {
        let arn = args.role_arn.as_deref().unwrap_or_default();
        policy::check_role_arn(arn).map_err(|e| anyhow!("--role-arn: {e}"))?;
        policy::control_plane(arn)
    } else {
        let scope = Scope {
            partition: args.partition,
            region: args.region,
            account: args.account,
        };
        policy::check_scope(&scope).map_err(|(flag, e)| anyhow!("{flag}: {e}"))?;
        let plan = match &args.input {
            Some(path) => Some(Plan::load(Some(path), &Overrides::default())?),
            None => None,
        };
        let table = match (args.table, &plan) {
            (Some(t), _) => t,
            (None, Some(plan)) => plan.table.clone(),
            (None, None) => return Err(anyhow!("give --table or an input file")),
        };
        let job_role = args
            .job_role_arn
            .or_else(|| plan.and_then(|p| p.job_role_arn));
        if let Some(arn) = &job_role {
            policy::check_role_arn(arn).map_err(|e| anyhow!("--job-role-arn: {e}"))?;
        }
        if !runner_agent_common::config::is_table_name(&table) {
            return Err(anyhow!("--table: {table:?} is not a DynamoDB table name"));
        }
        match args.operator {
            true => policy::operator(&table, &scope),
            false => policy::instance_role(&table, &scope, job_role.as_deref()),
        }
    };
    let mut text = serde_json::to_string_pretty(&document).expect("json");
    text.push('\n');
    emit(None, text.as_bytes())
}

fn emit(output: Option<&Path>, bytes: &[u8]) -> anyhow::Result<()> {
    match output {
        Some(path) => runner_agent_common::fs::write_atomically(path, bytes, 0o644)
            .with_context(|| format!("writing {}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(bytes)
                .and_then(|()| out.flush())
                .context("writing stdout")
        }
    }
}

//! `runner-agent pool`: the inspector's command line (`inspect/`). Runs on
//! an operator's machine with their credentials, or on an instance; needs
//! no agent configuration.

use crate::config::parse_duration;
use crate::inspect::{snapshot, view};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct PoolArgs {
    /// The pool's DynamoDB table.
    #[arg(long, env = "RUNNER_AGENT_TABLE")]
    table: String,
    /// AWS region (default: the SDK's, from AWS_REGION or the profile).
    #[arg(long)]
    region: Option<String>,
    /// Refresh every interval (e.g. `5s`) until interrupted.
    #[arg(long, value_parser = parse_duration)]
    watch: Option<Duration>,
    /// One JSON document per refresh on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: PoolArgs) -> anyhow::Result<ExitCode> {
    if !runner_agent_common::config::is_table_name(&args.table) {
        anyhow::bail!("--table: {:?} is not a DynamoDB table name", args.table);
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &args.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let client = aws_sdk_dynamodb::Client::new(&loader.load().await);
    let clear = args.watch.is_some() && !args.json && std::io::stdout().is_terminal();
    loop {
        let snapshot = snapshot(&client, &args.table).await?;
        let view = view::view(&snapshot, time::OffsetDateTime::now_utc());
        let out = match args.json {
            true => serde_json::to_string(&view)? + "\n",
            false => view::text(&view),
        };
        let mut stdout = std::io::stdout().lock();
        if clear {
            // Home and clear: a refreshing table, as `watch` shows one.
            write!(stdout, "\x1b[H\x1b[2J")?;
        }
        stdout.write_all(out.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        match args.watch {
            Some(every) => tokio::time::sleep(every).await,
            None => return Ok(ExitCode::SUCCESS),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::time::Duration;

    fn watch(every: &str) -> Result<Option<Duration>, clap::Error> {
        let argv = ["runner-agent", "pool", "--table", "acme-widgets-pool"];
        let cli = Cli::try_parse_from(argv.into_iter().chain(["--watch", every]))?;
        match cli.command {
            Command::Pool(args) => Ok(args.watch),
            other => panic!("parsed as {other:?}"),
        }
    }

    /// `--watch` reads a duration as the config does: humantime alone
    /// would take `1 0s` for ten seconds.
    #[test]
    fn watch_takes_a_duration_as_the_config_does() {
        assert_eq!(watch("5s").unwrap(), Some(Duration::from_secs(5)));
        for bad in ["1 0s", "5", "8d"] {
            let err = watch(bad).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
        }
    }
}

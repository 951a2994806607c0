//! The command-line contract of both binaries: exit 0 after help or
//! version, 2 on a usage error.

use clap::Parser;
use std::process::ExitCode;

/// Parses the command line. `Err`: clap printed help or version (exit 0)
/// or a usage error (exit 2).
pub fn parse_args<T: Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        }
    })
}

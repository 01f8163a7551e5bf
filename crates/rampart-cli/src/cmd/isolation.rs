//! `rampart isolation check FILE`: validate an isolation exception file and print the
//! nftables batch the agent would load. The work is in `rampart_agent::isolation`.

use std::path::PathBuf;
use std::process::ExitCode;

use rampart_agent::isolation::{self, IsolationError};

#[derive(Debug, clap::Args)]
pub struct IsolationArgs {
    #[command(subcommand)]
    command: IsolationCommand,
}

#[derive(Debug, clap::Subcommand)]
enum IsolationCommand {
    /// Validate an exception file (pf-style rules) and print the nftables table it
    /// compiles to, with placeholder server, gateway and resolver addresses. Errors
    /// are reported as FILE:LINE:COL; exit status 1.
    Check {
        /// The exception file.
        file: PathBuf,
    },
}

pub fn run(args: IsolationArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        IsolationCommand::Check { file } => check(file),
    }
}

fn check(file: PathBuf) -> anyhow::Result<ExitCode> {
    match isolation::parse_rules_file(&file) {
        Ok(rules) => {
            print!("{}", isolation::preview(rules));
            Ok(ExitCode::SUCCESS)
        }
        Err(IsolationError::Rules(errors)) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
        // Printed here rather than through anyhow: the error already names its cause.
        Err(other) => {
            eprintln!("rampart: {other}");
            Ok(ExitCode::FAILURE)
        }
    }
}

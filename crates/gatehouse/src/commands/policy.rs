//! `gatehouse policy explain …`: which rule decides an operation, and why.

use std::path::PathBuf;

use super::{CommandError, CommandResult};

/// Policy subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Explain the decision for one operation.
    Explain {
        /// The config file naming the policy.
        #[arg(long)]
        config: PathBuf,
        /// Subject to decide for.
        #[arg(long = "as")]
        subject: String,
        /// Groups of that subject (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Target name.
        #[arg(long)]
        target: String,
        /// A SQL string.
        #[arg(long, conflicts_with_all = ["exec", "http"])]
        sql: Option<String>,
        /// A shell command line.
        #[arg(long, conflicts_with_all = ["sql", "http"])]
        exec: Option<String>,
        /// METHOD PATH of an HTTP request.
        #[arg(long, num_args = 2, value_names = ["METHOD", "PATH"], conflicts_with_all = ["sql", "exec"])]
        http: Option<Vec<String>>,
    },
}

/// Runs the command.
pub fn run(_command: Command) -> CommandResult {
    Err(CommandError::NotYetAvailable("policy explain"))
}

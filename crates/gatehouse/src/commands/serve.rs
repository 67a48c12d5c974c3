//! `gatehouse serve --config FILE`: run the listeners; SIGTERM/ctrl-c drains sessions and flushes
//! the audit log; SIGHUP reloads the policy atomically.

use std::path::PathBuf;

use super::{CommandError, CommandResult};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
}

/// Runs the command.
pub fn run(_args: Args) -> CommandResult {
    Err(CommandError::NotYetAvailable("serve"))
}

//! `gatehouse check-config FILE`: parse and validate a config; errors carry line numbers.

use std::path::PathBuf;

use super::{CommandError, CommandResult};

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (TOML).
    pub file: PathBuf,
}

/// Runs the command.
pub fn run(_args: Args) -> CommandResult {
    Err(CommandError::NotYetAvailable("check-config"))
}

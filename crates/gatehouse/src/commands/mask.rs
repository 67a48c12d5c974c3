//! `gatehouse mask [--config FILE] [--profile NAME] [--json] [--report]`: the masking core as a Unix
//! filter, streaming stdin to stdout in constant memory.

use std::path::PathBuf;

use super::{CommandError, CommandResult};

/// Arguments of `mask`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file with masking profiles.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Profile to apply.
    #[arg(long)]
    pub profile: Option<String>,
    /// Input is JSON: use the streaming JSON masker.
    #[arg(long)]
    pub json: bool,
    /// Print findings (rule, offset, length — never values) to stderr.
    #[arg(long)]
    pub report: bool,
}

/// Runs the command.
pub fn run(_args: Args) -> CommandResult {
    Err(CommandError::NotYetAvailable("mask"))
}

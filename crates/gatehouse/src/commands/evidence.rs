//! `gatehouse evidence export|verify`: ISO/IEC 27001 evidence bundles.

use std::path::PathBuf;

use super::{CommandError, CommandResult};

/// Evidence subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Export an evidence bundle.
    Export {
        /// The audit directory.
        #[arg(long)]
        dir: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// From (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Until (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Verify a bundle offline.
    Verify {
        /// The bundle directory.
        bundle: PathBuf,
    },
}

/// Runs the command.
pub fn run(_command: Command) -> CommandResult {
    Err(CommandError::NotYetAvailable("evidence"))
}

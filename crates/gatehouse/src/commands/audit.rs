//! `gatehouse audit verify|sessions|replay`.

use std::path::PathBuf;

use super::{CommandError, CommandResult};

/// Audit subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Verify the audit log: exit 0 when intact, non-zero naming the first bad record.
    Verify {
        /// The audit directory.
        dir: PathBuf,
    },
    /// List sessions.
    Sessions {
        /// The audit directory.
        dir: PathBuf,
        /// Only this identity.
        #[arg(long)]
        identity: Option<String>,
        /// Only since this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
    /// Replay a session (SQL transcript; asciicast v2 for terminals).
    Replay {
        /// Session id.
        session: String,
        /// The audit directory.
        #[arg(long)]
        dir: PathBuf,
        /// Write to a file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs the command.
pub fn run(_command: Command) -> CommandResult {
    Err(CommandError::NotYetAvailable("audit"))
}

//! `gatehouse approvals list|show|approve|deny`: against the admin API with the approver's token.

use super::{CommandError, CommandResult};

/// Approvals subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List requests.
    List,
    /// Show one request.
    Show {
        /// Request id.
        id: String,
    },
    /// Approve a request.
    Approve {
        /// Request id.
        id: String,
        /// Justification (required).
        #[arg(long)]
        reason: String,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        id: String,
        /// Justification (required).
        #[arg(long)]
        reason: String,
    },
}

/// Runs the command.
pub fn run(_command: Command) -> CommandResult {
    Err(CommandError::NotYetAvailable("approvals"))
}

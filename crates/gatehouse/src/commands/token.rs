//! `gatehouse token --key FILE --sub SUBJECT [--group G]... [--ttl 15m]`: mint a dev token.

use std::path::PathBuf;

use super::{CommandError, CommandResult};

/// Arguments of `token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dev issuer's private key file.
    #[arg(long)]
    pub key: PathBuf,
    /// Subject of the token.
    #[arg(long)]
    pub sub: String,
    /// Groups (repeatable).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Lifetime, e.g. `15m`, `1h`.
    #[arg(long, default_value = "15m")]
    pub ttl: String,
}

/// Runs the command.
pub fn run(_args: Args) -> CommandResult {
    Err(CommandError::NotYetAvailable("token"))
}

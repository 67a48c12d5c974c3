//! `gatehouse login --token JWT`: exchange a JWT for a short-lived gateway key via the admin API.

use super::{CommandError, CommandResult};

/// Arguments of `login`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The JWT to exchange (or `GATEHOUSE_TOKEN`).
    #[arg(long, env = "GATEHOUSE_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The admin API base URL.
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_URL",
        default_value = "https://127.0.0.1:8443"
    )]
    pub admin_url: String,
}

/// Runs the command.
pub fn run(_args: Args) -> CommandResult {
    Err(CommandError::NotYetAvailable("login"))
}

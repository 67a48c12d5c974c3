//! `gatehouse token --key FILE --sub SUBJECT [--group G]... [--ttl 15m]`: mint a dev token with
//! the local dev issuer's key (created if absent), printed on stdout.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{CommandError, CommandResult};

/// Arguments of `token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The dev issuer's private key file (created if absent).
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
    /// Issuer name (must match the gateway's `[identity.dev_issuer]`).
    #[arg(long, default_value = "https://gatehouse.local/dev")]
    pub issuer: String,
    /// Audience (must match the gateway's `[identity.dev_issuer]`).
    #[arg(long, default_value = "gatehouse")]
    pub audience: String,
}

/// Runs the command.
pub fn run(args: Args) -> CommandResult {
    let ttl = crate::duration::parse_duration(&args.ttl).map_err(CommandError::Usage)?;
    if args.sub.trim().is_empty() {
        return Err(CommandError::Usage("--sub must not be empty".into()));
    }
    let issuer =
        gatehouse_identity::DevIssuer::load_or_create(&args.key, args.issuer, args.audience)
            .map_err(|e| {
                CommandError::Failed(format!("dev issuer key {}: {e}", args.key.display()))
            })?;
    let token = issuer
        .mint(&args.sub, &args.groups, ttl)
        .map_err(|e| CommandError::Failed(format!("minting the token: {e}")))?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

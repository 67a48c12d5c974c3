//! `gatehouse serve --config FILE`: run the listeners; SIGTERM/ctrl-c drains sessions, records the
//! final egress counters, then seals the audit log (a final checkpoint and a signed seal, pushed
//! to the witnesses); SIGHUP reloads the policy atomically.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{CommandError, CommandResult};

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> CommandResult {
    let loaded = crate::config::LoadedConfig::load(&args.config)?;
    let runtime = crate::gateway::runtime()
        .map_err(|e| CommandError::Failed(format!("tokio runtime: {e}")))?;
    runtime.block_on(crate::gateway::run(loaded, None))?;
    Ok(ExitCode::SUCCESS)
}

//! `gatehouse check-config FILE`: parse and validate a config without starting anything; every
//! error names file, line and column.

use std::path::PathBuf;
use std::process::ExitCode;

use super::CommandResult;

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file (TOML).
    pub file: PathBuf,
}

/// Runs the command.
pub fn run(args: Args) -> CommandResult {
    let loaded = crate::config::LoadedConfig::load(&args.file)?;
    let summary = crate::pipeline::check(&loaded)?;
    // The audit key and witness must not lie inside the audit log directory (an error); other
    // doubtful places are warnings.
    for w in loaded.audit_paths()?.warnings {
        eprintln!("{}: warning: {w}", args.file.display());
    }
    println!("{}: OK ({summary})", args.file.display());
    Ok(ExitCode::SUCCESS)
}

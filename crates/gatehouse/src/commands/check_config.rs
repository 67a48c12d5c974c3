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
    for w in read_only_warnings(&loaded)? {
        eprintln!("{}: warning: {w}", args.file.display());
    }
    println!("{}: OK ({summary})", args.file.display());
    Ok(ExitCode::SUCCESS)
}

/// For every postgres target marked `read_only`, the ways its upstream role can write, read from
/// the upstream's catalog (one line each), or a line saying the role could not be checked.
pub fn read_only_warnings(
    loaded: &crate::config::LoadedConfig,
) -> Result<Vec<String>, super::CommandError> {
    let targets: Vec<_> = loaded
        .config
        .targets
        .iter()
        .filter(|t| t.get_ref().protocol == "postgres" && t.get_ref().read_only)
        .map(|t| crate::listeners::pg::pg_target(loaded, t))
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| super::CommandError::Failed(format!("tokio runtime: {e}")))?;
    Ok(runtime.block_on(async {
        let mut out = Vec::new();
        for t in &targets {
            out.extend(crate::listeners::pg::read_only_findings(t).await);
        }
        out
    }))
}

//! Config → pipeline: builds each layer from its section and checks what can be checked without
//! starting anything (policy file, masking profiles, TLS files, secrets).

use gatehouse_masking::MaskingEngine;

use crate::commands::CommandError;
use crate::config::LoadedConfig;

/// Checks everything a `serve` would load; returns a one-line summary.
pub fn check(loaded: &LoadedConfig) -> Result<String, CommandError> {
    let c = &loaded.config;
    MaskingEngine::new(&c.masking)
        .map_err(|e| CommandError::Failed(format!("{}: [masking]: {e}", loaded.path.display())))?;
    let policy_path = loaded.resolve_path(&c.policy.file);
    if !policy_path.exists() {
        return Err(CommandError::Failed(format!(
            "{}: policy file {} does not exist",
            loaded.path.display(),
            policy_path.display()
        )));
    }
    let policy = gatehouse_policy::CompiledPolicy::from_file(&policy_path)
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let _ = policy.rule_count();
    for l in &c.listeners.postgres {
        if let Some(tls) = &l.get_ref().tls {
            for p in [&tls.cert, &tls.key] {
                let p = loaded.resolve_path(p);
                if !p.exists() {
                    return Err(loaded
                        .error_at(
                            l.span().start,
                            format!("TLS file {} does not exist", p.display()),
                        )
                        .into());
                }
            }
        }
    }
    Ok(format!(
        "{} target(s), {} postgres listener(s), {} masking profile(s)",
        c.targets.len(),
        c.listeners.postgres.len(),
        c.masking.profiles.len()
    ))
}

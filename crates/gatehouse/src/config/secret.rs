//! Secret references: a target's password or key comes from an environment variable or a file —
//! inline only when explicitly allowed. Resolved values never appear in `Debug` output.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where a secret comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, untagged)]
pub enum SecretRef {
    /// `{ env = "NAME" }`.
    Env {
        /// Environment variable name.
        env: String,
    },
    /// `{ file = "path" }` (trailing newline trimmed).
    File {
        /// File path (relative to the config file).
        file: PathBuf,
    },
    /// `{ value = "…" }` — refused unless `gateway.allow_inline_secrets = true`.
    Inline {
        /// The secret itself.
        value: String,
    },
}

/// A resolved secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ResolvedSecret(String);

impl ResolvedSecret {
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ResolvedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ResolvedSecret(<{} bytes redacted>)", self.0.len())
    }
}

impl SecretRef {
    /// Resolves the reference.
    pub fn resolve(
        &self,
        allow_inline: bool,
        resolve_path: impl Fn(&Path) -> PathBuf,
    ) -> Result<ResolvedSecret, String> {
        let value = match self {
            SecretRef::Env { env } => std::env::var(env)
                .map_err(|_| format!("secret: environment variable `{env}` is not set"))?,
            SecretRef::File { file } => {
                let path = resolve_path(file);
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("secret: cannot read `{}`: {e}", path.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
            SecretRef::Inline { value } => {
                if !allow_inline {
                    return Err("inline secrets are refused: use { env = \"NAME\" } or { file = \"path\" } \
                                (or set gateway.allow_inline_secrets = true)"
                        .into());
                }
                value.clone()
            }
        };
        if value.is_empty() {
            return Err("secret is empty".into());
        }
        Ok(ResolvedSecret(value))
    }
}

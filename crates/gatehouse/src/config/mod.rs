//! The gateway's one TOML config file: listeners, identity providers, targets, masking profiles,
//! policy file, audit and recording stores, approval store, admin API.
//!
//! Promises: unknown keys are errors; every error names the file, line and column; secrets (target
//! passwords, keys, tokens) are referenced from environment variables or files — inline secrets are
//! refused unless `gateway.allow_inline_secrets = true`; relative paths are resolved against the
//! config file's directory.

mod secret;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use secret::{ResolvedSecret, SecretRef};

/// The whole config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateway-wide settings.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// The admin API (health, metrics, approvals, sessions, token exchange).
    pub admin: Option<AdminSection>,
    /// Who may connect.
    #[serde(default)]
    pub identity: IdentitySection,
    /// The policy file.
    pub policy: PolicySection,
    /// Masking profiles.
    #[serde(default)]
    pub masking: gatehouse_masking::MaskingConfig,
    /// The audit log and session recordings.
    #[serde(default)]
    pub audit: AuditSection,
    /// The approval store and notifications (default: a journal in the data directory).
    pub approvals: Option<gatehouse_approvals::ApprovalsConfig>,
    /// Protocol listeners.
    #[serde(default)]
    pub listeners: ListenersSection,
    /// Targets behind the gateway.
    #[serde(default)]
    pub targets: Vec<Spanned<TargetSection>>,
}

/// `[gateway]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Where the gateway keeps state by default (audit log, recordings, approvals journal, keys).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Allow secrets written inline in this file (refused by default).
    #[serde(default)]
    pub allow_inline_secrets: bool,
    /// How long SIGTERM waits for sessions to drain.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            allow_inline_secrets: false,
            shutdown_grace_secs: default_grace(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("gatehouse-data")
}

fn default_grace() -> u64 {
    30
}

/// TLS certificate and key files (PEM).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS (strongly recommended; plain HTTP is accepted only on loopback).
    pub tls: Option<TlsFiles>,
    /// Groups allowed to list sessions and read metrics (approvers are checked per rule).
    #[serde(default)]
    pub operator_groups: Vec<String>,
}

/// `[identity]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// A local dev issuer (quickstart, tests): its key file, created if absent.
    pub dev_issuer: Option<DevIssuerSection>,
    /// OIDC providers.
    #[serde(default)]
    pub oidc: Vec<gatehouse_identity::OidcProviderConfig>,
    /// Service-account API keys (stored as hashes).
    #[serde(default)]
    pub service_accounts: Vec<gatehouse_identity::ServiceAccountKeyConfig>,
    /// Longest lifetime of a gateway key from token exchange.
    #[serde(default = "default_gateway_key_ttl")]
    pub gateway_key_max_ttl_secs: u64,
}

fn default_gateway_key_ttl() -> u64 {
    3600
}

/// `[identity.dev_issuer]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuerSection {
    /// Private key file (created on first use).
    pub key: PathBuf,
    /// Issuer name put in tokens.
    #[serde(default = "default_dev_issuer")]
    pub issuer: String,
    /// Audience put in tokens and required on verification.
    #[serde(default = "default_audience")]
    pub audience: String,
}

fn default_dev_issuer() -> String {
    "https://gatehouse.local/dev".into()
}

fn default_audience() -> String {
    "gatehouse".into()
}

/// `[policy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// The policy file (TOML rules).
    pub file: PathBuf,
}

/// `[audit]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Audit log directory (default: `<data_dir>/audit`).
    pub dir: Option<PathBuf>,
    /// `os` (written to the OS) or `fsync` (group-committed fdatasync).
    #[serde(default = "default_durability")]
    pub durability: String,
    /// Checkpoint signing key (ed25519, created if absent; default `<data_dir>/audit-signing.key`).
    pub signing_key: Option<PathBuf>,
    /// Sign a checkpoint every N records.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// …or every T milliseconds.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// Copy each checkpoint into this directory too (on other storage), so that cutting off a
    /// whole tail of segments is detectable.
    pub witness_dir: Option<PathBuf>,
    /// This gateway instance's log id (each instance writes its own chain).
    #[serde(default = "default_log_id")]
    pub log_id: String,
    /// Rotate segments at this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_max_bytes: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            dir: None,
            durability: default_durability(),
            signing_key: None,
            checkpoint_every_records: default_checkpoint_records(),
            checkpoint_interval_ms: default_checkpoint_ms(),
            witness_dir: None,
            log_id: default_log_id(),
            segment_max_bytes: default_segment_bytes(),
        }
    }
}

fn default_log_id() -> String {
    "gw1".into()
}
fn default_durability() -> String {
    "fsync".into()
}
fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_ms() -> u64 {
    5000
}
fn default_segment_bytes() -> u64 {
    64 << 20
}

/// `[listeners]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersSection {
    /// PostgreSQL listeners.
    #[serde(default)]
    pub postgres: Vec<Spanned<PgListenerSection>>,
}

/// `[[listeners.postgres]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgListenerSection {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS for clients (SSLRequest).
    pub tls: Option<TlsFiles>,
    /// Accept the token as a cleartext password without TLS (only sensible on loopback).
    #[serde(default)]
    pub allow_plaintext_password: bool,
    /// Largest client message accepted, bytes.
    pub max_message_bytes: Option<usize>,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Masked non-text values become NULL (`null`, default) or the statement is refused (`refuse`).
    #[serde(default)]
    pub non_text_masking: Option<String>,
    /// End sessions when the caller's token expires (default true).
    pub end_at_token_expiry: Option<bool>,
}

/// `[[targets]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Unique name (psql `database`, ssh `user@TARGET`, …).
    pub name: String,
    /// `postgres` (more protocols arrive with their crates).
    pub protocol: String,
    /// `host:port`, or a Unix socket directory for PostgreSQL (`/path/to/dir:5432`).
    pub address: String,
    /// Tags for policy matching.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Upstream user.
    pub user: Option<String>,
    /// Upstream database (PostgreSQL).
    pub database: Option<String>,
    /// Upstream password.
    pub password: Option<Spanned<SecretRef>>,
    /// Upstream TLS: `disable` or `verify-full` (default `verify-full` for TCP).
    pub tls: Option<String>,
    /// CA file for upstream TLS (default: system roots).
    pub ca_file: Option<PathBuf>,
}

/// A config error with its location.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// 1-based (line, column) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    (line, column)
}

/// A loaded config and where it came from.
#[derive(Debug)]
pub struct LoadedConfig {
    /// The parsed config.
    pub config: Config,
    /// The file's text (for locating later errors).
    pub text: String,
    /// The file's path.
    pub path: PathBuf,
}

impl LoadedConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        let config = parse(&text).map_err(|(offset, message)| {
            let (line, column) = line_col(&text, offset);
            ConfigError {
                file: path.display().to_string(),
                line,
                column,
                message,
            }
        })?;
        let loaded = LoadedConfig {
            config,
            text,
            path: path.to_path_buf(),
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// An error at byte `offset` of the file.
    pub fn error_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_col(&self.text, offset);
        ConfigError {
            file: self.path.display().to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Resolves a path relative to the config file's directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// The data directory, resolved.
    pub fn data_dir(&self) -> PathBuf {
        self.resolve_path(&self.config.gateway.data_dir)
    }

    /// Resolves a secret reference (env var, file, or inline when allowed).
    pub fn resolve_secret(
        &self,
        secret: &Spanned<SecretRef>,
    ) -> Result<ResolvedSecret, ConfigError> {
        secret
            .get_ref()
            .resolve(self.config.gateway.allow_inline_secrets, |p| {
                self.resolve_path(p)
            })
            .map_err(|message| self.error_at(secret.span().start, message))
    }

    /// Checks what serde cannot: unique target names, known protocols and values, secrets
    /// resolvable, listener/target consistency.
    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let mut names = std::collections::BTreeSet::new();
        for t in &c.targets {
            let span = t.span().start;
            let target = t.get_ref();
            if target.name.is_empty() {
                return Err(self.error_at(span, "target `name` is empty"));
            }
            if !names.insert(target.name.clone()) {
                return Err(self.error_at(span, format!("duplicate target name `{}`", target.name)));
            }
            match target.protocol.as_str() {
                "postgres" => {
                    if target.database.is_none() || target.user.is_none() {
                        return Err(self.error_at(
                            span,
                            format!(
                                "postgres target `{}` needs `user` and `database`",
                                target.name
                            ),
                        ));
                    }
                    if let Some(tls) = &target.tls
                        && !matches!(tls.as_str(), "disable" | "verify-full")
                    {
                        return Err(self.error_at(
                            span,
                            format!(
                                "target `{}`: tls must be `disable` or `verify-full`, not `{tls}`",
                                target.name
                            ),
                        ));
                    }
                }
                other => {
                    return Err(self.error_at(
                        span,
                        format!(
                            "target `{}`: unknown protocol `{other}` (known: postgres)",
                            target.name
                        ),
                    ));
                }
            }
            if let Some(secret) = &target.password {
                self.resolve_secret(secret)?;
            }
        }
        for l in &c.listeners.postgres {
            if let Some(mode) = &l.get_ref().non_text_masking
                && !matches!(mode.as_str(), "null" | "refuse")
            {
                return Err(self.error_at(
                    l.span().start,
                    format!("non_text_masking must be `null` or `refuse`, not `{mode}`"),
                ));
            }
        }
        if !matches!(c.audit.durability.as_str(), "os" | "fsync") {
            return Err(self.error_at(
                0,
                format!(
                    "audit.durability must be `os` or `fsync`, not `{}`",
                    c.audit.durability
                ),
            ));
        }
        if c.identity.dev_issuer.is_none()
            && c.identity.oidc.is_empty()
            && c.identity.service_accounts.is_empty()
        {
            return Err(self.error_at(0, "no identity provider configured: add [identity.dev_issuer], [[identity.oidc]] or [[identity.service_accounts]]"));
        }
        Ok(())
    }
}

/// Parses config text; on error returns (byte offset, message).
pub fn parse(text: &str) -> Result<Config, (usize, String)> {
    toml::from_str::<Config>(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        (offset, e.message().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 8), (2, 3));
    }
}

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
    /// Checkpoint signing key (ed25519, created mode 0600 if absent; default
    /// `<data_dir>/audit-signing.key`). Keep it outside the data directory: whoever holds it can
    /// sign checkpoints. A key inside the audit log directory is refused; a key in the data
    /// directory is warned about; a key file others may read is refused.
    pub signing_key: Option<PathBuf>,
    /// Sign a checkpoint every N records.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// …or every T milliseconds.
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// Keep every signed checkpoint and the seal in this directory too, one file each (on other
    /// storage than the audit log), so that cutting off the end of the log is detectable
    /// (`gatehouse audit verify --witness <dir>`). Refused inside the audit log directory.
    pub witness_dir: Option<PathBuf>,
    /// POST every signed checkpoint and the seal to this URL (a witness on a separate system):
    /// `http://` on loopback or a private network, or `https://` with `witness_ca`.
    pub witness_url: Option<String>,
    /// CA certificate(s) (PEM) an `https://` witness's certificate must chain to (no other roots
    /// are trusted).
    pub witness_ca: Option<PathBuf>,
    /// Keep every signed checkpoint and the seal as its own object in an S3-compatible bucket
    /// whose default retention (object lock) the operator sets (`[audit.witness_s3]`).
    pub witness_s3: Option<WitnessS3>,
    /// This gateway instance's log id (each instance writes its own chain).
    #[serde(default = "default_log_id")]
    pub log_id: String,
    /// Rotate segments at this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_max_bytes: u64,
}

/// `[audit.witness_s3]`: an object-storage witness. Credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the instance's role),
/// never from this file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessS3 {
    /// The bucket (created by the operator with object lock and a default retention).
    pub bucket: String,
    /// Key prefix; objects are `<prefix>/<log id>/<sequence>.checkpoint.json`.
    #[serde(default = "default_witness_prefix")]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible service (default: AWS for `region`).
    pub endpoint: Option<String>,
    /// Region (default: `AWS_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Permit an `http://` endpoint (loopback or a private network only).
    #[serde(default)]
    pub allow_http: bool,
}

fn default_witness_prefix() -> String {
    "gatehouse-witness".into()
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
            witness_url: None,
            witness_ca: None,
            witness_s3: None,
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
    /// HTTP(S) API listeners.
    #[serde(default)]
    pub http: Vec<Spanned<HttpListenerSection>>,
    /// SSH listeners.
    #[serde(default)]
    pub ssh: Vec<Spanned<SshListenerSection>>,
    /// Kubernetes API listeners.
    #[serde(default)]
    pub kubernetes: Vec<Spanned<K8sListenerSection>>,
}

/// `[[listeners.kubernetes]]`: serves every `kubernetes` target; `/k8s/<target>/…` picks one,
/// other paths go to `default_target` (or the only target).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sListenerSection {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS for clients (kubectl requires it unless the kubeconfig says `insecure`; plain HTTP is
    /// only allowed on loopback).
    pub tls: Option<TlsFiles>,
    /// The target paths without a `/k8s/<name>` prefix go to.
    pub default_target: Option<String>,
    /// How long a reviewed request is held before `429` + `Retry-After` (client-go retries).
    pub review_hold_ms: Option<u64>,
    /// `Retry-After` seconds of a pending approval.
    pub retry_after_s: Option<u64>,
    /// Bytes of each masked body kept in the session recording.
    pub record_body_cap: Option<usize>,
    /// Idle time after which a tty exec session's stream maskers emit their held-back tail, ms
    /// (logs and exec without a tty never release held bytes on a timer).
    pub idle_flush_ms: Option<u64>,
    /// Size limits (defaults in the gatehouse-k8s docs).
    pub limits: Option<gatehouse_k8s::Limits>,
    /// Timeouts (defaults in the gatehouse-k8s docs).
    pub timeouts: Option<gatehouse_k8s::Timeouts>,
}

/// `[[listeners.http]]`: serves every `http` target, routed by `path_prefix` or `host`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListenerSection {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// TLS for clients (HTTP/2 and HTTP/1.1 by ALPN). Plain HTTP only on loopback.
    pub tls: Option<TlsFiles>,
    /// How long a reviewed request is held waiting for approval before `409` + `Retry-After`.
    pub review_hold_ms: Option<u64>,
    /// `Retry-After` seconds sent with a `409` for a pending approval.
    pub retry_after_s: Option<u64>,
    /// Bytes of each masked body kept in the session recording.
    pub record_body_cap: Option<usize>,
    /// `%2F`/`%5C` in paths: `opaque` (default) or `reject`.
    pub encoded_separators: Option<gatehouse_http::EncodedSeparatorPolicy>,
    /// Bodies the gateway cannot mask: `pass_and_hash` (default: passed raw where the rule says
    /// `binary = "raw"`, refused otherwise) or `refuse` (always); see the gatehouse-http docs.
    pub other_content: Option<gatehouse_http::OtherContentPolicy>,
    /// Header and body size limits (defaults in the gatehouse-http docs).
    pub limits: Option<gatehouse_http::Limits>,
    /// Timeouts (defaults in the gatehouse-http docs).
    pub timeouts: Option<gatehouse_http::Timeouts>,
    /// Serving threads, each with its own runtime and upstream pools (1-256; default: one per
    /// CPU). 1 serves on the gateway's shared runtime.
    pub threads: Option<usize>,
}

/// `[[listeners.ssh]]`: serves every `ssh` target (`ssh TARGET@gateway`, `ssh login@TARGET@gateway`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshListenerSection {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The gateway's host key (default `<data_dir>/ssh_host_ed25519_key`, generated if absent).
    pub host_key: Option<PathBuf>,
    /// Environment variables clients may set (default `LANG`, `LC_*`, `TERM`).
    pub env_allow: Option<Vec<String>>,
    /// Failed logins allowed per source address within a window.
    pub login_rate_limit: Option<gatehouse_ssh::LoginRateLimit>,
    /// How long a rejected login takes, milliseconds (default 1000).
    pub auth_rejection_time_ms: Option<u64>,
    /// End the connection when the caller's identity expires (default true).
    pub end_session_on_identity_expiry: Option<bool>,
    /// Close idle connections after this many seconds (0: never; default 3600).
    pub inactivity_timeout_secs: Option<u64>,
    /// Text sent to clients before login (OpenSSH prints it on stderr). Default: none, so
    /// nothing extra appears on a client's stderr.
    pub banner: Option<String>,
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
    /// Most statements in one simple-protocol Query message (default 1000).
    pub max_statements_per_query: Option<usize>,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: Option<u64>,
    /// Masked non-text values become NULL (`null`, default) or the statement is refused (`refuse`).
    #[serde(default)]
    pub non_text_masking: Option<String>,
    /// End sessions when the caller's token expires (default true).
    pub end_at_token_expiry: Option<bool>,
    /// Most concurrent sessions of one identity on this listener (default 20; 0: no cap). Each
    /// session holds one upstream connection; past the cap a login is refused with FATAL 53300.
    pub max_sessions_per_identity: Option<usize>,
    /// Most concurrent sessions on each of its targets, all identities together (default: no
    /// cap; 0: no cap). Set it below the server's `max_connections` minus what others need.
    pub max_sessions_per_target: Option<usize>,
}

/// `[[targets]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Unique name (psql `database`, ssh `TARGET@gateway`, HTTP route, …).
    pub name: String,
    /// `postgres`, `http`, `ssh` or `kubernetes`.
    pub protocol: String,
    /// `host:port` (postgres, ssh), or a Unix socket directory for PostgreSQL
    /// (`/path/to/dir:5432`).
    pub address: Option<String>,
    /// Tags for policy matching.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Upstream user (postgres role; ssh login).
    pub user: Option<String>,
    /// Upstream database (postgres).
    pub database: Option<String>,
    /// Upstream password (postgres, ssh).
    pub password: Option<Spanned<SecretRef>>,
    /// Upstream TLS: `disable` or `verify-full` (postgres; default `verify-full` for TCP).
    pub tls: Option<String>,
    /// CA file for upstream TLS (postgres, http; default: system roots).
    pub ca_file: Option<PathBuf>,
    /// `http://host:port[/base]` or `https://…` (http).
    pub upstream: Option<String>,
    /// Route requests whose path starts with this prefix; the prefix is removed (http).
    pub path_prefix: Option<String>,
    /// Route requests whose `Host` is this name (http).
    pub host: Option<String>,
    /// The credential the gateway injects upstream (http).
    pub credential: Option<Spanned<CredentialSection>>,
    /// The OpenSSH private key the gateway logs in with (ssh).
    pub private_key: Option<Spanned<SecretRef>>,
    /// How the target's host key is verified (ssh): `{ kind = "fingerprint", sha256 = "SHA256:…" }`,
    /// `{ kind = "public_key", openssh = "ssh-ed25519 …" }` or `{ kind = "known_hosts", path = "…" }`.
    pub host_key: Option<gatehouse_ssh::UpstreamHostKey>,
    /// The API server URL, `https://host:port` (kubernetes; optional with a kubeconfig credential).
    pub server: Option<String>,
    /// Send the caller's identity as `Impersonate-User`/`Impersonate-Group` (kubernetes).
    pub impersonate: Option<bool>,
    /// The target only needs reads, so its upstream role should be unable to write (postgres):
    /// `check-config` reads the role's privileges from the catalog and warns about every way it
    /// can write (`serve` also logs them at start).
    #[serde(default)]
    pub read_only: bool,
}

/// An HTTP target's injected credential; the secret comes from an env var or a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialSection {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// The token.
        secret: SecretRef,
    },
    /// `Authorization: Basic base64(username:secret)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        secret: SecretRef,
    },
    /// `<name>: <secret>`.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        secret: SecretRef,
    },
    /// `?<param>=<secret>`.
    Query {
        /// Query parameter.
        param: String,
        /// Parameter value.
        secret: SecretRef,
    },
    /// A TLS client certificate (kubernetes).
    ClientCert {
        /// PEM certificate chain.
        cert_file: PathBuf,
        /// PEM private key.
        key_file: PathBuf,
    },
    /// One context of a kubeconfig file: server, CA and user credential (kubernetes).
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// The context (default: the file's `current-context`).
        context: Option<String>,
    },
}

impl CredentialSection {
    /// The secret reference (file-based credentials have none).
    pub fn secret(&self) -> Option<&SecretRef> {
        match self {
            CredentialSection::Bearer { secret }
            | CredentialSection::Basic { secret, .. }
            | CredentialSection::Header { secret, .. }
            | CredentialSection::Query { secret, .. } => Some(secret),
            CredentialSection::ClientCert { .. } | CredentialSection::Kubeconfig { .. } => None,
        }
    }

    /// The `kind` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialSection::Bearer { .. } => "bearer",
            CredentialSection::Basic { .. } => "basic",
            CredentialSection::Header { .. } => "header",
            CredentialSection::Query { .. } => "query",
            CredentialSection::ClientCert { .. } => "client_cert",
            CredentialSection::Kubeconfig { .. } => "kubeconfig",
        }
    }
}

/// The fields each protocol's targets use (everything else is an error, so a typo'd or misplaced
/// setting is never silently ignored).
const TARGET_FIELDS: &[(&str, &[&str])] = &[
    ("address", &["postgres", "ssh"]),
    ("user", &["postgres", "ssh"]),
    ("database", &["postgres"]),
    ("password", &["postgres", "ssh"]),
    ("tls", &["postgres"]),
    ("ca_file", &["postgres", "http", "kubernetes"]),
    ("upstream", &["http"]),
    ("path_prefix", &["http"]),
    ("host", &["http"]),
    ("credential", &["http", "kubernetes"]),
    ("private_key", &["ssh"]),
    ("host_key", &["ssh"]),
    ("server", &["kubernetes"]),
    ("impersonate", &["kubernetes"]),
    ("read_only", &["postgres"]),
];

impl TargetSection {
    fn present_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |present: bool, name: &'static str| {
            if present {
                out.push(name);
            }
        };
        check(self.address.is_some(), "address");
        check(self.user.is_some(), "user");
        check(self.database.is_some(), "database");
        check(self.password.is_some(), "password");
        check(self.tls.is_some(), "tls");
        check(self.ca_file.is_some(), "ca_file");
        check(self.upstream.is_some(), "upstream");
        check(self.path_prefix.is_some(), "path_prefix");
        check(self.host.is_some(), "host");
        check(self.credential.is_some(), "credential");
        check(self.private_key.is_some(), "private_key");
        check(self.host_key.is_some(), "host_key");
        check(self.server.is_some(), "server");
        check(self.impersonate.is_some(), "impersonate");
        check(self.read_only, "read_only");
        out
    }
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

    /// Where the audit log, its signing key and its witness directory are, checked: the key and
    /// the witness directory must not lie inside the audit log directory (refused), and should
    /// not lie inside the data directory (a warning each).
    pub fn audit_paths(&self) -> Result<AuditPaths, ConfigError> {
        let a = &self.config.audit;
        let data_dir = normalize(&self.data_dir());
        let root = match &a.dir {
            Some(d) => normalize(&self.resolve_path(d)),
            None => data_dir.clone(),
        };
        let log_dir = root.join("audit");
        let signing_key = match &a.signing_key {
            Some(k) => normalize(&self.resolve_path(k)),
            None => data_dir.join("audit-signing.key"),
        };
        let witness_dir = a
            .witness_dir
            .as_ref()
            .map(|w| normalize(&self.resolve_path(w)));
        let offset = |key: &str| self.text.find(&format!("\n{key}")).map_or(0, |at| at + 1);
        if signing_key.starts_with(&log_dir) {
            return Err(self.error_at(
                offset("signing_key"),
                format!(
                    "audit.signing_key {} lies inside the audit log directory {}: whoever can write the log could also sign it; keep the key elsewhere (readable only by the gateway's user)",
                    signing_key.display(),
                    log_dir.display()
                ),
            ));
        }
        if let Some(w) = &witness_dir
            && (w.starts_with(&log_dir) || log_dir.starts_with(w))
        {
            return Err(self.error_at(
                offset("witness_dir"),
                format!(
                    "audit.witness_dir {} overlaps the audit log directory {}: a witness must be on other storage",
                    w.display(),
                    log_dir.display()
                ),
            ));
        }
        let mut warnings = Vec::new();
        for (what, path) in [
            ("signing key", Some(&signing_key)),
            ("witness directory", witness_dir.as_ref()),
        ] {
            if let Some(path) = path
                && (path.starts_with(&root) || path.starts_with(&data_dir))
            {
                warnings.push(format!(
                    "the audit {what} {} lies inside the data directory {}: someone who can write that directory can also {}; set audit.{} to a path outside it",
                    path.display(),
                    root.display(),
                    if what == "signing key" {
                        "sign checkpoints"
                    } else {
                        "cut the witness with the log"
                    },
                    if what == "signing key" {
                        "signing_key"
                    } else {
                        "witness_dir"
                    }
                ));
            }
        }
        if witness_dir.is_none() && a.witness_url.is_none() && a.witness_s3.is_none() {
            warnings.push(
                "no audit witness configured (audit.witness_dir, audit.witness_url or audit.witness_s3): a cut-off end of the audit log cannot be detected".into(),
            );
        }
        Ok(AuditPaths {
            root,
            signing_key,
            witness_dir,
            warnings,
        })
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
    /// Resolves a credential's secret (env var or file), so a missing one is a config error.
    fn resolve_credential_secret(&self, c: &Spanned<CredentialSection>) -> Result<(), ConfigError> {
        if let Some(secret) = c.get_ref().secret() {
            secret
                .resolve(self.config.gateway.allow_inline_secrets, |p| {
                    self.resolve_path(p)
                })
                .map_err(|message| self.error_at(c.span().start, message))?;
        }
        Ok(())
    }

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
            if !matches!(
                target.protocol.as_str(),
                "postgres" | "http" | "ssh" | "kubernetes"
            ) {
                return Err(self.error_at(
                    span,
                    format!(
                        "target `{}`: unknown protocol `{}` (known: postgres, http, ssh, kubernetes)",
                        target.name, target.protocol
                    ),
                ));
            }
            for field in target.present_fields() {
                let allowed = TARGET_FIELDS
                    .iter()
                    .find(|(f, _)| *f == field)
                    .map(|(_, p)| *p)
                    .unwrap_or(&[]);
                if !allowed.contains(&target.protocol.as_str()) {
                    return Err(self.error_at(
                        span,
                        format!(
                            "target `{}`: `{field}` is not used by {} targets (it applies to: {})",
                            target.name,
                            target.protocol,
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            match target.protocol.as_str() {
                "postgres" => {
                    if target.address.is_none() {
                        return Err(self.error_at(
                            span,
                            format!("postgres target `{}` needs `address`", target.name),
                        ));
                    }
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
                "http" => {
                    if target.upstream.is_none() {
                        return Err(self.error_at(
                            span,
                            format!(
                                "http target `{}` needs `upstream` (http://host:port or https://…)",
                                target.name
                            ),
                        ));
                    }
                    if target.path_prefix.is_none() && target.host.is_none() {
                        return Err(self.error_at(
                            span,
                            format!(
                                "http target `{}` needs `path_prefix` or `host` (how requests are routed to it)",
                                target.name
                            ),
                        ));
                    }
                    if let Some(c) = &target.credential {
                        if !matches!(
                            c.get_ref(),
                            CredentialSection::Bearer { .. }
                                | CredentialSection::Basic { .. }
                                | CredentialSection::Header { .. }
                                | CredentialSection::Query { .. }
                        ) {
                            return Err(self.error_at(
                                c.span().start,
                                format!(
                                    "http target `{}`: credential kind `{}` is for kubernetes targets (http: bearer, basic, header, query)",
                                    target.name,
                                    c.get_ref().kind()
                                ),
                            ));
                        }
                        self.resolve_credential_secret(c)?;
                    }
                }
                "kubernetes" => {
                    let Some(c) = &target.credential else {
                        return Err(self.error_at(
                            span,
                            format!(
                                "kubernetes target `{}` needs `credential` (kind = \"bearer\", \"client_cert\" or \"kubeconfig\")",
                                target.name
                            ),
                        ));
                    };
                    if !matches!(
                        c.get_ref(),
                        CredentialSection::Bearer { .. }
                            | CredentialSection::ClientCert { .. }
                            | CredentialSection::Kubeconfig { .. }
                    ) {
                        return Err(self.error_at(
                            c.span().start,
                            format!(
                                "kubernetes target `{}`: credential kind `{}` is for http targets (kubernetes: bearer, client_cert, kubeconfig)",
                                target.name,
                                c.get_ref().kind()
                            ),
                        ));
                    }
                    self.resolve_credential_secret(c)?;
                    if target.server.is_none()
                        && !matches!(c.get_ref(), CredentialSection::Kubeconfig { .. })
                    {
                        return Err(self.error_at(
                            span,
                            format!(
                                "kubernetes target `{}` needs `server` (https://host:port of the API server)",
                                target.name
                            ),
                        ));
                    }
                }
                _ => {
                    if target.address.is_none() || target.user.is_none() {
                        return Err(self.error_at(
                            span,
                            format!(
                                "ssh target `{}` needs `address` (host:port) and `user` (the login the gateway uses)",
                                target.name
                            ),
                        ));
                    }
                    if target.password.is_none() == target.private_key.is_none() {
                        return Err(self.error_at(
                            span,
                            format!(
                                "ssh target `{}` needs exactly one of `private_key` or `password`",
                                target.name
                            ),
                        ));
                    }
                    if target.host_key.is_none() {
                        return Err(self.error_at(
                            span,
                            format!(
                                "ssh target `{}` needs `host_key` (a pinned fingerprint, public key or known_hosts file): host keys are never trusted on first use",
                                target.name
                            ),
                        ));
                    }
                    if let Some(secret) = &target.private_key {
                        self.resolve_secret(secret)?;
                    }
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

/// The audit log's locations, resolved and checked ([`LoadedConfig::audit_paths`]).
#[derive(Debug, Clone)]
pub struct AuditPaths {
    /// The recorder root (`<root>/audit/<log id>/`, `<root>/recordings/`).
    pub root: PathBuf,
    /// The checkpoint signing key.
    pub signing_key: PathBuf,
    /// The witness directory, if any.
    pub witness_dir: Option<PathBuf>,
    /// What the operator should fix (printed at startup and by `check-config`).
    pub warnings: Vec<String>,
}

/// A path with `.` and `..` resolved lexically (the files need not exist yet).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
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

//! What a PostgreSQL listener serves: targets with their upstream credentials, TLS, limits.
//!
//! Upstream credentials live here and nowhere else: they never travel with the
//! [`gatehouse_core::Target`] into policy, approvals or the audit log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::Target;

/// A secret the gateway holds (an upstream password). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret text, for the one place that must send it upstream (and the egress guard).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// Where the upstream server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamAddress {
    /// TCP host and port.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket directory and port (socket file `.s.PGSQL.<port>`).
    Unix {
        /// Directory holding the socket.
        socket_dir: PathBuf,
        /// Port number in the socket file name.
        port: u16,
    },
}

/// TLS to the upstream server.
#[derive(Clone)]
#[non_exhaustive]
pub enum UpstreamTls {
    /// Plain connection (Unix sockets, loopback in tests).
    Disable,
    /// TLS required and verified against `config`'s roots for `server_name`.
    Require {
        /// Client configuration (aws-lc-rs provider, verifying roots).
        config: Arc<rustls::ClientConfig>,
        /// Name the certificate must carry.
        server_name: rustls_pki_types::ServerName<'static>,
    },
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamTls::Disable => f.write_str("Disable"),
            UpstreamTls::Require { server_name, .. } => {
                write!(f, "Require({})", server_name.to_str())
            }
        }
    }
}

/// How the gateway logs in upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Server address.
    pub address: UpstreamAddress,
    /// Upstream role (from the target's config, never from the client).
    pub user: String,
    /// Upstream database.
    pub database: String,
    /// Password for SCRAM / md5 / cleartext; `None` for trust.
    pub password: Option<Secret>,
    /// TLS mode.
    pub tls: UpstreamTls,
    /// Connect (and login) timeout.
    pub connect_timeout: Duration,
}

/// A target as the PostgreSQL listener knows it.
#[derive(Debug, Clone)]
pub struct PgTarget {
    /// The policy-facing target (name, tags).
    pub target: Target,
    /// How to reach and log into it.
    pub upstream: UpstreamConfig,
}

/// What happens to a value that must be masked but is not text (an integer, a binary value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum NonTextMasking {
    /// Sent as SQL NULL.
    #[default]
    Null,
    /// The statement is refused with an error.
    Refuse,
}

/// Session limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest client message accepted, in bytes. A larger Query, Parse, Bind or CopyData is
    /// read past and refused with an ErrorResponse (54000), the session stays usable; any other
    /// larger message ends the session with FATAL 54000.
    pub max_client_message: usize,
    /// Most statements in one simple-protocol Query message; a longer one is refused whole
    /// (54000, one audit record) instead of deciding and recording each statement.
    pub max_statements_per_query: usize,
    /// Largest upstream message accepted, in bytes.
    pub max_upstream_message: usize,
    /// Time allowed from accept to an authenticated session.
    pub startup_timeout: Duration,
    /// A session idle this long (no client message) is ended. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// End sessions when the caller's token expires.
    pub end_at_token_expiry: bool,
    /// Rows per statement copied into the session recording.
    pub recording_rows_per_statement: usize,
    /// Most concurrent sessions of one identity (issuer and subject) on this listener, across
    /// its targets; a further login is refused at startup with FATAL 53300 (recorded). Each
    /// session holds one upstream connection, so without a cap one identity can take every
    /// connection the server has. `None`: no cap.
    pub max_sessions_per_identity: Option<usize>,
    /// Most concurrent sessions on one target (all identities); past it, FATAL 53300. `None`:
    /// no cap.
    pub max_sessions_per_target: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_client_message: 64 << 20,
            max_statements_per_query: 1000,
            max_upstream_message: 1 << 30,
            startup_timeout: Duration::from_secs(30),
            idle_timeout: None,
            end_at_token_expiry: true,
            recording_rows_per_statement: 100,
            max_sessions_per_identity: Some(20),
            max_sessions_per_target: None,
        }
    }
}

/// Configuration of one PostgreSQL listener.
#[derive(Debug, Clone)]
pub struct PgProxyConfig {
    /// Targets by name (the startup packet's `database`).
    pub targets: HashMap<String, PgTarget>,
    /// TLS for clients (answer `S` to SSLRequest). `None`: answer `N`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept a cleartext password without TLS (only for loopback listeners).
    pub allow_plaintext_password: bool,
    /// Limits.
    pub limits: Limits,
    /// Masked non-text values: NULL or refuse.
    pub non_text_masking: NonTextMasking,
    /// Statements that copy a masked column elsewhere (CREATE TABLE AS, INSERT … SELECT, COPY,
    /// CREATE VIEW/FUNCTION) are denied unless this is set.
    pub allow_masked_column_copies: bool,
    /// Serve the legacy fast-path `FunctionCall` message. Off by default: a function called by
    /// OID can return any column's value, out of reach of column masking rules, so the gateway
    /// refuses it with an ErrorResponse (SQLSTATE 42501, the session stays usable). When on, the
    /// policy decides it (its text is `-- FunctionCall oid=N`) and the result runs through the
    /// content detectors as raw bytes.
    pub allow_function_call: bool,
}

impl PgProxyConfig {
    /// A config with these targets, no client TLS, plaintext passwords refused, default limits.
    pub fn new(targets: impl IntoIterator<Item = PgTarget>) -> Self {
        Self {
            targets: targets
                .into_iter()
                .map(|t| (t.target.name.clone(), t))
                .collect(),
            tls: None,
            allow_plaintext_password: false,
            limits: Limits::default(),
            non_text_masking: NonTextMasking::default(),
            allow_masked_column_copies: false,
            allow_function_call: false,
        }
    }

    /// Every secret the listener holds (for the egress guard).
    pub fn held_secrets(&self) -> Vec<String> {
        self.targets
            .values()
            .filter_map(|t| t.upstream.password.as_ref())
            .map(|s| s.expose().to_string())
            .collect()
    }
}

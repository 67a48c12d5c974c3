//! One error type for the crate: every failure says which side caused it and maps to the SQLSTATE
//! the client is shown.

use gatehouse_core::Side;

/// A failure in a proxied PostgreSQL session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgProxyError {
    /// The client sent bytes that are not a valid PostgreSQL v3 message.
    #[error("protocol violation: {0}")]
    ClientProtocol(String),
    /// A client message is larger than the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Declared length.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The client did not finish the startup phase in time.
    #[error("startup timed out")]
    StartupTimeout,
    /// The client was idle longer than the configured idle timeout.
    #[error("session idle timeout")]
    IdleTimeout,
    /// The caller's credential was refused (the reason class only, never the token).
    #[error("{0}")]
    Auth(#[from] gatehouse_core::AuthError),
    /// The startup packet named no database, or one that is not a configured target.
    #[error("{0}")]
    UnknownTarget(String),
    /// The client asked for something the gateway refuses (replication, plaintext password…).
    #[error("{0}")]
    Refused(String),
    /// The upstream server sent something that is not valid PostgreSQL v3.
    #[error("upstream protocol violation: {0}")]
    UpstreamProtocol(String),
    /// The upstream server refused the gateway's login or reported an error during startup.
    #[error("upstream authentication failed: {0}")]
    UpstreamAuth(String),
    /// Connecting to the upstream server (TCP, Unix socket or TLS) failed.
    #[error("upstream connection failed: {0}")]
    UpstreamConnect(String),
    /// The recorder failed: nothing runs unrecorded.
    #[error("audit recorder failed: {0}")]
    Recorder(#[from] gatehouse_core::RecordError),
    /// The egress guard found held secret material in bytes bound for the client.
    #[error("egress guard blocked output")]
    EgressBlocked,
    /// A result value the gateway must check for masked data but cannot read (the binary format
    /// of an extension's type, in an expression column): the session ends rather than pass it.
    #[error("{0}")]
    Unmaskable(String),
    /// A client encoding the gateway cannot decode exactly (SQLSTATE 0A000).
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// A gateway-side failure (configuration, TLS setup).
    #[error("gateway error: {0}")]
    Gateway(String),
    /// The session's token expired.
    #[error("token expired")]
    TokenExpired,
    /// A [`gatehouse_core::GateHooks::on_chunk`] hook stopped a response: what it had not seen
    /// is withheld and the session ends.
    #[error("{0}")]
    HookStopped(String),
    /// The identity or the target already has as many concurrent sessions as the listener
    /// allows (SQLSTATE 53300, too_many_connections).
    #[error("{0}")]
    TooManySessions(String),
    /// An I/O error on one side.
    #[error("{side:?} I/O error: {source}")]
    Io {
        /// Which connection failed.
        side: Side,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl PgProxyError {
    /// Which side of the proxied connection the error came from.
    pub fn side(&self) -> Side {
        match self {
            PgProxyError::ClientProtocol(_)
            | PgProxyError::MessageTooLarge { .. }
            | PgProxyError::StartupTimeout
            | PgProxyError::IdleTimeout
            | PgProxyError::Auth(_)
            | PgProxyError::UnknownTarget(_)
            | PgProxyError::Refused(_)
            | PgProxyError::TooManySessions(_)
            | PgProxyError::TokenExpired => Side::Client,
            PgProxyError::UpstreamProtocol(_)
            | PgProxyError::UpstreamAuth(_)
            | PgProxyError::UpstreamConnect(_) => Side::Upstream,
            PgProxyError::Recorder(_)
            | PgProxyError::EgressBlocked
            | PgProxyError::Gateway(_)
            | PgProxyError::Unmaskable(_)
            | PgProxyError::HookStopped(_)
            | PgProxyError::UnsupportedEncoding(_) => Side::Gateway,
            PgProxyError::Io { side, .. } => *side,
        }
    }

    /// The SQLSTATE the client is shown.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PgProxyError::ClientProtocol(_) => "08P01",
            PgProxyError::MessageTooLarge { .. } => "54000",
            PgProxyError::StartupTimeout | PgProxyError::IdleTimeout => "57P05",
            PgProxyError::Auth(_) => "28P01",
            PgProxyError::UnknownTarget(_) => "3D000",
            PgProxyError::Refused(_) => "28000",
            PgProxyError::UpstreamProtocol(_) | PgProxyError::UpstreamConnect(_) => "08006",
            PgProxyError::UpstreamAuth(_) => "08004",
            PgProxyError::Recorder(_) => "58030",
            PgProxyError::EgressBlocked | PgProxyError::HookStopped(_) => "42501",
            PgProxyError::Gateway(_) => "XX000",
            PgProxyError::Unmaskable(_) | PgProxyError::UnsupportedEncoding(_) => "0A000",
            PgProxyError::TokenExpired => "28P01",
            PgProxyError::TooManySessions(_) => "53300",
            PgProxyError::Io { .. } => "08006",
        }
    }

    pub(crate) fn client_io(source: std::io::Error) -> Self {
        PgProxyError::Io {
            side: Side::Client,
            source,
        }
    }

    pub(crate) fn upstream_io(source: std::io::Error) -> Self {
        PgProxyError::Io {
            side: Side::Upstream,
            source,
        }
    }
}

impl From<crate::frame::FrameError> for PgProxyError {
    fn from(e: crate::frame::FrameError) -> Self {
        match e {
            crate::frame::FrameError::TooLarge { len, max } => {
                PgProxyError::MessageTooLarge { len, max }
            }
            other => PgProxyError::ClientProtocol(other.to_string()),
        }
    }
}

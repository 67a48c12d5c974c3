//! The SSH bastion's one error type. Each error says which side failed, and its text is safe to
//! show the caller: it never carries a credential.

use gatehouse_core::Side;

/// Why an SSH session, channel or setup step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshProxyError {
    /// The host key file could not be read, parsed or created.
    #[error("gateway host key {path}: {message}")]
    HostKey {
        /// The configured path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The configuration is unusable (duplicate target, bad address, bad pin).
    #[error("ssh configuration: {0}")]
    Config(String),
    /// The target's host key did not match the pinned key or known_hosts entry.
    #[error("host key verification failed for target '{target}': {detail}")]
    HostKeyMismatch {
        /// Target name.
        target: String,
        /// Expected versus presented fingerprints.
        detail: String,
    },
    /// The target could not be reached or refused the gateway's credential.
    #[error("target '{target}': {message}")]
    Upstream {
        /// Target name.
        target: String,
        /// What went wrong.
        message: String,
    },
    /// The SSH protocol layer failed (either side).
    #[error("ssh protocol: {0}")]
    Ssh(#[from] russh::Error),
    /// An I/O error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl SshProxyError {
    /// Which side failed, for audit records.
    pub fn side(&self) -> Side {
        match self {
            SshProxyError::HostKeyMismatch { .. } | SshProxyError::Upstream { .. } => {
                Side::Upstream
            }
            SshProxyError::Ssh(_) => Side::Client,
            SshProxyError::HostKey { .. } | SshProxyError::Config(_) | SshProxyError::Io(_) => {
                Side::Gateway
            }
        }
    }
}

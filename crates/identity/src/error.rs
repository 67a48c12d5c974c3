//! The crate's one error type: what can go wrong while *setting up* authenticators (config, key
//! files, fetching discovery documents and key sets). Refusing a credential is not an error of this
//! kind: that is a [`gatehouse_core::AuthError`] with a reason class.

use gatehouse_core::{AuthError, AuthErrorKind};

/// A configuration, key-material or identity-provider failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The configuration is invalid (says which field and why).
    #[error("invalid identity configuration: {0}")]
    Config(String),
    /// A key or key-set file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An HTTP fetch (discovery document, JWKS) failed: network, TLS, status or size.
    #[error("fetching {url} failed: {reason}")]
    Fetch {
        /// What was fetched (a configured URL, never a token).
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The discovery document is unusable (bad JSON, issuer mismatch, no `jwks_uri`).
    #[error("discovery document of {issuer} rejected: {reason}")]
    Discovery {
        /// The configured issuer.
        issuer: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A JSON Web Key Set is unusable (bad JSON, no usable signing key).
    #[error("key set rejected: {0}")]
    KeySet(String),
    /// Signing key material is unusable (dev issuer key file, minting).
    #[error("signing key: {0}")]
    SigningKey(String),
}

impl From<&IdentityError> for AuthError {
    /// Failing to reach or use the identity provider refuses the credential (fail closed).
    fn from(err: &IdentityError) -> Self {
        AuthError::new(AuthErrorKind::ProviderUnavailable, short_reason(err))
    }
}

/// A caller-safe one-liner: URLs and issuers come from configuration, never from the token.
fn short_reason(err: &IdentityError) -> String {
    match err {
        IdentityError::Fetch { url, .. } => format!("could not fetch {url}"),
        IdentityError::Discovery { issuer, .. } => format!("discovery failed for {issuer}"),
        IdentityError::KeySet(_) => "identity provider key set unusable".into(),
        IdentityError::Config(_) | IdentityError::Io { .. } | IdentityError::SigningKey(_) => {
            "identity provider misconfigured".into()
        }
    }
}

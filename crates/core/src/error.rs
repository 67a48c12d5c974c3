//! The errors that cross layer boundaries. Each says which side failed where that matters, and
//! never carries a secret (no token, no password, no masked value).

use serde::{Deserialize, Serialize};

/// Which side of a proxied connection an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The caller (agent) sent something wrong.
    Client,
    /// The target (database, host, API) failed or refused.
    Upstream,
    /// The gateway itself (a layer, a store, a bug).
    Gateway,
}

/// Why a credential was refused. The class is shown to the caller (e.g. in psql's FATAL 28P01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthErrorKind {
    /// The token or key has expired.
    Expired,
    /// `nbf` (or `iat`) is in the future.
    NotYetValid,
    /// `iss` is not a configured issuer.
    WrongIssuer,
    /// `aud` does not include the configured audience.
    WrongAudience,
    /// An ID token (or other type) where an access token is required.
    WrongTokenType,
    /// `kid` not found in the issuer's keys, even after a refresh.
    UnknownKey,
    /// The algorithm is not on the issuer's allow-list (`none`, HS256 key confusion, …).
    AlgorithmNotAllowed,
    /// The signature does not verify.
    BadSignature,
    /// Not a well-formed token or key.
    Malformed,
    /// Longer than the configured maximum token size.
    TooLarge,
    /// No such API key / gateway key, or it was revoked.
    UnknownCredential,
    /// The credential type is not accepted here.
    Unsupported,
    /// The identity provider could not be reached (fail closed).
    ProviderUnavailable,
    /// Too many failed attempts from this source.
    RateLimited,
}

impl AuthErrorKind {
    /// Short, stable, caller-safe text.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthErrorKind::Expired => "token expired",
            AuthErrorKind::NotYetValid => "token not yet valid",
            AuthErrorKind::WrongIssuer => "wrong issuer",
            AuthErrorKind::WrongAudience => "wrong audience",
            AuthErrorKind::WrongTokenType => "wrong token type",
            AuthErrorKind::UnknownKey => "unknown signing key",
            AuthErrorKind::AlgorithmNotAllowed => "algorithm not allowed",
            AuthErrorKind::BadSignature => "bad signature",
            AuthErrorKind::Malformed => "malformed credential",
            AuthErrorKind::TooLarge => "credential too large",
            AuthErrorKind::UnknownCredential => "unknown or revoked key",
            AuthErrorKind::Unsupported => "credential type not supported",
            AuthErrorKind::ProviderUnavailable => "identity provider unavailable",
            AuthErrorKind::RateLimited => "too many failed attempts",
        }
    }
}

impl std::fmt::Display for AuthErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authentication failure: a reason class and a caller-safe detail (never the token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("authentication failed: {kind}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
pub struct AuthError {
    /// The reason class.
    pub kind: AuthErrorKind,
    /// Caller-safe detail, e.g. the expected issuer. Never token material.
    pub detail: String,
}

impl AuthError {
    /// An error of `kind` with a detail.
    pub fn new(kind: AuthErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

impl From<AuthErrorKind> for AuthError {
    fn from(kind: AuthErrorKind) -> Self {
        Self {
            kind,
            detail: String::new(),
        }
    }
}

/// An approvals failure. Any error makes the caller refuse the operation (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No request with that id.
    #[error("no approval request {0}")]
    NotFound(String),
    /// The request is no longer pending.
    #[error("approval request {0} is already {1}")]
    AlreadyClosed(String, String),
    /// A requester may never approve their own request.
    #[error("separation of duties: the requester cannot decide their own request")]
    SelfApproval,
    /// The decider is not in any approver group of the rule.
    #[error("{0} is not a member of an approver group for this request")]
    NotAnApprover(String),
    /// This approver already voted.
    #[error("{0} has already decided this request")]
    DuplicateVote(String),
    /// A justification is required.
    #[error("a justification is required")]
    JustificationRequired,
    /// The store failed (fail closed).
    #[error("approval store failed: {0}")]
    Store(String),
    /// Too many operations of this identity or on this target are already held for approval.
    #[error("too many operations waiting for approval: {0}")]
    TooManyPending(String),
    /// The audit log could not record a state change, so it did not take effect (fail closed).
    #[error("audit log unavailable: {0}")]
    Audit(String),
}

/// A recorder failure. Any error makes the caller refuse the operation or end the session:
/// nothing runs unrecorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The store could not write (disk full, read-only, I/O error).
    #[error("audit store write failed: {0}")]
    Store(String),
    /// The shipping backlog or recording buffer is full and the configured wait elapsed.
    #[error("audit backlog full")]
    BacklogFull,
    /// The recorder has been shut down.
    #[error("recorder closed")]
    Closed,
    /// The egress guard found held secret material in the record; it was not written.
    #[error("egress guard blocked a record")]
    EgressBlocked,
}

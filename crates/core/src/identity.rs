//! Who is asking: the credential a caller presents, and the identity it proves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// What a caller presented. `Debug` never prints secret material.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credential {
    /// A bearer token: an OIDC JWT or a gateway/service-account key (HTTP `Authorization`, kube token).
    Bearer(String),
    /// A password field carrying a token (psql password, ssh password / keyboard-interactive).
    Password(String),
    /// An SSH public key the client proved possession of.
    PublicKey {
        /// Key algorithm, e.g. `ssh-ed25519`.
        algorithm: String,
        /// `SHA256:` fingerprint (OpenSSH style).
        fingerprint: String,
    },
}

impl Credential {
    /// The token text of a bearer or password credential.
    pub fn token(&self) -> Option<&str> {
        match self {
            Credential::Bearer(t) | Credential::Password(t) => Some(t),
            Credential::PublicKey { .. } => None,
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Bearer(t) => write!(f, "Bearer(<{} bytes redacted>)", t.len()),
            Credential::Password(t) => write!(f, "Password(<{} bytes redacted>)", t.len()),
            Credential::PublicKey {
                algorithm,
                fingerprint,
            } => {
                write!(f, "PublicKey({algorithm} {fingerprint})")
            }
        }
    }
}

/// How an identity was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthMethod {
    /// A verified OIDC JWT.
    Oidc,
    /// A service-account API key.
    ApiKey,
    /// A short-lived gateway key obtained by token exchange.
    GatewayKey,
    /// An SSH public key registered to a service account.
    PublicKey,
    /// A token minted by the local dev issuer.
    DevIssuer,
    /// Test-only in-memory authenticator.
    Test,
}

/// An authenticated caller. Goes into every audit event; carries no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable subject (the mapped subject claim, or the service account id).
    pub subject: String,
    /// Issuer URL, or `gatehouse` for gateway-issued keys.
    pub issuer: String,
    /// Groups / roles, used by policy and approver checks.
    #[serde(default)]
    pub groups: Vec<String>,
    /// When the credential stops being valid. Protocols end sessions here unless configured otherwise.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<Timestamp>,
    /// How the identity was established.
    pub method: AuthMethod,
    /// Extra claims copied by the identity provider's claims mapping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Identity {
    /// A minimal identity (tests, examples).
    pub fn new(subject: impl Into<String>, issuer: impl Into<String>, method: AuthMethod) -> Self {
        Self {
            subject: subject.into(),
            issuer: issuer.into(),
            groups: Vec::new(),
            expires_at: None,
            method,
            claims: BTreeMap::new(),
        }
    }

    /// Adds a group (builder style).
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        self.groups.push(group.into());
        self
    }

    /// Whether the identity is a member of `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether the identity has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|exp| exp <= now)
    }

    /// `issuer|subject`: one string that names the principal unambiguously across issuers.
    pub fn principal(&self) -> String {
        format!("{}|{}", self.issuer, self.subject)
    }
}

//! Configuration of the authenticators, loadable from the gateway's TOML file. Every struct
//! refuses unknown fields, so a typo is an error at startup rather than a silently ignored rule.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::IdentityError;
use crate::token::{DEFAULT_MAX_TOKEN_BYTES, SigningAlgorithm};

/// One trusted OIDC issuer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// The issuer URL, compared byte for byte with `iss` and with the discovery document.
    pub issuer: String,
    /// Accepted audiences: the token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    /// Where the issuer's keys come from.
    #[serde(default)]
    pub jwks: JwksSource,
    /// Algorithms accepted from this issuer (a subset of RS256, PS256, ES256, EdDSA).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<SigningAlgorithm>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Which tokens count as access tokens.
    #[serde(default)]
    pub access_token: AccessTokenRules,
    /// How claims become the identity.
    #[serde(default)]
    pub claims: ClaimsMapping,
    /// Allows `http://` discovery and JWKS URLs when the host is loopback (tests, sidecars).
    #[serde(default)]
    pub allow_insecure_loopback_http: bool,
    /// PEM file of CA certificates to trust instead of the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Keys are refetched in the background when older than this, in seconds.
    #[serde(default = "default_refresh_interval_secs")]
    pub refresh_interval_secs: u64,
    /// At most one fetch per this many seconds, whatever triggers it (an unknown `kid`, a failed
    /// fetch): bogus key ids cannot hammer the identity provider.
    #[serde(default = "default_min_refresh_interval_secs")]
    pub min_refresh_interval_secs: u64,
    /// Timeout of one discovery or JWKS fetch, in seconds.
    #[serde(default = "default_http_timeout_secs")]
    pub http_timeout_secs: u64,
}

fn default_algorithms() -> Vec<SigningAlgorithm> {
    vec![
        SigningAlgorithm::RS256,
        SigningAlgorithm::PS256,
        SigningAlgorithm::ES256,
        SigningAlgorithm::EdDSA,
    ]
}
fn default_leeway_secs() -> u64 {
    60
}
fn default_refresh_interval_secs() -> u64 {
    3600
}
fn default_min_refresh_interval_secs() -> u64 {
    30
}
fn default_http_timeout_secs() -> u64 {
    10
}

impl OidcProviderConfig {
    /// A configuration with defaults for `issuer` and one audience, keys from discovery.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: vec![audience.into()],
            jwks: JwksSource::default(),
            algorithms: default_algorithms(),
            leeway_secs: default_leeway_secs(),
            access_token: AccessTokenRules::default(),
            claims: ClaimsMapping::default(),
            allow_insecure_loopback_http: false,
            ca_file: None,
            refresh_interval_secs: default_refresh_interval_secs(),
            min_refresh_interval_secs: default_min_refresh_interval_secs(),
            http_timeout_secs: default_http_timeout_secs(),
        }
    }

    /// Checks what serde cannot: non-empty lists, sane numbers, URLs the fetcher will accept.
    pub fn validate(&self) -> Result<(), IdentityError> {
        let fail = |why: String| {
            Err(IdentityError::Config(format!(
                "issuer {}: {why}",
                self.issuer
            )))
        };
        if self.issuer.is_empty() {
            return fail("`issuer` is empty".into());
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return fail("`audiences` must list at least one non-empty audience".into());
        }
        if self.algorithms.is_empty() {
            return fail("`algorithms` is empty".into());
        }
        if self.leeway_secs > 600 {
            return fail("`leeway_secs` above 600 defeats expiry".into());
        }
        if self.access_token.require_type && self.access_token.accepted_types.is_empty() {
            return fail("`access_token.accepted_types` is empty".into());
        }
        if self.claims.subject.is_empty() {
            return fail("`claims.subject` is empty".into());
        }
        match &self.jwks {
            JwksSource::Discovery => {
                crate::http::check_url(&self.discovery_url(), self.allow_insecure_loopback_http)?
            }
            JwksSource::Url { url } => {
                crate::http::check_url(url, self.allow_insecure_loopback_http)?
            }
            JwksSource::File { .. } | JwksSource::Inline { .. } => {}
        }
        Ok(())
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum JwksSource {
    /// `jwks_uri` from the issuer's discovery document.
    #[default]
    Discovery,
    /// A JWKS URL given directly (issuers without discovery).
    Url {
        /// The JWKS URL.
        url: String,
    },
    /// A JWKS file on disk (air-gapped installs); reread on refresh, so replacing the file
    /// rotates keys.
    File {
        /// Path of the JWKS JSON file.
        path: PathBuf,
    },
    /// A JWKS document given inline (the dev issuer).
    Inline {
        /// The JWKS JSON text.
        jwks: String,
    },
}

/// Which tokens are accepted as access tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessTokenRules {
    /// Require the header `typ` to be one of `accepted_types` (RFC 9068). Turn off only for
    /// issuers that do not stamp access tokens; ID-token markers are then checked instead.
    #[serde(default = "default_true")]
    pub require_type: bool,
    /// Accepted `typ` values, compared case-insensitively.
    #[serde(default = "default_accepted_types")]
    pub accepted_types: Vec<String>,
    /// If not empty, the token's `azp` or `client_id` must be one of these.
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    /// Accept OIDC ID tokens as credentials (off by default: an ID token is meant for the client
    /// that asked for it, not for a resource server).
    #[serde(default)]
    pub accept_id_tokens: bool,
}

fn default_true() -> bool {
    true
}
fn default_accepted_types() -> Vec<String> {
    vec!["at+jwt".into(), "application/at+jwt".into()]
}

impl Default for AccessTokenRules {
    fn default() -> Self {
        Self {
            require_type: true,
            accepted_types: default_accepted_types(),
            allowed_clients: Vec::new(),
            accept_id_tokens: false,
        }
    }
}

/// How verified claims become an [`gatehouse_core::Identity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsMapping {
    /// Dotted path of the subject claim (`sub`, `email`, `client_id`, …).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Dotted path of the groups claim (`groups`, `realm_access.roles`): an array of strings or
    /// one space-separated string. `None`: no groups.
    #[serde(default = "default_groups")]
    pub groups: Option<String>,
    /// Dotted paths of extra claims copied into the identity (key: the path).
    #[serde(default)]
    pub extra: Vec<String>,
}

fn default_subject() -> String {
    "sub".into()
}
fn default_groups() -> Option<String> {
    Some("groups".into())
}

impl Default for ClaimsMapping {
    fn default() -> Self {
        Self {
            subject: default_subject(),
            groups: default_groups(),
            extra: Vec::new(),
        }
    }
}

/// The whole identity section of the gateway config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trusted OIDC issuers.
    #[serde(default)]
    pub oidc: Vec<OidcProviderConfig>,
    /// Service-account API keys (hashes only).
    #[serde(default)]
    pub service_accounts: Vec<crate::apikey::ServiceAccountKeyConfig>,
    /// Largest credential accepted, in bytes.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Longest lifetime of a gateway key from token exchange, in seconds.
    #[serde(default = "default_gateway_key_ttl_secs")]
    pub gateway_key_max_ttl_secs: u64,
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn default_gateway_key_ttl_secs() -> u64 {
    3600
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_from_toml_with_defaults() {
        let text = r#"
            max_token_bytes = 8192
            [[oidc]]
            issuer = "https://idp.example.com/realms/main"
            audiences = ["gatehouse"]
            algorithms = ["RS256", "EdDSA"]
            claims = { subject = "email", groups = "realm_access.roles", extra = ["tenant"] }
            access_token = { require_type = false, allowed_clients = ["agent"] }

            [[oidc]]
            issuer = "https://air-gapped"
            audiences = ["gatehouse"]
            jwks = { source = "file", path = "/etc/gatehouse/jwks.json" }

            [[service_accounts]]
            id = "0123456789abcdef"
            subject = "ci-bot"
            key_sha256 = "00"
            groups = ["ci"]
        "#;
        let config: IdentityConfig = toml::from_str(text).unwrap();
        assert_eq!(config.max_token_bytes, 8192);
        assert_eq!(config.oidc.len(), 2);
        let first = &config.oidc[0];
        assert_eq!(first.claims.subject, "email");
        assert_eq!(first.claims.groups.as_deref(), Some("realm_access.roles"));
        assert_eq!(first.leeway_secs, 60);
        assert!(!first.access_token.require_type);
        assert_eq!(first.jwks, JwksSource::Discovery);
        first.validate().unwrap();
        assert!(matches!(config.oidc[1].jwks, JwksSource::File { .. }));
        assert_eq!(config.service_accounts[0].subject, "ci-bot");
    }

    #[test]
    fn refuses_unknown_fields_and_bad_values() {
        let typo = r#"
            issuer = "https://idp"
            audience = ["x"]
        "#;
        assert!(toml::from_str::<OidcProviderConfig>(typo).is_err());
        let hs = r#"
            issuer = "https://idp"
            audiences = ["x"]
            algorithms = ["HS256"]
        "#;
        assert!(toml::from_str::<OidcProviderConfig>(hs).is_err());
        let mut plain = OidcProviderConfig::new("http://idp.example.com", "x");
        assert!(plain.validate().is_err());
        plain.allow_insecure_loopback_http = true;
        assert!(plain.validate().is_err(), "plain HTTP off loopback");
        let loopback = OidcProviderConfig {
            allow_insecure_loopback_http: true,
            ..OidcProviderConfig::new("http://127.0.0.1:9", "x")
        };
        loopback.validate().unwrap();
        let no_aud = OidcProviderConfig {
            audiences: vec![],
            ..OidcProviderConfig::new("https://idp", "x")
        };
        assert!(no_aud.validate().is_err());
    }
}

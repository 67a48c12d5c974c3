//! The local dev issuer for the quickstart and tests: an Ed25519 key kept on disk (PKCS#8 PEM,
//! mode 0600), its JWKS, and `mint(subject, groups, ttl)` producing RFC 9068 access tokens that the
//! regular OIDC verifier checks like any other issuer's.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{EncodingKey, Header};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::IdentityError;
use crate::config::{JwksSource, OidcProviderConfig};
use crate::token::SigningAlgorithm;

/// Issuer name of dev tokens unless configured otherwise.
pub const DEFAULT_DEV_ISSUER: &str = "urn:gatehouse:dev";
/// Audience of dev tokens unless configured otherwise.
pub const DEFAULT_DEV_AUDIENCE: &str = "gatehouse";

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows (RFC 8410).
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A local token issuer.
pub struct DevIssuer {
    issuer: String,
    audience: String,
    kid: String,
    public_x: String,
    encoding_key: EncodingKey,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn io_error(path: &Path, source: std::io::Error) -> IdentityError {
    IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DevIssuer {
    /// Loads the key at `key_path`, creating it (mode 0600) if the file does not exist.
    pub fn load_or_create(
        key_path: &Path,
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let seed = match std::fs::read_to_string(key_path) {
            Ok(pem) => seed_from_pem(&pem)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                rand::rng().fill_bytes(&mut seed);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(key_path)
                    .map_err(|e| io_error(key_path, e))?;
                file.write_all(pem_from_seed(&seed).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io_error(key_path, e))?;
                seed
            }
            Err(e) => return Err(io_error(key_path, e)),
        };
        Ok(Self::from_seed(&seed, issuer.into(), audience.into()))
    }

    fn from_seed(seed: &[u8; 32], issuer: String, audience: String) -> Self {
        let public = SigningKey::from_bytes(seed).verifying_key().to_bytes();
        let public_x = URL_SAFE_NO_PAD.encode(public);
        // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        let thumbprint_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{public_x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumbprint_input.as_bytes()));
        let mut pkcs8 = PKCS8_ED25519_PREFIX.to_vec();
        pkcs8.extend_from_slice(seed);
        Self {
            issuer,
            audience,
            kid,
            public_x,
            encoding_key: EncodingKey::from_ed_der(&pkcs8),
        }
    }

    /// The issuer name in `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The key id in every token's header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWKS (one Ed25519 key).
    pub fn jwks_json(&self) -> String {
        serde_json::json!({"keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.public_x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        }]})
        .to_string()
    }

    /// The verifier configuration that trusts this issuer (inline JWKS, EdDSA only).
    pub fn provider_config(&self) -> Result<OidcProviderConfig, IdentityError> {
        let mut config = OidcProviderConfig::new(self.issuer.clone(), self.audience.clone());
        config.jwks = JwksSource::Inline {
            jwks: self.jwks_json(),
        };
        config.algorithms = vec![SigningAlgorithm::EdDSA];
        Ok(config)
    }

    /// Mints an access token (`typ: at+jwt`) for `subject` with `groups`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        groups: &[String],
        ttl: std::time::Duration,
    ) -> Result<String, IdentityError> {
        let now = gatehouse_core::now().unix_timestamp();
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let claims = serde_json::json!({
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl),
            "jti": hex::encode(jti),
            "client_id": "gatehouse-dev",
        });
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some("at+jwt".into());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding_key)
            .map_err(|e| IdentityError::SigningKey(e.to_string()))
    }
}

fn pem_from_seed(seed: &[u8; 32]) -> String {
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(seed);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(der)
    )
}

fn seed_from_pem(pem: &str) -> Result<[u8; 32], IdentityError> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .collect();
    let der = STANDARD
        .decode(body)
        .map_err(|_| IdentityError::SigningKey("dev issuer key is not PEM".into()))?;
    der.strip_prefix(PKCS8_ED25519_PREFIX.as_slice())
        .and_then(|seed| <[u8; 32]>::try_from(seed).ok())
        .ok_or_else(|| {
            IdentityError::SigningKey("dev issuer key is not a PKCS#8 Ed25519 private key".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.pem");
        let first =
            DevIssuer::load_or_create(&path, DEFAULT_DEV_ISSUER, DEFAULT_DEV_AUDIENCE).unwrap();
        let again =
            DevIssuer::load_or_create(&path, DEFAULT_DEV_ISSUER, DEFAULT_DEV_AUDIENCE).unwrap();
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.jwks_json(), again.jwks_json());
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            DevIssuer::load_or_create(&path, DEFAULT_DEV_ISSUER, DEFAULT_DEV_AUDIENCE).is_err()
        );
    }
}

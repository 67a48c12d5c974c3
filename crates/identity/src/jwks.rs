//! JSON Web Key Sets: parsing an issuer's published keys into verification keys, and choosing the
//! key for a token.
//!
//! Promise: only public *signing* keys of the supported families become verification keys;
//! symmetric (`oct`) keys, encryption keys and weak RSA keys are dropped, so no JWKS content can
//! turn on HMAC verification (key confusion) or a key the allow-list never meant.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;

use crate::IdentityError;
use crate::token::SigningAlgorithm;

/// Smallest RSA modulus accepted (bits): below this a key is ignored, not trusted.
pub const MIN_RSA_BITS: usize = 2048;

/// Key sets above this size are refused (no real issuer publishes more than a few keys).
pub const MAX_JWKS_KEYS: usize = 64;

/// The family of a verification key, which decides which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFamily {
    /// RSA (RS256, PS256).
    Rsa,
    /// ECDSA on P-256 (ES256).
    EcP256,
    /// Ed25519 (EdDSA).
    Ed25519,
}

impl KeyFamily {
    /// Whether a key of this family may verify `alg`.
    pub fn verifies(self, alg: SigningAlgorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyFamily::Rsa,
                SigningAlgorithm::RS256 | SigningAlgorithm::PS256
            ) | (KeyFamily::EcP256, SigningAlgorithm::ES256)
                | (KeyFamily::Ed25519, SigningAlgorithm::EdDSA)
        )
    }
}

/// One public verification key of an issuer.
#[derive(Clone)]
pub struct VerificationKey {
    /// Its `kid`, if published with one.
    pub kid: Option<String>,
    /// The `alg` it is pinned to, if the JWK says.
    pub alg: Option<SigningAlgorithm>,
    /// Its family.
    pub family: KeyFamily,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: SigningAlgorithm) -> bool {
        self.family.verifies(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// The outcome of looking up the key for a token.
#[derive(Debug)]
pub enum KeySelection<'a> {
    /// The key to verify with.
    Found(&'a VerificationKey),
    /// No key has that `kid` (or, without a `kid`, none fits the algorithm).
    Unknown,
    /// A key has that `kid` but it is of another family or pinned to another algorithm.
    AlgorithmMismatch,
}

/// An issuer's usable verification keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerificationKey>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64_len(value: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(value).ok().map(|bytes| {
        // Leading zero octets do not count towards an RSA modulus size.
        bytes.len() - bytes.iter().take_while(|b| **b == 0).count()
    })
}

impl KeySet {
    /// Parses a JWKS document. Keys Gatehouse cannot or must not use are skipped (and logged);
    /// a document that is not a JWKS, or has no usable key at all, is an error.
    pub fn from_jwks_json(bytes: &[u8]) -> Result<Self, IdentityError> {
        let raw: RawJwks = serde_json::from_slice(bytes)
            .map_err(|e| IdentityError::KeySet(format!("not a JWKS document: {e}")))?;
        if raw.keys.len() > MAX_JWKS_KEYS {
            return Err(IdentityError::KeySet(format!(
                "{} keys published; at most {MAX_JWKS_KEYS} are accepted",
                raw.keys.len()
            )));
        }
        let mut keys = Vec::new();
        for value in raw.keys {
            match Self::key_from_jwk(value) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                Err(reason) => tracing::warn!(%reason, "skipping unusable JWK"),
            }
        }
        if keys.is_empty() {
            return Err(IdentityError::KeySet("no usable signing key".into()));
        }
        Ok(KeySet { keys })
    }

    /// A key set from keys already built (the dev issuer).
    pub fn from_keys(keys: Vec<VerificationKey>) -> Self {
        KeySet { keys }
    }

    /// `Ok(None)`: a key that is fine but not for us (encryption, symmetric).
    fn key_from_jwk(value: Value) -> Result<Option<VerificationKey>, String> {
        let jwk: RawJwk = serde_json::from_value(value).map_err(|e| format!("bad JWK: {e}"))?;
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(name) => match SigningAlgorithm::from_header(name) {
                Ok(alg) => Some(alg),
                // A key pinned to an algorithm we never verify is of no use to us.
                Err(_) => return Ok(None),
            },
        };
        let need = |field: Option<String>, name: &str| {
            field.ok_or_else(|| format!("JWK without `{name}`"))
        };
        let (family, key) = match jwk.kty.as_deref() {
            Some("RSA") => {
                let n = need(jwk.n, "n")?;
                let e = need(jwk.e, "e")?;
                let bits = b64_len(&n).ok_or("RSA modulus is not base64url")? * 8;
                if bits < MIN_RSA_BITS {
                    return Err(format!("RSA key of {bits} bits is too weak"));
                }
                b64_len(&e).ok_or("RSA exponent is not base64url")?;
                let key = DecodingKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())?;
                (KeyFamily::Rsa, key)
            }
            Some("EC") => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Ok(None);
                }
                let x = need(jwk.x, "x")?;
                let y = need(jwk.y, "y")?;
                if URL_SAFE_NO_PAD.decode(&x).map(|v| v.len()).ok() != Some(32)
                    || URL_SAFE_NO_PAD.decode(&y).map(|v| v.len()).ok() != Some(32)
                {
                    return Err("P-256 coordinates must be 32 bytes".into());
                }
                let key = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
                (KeyFamily::EcP256, key)
            }
            Some("OKP") => {
                if jwk.crv.as_deref() != Some("Ed25519") {
                    return Ok(None);
                }
                let x = need(jwk.x, "x")?;
                if URL_SAFE_NO_PAD.decode(&x).map(|v| v.len()).ok() != Some(32) {
                    return Err("Ed25519 public key must be 32 bytes".into());
                }
                let key = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
                (KeyFamily::Ed25519, key)
            }
            // `oct` (symmetric) keys are never used: that would allow HS256 key confusion.
            _ => return Ok(None),
        };
        if alg.is_some_and(|a| !family.verifies(a)) {
            return Err("JWK `alg` does not match its key type".into());
        }
        Ok(Some(VerificationKey {
            kid: jwk.kid,
            alg,
            family,
            key,
        }))
    }

    /// The keys.
    pub fn keys(&self) -> &[VerificationKey] {
        &self.keys
    }

    /// Whether a key with this `kid` is present.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Chooses the key for a token with `kid` and `alg`. Without a `kid` the issuer must publish
    /// exactly one key that fits the algorithm (no trial verification with every key).
    pub fn select(&self, kid: Option<&str>, alg: SigningAlgorithm) -> KeySelection<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let mut saw_kid = false;
                for key in named.by_ref() {
                    saw_kid = true;
                    if key.accepts(alg) {
                        return KeySelection::Found(key);
                    }
                }
                if saw_kid {
                    KeySelection::AlgorithmMismatch
                } else {
                    KeySelection::Unknown
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => KeySelection::Found(key),
                    _ => KeySelection::Unknown,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsa_n(bytes: usize) -> String {
        let mut n = vec![0xC5u8; bytes];
        n[bytes - 1] |= 1;
        URL_SAFE_NO_PAD.encode(n)
    }

    #[test]
    fn keeps_signing_keys_and_drops_the_rest() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "weak", "n": rsa_n(128), "e": "AQAB"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32])},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": rsa_n(256), "e": "AQAB"},
        ]});
        let set = KeySet::from_jwks_json(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = set.keys().iter().filter_map(|k| k.kid.clone()).collect();
        assert_eq!(kids, vec!["r1".to_string(), "ed".to_string()]);
    }

    #[test]
    fn selection_respects_kid_family_and_pinned_alg() {
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": rsa_n(256), "e": "AQAB"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32])},
        ]});
        let set = KeySet::from_jwks_json(doc.to_string().as_bytes()).unwrap();
        assert!(matches!(
            set.select(Some("r1"), SigningAlgorithm::RS256),
            KeySelection::Found(_)
        ));
        assert!(matches!(
            set.select(Some("r1"), SigningAlgorithm::PS256),
            KeySelection::AlgorithmMismatch
        ));
        assert!(matches!(
            set.select(Some("r1"), SigningAlgorithm::EdDSA),
            KeySelection::AlgorithmMismatch
        ));
        assert!(matches!(
            set.select(Some("zz"), SigningAlgorithm::RS256),
            KeySelection::Unknown
        ));
        assert!(matches!(
            set.select(None, SigningAlgorithm::EdDSA),
            KeySelection::Found(_)
        ));
        assert!(matches!(
            set.select(None, SigningAlgorithm::ES256),
            KeySelection::Unknown
        ));
    }

    #[test]
    fn refuses_documents_without_usable_keys() {
        assert!(KeySet::from_jwks_json(b"{}").is_err());
        assert!(KeySet::from_jwks_json(b"not json").is_err());
        assert!(KeySet::from_jwks_json(br#"{"keys":[{"kty":"oct","k":"AA"}]}"#).is_err());
    }
}

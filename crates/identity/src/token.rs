//! Sans-IO parsing of a compact JWS (JWT) before any key is looked up: size cap first, then
//! structure, strict base64url, header and claims JSON. Nothing here trusts the token; it only
//! makes sure the verifier is looking at something well-formed, and names what is wrong when not.
//!
//! Promise: [`UnverifiedJwt::parse`] never panics, never allocates more than a small multiple of
//! the capped input, and its errors never contain token material.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_core::{AuthError, AuthErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default cap on a presented token or key: larger than any real IdP access token (a few KB even
/// with many groups), small enough that a hostile 1 MB "token" is refused before decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The JWS algorithms Gatehouse verifies. Symmetric (`HS*`) and `none` are deliberately absent:
/// a gateway must never accept a token it could have forged itself, nor key confusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519.
    EdDSA,
}

impl SigningAlgorithm {
    /// The JOSE name (`RS256`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::RS256 => "RS256",
            SigningAlgorithm::PS256 => "PS256",
            SigningAlgorithm::ES256 => "ES256",
            SigningAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses a header `alg`, refusing everything not verifiable here with a caller-safe reason
    /// (the header value is echoed only when it is a registered JOSE name).
    pub fn from_header(alg: &str) -> Result<Self, AuthError> {
        match alg {
            "RS256" => Ok(SigningAlgorithm::RS256),
            "PS256" => Ok(SigningAlgorithm::PS256),
            "ES256" => Ok(SigningAlgorithm::ES256),
            "EdDSA" => Ok(SigningAlgorithm::EdDSA),
            "none" | "None" | "NONE" => Err(AuthError::new(
                AuthErrorKind::AlgorithmNotAllowed,
                "unsigned tokens (alg none) are never accepted",
            )),
            "HS256" | "HS384" | "HS512" => Err(AuthError::new(
                AuthErrorKind::AlgorithmNotAllowed,
                format!("symmetric algorithm {alg} is never accepted"),
            )),
            "RS384" | "RS512" | "PS384" | "PS512" | "ES384" | "ES512" | "ES256K" | "Ed25519" => {
                Err(AuthError::new(
                    AuthErrorKind::AlgorithmNotAllowed,
                    format!("algorithm {alg} is not supported"),
                ))
            }
            _ => Err(AuthError::new(
                AuthErrorKind::AlgorithmNotAllowed,
                "unrecognised algorithm",
            )),
        }
    }

    /// The `jsonwebtoken` algorithm that verifies it.
    pub(crate) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            SigningAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            SigningAlgorithm::PS256 => jsonwebtoken::Algorithm::PS256,
            SigningAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            SigningAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

impl std::fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JOSE header fields the verifier looks at. Anything else (`jku`, `x5u`, an embedded `jwk`)
/// is ignored on purpose: keys only ever come from the configured issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtHeader {
    /// The algorithm, already on Gatehouse's list of verifiable algorithms.
    pub alg: SigningAlgorithm,
    /// Key id, if the issuer sets one.
    pub kid: Option<String>,
    /// Media type (`at+jwt` for RFC 9068 access tokens), if present.
    pub typ: Option<String>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

/// A structurally valid JWS whose signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct UnverifiedJwt<'a> {
    /// The parsed header.
    pub header: JwtHeader,
    /// The claims, untrusted until the signature verifies.
    pub claims: Map<String, Value>,
    /// `header.payload`, exactly the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature segment (base64url, already checked to decode).
    pub signature_b64: &'a str,
}

fn malformed(detail: &'static str) -> AuthError {
    AuthError::new(AuthErrorKind::Malformed, detail)
}

/// Strict base64url without padding: also refuses non-canonical trailing bits.
fn decode_segment(segment: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(segment).map_err(|_| malformed(what))
}

impl<'a> UnverifiedJwt<'a> {
    /// Parses `token`, refusing anything over `max_bytes` before looking at a single byte of it.
    pub fn parse(token: &'a str, max_bytes: usize) -> Result<Self, AuthError> {
        if token.len() > max_bytes {
            return Err(AuthError::new(
                AuthErrorKind::TooLarge,
                format!("token is over the {max_bytes}-byte limit"),
            ));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected three dot-separated segments"));
        };
        if header_b64.is_empty() || payload_b64.is_empty() {
            return Err(malformed("empty header or payload segment"));
        }
        let header_json = decode_segment(header_b64, "header is not base64url")?;
        let raw: RawHeader = serde_json::from_slice(&header_json)
            .map_err(|_| malformed("header is not a JSON object"))?;
        // RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
        if raw.crit.is_some() {
            return Err(malformed("critical header extensions are not supported"));
        }
        let alg = SigningAlgorithm::from_header(raw.alg.as_deref().unwrap_or("none"))?;
        if signature_b64.is_empty() {
            return Err(AuthError::new(
                AuthErrorKind::BadSignature,
                "signature segment is empty",
            ));
        }
        if !signature_b64
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(malformed("signature is not base64url"));
        }
        // Checked here so that a bad encoding is reported as malformed, not as a bad signature.
        decode_segment(signature_b64, "signature is not base64url")?;
        let payload_json = decode_segment(payload_b64, "payload is not base64url")?;
        let claims: Map<String, Value> = serde_json::from_slice(&payload_json)
            .map_err(|_| malformed("payload is not a JSON object"))?;
        let signing_input_len = header_b64.len() + 1 + payload_b64.len();
        let signing_input = token
            .get(..signing_input_len)
            .ok_or_else(|| malformed("expected three dot-separated segments"))?;
        Ok(UnverifiedJwt {
            header: JwtHeader {
                alg,
                kid: raw.kid,
                typ: raw.typ,
            },
            claims,
            signing_input,
            signature_b64,
        })
    }

    /// The `iss` claim, if it is a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Whether `text` has the shape of a compact JWS (three segments, the first looking like a JSON
/// header): used to route a credential to the JWT verifier rather than the key stores.
pub fn looks_like_jwt(text: &str) -> bool {
    text.starts_with("eyJ") && text.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str, sig: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), sig)
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = token(
            r#"{"alg":"RS256","kid":"k1","typ":"at+jwt"}"#,
            r#"{"iss":"https://idp","sub":"a"}"#,
            "AAAA",
        );
        let jwt = UnverifiedJwt::parse(&t, DEFAULT_MAX_TOKEN_BYTES).unwrap();
        assert_eq!(jwt.header.alg, SigningAlgorithm::RS256);
        assert_eq!(jwt.header.kid.as_deref(), Some("k1"));
        assert_eq!(jwt.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(jwt.issuer(), Some("https://idp"));
        assert_eq!(jwt.signature_b64, "AAAA");
        assert_eq!(format!("{}.AAAA", jwt.signing_input), t);
    }

    #[test]
    fn refuses_none_and_symmetric_algorithms() {
        for alg in ["none", "HS256", "HS512", "foo"] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), "{}", "");
            let err = UnverifiedJwt::parse(&t, DEFAULT_MAX_TOKEN_BYTES).unwrap_err();
            assert_eq!(err.kind, AuthErrorKind::AlgorithmNotAllowed, "{alg}");
        }
        let missing = token("{}", "{}", "AAAA");
        let err = UnverifiedJwt::parse(&missing, DEFAULT_MAX_TOKEN_BYTES).unwrap_err();
        assert_eq!(err.kind, AuthErrorKind::AlgorithmNotAllowed);
    }

    #[test]
    fn refuses_size_before_structure() {
        let huge = "x".repeat(DEFAULT_MAX_TOKEN_BYTES + 1);
        let err = UnverifiedJwt::parse(&huge, DEFAULT_MAX_TOKEN_BYTES).unwrap_err();
        assert_eq!(err.kind, AuthErrorKind::TooLarge);
    }

    #[test]
    fn refuses_bad_structure_and_encoding() {
        let cases = [
            "".to_string(),
            "abc".to_string(),
            "a.b".to_string(),
            "a.b.c.d".to_string(),
            format!("{}.{}.c", "e!J", b64("{}")),
            format!("{}.{}.AAAA", b64(r#"{"alg":"RS256"}"#), "%%%"),
            format!("{}.{}.AA=A", b64(r#"{"alg":"RS256"}"#), b64("{}")),
            token(r#"{"alg":"RS256"}"#, "[1,2]", "AAAA"),
            token(r#"{"alg":"RS256","crit":["b64"]}"#, "{}", "AAAA"),
            token("not json", "{}", "AAAA"),
        ];
        for case in cases {
            let err = UnverifiedJwt::parse(&case, DEFAULT_MAX_TOKEN_BYTES).unwrap_err();
            assert!(
                matches!(
                    err.kind,
                    AuthErrorKind::Malformed | AuthErrorKind::AlgorithmNotAllowed
                ),
                "{case}: {err}"
            );
            assert!(
                case.is_empty() || !err.detail.contains(&case),
                "error echoes the token"
            );
        }
    }

    #[test]
    fn jwt_shape_detection() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJ.sig"));
        assert!(!looks_like_jwt("gatehouse_sa_0123_abc"));
        assert!(!looks_like_jwt("eyJ.only-one-dot"));
    }
}

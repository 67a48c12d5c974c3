//! Every way a token must be refused, each with its own reason, and never echoing the token.

use std::sync::Arc;

use gatehouse_core::{AuthError, AuthErrorKind, AuthMethod, Authenticator, Credential};
use gatehouse_identity::{
    CompositeAuthenticator, JwksSource, OidcAuthenticator, OidcProviderConfig, SigningAlgorithm,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use crate::support::keys::{
    self, AUDIENCE, ISSUER, TestKey, jwks, mint, now, rsa, sign_raw, unsigned, valid_claims,
    valid_header, valid_token,
};
use crate::support::within;

fn config() -> OidcProviderConfig {
    let mut config = OidcProviderConfig::new(ISSUER, AUDIENCE);
    config.jwks = JwksSource::Inline {
        jwks: jwks(&[keys::rsa(), keys::ec()]),
    };
    config.leeway_secs = 30;
    config
}

fn verifier() -> OidcAuthenticator {
    OidcAuthenticator::new(vec![config()]).unwrap()
}

async fn refuse(verifier: &OidcAuthenticator, token: &str) -> AuthError {
    let err = within(verifier.verify(token))
        .await
        .expect_err("token must be refused");
    // Never echo the token or any of its segments.
    let text = format!("{err} {err:?}");
    for segment in token.split('.').filter(|s| s.len() >= 8) {
        assert!(
            !text.contains(segment),
            "error echoes token material: {text}"
        );
    }
    err
}

fn with_claims(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut claims = valid_claims();
    edit(claims.as_object_mut().unwrap());
    mint(rsa(), &valid_header(rsa()), &claims)
}

#[tokio::test]
async fn a_valid_token_maps_to_an_identity() {
    let mut config = config();
    config.claims.extra = vec!["tenant".into(), "realm_access.roles".into()];
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    let id = within(verifier.verify(&valid_token())).await.unwrap();
    assert_eq!(id.subject, "agent-7");
    assert_eq!(id.issuer, ISSUER);
    assert_eq!(id.groups, vec!["dba", "oncall"]);
    assert_eq!(id.method, AuthMethod::Oidc);
    assert_eq!(id.claims["tenant"], json!("acme"));
    assert_eq!(id.claims["realm_access.roles"], json!(["reader"]));
    let token = valid_token();
    let id = within(verifier.verify(&token)).await.unwrap();
    let exp = gatehouse_identity::UnverifiedJwt::parse(&token, 16 * 1024)
        .unwrap()
        .claims["exp"]
        .as_i64()
        .unwrap();
    assert_eq!(id.expires_at.unwrap().unix_timestamp(), exp);
}

#[tokio::test]
async fn claims_mapping_follows_config() {
    let mut config = config();
    config.claims.subject = "client_id".into();
    config.claims.groups = Some("realm_access.roles".into());
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    let id = within(verifier.verify(&valid_token())).await.unwrap();
    assert_eq!(id.subject, "agent");
    assert_eq!(id.groups, vec!["reader"]);

    let mut config = self::config();
    config.claims.subject = "email".into();
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    let err = refuse(&verifier, &valid_token()).await;
    assert_eq!(err.kind, AuthErrorKind::Malformed);
}

#[tokio::test]
async fn es256_and_ps256_verify_and_the_allow_list_is_per_issuer() {
    let v = verifier();
    let es = mint(keys::ec(), &valid_header(keys::ec()), &valid_claims());
    assert_eq!(within(v.verify(&es)).await.unwrap().subject, "agent-7");
    let ps_header = json!({"alg": "PS256", "typ": "at+jwt", "kid": rsa().kid});
    let ps = sign_raw(
        &ps_header,
        &valid_claims(),
        &rsa().encoding,
        Algorithm::PS256,
    );
    // The published RSA JWK pins RS256, so PS256 with it is refused...
    assert_eq!(
        refuse(&v, &ps).await.kind,
        AuthErrorKind::AlgorithmNotAllowed
    );
    // ...and verifies once the issuer publishes the key without an `alg` pin.
    let mut unpinned = rsa().public_jwk.clone();
    unpinned.as_object_mut().unwrap().remove("alg");
    let mut cfg = config();
    cfg.jwks = JwksSource::Inline {
        jwks: json!({"keys": [unpinned]}).to_string(),
    };
    let unpinned_verifier = OidcAuthenticator::new(vec![cfg]).unwrap();
    assert_eq!(
        within(unpinned_verifier.verify(&ps)).await.unwrap().subject,
        "agent-7"
    );

    let mut only_es = config();
    only_es.algorithms = vec![SigningAlgorithm::ES256];
    let strict = OidcAuthenticator::new(vec![only_es]).unwrap();
    assert_eq!(
        refuse(&strict, &valid_token()).await.kind,
        AuthErrorKind::AlgorithmNotAllowed
    );
    assert!(within(strict.verify(&es)).await.is_ok());

    // An RSA key cannot verify ES256, whatever the header claims.
    let cross = json!({"alg": "ES256", "typ": "at+jwt", "kid": rsa().kid});
    let forged = sign_raw(
        &cross,
        &valid_claims(),
        &keys::ec().encoding,
        Algorithm::ES256,
    );
    assert_eq!(
        refuse(&v, &forged).await.kind,
        AuthErrorKind::AlgorithmNotAllowed
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": rsa().kid});
    let token = unsigned(&header, &valid_claims());
    assert_eq!(
        refuse(&verifier(), &token).await.kind,
        AuthErrorKind::AlgorithmNotAllowed
    );
    let missing_alg = unsigned(&json!({"typ": "at+jwt"}), &valid_claims());
    assert_eq!(
        refuse(&verifier(), &missing_alg).await.kind,
        AuthErrorKind::AlgorithmNotAllowed
    );
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let key: &TestKey = rsa();
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": key.kid});
    for secret in [
        key.public_pem.as_bytes(),
        key.public_jwk["n"].as_str().unwrap().as_bytes(),
    ] {
        let token = sign_raw(
            &header,
            &valid_claims(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        );
        assert_eq!(
            refuse(&verifier(), &token).await.kind,
            AuthErrorKind::AlgorithmNotAllowed
        );
    }
}

#[tokio::test]
async fn expired_is_refused_but_leeway_is_honoured() {
    let expired = with_claims(|c| {
        c.insert("exp".into(), json!(now() - 31));
    });
    assert_eq!(
        refuse(&verifier(), &expired).await.kind,
        AuthErrorKind::Expired
    );
    let within_leeway = with_claims(|c| {
        c.insert("exp".into(), json!(now() - 5));
    });
    assert!(within(verifier().verify(&within_leeway)).await.is_ok());
    let no_exp = with_claims(|c| {
        c.remove("exp");
    });
    assert_eq!(
        refuse(&verifier(), &no_exp).await.kind,
        AuthErrorKind::Malformed
    );
    let text_exp = with_claims(|c| {
        c.insert("exp".into(), json!("tomorrow"));
    });
    assert_eq!(
        refuse(&verifier(), &text_exp).await.kind,
        AuthErrorKind::Malformed
    );
}

#[tokio::test]
async fn nbf_or_iat_in_the_future_is_refused() {
    let nbf = with_claims(|c| {
        c.insert("nbf".into(), json!(now() + 600));
    });
    assert_eq!(
        refuse(&verifier(), &nbf).await.kind,
        AuthErrorKind::NotYetValid
    );
    let iat = with_claims(|c| {
        c.insert("iat".into(), json!(now() + 600));
    });
    assert_eq!(
        refuse(&verifier(), &iat).await.kind,
        AuthErrorKind::NotYetValid
    );
    let nbf_in_leeway = with_claims(|c| {
        c.insert("nbf".into(), json!(now() + 10));
    });
    assert!(within(verifier().verify(&nbf_in_leeway)).await.is_ok());
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let other = with_claims(|c| {
        c.insert("iss".into(), json!("https://evil.test"));
    });
    assert_eq!(
        refuse(&verifier(), &other).await.kind,
        AuthErrorKind::WrongIssuer
    );
    let trailing_slash = with_claims(|c| {
        c.insert("iss".into(), json!(format!("{ISSUER}/")));
    });
    assert_eq!(
        refuse(&verifier(), &trailing_slash).await.kind,
        AuthErrorKind::WrongIssuer
    );
    let none = with_claims(|c| {
        c.remove("iss");
    });
    assert_eq!(
        refuse(&verifier(), &none).await.kind,
        AuthErrorKind::WrongIssuer
    );
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let other = with_claims(|c| {
        c.insert("aud".into(), json!("https://other-api.test"));
    });
    let err = refuse(&verifier(), &other).await;
    assert_eq!(err.kind, AuthErrorKind::WrongAudience);
    let list = with_claims(|c| {
        c.insert("aud".into(), json!(["x", AUDIENCE]));
    });
    assert!(within(verifier().verify(&list)).await.is_ok());
    let none = with_claims(|c| {
        c.remove("aud");
    });
    assert_eq!(
        refuse(&verifier(), &none).await.kind,
        AuthErrorKind::WrongAudience
    );
}

#[tokio::test]
async fn an_id_token_is_refused_where_an_access_token_is_required() {
    // An ID token as an IdP issues it: typ JWT, nonce, at_hash, aud = the client.
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": rsa().kid});
    let mut claims = valid_claims();
    let c = claims.as_object_mut().unwrap();
    c.insert("nonce".into(), json!("n-0S6_WzA2Mj"));
    c.insert("at_hash".into(), json!("77QmUPtjPfzWtF2AnpK9RQ"));
    let id_token = mint(rsa(), &header, &claims);
    assert_eq!(
        refuse(&verifier(), &id_token).await.kind,
        AuthErrorKind::WrongTokenType
    );

    // An issuer that does not stamp typ: the ID-token markers still give it away.
    let mut lax = config();
    lax.access_token.require_type = false;
    let lax = OidcAuthenticator::new(vec![lax]).unwrap();
    assert_eq!(
        refuse(&lax, &id_token).await.kind,
        AuthErrorKind::WrongTokenType
    );
    let untyped = mint(
        rsa(),
        &json!({"alg": "RS256", "kid": rsa().kid}),
        &valid_claims(),
    );
    assert!(within(lax.verify(&untyped)).await.is_ok());

    // Unless configured otherwise.
    let mut open = config();
    open.access_token.accept_id_tokens = true;
    let open = OidcAuthenticator::new(vec![open]).unwrap();
    assert!(within(open.verify(&id_token)).await.is_ok());
}

#[tokio::test]
async fn client_allow_list_is_enforced() {
    let mut cfg = config();
    cfg.access_token.allowed_clients = vec!["trusted-agent".into()];
    let v = OidcAuthenticator::new(vec![cfg]).unwrap();
    assert_eq!(
        refuse(&v, &valid_token()).await.kind,
        AuthErrorKind::WrongTokenType
    );
    let trusted = with_claims(|c| {
        c.insert("azp".into(), json!("trusted-agent"));
    });
    assert!(within(v.verify(&trusted)).await.is_ok());
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let other = keys::rsa_unpublished();
    let token = mint(other, &valid_header(other), &valid_claims());
    assert_eq!(
        refuse(&verifier(), &token).await.kind,
        AuthErrorKind::UnknownKey
    );
    // A published kid with another key's signature is a bad signature, not an unknown key.
    let forged = mint(other, &valid_header(rsa()), &valid_claims());
    assert_eq!(
        refuse(&verifier(), &forged).await.kind,
        AuthErrorKind::BadSignature
    );
}

#[tokio::test]
async fn payload_changed_after_signing_is_refused() {
    let token = valid_token();
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut claims = valid_claims();
    claims["groups"] = json!(["dba", "oncall", "admin"]);
    parts[1] = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        claims.to_string(),
    );
    let tampered = parts.join(".");
    assert_eq!(
        refuse(&verifier(), &tampered).await.kind,
        AuthErrorKind::BadSignature
    );
    // Same claims, re-ordered header: still not what was signed.
    let header = format!(r#"{{"typ":"at+jwt","kid":"{}","alg":"RS256"}}"#, rsa().kid);
    parts[0] = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header);
    assert_ne!(parts[0], token.split('.').next().unwrap());
    parts[1] = token.split('.').nth(1).unwrap().to_string();
    assert_eq!(
        refuse(&verifier(), &parts.join(".")).await.kind,
        AuthErrorKind::BadSignature
    );
}

#[tokio::test]
async fn truncated_tokens_are_refused() {
    let token = valid_token();
    let v = verifier();
    let sig_start = token.rfind('.').unwrap() + 1;
    // Into the signature: a short signature never verifies.
    assert_eq!(
        refuse(&v, &token[..token.len() - 2]).await.kind,
        AuthErrorKind::BadSignature
    );
    assert_eq!(
        refuse(&v, &token[..token.len() - 1]).await.kind,
        AuthErrorKind::Malformed
    );
    // At the last dot: an empty signature.
    assert_eq!(
        refuse(&v, &token[..sig_start]).await.kind,
        AuthErrorKind::BadSignature
    );
    // Before the last dot: two segments.
    assert_eq!(
        refuse(&v, &token[..sig_start - 1]).await.kind,
        AuthErrorKind::Malformed
    );
    for cut in (1..token.len()).step_by(17) {
        let err = refuse(&v, &token[..cut]).await;
        assert!(
            matches!(
                err.kind,
                AuthErrorKind::Malformed | AuthErrorKind::BadSignature
            ),
            "cut at {cut}: {err}"
        );
    }
}

#[tokio::test]
async fn non_base64_segments_are_refused() {
    let token = valid_token();
    let parts: Vec<&str> = token.split('.').collect();
    for (i, bad) in [(0, "eyJ!!!"), (1, "eyJ hello"), (2, "abc+/def")] {
        let mut p = parts.clone();
        p[i] = bad;
        assert_eq!(
            refuse(&verifier(), &p.join(".")).await.kind,
            AuthErrorKind::Malformed,
            "segment {i}"
        );
    }
    let padded = format!("{}.{}.{}=", parts[0], parts[1], parts[2]);
    assert_eq!(
        refuse(&verifier(), &padded).await.kind,
        AuthErrorKind::Malformed
    );
}

#[tokio::test]
async fn a_one_megabyte_token_is_refused_before_decoding() {
    // Shaped like a JWT so that nothing but the size can refuse it.
    let huge = format!(
        "eyJ{}.{}.{}",
        "A".repeat(600_000),
        "B".repeat(400_000),
        "C".repeat(100)
    );
    assert!(huge.len() > 1_000_000);
    assert_eq!(
        refuse(&verifier(), &huge).await.kind,
        AuthErrorKind::TooLarge
    );
    let composite = CompositeAuthenticator::new().with_oidc(Arc::new(verifier()));
    let err = within(composite.authenticate(&Credential::Password(huge)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::TooLarge);
}

#[tokio::test]
async fn static_jwks_file_rotates_when_the_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[rsa()])).unwrap();
    let mut cfg = OidcProviderConfig::new(ISSUER, AUDIENCE);
    cfg.jwks = JwksSource::File { path: path.clone() };
    cfg.min_refresh_interval_secs = 0;
    let v = OidcAuthenticator::new(vec![cfg]).unwrap();
    assert!(within(v.verify(&valid_token())).await.is_ok());
    let other = keys::rsa_unpublished();
    let rotated = mint(other, &valid_header(other), &valid_claims());
    assert_eq!(refuse(&v, &rotated).await.kind, AuthErrorKind::UnknownKey);
    std::fs::write(&path, jwks(&[rsa(), other])).unwrap();
    assert!(within(v.verify(&rotated)).await.is_ok());
    // A broken file at startup is a startup error, not a login failure later.
    std::fs::write(&path, "{").unwrap();
    let mut cfg = OidcProviderConfig::new(ISSUER, AUDIENCE);
    cfg.jwks = JwksSource::File { path };
    assert!(OidcAuthenticator::new(vec![cfg]).is_err());
}

#[tokio::test]
async fn public_key_credentials_are_unsupported() {
    let cred = Credential::PublicKey {
        algorithm: "ssh-ed25519".into(),
        fingerprint: "SHA256:x".into(),
    };
    let err = within(verifier().authenticate(&cred)).await.unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::Unsupported);
}

//! Against the real `oidc-provider`: discovery, JWKS, its tokens accepted; key rotation picked up
//! without restarting the verifier; unknown kids cannot hammer it; an unreachable provider fails
//! closed; a long token exchanges for a short gateway key.

use std::sync::Arc;

use gatehouse_core::{AuthErrorKind, AuthMethod, Authenticator, Credential};
use gatehouse_identity::{
    CompositeAuthenticator, GatewayKeyIssuer, OidcAuthenticator, OidcProviderConfig,
};
use serde_json::json;

use crate::support::keys::{self, mint, valid_claims};
use crate::support::oidc::{OidcProvider, RESOURCE};
use crate::support::within;

fn config_for(provider: &OidcProvider) -> OidcProviderConfig {
    let mut config = OidcProviderConfig::new(provider.issuer(), RESOURCE);
    config.allow_insecure_loopback_http = true;
    config.http_timeout_secs = 5;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_tokens_verify_and_rotation_needs_no_verifier_restart() {
    let mut provider = tokio::task::block_in_place(|| OidcProvider::start(2));
    let mut config = config_for(&provider);
    config.min_refresh_interval_secs = 0;
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();

    let token = within(provider.client_credentials_token()).await;
    let id = within(verifier.verify(&token)).await.unwrap();
    assert_eq!(id.subject, "agent");
    assert_eq!(id.issuer, provider.issuer());
    assert_eq!(id.groups, vec!["team-0", "team-1"]);
    assert_eq!(id.method, AuthMethod::Oidc);
    assert!(id.expires_at.is_some());
    assert_eq!(verifier.key_loads(&provider.issuer()), Some(1));
    // Warm cache: verifying again fetches nothing.
    within(verifier.verify(&token)).await.unwrap();
    assert_eq!(verifier.key_loads(&provider.issuer()), Some(1));

    let old_kid = provider.kid.clone();
    tokio::task::block_in_place(|| provider.restart_with_new_key());
    assert_ne!(provider.kid, old_kid);
    let rotated = within(provider.client_credentials_token()).await;
    let header = gatehouse_identity::UnverifiedJwt::parse(&rotated, 16 * 1024)
        .unwrap()
        .header;
    assert_eq!(header.kid.as_deref(), Some(provider.kid.as_str()));
    let id = within(verifier.verify(&rotated)).await.unwrap();
    assert_eq!(id.subject, "agent");
    assert_eq!(verifier.key_loads(&provider.issuer()), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_are_rate_limited() {
    let provider = tokio::task::block_in_place(|| OidcProvider::start(1));
    let config = config_for(&provider); // default: at most one load per 30 s
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    within(verifier.warm_up()).await.unwrap();
    assert_eq!(verifier.key_loads(&provider.issuer()), Some(1));
    let forger = keys::rsa_unpublished();
    for i in 0..20 {
        let mut claims = valid_claims();
        claims["iss"] = json!(provider.issuer());
        claims["aud"] = json!(RESOURCE);
        let header = json!({"alg": "RS256", "typ": "at+jwt", "kid": format!("bogus-{i}")});
        let token = mint(forger, &header, &claims);
        let err = within(verifier.verify(&token)).await.unwrap_err();
        assert_eq!(err.kind, AuthErrorKind::UnknownKey);
    }
    assert_eq!(
        verifier.key_loads(&provider.issuer()),
        Some(1),
        "bogus kids caused fetches"
    );
    // The real token still verifies from the cache.
    let token = within(provider.client_credentials_token()).await;
    assert!(within(verifier.verify(&token)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_rs256_token_verifies_and_exchanges_for_a_short_gateway_key() {
    let provider = tokio::task::block_in_place(|| OidcProvider::start(80));
    let verifier = Arc::new(OidcAuthenticator::new(vec![config_for(&provider)]).unwrap());
    let token = within(provider.client_credentials_token()).await;
    assert!(token.len() >= 1536, "token is only {} bytes", token.len());
    let jwt_identity = within(verifier.verify(&token)).await.unwrap();
    assert_eq!(jwt_identity.groups.len(), 80);

    let gateway_keys = Arc::new(GatewayKeyIssuer::new(std::time::Duration::from_secs(3600)));
    let key = within(gateway_keys.exchange(verifier.as_ref(), &token, None))
        .await
        .unwrap();
    assert!(key.as_str().len() < 100);
    assert!(key.expires_at <= jwt_identity.expires_at.unwrap());

    let composite = CompositeAuthenticator::new()
        .with_oidc(verifier.clone())
        .with_gateway_keys(gateway_keys.clone());
    let via_key = within(composite.authenticate(&Credential::Password(key.as_str().into())))
        .await
        .unwrap();
    assert_eq!(via_key.subject, jwt_identity.subject);
    assert_eq!(via_key.issuer, jwt_identity.issuer);
    assert_eq!(via_key.groups, jwt_identity.groups);
    assert_eq!(via_key.method, AuthMethod::GatewayKey);
    assert!(via_key.expires_at <= jwt_identity.expires_at);
    // The JWT itself still works through the same composite.
    let via_jwt = within(composite.authenticate(&Credential::Bearer(token)))
        .await
        .unwrap();
    assert_eq!(via_jwt.method, AuthMethod::Oidc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_provider_fails_closed() {
    // A port that was just bound and released: nothing listens there.
    let port = {
        let listener = gatehouse_testkit::net::bind_loopback();
        listener.local_addr().unwrap().port()
    };
    let mut config = OidcProviderConfig::new(format!("http://127.0.0.1:{port}"), RESOURCE);
    config.allow_insecure_loopback_http = true;
    config.http_timeout_secs = 2;
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    let mut claims = valid_claims();
    claims["iss"] = json!(format!("http://127.0.0.1:{port}"));
    claims["aud"] = json!(RESOURCE);
    let token = mint(keys::rsa(), &keys::valid_header(keys::rsa()), &claims);
    let err = within(verifier.verify(&token)).await.unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::ProviderUnavailable);
    // And the failed attempt is rate-limited: the next try does not fetch again.
    let err = within(verifier.verify(&token)).await.unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::ProviderUnavailable);
    assert_eq!(
        verifier.key_loads(&format!("http://127.0.0.1:{port}")),
        Some(1)
    );
}

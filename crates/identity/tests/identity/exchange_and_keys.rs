//! Service-account keys, gateway keys and the dev issuer through the composite authenticator.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{AuthErrorKind, AuthMethod, Authenticator, Credential};
use gatehouse_identity::dev::{DEFAULT_DEV_AUDIENCE, DEFAULT_DEV_ISSUER};
use gatehouse_identity::{
    CompositeAuthenticator, DevIssuer, GatewayKeyIssuer, ManualClock, OidcAuthenticator,
    ServiceAccountKeys, generate_service_account_key,
};

use crate::support::within;

fn dev_issuer(dir: &std::path::Path) -> DevIssuer {
    DevIssuer::load_or_create(
        &dir.join("dev.pem"),
        DEFAULT_DEV_ISSUER,
        DEFAULT_DEV_AUDIENCE,
    )
    .unwrap()
}

#[tokio::test]
async fn dev_issuer_tokens_verify_through_the_oidc_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dev_issuer(dir.path());
    let verifier = OidcAuthenticator::new(vec![])
        .unwrap()
        .with_dev_issuer(&dev)
        .unwrap();
    let token = dev
        .mint("alice", &["dba".into()], Duration::from_secs(600))
        .unwrap();
    let id = within(verifier.verify(&token)).await.unwrap();
    assert_eq!(id.subject, "alice");
    assert_eq!(id.issuer, DEFAULT_DEV_ISSUER);
    assert_eq!(id.groups, vec!["dba"]);
    assert_eq!(id.method, AuthMethod::DevIssuer);

    // A second dev key (another machine's) is not trusted.
    let other_dir = tempfile::tempdir().unwrap();
    let stranger = dev_issuer(other_dir.path());
    let foreign = stranger
        .mint("alice", &[], Duration::from_secs(600))
        .unwrap();
    let err = within(verifier.verify(&foreign)).await.unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::UnknownKey);

    // Expiry: ten minutes plus the default 60 s leeway later, on a hand-moved clock.
    let clock = Arc::new(ManualClock::new(gatehouse_core::now()));
    let later = OidcAuthenticator::new(vec![])
        .unwrap()
        .with_dev_issuer(&dev)
        .unwrap()
        .with_clock(clock.clone());
    assert!(within(later.verify(&token)).await.is_ok());
    clock.advance(time::Duration::seconds(600 + 61));
    let err = within(later.verify(&token)).await.unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::Expired);
}

#[tokio::test]
async fn composite_routes_each_format_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dev_issuer(dir.path());
    let oidc = Arc::new(
        OidcAuthenticator::new(vec![])
            .unwrap()
            .with_dev_issuer(&dev)
            .unwrap(),
    );
    let sa = generate_service_account_key("ci-bot", vec!["ci".into()], None);
    let service_accounts = Arc::new(ServiceAccountKeys::new(vec![sa.config.clone()]).unwrap());
    let gateway = Arc::new(GatewayKeyIssuer::new(Duration::from_secs(900)));
    let composite = CompositeAuthenticator::new()
        .with_oidc(oidc.clone())
        .with_service_accounts(service_accounts)
        .with_gateway_keys(gateway.clone());

    let by_sa = within(composite.authenticate(&Credential::Bearer(sa.key.clone())))
        .await
        .unwrap();
    assert_eq!(
        (by_sa.subject.as_str(), by_sa.method),
        ("ci-bot", AuthMethod::ApiKey)
    );

    let jwt = dev
        .mint("bob", &["dev".into()], Duration::from_secs(600))
        .unwrap();
    let by_jwt = within(composite.authenticate(&Credential::Password(jwt.clone())))
        .await
        .unwrap();
    assert_eq!(by_jwt.method, AuthMethod::DevIssuer);

    let key = within(gateway.exchange(oidc.as_ref(), &jwt, None))
        .await
        .unwrap();
    let by_key = within(composite.authenticate(&Credential::Password(key.as_str().into())))
        .await
        .unwrap();
    assert_eq!(
        (by_key.subject.as_str(), by_key.method),
        ("bob", AuthMethod::GatewayKey)
    );
    assert!(by_key.expires_at <= by_jwt.expires_at);

    // A service-account key cannot be exchanged (only JWT identities can).
    let err = within(gateway.exchange(&composite, &sa.key, None))
        .await
        .unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::Unsupported);

    for junk in [
        "",
        "password123",
        "gatehouse_sa_nope",
        "gatehouse_gk_nope",
        "eyJ.x",
    ] {
        let err = within(composite.authenticate(&Credential::Bearer(junk.into())))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.kind,
                AuthErrorKind::Malformed | AuthErrorKind::UnknownCredential
            ),
            "{junk:?}: {err}"
        );
    }
    // A format that is not enabled is unsupported, not silently accepted elsewhere.
    let only_oidc = CompositeAuthenticator::new().with_oidc(oidc);
    let err = within(only_oidc.authenticate(&Credential::Bearer(sa.key)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::Unsupported);
}

#[tokio::test]
async fn an_expired_gateway_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dev_issuer(dir.path());
    let oidc = OidcAuthenticator::new(vec![])
        .unwrap()
        .with_dev_issuer(&dev)
        .unwrap();
    let clock = Arc::new(ManualClock::new(gatehouse_core::now()));
    let gateway = GatewayKeyIssuer::new(Duration::from_secs(300)).with_clock(clock.clone());
    let jwt = dev.mint("carol", &[], Duration::from_secs(3600)).unwrap();
    let key = within(gateway.exchange(&oidc, &jwt, Some(Duration::from_secs(120))))
        .await
        .unwrap();
    assert!(gateway.verify(key.as_str()).is_ok());
    clock.advance(time::Duration::seconds(119));
    assert!(gateway.verify(key.as_str()).is_ok());
    clock.advance(time::Duration::seconds(1));
    let err = gateway.verify(key.as_str()).unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::Expired);
    assert!(!err.to_string().contains(key.as_str()));
}

//! Verifications per second with a warm key cache, against the bare `jsonwebtoken` decode of the
//! same token measured in the same run (the baseline: what signature + claim checks cost without
//! Gatehouse's parsing, issuer routing, key selection and claims mapping).
//!
//! Run: `cargo bench -p gatehouse-identity --bench verify`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_identity::dev::{DEFAULT_DEV_AUDIENCE, DEFAULT_DEV_ISSUER};
use gatehouse_identity::{
    DevIssuer, GatewayKeyIssuer, JwksSource, OidcAuthenticator, OidcProviderConfig,
    ServiceAccountKeys, generate_service_account_key,
};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::json;

const ISSUER: &str = "https://issuer.bench";
const AUDIENCE: &str = "gatehouse";

fn rsa_key(dir: &std::path::Path) -> EncodingKey {
    let path = dir.join("rsa.pem");
    let status = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    EncodingKey::from_rsa_pem(&std::fs::read(path).unwrap()).unwrap()
}

fn bench_verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // RS256: the common IdP case.
    let encoding = rsa_key(dir.path());
    let mut jwk =
        serde_json::to_value(Jwk::from_encoding_key(&encoding, Algorithm::RS256).unwrap()).unwrap();
    jwk["kid"] = json!("k1");
    let now = gatehouse_core::now().unix_timestamp();
    let groups: Vec<String> = (0..20).map(|i| format!("group-{i}")).collect();
    let claims = json!({
        "iss": ISSUER, "sub": "agent-7", "aud": AUDIENCE, "iat": now, "nbf": now,
        "exp": now + 86_400, "client_id": "agent", "groups": groups,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &claims, &encoding).unwrap();

    let mut config = OidcProviderConfig::new(ISSUER, AUDIENCE);
    config.jwks = JwksSource::Inline {
        jwks: json!({"keys": [jwk.clone()]}).to_string(),
    };
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    runtime.block_on(verifier.verify(&token)).unwrap();

    let baseline_key = DecodingKey::from_jwk(&serde_json::from_value(jwk).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<serde_json::Value>(&token, &baseline_key, &validation).unwrap();

    let mut group = c.benchmark_group("rs256_verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("baseline_jsonwebtoken_decode", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &baseline_key, &validation)
                .unwrap()
        })
    });
    group.bench_function("gatehouse_oidc_verify", |b| {
        b.iter(|| {
            runtime
                .block_on(verifier.verify(black_box(&token)))
                .unwrap()
        })
    });
    group.finish();

    // EdDSA: the dev issuer.
    let dev = DevIssuer::load_or_create(
        &dir.path().join("dev.pem"),
        DEFAULT_DEV_ISSUER,
        DEFAULT_DEV_AUDIENCE,
    )
    .unwrap();
    let dev_token = dev
        .mint("alice", &groups, Duration::from_secs(86_400))
        .unwrap();
    let dev_verifier = OidcAuthenticator::new(vec![])
        .unwrap()
        .with_dev_issuer(&dev)
        .unwrap();
    runtime.block_on(dev_verifier.verify(&dev_token)).unwrap();
    let dev_jwk: Jwk = serde_json::from_value(
        serde_json::from_str::<serde_json::Value>(&dev.jwks_json()).unwrap()["keys"][0].clone(),
    )
    .unwrap();
    let dev_key = DecodingKey::from_jwk(&dev_jwk).unwrap();
    let mut dev_validation = Validation::new(Algorithm::EdDSA);
    dev_validation.set_audience(&[DEFAULT_DEV_AUDIENCE]);
    dev_validation.set_issuer(&[DEFAULT_DEV_ISSUER]);
    jsonwebtoken::decode::<serde_json::Value>(&dev_token, &dev_key, &dev_validation).unwrap();

    let mut group = c.benchmark_group("eddsa_verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("baseline_jsonwebtoken_decode", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<serde_json::Value>(
                black_box(&dev_token),
                &dev_key,
                &dev_validation,
            )
            .unwrap()
        })
    });
    group.bench_function("gatehouse_oidc_verify", |b| {
        b.iter(|| {
            runtime
                .block_on(dev_verifier.verify(black_box(&dev_token)))
                .unwrap()
        })
    });
    group.finish();

    // Opaque keys: one SHA-256 and a map lookup.
    let sa = generate_service_account_key("ci-bot", vec!["ci".into()], None);
    let sa_store = ServiceAccountKeys::new(vec![sa.config.clone()]).unwrap();
    let gateway = GatewayKeyIssuer::new(Duration::from_secs(3600));
    let jwt_identity = runtime.block_on(dev_verifier.verify(&dev_token)).unwrap();
    let gk = gateway.issue(&jwt_identity, None).unwrap();
    let mut group = c.benchmark_group("opaque_key_verify");
    group.throughput(Throughput::Elements(1));
    group.bench_function("service_account_key", |b| {
        b.iter(|| sa_store.verify(black_box(&sa.key)).unwrap())
    });
    group.bench_function("gateway_key", |b| {
        b.iter(|| gateway.verify(black_box(gk.as_str())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);

//! Discovery and JWKS over HTTPS from a local TLS identity provider whose certificate chains to a
//! throwaway CA: trusted through `ca_file`, refused without it (fail closed), and a discovery
//! document naming another issuer is refused (issuer mix-up).

use std::convert::Infallible;
use std::sync::Arc;

use gatehouse_core::AuthErrorKind;
use gatehouse_identity::{OidcAuthenticator, OidcProviderConfig};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use crate::support::keys::{self, AUDIENCE, jwks, mint, valid_claims, valid_header};
use crate::support::within;

struct TlsIdp {
    issuer: String,
    ca_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TlsIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Serves discovery (naming `claimed_issuer`, or itself) and the test JWKS over TLS.
async fn start_tls_idp(claimed_issuer: Option<&str>) -> TlsIdp {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let std_listener = gatehouse_testkit::net::bind_loopback();
    std_listener.set_nonblocking(true).unwrap();
    let port = std_listener.local_addr().unwrap().port();
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let issuer = format!("https://127.0.0.1:{port}");
    let discovery = json!({
        "issuer": claimed_issuer.unwrap_or(&issuer),
        "jwks_uri": format!("{issuer}/jwks"),
    })
    .to_string();
    let key_set = jwks(&[keys::rsa()]);

    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let discovery = discovery.clone();
            let key_set = key_set.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let body = match req.uri().path() {
                        "/.well-known/openid-configuration" => Some(discovery.clone()),
                        "/jwks" => Some(key_set.clone()),
                        _ => None,
                    };
                    async move {
                        let response = match body {
                            Some(b) => http::Response::new(Full::new(Bytes::from(b))),
                            None => {
                                let mut r = http::Response::new(Full::new(Bytes::new()));
                                *r.status_mut() = http::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    TlsIdp {
        issuer,
        ca_file,
        _dir: dir,
        server,
    }
}

fn token_for(issuer: &str) -> String {
    let mut claims = valid_claims();
    claims["iss"] = json!(issuer);
    mint(keys::rsa(), &valid_header(keys::rsa()), &claims)
}

#[tokio::test]
async fn https_discovery_with_a_configured_ca() {
    let idp = start_tls_idp(None).await;
    let mut config = OidcProviderConfig::new(idp.issuer.clone(), AUDIENCE);
    config.ca_file = Some(idp.ca_file.clone());
    config.http_timeout_secs = 5;
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    let id = within(verifier.verify(&token_for(&idp.issuer)))
        .await
        .unwrap();
    assert_eq!(id.subject, "agent-7");
    assert_eq!(id.issuer, idp.issuer);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_closed() {
    let idp = start_tls_idp(None).await;
    let mut config = OidcProviderConfig::new(idp.issuer.clone(), AUDIENCE);
    config.http_timeout_secs = 5; // public web roots only: the throwaway CA is not among them
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    let err = within(verifier.verify(&token_for(&idp.issuer)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::ProviderUnavailable);
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let idp = start_tls_idp(Some("https://someone-else.test")).await;
    let mut config = OidcProviderConfig::new(idp.issuer.clone(), AUDIENCE);
    config.ca_file = Some(idp.ca_file.clone());
    config.http_timeout_secs = 5;
    let verifier = OidcAuthenticator::new(vec![config]).unwrap();
    let err = within(verifier.verify(&token_for(&idp.issuer)))
        .await
        .unwrap_err();
    assert_eq!(err.kind, AuthErrorKind::ProviderUnavailable);
}

#[test]
fn plain_http_needs_the_flag_and_loopback() {
    let config = OidcProviderConfig::new("http://127.0.0.1:9", AUDIENCE);
    assert!(OidcAuthenticator::new(vec![config]).is_err());
    let mut remote = OidcProviderConfig::new("http://idp.example.com", AUDIENCE);
    remote.allow_insecure_loopback_http = true;
    assert!(OidcAuthenticator::new(vec![remote]).is_err());
}

//! The webhook witness against real listeners on loopback: plain HTTP, and HTTPS (hyper on
//! tokio-rustls, certificates from a throwaway CA) with the CA pinned.

use std::sync::Arc;

use bytes::Bytes;
use gatehouse_testkit::tls::TestCa;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use gatehouse_core::SessionId;
use gatehouse_recorder::verify::verify_log;
use gatehouse_recorder::{
    Checkpoint, CheckpointSigner, LogHooks, ProblemKind, VerifyOptions, WebhookWitness,
    Witness as _,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::common::*;

const LOG: &str = "gw-hook";

/// A tiny HTTP/1.1 server: every POST body goes to the channel; answers `status`.
async fn serve(status: u16) -> (String, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/checkpoints", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: head, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    let _ = tx.send(body);
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    if conn.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn checkpoints_are_posted_to_the_webhook_and_catch_a_cut_tail() {
    let (url, mut rx) = serve(200).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = LogHooks {
        witnesses: vec![Arc::new(WebhookWitness::new(&url).unwrap())],
        shipper: None,
    };
    let log = open_log_with(dir.path(), config(LOG), hooks).await;
    let s = SessionId::generate();
    for i in 0..250 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
    }
    let last = log.checkpoint().await.unwrap().unwrap();
    // Latest wins: wait until the witness holds the last checkpoint.
    let mut held: Vec<Checkpoint> = Vec::new();
    within(20, async {
        while let Some(body) = rx.recv().await {
            let cp: Checkpoint = serde_json::from_slice(&body).unwrap();
            let done = cp == last;
            held.push(cp);
            if done {
                break;
            }
        }
    })
    .await;
    log.close().await.unwrap();
    let opts = VerifyOptions {
        witnesses: held.clone(),
        ..options()
    };
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &opts);
    assert!(v.ok(), "{:?}", v.problem);
    assert!(v.witnesses_matched >= 1);
    // Cut the tail (checkpoints included): the webhook's copy still catches it.
    let mut cut = data.clone();
    let seg = &mut cut.segments.last_mut().unwrap().bytes;
    let text = String::from_utf8(seg.clone()).unwrap();
    let keep: Vec<&str> = text.lines().take(120).collect();
    *seg = format!("{}\n", keep.join("\n")).into_bytes();
    assert!(
        verify_log(&cut, &options()).ok(),
        "without a witness a clean cut looks like a shorter log"
    );
    assert_eq!(
        verify_log(&cut, &opts).problem.unwrap().kind,
        ProblemKind::TruncatedTail
    );
}

#[tokio::test]
async fn a_failing_witness_never_blocks_appends() {
    let (url, mut rx) = serve(500).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = LogHooks {
        witnesses: vec![Arc::new(WebhookWitness::new(&url).unwrap())],
        shipper: None,
    };
    let log = open_log_with(dir.path(), config(LOG), hooks).await;
    let s = SessionId::generate();
    for i in 0..300 {
        within(10, log.append(&sql_event(&s, i, "select 1")))
            .await
            .unwrap();
    }
    // The witness was asked (and refused); the log is fine.
    within(20, rx.recv()).await.unwrap();
    log.close().await.unwrap();
    assert!(verify_log(&load(dir.path(), LOG), &options()).ok());
    assert!(
        WebhookWitness::new("https://example.invalid/x").is_err(),
        "https needs a pinned CA"
    );
    assert!(WebhookWitness::new("not a url").is_err());
}

/// A real HTTPS server (hyper on tokio-rustls) presenting a certificate from `ca` for `names`;
/// every POST to `/checkpoints` goes to the channel. Returns the port.
async fn serve_tls(ca: &TestCa, names: &[&str]) -> (u16, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (cert_pem, key_pem) = ca.issue_server(names);
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let ok = req.method() == hyper::Method::POST
                                && req.uri().path() == "/checkpoints"
                                && req.headers().contains_key(hyper::header::HOST);
                            let body = req.into_body().collect().await?.to_bytes();
                            if ok {
                                let _ = tx.send(body.to_vec());
                            }
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(if ok { 200 } else { 404 })
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn checkpoints_reach_an_https_witness_through_its_pinned_ca() {
    let ca = TestCa::new("witness CA");
    let (port, mut rx) = serve_tls(&ca, &["localhost", "127.0.0.1"]).await;
    let url = format!("https://localhost:{port}/checkpoints");
    let witness = WebhookWitness::with_pinned_ca(&url, ca.cert_pem().as_bytes()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hooks = LogHooks {
        witnesses: vec![Arc::new(witness)],
        shipper: None,
    };
    let log = open_log_with(dir.path(), config(LOG), hooks).await;
    let s = SessionId::generate();
    for i in 0..250 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
    }
    let last = log.checkpoint().await.unwrap().unwrap();
    let mut held: Vec<Checkpoint> = Vec::new();
    within(20, async {
        while let Some(body) = rx.recv().await {
            let cp: Checkpoint = serde_json::from_slice(&body).unwrap();
            let done = cp == last;
            held.push(cp);
            if done {
                break;
            }
        }
    })
    .await;
    log.close().await.unwrap();
    // `close` returned once the seal was pushed: it is waiting in the channel.
    let seal: Checkpoint = serde_json::from_slice(&rx.try_recv().unwrap()).unwrap();
    assert!(seal.sealed);
    held.push(seal);
    let opts = VerifyOptions {
        witnesses: held,
        ..options()
    };
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &opts);
    assert!(v.ok(), "{:?}", v.problem);
    assert_eq!(v.status(), gatehouse_recorder::LogStatus::Sealed);
    assert!(v.witnesses_matched >= 2);

    // An IP address URL works too when the certificate names it.
    let ip = WebhookWitness::with_pinned_ca(
        &format!("https://127.0.0.1:{port}/checkpoints"),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    within(10, ip.push(&last)).await.unwrap();
    let got: Checkpoint = serde_json::from_slice(&within(10, rx.recv()).await.unwrap()).unwrap();
    assert_eq!(got, last);
}

#[tokio::test]
async fn an_https_witness_trusts_nothing_but_its_pinned_ca() {
    let ca = TestCa::new("witness CA");
    let other = TestCa::new("some other CA");
    let (port, mut rx) = serve_tls(&ca, &["localhost"]).await;
    let (wrong_name_port, mut rx2) = serve_tls(&ca, &["witness.example"]).await;
    let cp = CheckpointSigner::from_seed(&SEED).checkpoint(
        LOG,
        1,
        &[1u8; 32],
        "2026-11-23T00:00:00Z".into(),
    );

    // A server whose certificate comes from another CA: refused at the TLS handshake.
    let pinned_elsewhere = WebhookWitness::with_pinned_ca(
        &format!("https://localhost:{port}/checkpoints"),
        other.cert_pem().as_bytes(),
    )
    .unwrap();
    let err = within(10, pinned_elsewhere.push(&cp)).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    // The right CA, but the certificate does not name the host: refused too.
    let wrong_name = WebhookWitness::with_pinned_ca(
        &format!("https://localhost:{wrong_name_port}/checkpoints"),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    let err = within(10, wrong_name.push(&cp)).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");

    // The right CA and name: accepted.
    let good = WebhookWitness::with_pinned_ca(
        &format!("https://localhost:{port}/checkpoints"),
        ca.cert_pem().as_bytes(),
    )
    .unwrap();
    within(10, good.push(&cp)).await.unwrap();
    let got: Checkpoint = serde_json::from_slice(&within(10, rx.recv()).await.unwrap()).unwrap();
    assert_eq!(got, cp);
    // Nothing reached the servers through the refused connections.
    assert!(rx.try_recv().is_err());
    assert!(rx2.try_recv().is_err());

    // Configuration errors are caught up front.
    assert!(WebhookWitness::with_pinned_ca("https://localhost/x", b"not a pem").is_err());
    assert!(
        WebhookWitness::with_pinned_ca("http://localhost/x", ca.cert_pem().as_bytes()).is_err()
    );
}

#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One request, sequentially, from a hyper client to a small JSON upstream: directly (the
//! baseline) and through the gateway (bearer check, policy, JSON masking of a 1 KiB body with
//! e-mail addresses, egress guard, in-memory recording). The difference is the gateway's added
//! latency per request on a keep-alive connection.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_core::{AuthMethod, Identity};
use gatehouse_http::{HttpProxy, HttpProxyConfig, HttpTargetConfig, InjectedCredential};
use gatehouse_masking::{EgressGuardBuilder, MaskingEngine};
use gatehouse_testkit::layers::{FnPolicy, MemoryApprovals, MemoryRecorder, StaticAuthenticator};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const SECRET: &str = "bench-upstream-secret-4c1d9e";

fn body() -> Bytes {
    let users: Vec<_> = (0..8)
        .map(|i| serde_json::json!({"id": i, "name": format!("User {i}"), "email": format!("user{i}@example.com"), "plan": "pro", "active": true}))
        .collect();
    Bytes::from(serde_json::json!({ "users": users }).to_string())
}

async fn start_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let payload = body();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let payload = payload.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let payload = payload.clone();
                    async move {
                        let mut r = http::Response::new(Full::new(payload));
                        r.headers_mut()
                            .insert("content-type", "application/json".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn start_gateway(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let config = HttpProxyConfig::with_targets(vec![HttpTargetConfig {
        name: "bench".into(),
        tags: vec![],
        host: None,
        path_prefix: Some("/".into()),
        upstream: format!("http://{upstream}"),
        ca_file: None,
        credential: Some(InjectedCredential::Bearer {
            secret: SECRET.into(),
        }),
    }]);
    let mut egress = EgressGuardBuilder::new();
    egress.add_secret(SECRET.as_bytes()).unwrap();
    let pipeline = gatehouse_core::Pipeline {
        authenticator: Arc::new(StaticAuthenticator::new().with_token(
            "bench-token",
            Identity::new("bench", "bench", AuthMethod::Test),
        )),
        policy: Arc::new(FnPolicy::allow_all()),
        approvals: Arc::new(MemoryApprovals::new()),
        masker: Arc::new(MaskingEngine::with_defaults().unwrap()),
        egress: Arc::new(egress.build().unwrap()),
        recorder: Arc::new(MemoryRecorder::new()),
        hooks: gatehouse_core::Pipeline::no_hooks(),
    };
    let proxy = HttpProxy::new(config, pipeline).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        proxy
            .serve(listener, None, std::future::pending())
            .await
            .unwrap();
    });
    addr
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream, gateway) = rt.block_on(async {
        let up = start_upstream().await;
        (up, start_gateway(up).await)
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let get = |addr: std::net::SocketAddr| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{addr}/users"))
                .header("authorization", "Bearer bench-token")
                .body(Empty::new())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap().to_bytes()
        }
    };
    // The gateway really masks: no address survives.
    let masked = rt.block_on(get(gateway));
    assert!(!String::from_utf8_lossy(&masked).contains("@example.com"));

    let mut g = c.benchmark_group("http_request_1KiB_json");
    g.bench_function("direct", |b| b.iter(|| rt.block_on(get(upstream))));
    g.bench_function("gateway", |b| b.iter(|| rt.block_on(get(gateway))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

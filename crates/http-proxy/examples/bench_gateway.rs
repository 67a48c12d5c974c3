#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A gateway for the whole-system benchmark (`benches/http/run.sh`): the real layers — dev-issuer
//! JWT verification, a policy, the default JSON masking profile, the egress guard and the audit
//! recorder (group-committed fsync) — in front of one upstream.
//!
//! Usage: `bench_gateway <listen addr> <upstream url> <state dir>`; writes a fresh JWT to
//! `<state dir>/token` and serves until killed. `BENCH_RECORDER=fsync|os|memory` picks the audit
//! log's durability (or an in-memory recorder); `BENCH_WORKERS=n` the tokio worker threads.
//! `BENCH_RECORDER=null` discards every event and recording frame (attributes the recorder's
//! cost; not a configuration a gateway may run), `BENCH_MASKER=none` masks nothing.
//! `BENCH_THREADS=n` serves with `HttpProxy::serve_threaded` on n threads (default: one per CPU,
//! as the `gatehouse` binary does; 1 is `serve` on the multi-threaded runtime).
//! `BENCH_SEGMENT_MB=n` sets the audit log's segment size (default 64), `BENCH_LINGER_MS=n` the
//! recording write linger (default 100).
//! `BENCH_RECORDER=relay` runs none of the layers: a bare hyper reverse proxy (the same hyper
//! HTTP/1 server and pooled hyper-util client, the same injected header), the floor any
//! hyper-based gateway starts from on the machine.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{Decision, Pipeline};
use gatehouse_http::{HttpProxy, HttpProxyConfig, HttpTargetConfig, InjectedCredential};
use gatehouse_identity::{DevIssuer, OidcAuthenticator};
use gatehouse_masking::{EgressGuardBuilder, MaskingEngine};
use gatehouse_recorder::{AuditRecorder, CheckpointSigner, RecorderConfig};
use gatehouse_testkit::layers::{FnPolicy, MemoryApprovals};

/// The allocator of the `gatehouse` binary, so the benchmark measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "bench-upstream-secret-4c1d9e";

fn main() {
    // BENCH_WORKERS=n: tokio worker threads (default: one per core, tokio's own default).
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        runtime.worker_threads(n);
    }
    runtime.enable_all().build().unwrap().block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream, dir) = match args.as_slice() {
        [_, l, u, d] => (l.clone(), u.clone(), std::path::PathBuf::from(d)),
        _ => {
            eprintln!("usage: bench_gateway <listen addr> <upstream url> <state dir>");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&dir).unwrap();
    if std::env::var("BENCH_RECORDER").as_deref() == Ok("relay") {
        std::fs::write(dir.join("token"), "relay").unwrap();
        return relay(&listen, &upstream).await;
    }
    let issuer = DevIssuer::load_or_create(
        &dir.join("dev-issuer.pem"),
        "https://bench.local",
        "gatehouse",
    )
    .unwrap();
    let token = issuer
        .mint(
            "bench-agent",
            &["agents".to_string()],
            Duration::from_secs(3600),
        )
        .unwrap();
    std::fs::write(dir.join("token"), &token).unwrap();
    let authenticator = OidcAuthenticator::new(vec![issuer.provider_config().unwrap()]).unwrap();

    let config = HttpProxyConfig::with_targets(vec![HttpTargetConfig {
        name: "bench".into(),
        tags: vec![],
        host: None,
        path_prefix: Some("/".into()),
        upstream,
        ca_file: None,
        credential: Some(InjectedCredential::Bearer {
            secret: SECRET.into(),
        }),
    }]);
    let mut egress = EgressGuardBuilder::new();
    for s in config.held_secrets() {
        egress.add_secret(s.as_bytes()).unwrap();
    }
    let egress = Arc::new(egress.build().unwrap());
    // BENCH_RECORDER=fsync (default) | os | memory: attributes the cost of durability.
    let mode = std::env::var("BENCH_RECORDER").unwrap_or_else(|_| "fsync".into());
    let recorder: Arc<dyn gatehouse_core::Recorder + Send + Sync> = if mode == "memory" {
        Arc::new(gatehouse_testkit::layers::MemoryRecorder::new())
    } else if mode == "null" {
        Arc::new(NullRecorder)
    } else {
        let mut rc = RecorderConfig::new("bench");
        if mode == "os" {
            rc.log.durability = gatehouse_recorder::Durability::OsWrite;
        }
        if let Some(mb) = std::env::var("BENCH_SEGMENT_MB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            rc.log.segment_max_bytes = mb << 20;
        }
        if let Some(ms) = std::env::var("BENCH_LINGER_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            rc.recording.write_linger = Duration::from_millis(ms);
        }
        Arc::new(
            AuditRecorder::open(
                &dir.join("audit"),
                rc,
                CheckpointSigner::generate().unwrap(),
                Some(egress.clone()),
            )
            .await
            .unwrap(),
        )
    };
    let policy = FnPolicy::new(|_, _, op| match op {
        gatehouse_core::Operation::Http(h) if h.path.starts_with("/admin") => {
            Decision::deny("no-admin", "admin is off limits")
        }
        _ => Decision::allow("default", "allowed"),
    });
    let pipeline = Pipeline {
        authenticator: Arc::new(authenticator),
        policy: Arc::new(policy),
        approvals: Arc::new(MemoryApprovals::new()),
        // BENCH_MASKER=none: a masker that masks nothing (attributes the masking cost).
        masker: if std::env::var("BENCH_MASKER").as_deref() == Ok("none") {
            Arc::new(gatehouse_testkit::layers::LiteralMasker::new())
        } else {
            Arc::new(MaskingEngine::with_defaults().unwrap())
        },
        egress,
        recorder,
        hooks: gatehouse_core::Pipeline::no_hooks(),
    };
    let threads = std::env::var("BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let proxy = HttpProxy::new(config, pipeline).unwrap();
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    eprintln!("bench gateway on {listen}, {threads} serving thread(s)");
    proxy
        .serve_threaded(listener, threads, None, std::future::pending())
        .await
        .unwrap();
}

/// The bare relay: accept, rewrite the URI to the upstream, inject the credential, forward, and
/// stream the response back. No authentication, policy, masking or recording.
async fn relay(listen: &str, upstream: &str) {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let upstream: http::Uri = upstream.parse().unwrap();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, hyper::body::Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    eprintln!("bench relay on {listen}");
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    let mut parts = upstream.clone().into_parts();
                    parts.path_and_query = req.uri().path_and_query().cloned();
                    *req.uri_mut() = http::Uri::from_parts(parts).unwrap();
                    req.headers_mut().insert(
                        http::header::AUTHORIZATION,
                        http::HeaderValue::from_str(&format!("Bearer {SECRET}")).unwrap(),
                    );
                    async move {
                        let resp = client.request(req).await?;
                        Ok::<_, hyper_util::client::legacy::Error>(resp.map(|b| b.boxed()))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Accepts every event and recording frame and keeps none: the cost of the layers without the
/// recorder's.
struct NullRecorder;

struct NullSink;

impl gatehouse_core::RecordingSink for NullSink {
    fn write(
        &mut self,
        _frame: gatehouse_core::RecordingFrame,
    ) -> futures::future::BoxFuture<'_, Result<(), gatehouse_core::RecordError>> {
        Box::pin(async { Ok(()) })
    }

    fn seal(
        self: Box<Self>,
    ) -> futures::future::BoxFuture<
        'static,
        Result<gatehouse_core::RecordingSeal, gatehouse_core::RecordError>,
    > {
        Box::pin(async {
            Ok(gatehouse_core::RecordingSeal {
                location: "null".into(),
                sha256: String::new(),
                bytes: 0,
                frames: 0,
            })
        })
    }
}

impl gatehouse_core::Recorder for NullRecorder {
    fn record(
        &self,
        _event: gatehouse_core::Event,
    ) -> futures::future::BoxFuture<
        '_,
        Result<gatehouse_core::EventReceipt, gatehouse_core::RecordError>,
    > {
        Box::pin(async {
            Ok(gatehouse_core::EventReceipt {
                sequence: 0,
                hash: String::new(),
            })
        })
    }

    fn open_recording<'a>(
        &'a self,
        _session: &'a gatehouse_core::SessionId,
        _kind: gatehouse_core::RecordingKind,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Box<dyn gatehouse_core::RecordingSink>, gatehouse_core::RecordError>,
    > {
        Box::pin(async { Ok(Box::new(NullSink) as Box<dyn gatehouse_core::RecordingSink>) })
    }
}

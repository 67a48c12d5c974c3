//! Test harness: a real upstream HTTP server (hyper, on a bound loopback listener) that logs what
//! it receives, and a gateway built around real masking, egress guard and approvals layers.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use gatehouse_approvals::{ApprovalBroker, MemoryStore};
use gatehouse_core::*;
use gatehouse_http::{HttpProxy, HttpProxyConfig, HttpTargetConfig, InjectedCredential};
use gatehouse_masking::{EgressGuardBuilder, MaskingEngine};
use gatehouse_testkit::layers::{FnPolicy, MemoryRecorder, StaticAuthenticator};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

/// The target credential the gateway holds. It must appear in no response byte and no record.
pub const SECRET: &str = "UPSTREAM-CANARY-7f3a9c2e5b1d";
/// The agent's token.
pub const AGENT_TOKEN: &str = "agent-token-0001";
/// A second agent.
pub const OTHER_TOKEN: &str = "agent-token-0002";

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: HeaderMap,
}

/// A real HTTP server standing in for an internal API.
pub struct Upstream {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Seen>>>,
    pub deletes: Arc<AtomicU64>,
    /// Lets a streaming endpoint continue (the test proves it received the earlier part first).
    pub go: Arc<Notify>,
    _task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().last().cloned().expect("upstream saw a request")
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn json(status: StatusCode, v: serde_json::Value) -> Response<UpBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn streaming(
    content_type: &str,
    first: impl Into<Bytes>,
    second: impl Into<Bytes>,
    go: Arc<Notify>,
) -> Response<UpBody> {
    let (first, second): (Bytes, Bytes) = (first.into(), second.into());
    let stream = futures::stream::unfold(0u8, move |state| {
        let go = go.clone();
        let (first, second) = (first.clone(), second.clone());
        async move {
            match state {
                0 => Some((Ok::<_, Infallible>(Frame::data(first)), 1)),
                1 => {
                    go.notified().await;
                    Some((Ok(Frame::data(second)), 2))
                }
                _ => None,
            }
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

/// A body written in `pieces`, with a pause before each but the first (as a slow upstream
/// writes); `sized` declares its `Content-Length` up front, otherwise it goes chunked (HTTP/1.1).
fn paced(content_type: &str, pieces: &'static [&'static [u8]], sized: bool) -> Response<UpBody> {
    let stream = futures::stream::unfold(0usize, move |i| async move {
        let piece = pieces.get(i)?;
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(piece))),
            i + 1,
        ))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    if sized {
        let len: usize = pieces.iter().map(|p| p.len()).sum();
        r.headers_mut()
            .insert("content-length", len.to_string().parse().unwrap());
    }
    r
}

/// An e-mail address and a card number cut across three writes.
pub const PIECES_TEXT: &[&[u8]] = &[
    b"to alice@exam",
    b"ple.com card 41111111",
    b"11111111 end\n",
];
/// The same in a JSON string value.
pub const PIECES_JSON: &[&[u8]] = &[
    b"{\"note\":\"to alice@exam",
    b"ple.com card 41111111",
    b"11111111 end\"}",
];

/// 64 KiB of pseudo-random bytes (NUL bytes included) with an e-mail address and a card
/// number in them, as a binary file might happen to contain.
pub fn binary_blob() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v: Vec<u8> = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    for (at, pii) in [
        (100, &b"jane@example.com"[..]),
        (30_000, b"4111 1111 1111 1111"),
        (60_000, b"z@v.Oe bob@example.org"),
    ] {
        v[at..at + pii.len()].copy_from_slice(pii);
    }
    v[7] = 0;
    v
}

fn bytes_response(content_type: &str, body: Vec<u8>) -> Response<UpBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    r.headers_mut()
        .insert("content-type", content_type.parse().unwrap());
    r
}

/// Bytes of `a` in [`gzip_bomb`].
pub const BOMB_DECODED: usize = 512 * 1024 * 1024;

/// A gzip body of [`BOMB_DECODED`] bytes of `a` (about half a megabyte compressed), built once
/// without ever holding the decoded bytes.
pub fn gzip_bomb() -> &'static [u8] {
    static BOMB: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BOMB.get_or_init(|| {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let block = vec![b'a'; 1024 * 1024];
        for _ in 0..BOMB_DECODED / block.len() {
            enc.write_all(&block).unwrap();
        }
        enc.finish().unwrap()
    })
}

/// A text body with an e-mail address at bytes 20..37, for range requests.
pub const RANGE_BODY: &str = "contact the owner:  alice@example.com for access\n";

pub const USERS: &str = r#"{"users":[{"name":"Jane Doe","email":"jane@example.com","card":"4111 1111 1111 1111","note":"ok"}]}"#;

async fn upstream_service(
    mut req: Request<Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
    deletes: Arc<AtomicU64>,
    go: Arc<Notify>,
) -> Result<Response<UpBody>, Infallible> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    log.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path_and_query: path_and_query.clone(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    if path == "/ws" || path == "/raw/ws" {
        return Ok(websocket_upstream(&mut req));
    }
    // `/raw/…` is the same API under a rule that passes binary bodies raw (see `policy`).
    let path = path.strip_prefix("/raw").unwrap_or(&path).to_string();
    let resp = match (req.method().as_str(), path.as_str()) {
        ("GET", "/bin") => bytes_response("application/octet-stream", binary_blob()),
        ("GET", "/bin-as-text") => bytes_response("text/plain", binary_blob()),
        ("GET", "/bin-as-json") => bytes_response("application/json", binary_blob()),
        ("GET", "/bin-gzip") => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&binary_blob()).unwrap();
            let mut r = bytes_response("text/plain", enc.finish().unwrap());
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        ("GET", "/empty-bin") => bytes_response("image/png", Vec::new()),
        ("GET", "/text-pii") => bytes_response(
            "text/plain",
            b"mail jane@example.com card 4111 1111 1111 1111 end\n".to_vec(),
        ),
        ("GET", "/turns-binary") => streaming(
            "text/plain",
            "contact jane@example.com\n",
            binary_blob(),
            go,
        ),
        (_, "/echo") => {
            // Echoes every header back, as a misbehaving API might.
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                .collect();
            json(
                StatusCode::OK,
                serde_json::json!({"path": path_and_query, "headers": headers}),
            )
        }
        (_, "/echo-raw") => {
            // The same, as opaque bytes: nothing but the egress guard stands in the way.
            let mut text = format!("{path_and_query}\n");
            for (k, v) in req.headers() {
                text.push_str(&format!("{k}={}\n", String::from_utf8_lossy(v.as_bytes())));
            }
            let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
            r.headers_mut()
                .insert("content-type", "application/octet-stream".parse().unwrap());
            r
        }
        ("GET", p) if p.starts_with("/echo-key-") => {
            // Echoes the injected `X-Api-Key` in a form a plain-text search misses: UTF-16 with
            // a BOM (Python's `.encode('utf-16')`), UTF-16BE, reversed, or its first and last
            // parts (each shorter than the key) with other text between.
            let key = req
                .headers()
                .get("x-api-key")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let line = format!("key={key}\n");
            let body: Vec<u8> = match p.trim_start_matches("/echo-key-") {
                "utf16" => [0xff, 0xfe]
                    .into_iter()
                    .chain(line.encode_utf16().flat_map(u16::to_le_bytes))
                    .collect(),
                "utf16be" => line.encode_utf16().flat_map(u16::to_be_bytes).collect(),
                "reversed" => key.chars().rev().collect::<String>().into_bytes(),
                _ => {
                    let n = key.len() * 3 / 4;
                    format!("a={}\nb={}\n", &key[..n], &key[key.len() - n..]).into_bytes()
                }
            };
            bytes_response("application/octet-stream", body)
        }
        ("GET", "/range-pii") => {
            // Honours `Range: bytes=a-b` as a file server would: 206 with that slice.
            let body = RANGE_BODY.as_bytes();
            let range = req
                .headers()
                .get("range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
            match range {
                Some((a, b)) if a <= b && b < body.len() => {
                    let mut r = bytes_response("text/plain", body[a..=b].to_vec());
                    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                    r.headers_mut().insert(
                        "content-range",
                        format!("bytes {a}-{b}/{}", body.len()).parse().unwrap(),
                    );
                    r
                }
                _ => bytes_response("text/plain", body.to_vec()),
            }
        }
        ("GET", "/always-206") => {
            // A broken upstream: a part whatever was asked.
            let mut r = bytes_response("text/plain", RANGE_BODY.as_bytes()[20..29].to_vec());
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut().insert(
                "content-range",
                format!("bytes 20-28/{}", RANGE_BODY.len()).parse().unwrap(),
            );
            r
        }
        ("GET", "/pii-headers") => {
            let mut r = json(StatusCode::FOUND, serde_json::json!({"ok": true}));
            r.headers_mut().insert(
                "location",
                "http://x.example/?e=alice@example.com".parse().unwrap(),
            );
            r.headers_mut()
                .insert("x-card", "4111111111111111".parse().unwrap());
            r.headers_mut()
                .insert("x-plain", "nothing personal".parse().unwrap());
            r
        }
        ("GET", "/ct-leak") => bytes_response(
            "application/x-alice@example.com-4111111111111111",
            b"opaque".to_vec(),
        ),
        ("GET", "/ct-key") => {
            // The upstream puts 20 characters of the held key in its content type.
            let key = req
                .headers()
                .get("x-api-key")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let part = key.get(..20).unwrap_or(&key).to_string();
            bytes_response(&format!("application/x-{part}"), b"opaque".to_vec())
        }
        ("GET", "/gzip-bomb") => {
            let mut r = bytes_response("text/plain", gzip_bomb().to_vec());
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        ("GET", "/users") => {
            let mut r = json(StatusCode::OK, serde_json::from_str(USERS).unwrap());
            r.headers_mut()
                .insert("connection", "x-upstream-hop".parse().unwrap());
            r.headers_mut()
                .insert("x-upstream-hop", "1".parse().unwrap());
            r.headers_mut()
                .insert("set-cookie", "session=abc".parse().unwrap());
            r
        }
        ("DELETE", p) if p.starts_with("/users/") => {
            deletes.fetch_add(1, Ordering::SeqCst);
            json(StatusCode::OK, serde_json::json!({"deleted": p}))
        }
        ("GET", "/gzip") => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(USERS.as_bytes()).unwrap();
            let body = enc.finish().unwrap();
            let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        ("GET", "/brotli") => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"\x0b\x02\x80hi\x03")).boxed());
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r.headers_mut()
                .insert("content-encoding", "br".parse().unwrap());
            r
        }
        ("GET", "/sse") => streaming(
            "text/event-stream",
            "event: msg\ndata: {\"to\": \"jane@example.com\"}\n\n",
            "data: second jane@example.com\n\n",
            go,
        ),
        ("GET", "/pieces-chunked") => paced("text/plain", PIECES_TEXT, false),
        ("GET", "/pieces-sized") => paced("text/plain", PIECES_TEXT, true),
        ("GET", "/pieces-json") => paced("application/json", PIECES_JSON, true),
        ("GET", "/pieces-json-chunked") => paced("application/json", PIECES_JSON, false),
        ("GET", "/late-binary") => paced(
            "text/plain",
            &[b"mail alice@example.com\n\x00\x01bin"],
            false,
        ),
        ("GET", "/late-binary-nl") => paced(
            "text/plain",
            &[b"mail alice@example.com\n", b"\x00\x01bin"],
            false,
        ),
        ("GET", "/late-binary-clean") => paced(
            "text/plain",
            &[b"plain text\nmore", b"\x00\x01\xffend"],
            false,
        ),
        ("GET", "/prompt") => streaming(
            "text/plain",
            "contact jane@example.com\npassword> ",
            "done\n",
            go,
        ),
        ("GET", "/leak-header") => {
            let mut r = json(StatusCode::OK, serde_json::json!({"ok": true}));
            r.headers_mut()
                .insert("x-debug-token", SECRET.parse().unwrap());
            r
        }
        ("GET", "/redirect") => {
            let mut r = json(StatusCode::FOUND, serde_json::json!({}));
            let loc = format!("https://elsewhere.example{path_and_query}");
            r.headers_mut().insert("location", loc.parse().unwrap());
            r
        }
        ("POST", "/echo-body") => {
            // Sends the request body back as it came, under the request's content type.
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            bytes_response(&ct, body.to_vec())
        }
        ("POST", "/upload") => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let sha256 = {
                use sha2::Digest as _;
                hex_lower(&sha2::Sha256::digest(&body))
            };
            json(
                StatusCode::OK,
                serde_json::json!({"received": body.len(), "sha256": sha256}),
            )
        }
        _ => json(StatusCode::OK, serde_json::json!({"path": path_and_query})),
    };
    Ok(resp)
}

/// Accepts a WebSocket (recording the handshake headers through the log), sends a message with
/// an e-mail address, then echoes text back.
fn websocket_upstream(req: &mut Request<Incoming>) -> Response<UpBody> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .cloned()
        .unwrap_or_else(|| "x".parse().unwrap());
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = upgrade.await.unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        use tokio_tungstenite::tungstenite::Message;
        ws.send(Message::text("hello jane@example.com"))
            .await
            .unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            match msg {
                Message::Text(t) => ws
                    .send(Message::text(format!("echo: {}", t.as_str())))
                    .await
                    .unwrap(),
                // Binary frames come back unchanged.
                Message::Binary(b) => ws.send(Message::Binary(b)).await.unwrap(),
                Message::Close(_) => break,
                _ => {}
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert("upgrade", "websocket".parse().unwrap());
    r.headers_mut()
        .insert("connection", "Upgrade".parse().unwrap());
    r.headers_mut()
        .insert("sec-websocket-accept", accept.parse().unwrap());
    r
}

/// Starts the upstream on a bound loopback listener.
pub async fn start_upstream() -> Upstream {
    let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let deletes = Arc::new(AtomicU64::new(0));
    let go = Arc::new(Notify::new());
    let (l2, d2, g2) = (log.clone(), deletes.clone(), go.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (log, deletes, go) = (l2.clone(), d2.clone(), g2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    upstream_service(req, log.clone(), deletes.clone(), go.clone())
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        log,
        deletes,
        go,
        _task: task,
    }
}

/// The layers of a gateway under test, with handles on what tests inspect.
pub struct Layers {
    pub pipeline: Pipeline,
    pub recorder: Arc<MemoryRecorder>,
    pub approvals: Arc<ApprovalBroker>,
    pub authenticator: Arc<StaticAuthenticator>,
}

pub fn agent() -> Identity {
    Identity::new("agent-7", "https://idp.test", AuthMethod::Test).with_group("agents")
}

pub fn approver() -> Identity {
    Identity::new("alice", "https://idp.test", AuthMethod::Test).with_group("approvers")
}

/// The test policy: `/admin` denied, DELETE reviewed (grant window 60 s), `WEBSOCKET /ws`
/// allowed, other WebSocket paths denied, everything else allowed.
pub fn policy() -> FnPolicy {
    FnPolicy::new(|_id, _target, op| {
        let Operation::Http(op) = op else {
            return Decision::deny("not-http", "only HTTP here");
        };
        if op.path == "/admin" || op.path.starts_with("/admin/") {
            return Decision::deny("no-admin", "the admin API is off limits to agents");
        }
        if op.method == "DELETE" {
            return Decision::review(
                "review-delete",
                "deletions need a human",
                ReviewRequirement {
                    approver_groups: vec!["approvers".into()],
                    approvals_required: 1,
                    timeout_ms: 60_000,
                    grant_window_ms: Some(60_000),
                },
            );
        }
        if op.path.starts_with("/raw/") || op.path.ends_with("/echo-raw") {
            return Decision::allow("raw-bytes", "binary passes unmasked")
                .with_binary(BinaryHandling::Raw);
        }
        if op.method == gatehouse_http::WEBSOCKET_METHOD && op.path != "/ws" {
            return Decision::deny("ws-only-on-ws", "websockets only on /ws");
        }
        Decision::allow("default-allow", "allowed")
    })
}

pub fn layers(secrets: &[String]) -> Layers {
    let recorder = Arc::new(MemoryRecorder::new());
    let approvals = Arc::new(
        ApprovalBroker::builder(Arc::new(MemoryStore::new()))
            .recorder(recorder.clone())
            .build(),
    );
    let authenticator = Arc::new(
        StaticAuthenticator::new()
            .with_token(AGENT_TOKEN, agent())
            .with_token(
                OTHER_TOKEN,
                Identity::new("agent-8", "https://idp.test", AuthMethod::Test),
            ),
    );
    let mut egress = EgressGuardBuilder::new();
    for s in secrets {
        egress.add_secret(s.as_bytes()).unwrap();
    }
    let pipeline = Pipeline {
        authenticator: authenticator.clone(),
        policy: Arc::new(policy()),
        approvals: approvals.clone(),
        masker: Arc::new(MaskingEngine::with_defaults().unwrap()),
        egress: Arc::new(egress.build().unwrap()),
        recorder: recorder.clone(),
        hooks: gatehouse_core::Pipeline::no_hooks(),
    };
    Layers {
        pipeline,
        recorder,
        approvals,
        authenticator,
    }
}

pub fn target(
    name: &str,
    prefix: &str,
    upstream: &str,
    cred: InjectedCredential,
) -> HttpTargetConfig {
    HttpTargetConfig {
        name: name.into(),
        tags: vec![],
        host: None,
        path_prefix: Some(prefix.into()),
        upstream: upstream.into(),
        ca_file: None,
        credential: Some(cred),
    }
}

/// The standard config: `/api` → upstream with a bearer credential, `/hdr` with a header
/// credential, `/qry` with a query credential, `/basic` with basic auth, `/down` → a dead port.
pub fn config(upstream: SocketAddr, dead: SocketAddr) -> HttpProxyConfig {
    let url = format!("http://{upstream}");
    let mut cfg = HttpProxyConfig::with_targets(vec![
        target(
            "api",
            "/api",
            &url,
            InjectedCredential::Bearer {
                secret: SECRET.into(),
            },
        ),
        target(
            "hdr",
            "/hdr",
            &url,
            InjectedCredential::Header {
                name: "X-Api-Key".into(),
                secret: SECRET.into(),
            },
        ),
        target(
            "qry",
            "/qry",
            &url,
            InjectedCredential::Query {
                param: "api_key".into(),
                secret: SECRET.into(),
            },
        ),
        target(
            "basic",
            "/basic",
            &url,
            InjectedCredential::Basic {
                username: "svc".into(),
                secret: SECRET.into(),
            },
        ),
        target(
            "down",
            "/down",
            &format!("http://{dead}"),
            InjectedCredential::Bearer {
                secret: SECRET.into(),
            },
        ),
    ]);
    cfg.review_hold_ms = 20_000;
    cfg.idle_flush_ms = 30;
    cfg
}

/// A running gateway.
pub struct Gateway {
    pub addr: SocketAddr,
    pub layers: Layers,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    pub async fn start(config: HttpProxyConfig, tls: Option<rustls::ServerConfig>) -> Gateway {
        let layers = layers(&config.held_secrets());
        let pipeline = layers.pipeline.clone();
        Self::start_with(config, tls, layers, pipeline).await
    }

    /// Like [`Gateway::start`], serving with [`HttpProxy::serve_threaded`] on `threads`
    /// threads.
    pub async fn start_threaded(config: HttpProxyConfig, threads: usize) -> Gateway {
        let layers = layers(&config.held_secrets());
        let pipeline = layers.pipeline.clone();
        Self::launch(config, None, layers, pipeline, threads).await
    }

    /// Like [`Gateway::start`], with the pipeline given (built from `layers`, some replaced).
    pub async fn start_with(
        config: HttpProxyConfig,
        tls: Option<rustls::ServerConfig>,
        layers: Layers,
        pipeline: Pipeline,
    ) -> Gateway {
        Self::launch(config, tls, layers, pipeline, 1).await
    }

    async fn launch(
        config: HttpProxyConfig,
        tls: Option<rustls::ServerConfig>,
        layers: Layers,
        pipeline: Pipeline,
        threads: usize,
    ) -> Gateway {
        let proxy = HttpProxy::new(config, pipeline).unwrap();
        let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // One thread is `serve` on the test's runtime (see `serve_threaded`).
        let task = tokio::spawn(async move {
            proxy
                .serve_threaded(listener, threads, tls, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Gateway {
            addr,
            layers,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops serving and waits until every connection's session is closed.
    pub async fn shutdown(mut self) -> Layers {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            gatehouse_testkit::within(Duration::from_secs(15), t)
                .await
                .unwrap();
        }
        let Gateway { layers, .. } = self;
        layers
    }
}

/// A dead address: a port that was bound a moment ago and is now closed.
pub fn dead_addr() -> SocketAddr {
    let l = gatehouse_testkit::net::bind_loopback();
    gatehouse_testkit::net::addr_of(&l)
}

/// Runs the real `curl` with a deadline; returns (status, headers text, body).
pub async fn curl(args: &[&str]) -> (u16, String, Vec<u8>) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "20"]).args(args);
    let out = tokio::task::spawn_blocking(move || {
        gatehouse_testkit::process::run_with_timeout(cmd, Duration::from_secs(30))
    })
    .await
    .unwrap()
    .expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    split_response(&out.stdout)
}

/// Runs the real `curl` (body to stdout, no head) and returns its output whether or not it
/// succeeded: (success, stdout, stderr).
pub async fn curl_output(args: &[&str]) -> (bool, Vec<u8>, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20"]).args(args);
    let out = tokio::task::spawn_blocking(move || {
        gatehouse_testkit::process::run_with_timeout(cmd, Duration::from_secs(30))
    })
    .await
    .unwrap()
    .expect("curl runs");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Splits a raw HTTP/1 or curl `-i` output into (status, head, body); skips `1xx` heads.
pub fn split_response(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let mut rest = raw;
    loop {
        let pos = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = String::from_utf8_lossy(&rest[..pos]).into_owned();
        let body = &rest[pos + 4..];
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        if (100..200).contains(&status) && status != 101 {
            rest = body;
            continue;
        }
        return (status, head, body.to_vec());
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes (or 10 s).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

/// Every encoded form of the secret a leak could take.
pub fn secret_forms() -> Vec<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    vec![
        SECRET.to_string(),
        b64.encode(SECRET),
        b64.encode(format!("svc:{SECRET}")),
        hex_lower(SECRET.as_bytes()),
    ]
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn assert_no_secret(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for form in secret_forms() {
        assert!(
            !text.contains(&form),
            "{what} contains the target credential (form {form:?})"
        );
    }
}

/// A bearer header value for curl.
pub fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

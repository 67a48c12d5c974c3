//! [`HttpProxy`]: the listener, the per-connection session, and the request path through the
//! layers (authenticate → route → canonicalise → decide → approve → record → forward → mask →
//! record).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::http_path;
use gatehouse_core::{
    AuthErrorKind, BinaryHandling, ChunkVerdict, Classified, Credential, Decision, EgressSite,
    Event, EventBody, Gate, GateContext, HoldMode, HttpOperation, Identity, Operation,
    OperationResult, Outcome, Pipeline, Protocol, RecordingFrame, RecordingKind, RecordingSink,
    Review, SessionId, Target, Verdict, tighten,
};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, watch};

use crate::body::{BodyCapture, BodyProcessor, BodySettings};
use crate::config::{EncodedSeparatorPolicy, HttpProxyConfig, InjectedCredential, ms};
use crate::error::HttpProxyError;
use crate::framing::{FramingGuard, FramingVerdicts};
use crate::headers;
use crate::upstream::{self, BoxError, UpstreamClient, UpstreamConnector, UpstreamUrl};

/// The body of every response the gateway sends.
pub(crate) type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an authenticated bearer token is trusted on one connection before it is verified
/// again (bounded by the identity's own expiry). Saves a signature check per request on
/// keep-alive connections while still noticing revocation quickly.
const REAUTH_AFTER: Duration = Duration::from_secs(30);

/// The HTTP(S) API proxy. Cheap to clone; build once, serve on any number of listeners.
#[derive(Clone)]
pub struct HttpProxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy")
            .field("targets", &self.inner.targets.len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) config: HttpProxyConfig,
    pub(crate) pipeline: Pipeline,
    /// Shared by every serving thread, so a retry finds its own request wherever it lands.
    pub(crate) gate: Arc<Gate>,
    pub(crate) targets: Vec<RoutedTarget>,
}

/// A configured target, ready to route to.
pub(crate) struct RoutedTarget {
    pub(crate) target: Target,
    host: Option<String>,
    /// Canonical prefix without trailing slash (`""` for `/`).
    prefix: Option<String>,
    pub(crate) url: UpstreamUrl,
    client: UpstreamClient,
    pub(crate) connector: UpstreamConnector,
    pub(crate) credential: Option<InjectedCredential>,
}

impl HttpProxy {
    /// Checks the configuration and prepares one pooled upstream client per target. The
    /// pipeline's egress guard should watch [`HttpProxyConfig::held_secrets`].
    pub fn new(config: HttpProxyConfig, pipeline: Pipeline) -> Result<HttpProxy, HttpProxyError> {
        let gate = Arc::new(Gate::new(pipeline.clone()));
        Self::with_gate(config, pipeline, gate)
    }

    fn with_gate(
        config: HttpProxyConfig,
        pipeline: Pipeline,
        gate: Arc<Gate>,
    ) -> Result<HttpProxy, HttpProxyError> {
        config.validate()?;
        let mut targets = Vec::with_capacity(config.targets.len());
        for t in &config.targets {
            let url = UpstreamUrl::parse(&t.upstream).map_err(HttpProxyError::Config)?;
            let tls = if url.tls {
                Some(upstream::tls_client_config(
                    t.ca_file.as_deref(),
                    &[b"http/1.1"],
                )?)
            } else {
                None
            };
            let connector =
                UpstreamConnector::new(url.clone(), tls, ms(config.timeouts.connect_ms));
            let client = upstream::client(connector.clone(), ms(config.timeouts.pool_idle_ms));
            let prefix = match &t.path_prefix {
                Some(p) => {
                    let c = http_path::canonicalize(p)
                        .map_err(|e| HttpProxyError::Config(format!("target {:?}: {e}", t.name)))?;
                    Some(c.path.trim_end_matches('/').to_string())
                }
                None => None,
            };
            let mut target = Target::new(t.name.clone(), Protocol::Http);
            for tag in &t.tags {
                target = target.with_tag(tag.clone());
            }
            targets.push(RoutedTarget {
                target,
                host: t.host.as_ref().map(|h| h.to_ascii_lowercase()),
                prefix,
                url,
                client,
                connector,
                credential: t.credential.clone(),
            });
        }
        Ok(HttpProxy {
            inner: Arc::new(Inner {
                config,
                pipeline,
                gate,
                targets,
            }),
        })
    }

    /// Serves `listener` until `shutdown` resolves, then lets open requests finish (at most 10 s).
    /// With `tls`, connections are TLS-terminated and offer HTTP/2 and HTTP/1.1 by ALPN;
    /// without, HTTP/1.1 and HTTP/2 with prior knowledge (h2c) are both accepted.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), HttpProxyError> {
        let acceptor = tls_acceptor(tls);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        while let Some((tcp, peer)) = next_connection(&listener, shutdown.as_mut()).await {
            let proxy = self.inner.clone();
            let acceptor = acceptor.clone();
            let stop = stop_rx.clone();
            tasks.spawn(accept_connection(proxy, tcp, peer, acceptor, stop));
            // Reap finished connections so the set does not grow without bound.
            while tasks.try_join_next().is_some() {}
        }
        let _ = stop_tx.send(true);
        drain(tasks).await;
        Ok(())
    }

    /// Like [`HttpProxy::serve`], with the connections spread over `threads` threads, each
    /// running its own single-threaded tokio runtime and its own upstream connection pools.
    /// Accepted connections are handed round-robin to the threads, and a connection's tasks
    /// (its requests, their upstream connections, their recording) then stay on its thread.
    /// On the multi-threaded runtime they migrate between workers, and on two cores that cost
    /// a third of the gateway's CPU per request (docs/BENCHMARKS.md). The pipeline is shared;
    /// its parts must not depend on one runtime (the gatehouse layers do not). `threads <= 1`
    /// is [`HttpProxy::serve`].
    pub async fn serve_threaded(
        &self,
        listener: tokio::net::TcpListener,
        threads: usize,
        tls: Option<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), HttpProxyError> {
        if threads <= 1 {
            return self.serve(listener, tls, shutdown).await;
        }
        let acceptor = tls_acceptor(tls);
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut shards = Vec::with_capacity(threads);
        for i in 0..threads {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
            let config = self.inner.config.clone();
            let pipeline = self.inner.pipeline.clone();
            let gate = self.inner.gate.clone();
            let (acceptor, stop) = (acceptor.clone(), stop_rx.clone());
            std::thread::Builder::new()
                .name(format!("gatehouse-http-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %e, "http serving thread: no runtime");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        // Its own upstream clients, bound to this thread's runtime.
                        match HttpProxy::with_gate(config, pipeline, gate) {
                            Ok(p) => serve_handed(p.inner, rx, acceptor, stop).await,
                            Err(e) => tracing::error!(error = %e, "http serving thread"),
                        }
                    });
                    drop(done_tx);
                })
                .map_err(|e| HttpProxyError::Listener(format!("starting a serving thread: {e}")))?;
            shards.push((tx, done_rx));
        }
        tokio::pin!(shutdown);
        let mut next = 0usize;
        while let Some((tcp, peer)) = next_connection(&listener, shutdown.as_mut()).await {
            // Deregistered here, registered again with the serving thread's runtime.
            let Ok(tcp) = tcp.into_std() else {
                continue;
            };
            // A thread that is gone (it failed to start) passes its turn to the next.
            let mut handed = Some((tcp, peer));
            for _ in 0..shards.len() {
                let Some((tx, _)) = shards.get(next % shards.len()) else {
                    break;
                };
                next = next.wrapping_add(1);
                match handed.take().map(|c| tx.send(c)) {
                    Some(Err(tokio::sync::mpsc::error::SendError(c))) => handed = Some(c),
                    _ => break,
                }
            }
            if handed.is_some() {
                tracing::error!(%peer, "no http serving thread left; connection dropped");
            }
        }
        let _ = stop_tx.send(true);
        let mut done = Vec::with_capacity(shards.len());
        for (tx, done_rx) in shards {
            drop(tx);
            done.push(done_rx);
        }
        // Each thread lets its open requests finish (at most 10 s) and then stops.
        for d in done {
            let _ = tokio::time::timeout(Duration::from_secs(15), d).await;
        }
        Ok(())
    }
}

/// The next accepted connection (TCP_NODELAY set), or `None` once `shutdown` resolves. A failed
/// accept (out of file descriptors and the like) is logged and retried: the others keep being
/// served.
async fn next_connection(
    listener: &tokio::net::TcpListener,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.as_mut() => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                return Some((tcp, peer));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn tls_acceptor(tls: Option<rustls::ServerConfig>) -> Option<tokio_rustls::TlsAcceptor> {
    tls.map(|mut cfg| {
        if cfg.alpn_protocols.is_empty() {
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    })
}

/// Lets open connections finish (at most 10 s), then drops the rest.
async fn drain(mut tasks: tokio::task::JoinSet<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

/// One serving thread of [`HttpProxy::serve_threaded`]: serves the connections handed to it
/// until the acceptor closes the channel (shutdown), then drains.
async fn serve_handed(
    proxy: Arc<Inner>,
    mut handed: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    while let Some((tcp, peer)) = handed.recv().await {
        let tcp = match tokio::net::TcpStream::from_std(tcp) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "connection could not join its thread");
                continue;
            }
        };
        tasks.spawn(accept_connection(
            proxy.clone(),
            tcp,
            peer,
            acceptor.clone(),
            stop.clone(),
        ));
        while tasks.try_join_next().is_some() {}
    }
    drain(tasks).await;
}

/// Terminates TLS (within the header timeout) if configured, then serves the connection.
async fn accept_connection(
    proxy: Arc<Inner>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
) {
    let header_timeout = ms(proxy.config.timeouts.header_read_ms);
    match acceptor {
        None => serve_connection(proxy, tcp, peer, stop).await,
        Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => serve_connection(proxy, tls, peer, stop).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
    }
}

/// Serves one client connection (HTTP/1.1 or HTTP/2) and closes its session at the end.
async fn serve_connection<I>(
    proxy: Arc<Inner>,
    io: I,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let verdicts = FramingVerdicts::default();
    let io = FramingGuard::new(io, verdicts.clone(), proxy.config.limits.max_header_bytes);
    let conn = Arc::new(ConnCtx {
        proxy: proxy.clone(),
        peer,
        session: Mutex::new(None),
        framing: verdicts,
        h1_requests: AtomicU64::new(0),
        recordings: std::sync::Mutex::new(tokio::task::JoinSet::new()),
        recording_failed: AtomicBool::new(false),
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let limits = &proxy.config.limits;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(proxy.config.timeouts.header_read_ms))
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let svc_conn = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let c = svc_conn.clone();
        async move { Ok::<_, Infallible>(c.handle(req).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
    conn.drain_recordings().await;
    conn.end_session("connection closed").await;
}

/// One client connection: its peer, its (lazily started) session, its framing verdicts.
pub(crate) struct ConnCtx {
    pub(crate) proxy: Arc<Inner>,
    peer: SocketAddr,
    session: Mutex<Option<Arc<SessionState>>>,
    framing: FramingVerdicts,
    /// HTTP/1 requests seen so far (to match the framing guard's per-request verdicts).
    h1_requests: AtomicU64,
    /// Finished exchanges still being recorded, off the response path; the session ends after
    /// them.
    recordings: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// A background recording failed: the connection's later requests are refused (fail
    /// closed), as if the recorder had failed on their own operation.
    recording_failed: AtomicBool,
}

/// An authenticated session on one connection.
pub(crate) struct SessionState {
    pub(crate) id: SessionId,
    pub(crate) identity: Identity,
    token_hash: [u8; 32],
    verified_at: Instant,
    /// Shared with a re-verified successor of this state, so in-flight requests count and
    /// record into the same session.
    next_index: Arc<AtomicU64>,
    pub(crate) recording: Arc<Mutex<Option<Box<dyn RecordingSink>>>>,
}

impl SessionState {
    fn next_index(&self) -> u64 {
        self.next_index.fetch_add(1, Ordering::Relaxed)
    }
}

/// One operation in flight: what recording its outcome needs.
#[derive(Clone)]
pub(crate) struct OpCtx {
    pub(crate) session: Arc<SessionState>,
    pub(crate) target: Target,
    pub(crate) index: u64,
    pub(crate) started: Instant,
}

pub(crate) fn full(body: impl Into<Bytes>) -> ResBody {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// The gate's outcome as this crate's error (rendered per the table in `docs/DESIGN.md`).
fn outcome_error(outcome: Outcome, retry_after_s: u64) -> HttpProxyError {
    match outcome {
        Outcome::Denied { decision } => HttpProxyError::Denied {
            rule: decision.rule_id,
            reason: decision.reason,
        },
        Outcome::Held { decision, approval } => HttpProxyError::ApprovalPending {
            id: approval.0,
            rule: decision.rule_id,
            retry_after_s,
        },
        Outcome::ApprovalDenied {
            decision, approval, ..
        } => HttpProxyError::ApprovalDenied {
            id: approval.0,
            rule: decision.rule_id,
        },
        Outcome::ApprovalTimedOut { decision, approval } => HttpProxyError::ApprovalTimedOut {
            id: approval.0,
            rule: decision.rule_id,
        },
        Outcome::ApprovalsUnavailable { reason, .. } => HttpProxyError::Approvals(reason),
        Outcome::AuditUnavailable { reason } => HttpProxyError::Recorder(reason),
        // The connection is gone (hyper dropped the request); nobody reads this.
        Outcome::Abandoned { approval, .. } => {
            HttpProxyError::Approvals(format!("approval {approval} was abandoned"))
        }
        other => HttpProxyError::Approvals(format!("unexpected gate outcome: {}", other.name())),
    }
}

pub(crate) fn error_response(e: &HttpProxyError) -> Response<ResBody> {
    e.to_response().map(full)
}

impl ConnCtx {
    /// Records a finished exchange in the background: the caller already has its response, and
    /// the operation itself was recorded before it was forwarded.
    fn spawn_recording(&self, recording: impl Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime left to record a finished exchange");
            return;
        };
        if let Ok(mut set) = self.recordings.lock() {
            while set.try_join_next().is_some() {}
            set.spawn_on(recording, &runtime);
        }
    }

    /// Waits for the background recordings of this connection.
    async fn drain_recordings(&self) {
        let mut set = match self.recordings.lock() {
            Ok(mut set) => std::mem::take(&mut *set),
            Err(_) => return,
        };
        while set.join_next().await.is_some() {}
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ResBody> {
        let started = Instant::now();
        let seq = if req.version() < http::Version::HTTP_2 {
            Some(self.h1_requests.fetch_add(1, Ordering::SeqCst))
        } else {
            None
        };
        if let Some(seq) = seq
            && let Some(reason) = self.framing.take(seq)
        {
            let mut resp = error_response(&HttpProxyError::ConflictingFraming(reason));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return resp;
        }
        match self.clone().handle_inner(req, started).await {
            Ok(resp) => resp,
            Err(e) => {
                let mut resp = error_response(&e);
                if matches!(
                    e,
                    HttpProxyError::Approvals(_)
                        | HttpProxyError::Recorder(_)
                        | HttpProxyError::ApprovalTimedOut { .. }
                ) {
                    resp.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(self.proxy.config.retry_after_s),
                    );
                }
                resp
            }
        }
    }

    /// Stage one: everything before the operation is recorded.
    async fn handle_inner(
        self: Arc<Self>,
        req: Request<Incoming>,
        started: Instant,
    ) -> Result<Response<ResBody>, HttpProxyError> {
        if self.recording_failed.load(Ordering::Relaxed) {
            return Err(HttpProxyError::Recorder(
                "an earlier exchange on this connection could not be recorded".into(),
            ));
        }
        let session = self.authenticate(req.headers()).await?;
        let (target, rel_path, query) = self.route(&req)?;
        let upgrade = crate::websocket::is_upgrade(&req);
        let method = if upgrade {
            crate::websocket::WEBSOCKET_METHOD.to_string()
        } else {
            req.method().as_str().to_ascii_uppercase()
        };
        let operation = HttpOperation {
            method,
            path: rel_path,
            query,
            body_sha256: None,
        };
        let ctx = OpCtx {
            session: session.clone(),
            target: target.target.clone(),
            index: session.next_index(),
            started,
        };
        match self
            .clone()
            .operate(req, target, operation, &ctx, upgrade)
            .await
        {
            Ok(resp) => Ok(resp),
            Err(e) => {
                let _ = self
                    .record_result(&ctx, &e.status(), Some(e.code()), 0, Vec::new())
                    .await;
                Err(e)
            }
        }
    }

    /// Verifies the bearer token (cached per connection for [`REAUTH_AFTER`]) and makes sure the
    /// session is started and recorded.
    async fn authenticate(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Arc<SessionState>, HttpProxyError> {
        let pipeline = &self.proxy.pipeline;
        let Some(token) = headers::bearer_token(headers) else {
            self.login_failed(AuthErrorKind::Malformed).await;
            return Err(HttpProxyError::Unauthenticated(AuthErrorKind::Malformed));
        };
        let token_hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref()
            && s.token_hash == token_hash
            && s.verified_at.elapsed() < REAUTH_AFTER
            && !s.identity.is_expired_at(gatehouse_core::now())
        {
            return Ok(s.clone());
        }
        let credential = Credential::Bearer(token.to_string());
        let identity = match pipeline.authenticator.authenticate(&credential).await {
            Ok(id) => id,
            Err(e) => {
                self.login_failed(e.kind).await;
                return Err(if e.kind == AuthErrorKind::ProviderUnavailable {
                    HttpProxyError::AuthUnavailable
                } else {
                    HttpProxyError::Unauthenticated(e.kind)
                });
            }
        };
        // Same token, re-verified: keep the session.
        if let Some(s) = slot.as_ref()
            && s.token_hash == token_hash
            && s.identity.principal() == identity.principal()
        {
            let renewed = Arc::new(SessionState {
                id: s.id.clone(),
                identity,
                token_hash,
                verified_at: Instant::now(),
                next_index: s.next_index.clone(),
                recording: s.recording.clone(),
            });
            *slot = Some(renewed.clone());
            return Ok(renewed);
        }
        if let Some(old) = slot.take() {
            self.close_session(&old, "caller changed token").await;
        }
        let id = SessionId::generate();
        let start = Event::now(
            id.clone(),
            Some(identity.clone()),
            None,
            EventBody::SessionStart {
                client_addr: self.peer.to_string(),
                details: serde_json::json!({ "protocol": "http" }),
            },
        );
        pipeline
            .recorder
            .record(start)
            .await
            .map_err(|e| HttpProxyError::Recorder(e.to_string()))?;
        let sink = pipeline
            .recorder
            .open_recording(&id, RecordingKind::Http)
            .await
            .map_err(|e| HttpProxyError::Recorder(e.to_string()))?;
        let state = Arc::new(SessionState {
            id,
            identity,
            token_hash,
            verified_at: Instant::now(),
            next_index: Arc::new(AtomicU64::new(0)),
            recording: Arc::new(Mutex::new(Some(sink))),
        });
        *slot = Some(state.clone());
        Ok(state)
    }

    async fn login_failed(&self, reason: AuthErrorKind) {
        let event = Event::now(
            SessionId::generate(),
            None,
            None,
            EventBody::LoginFailed {
                client_addr: self.peer.to_string(),
                reason,
            },
        );
        // The caller is refused either way; a failed audit write is logged, not retried.
        if let Err(e) = self.proxy.pipeline.recorder.record(event).await {
            tracing::warn!(error = %e, "could not record a failed login");
        }
    }

    async fn end_session(&self, reason: &str) {
        let s = self.session.lock().await.take();
        if let Some(s) = s {
            self.close_session(&s, reason).await;
        }
    }

    async fn close_session(&self, s: &SessionState, reason: &str) {
        let sink = s.recording.lock().await.take();
        let seal = match sink {
            Some(sink) => match sink.seal().await {
                Ok(seal) => Some(seal),
                Err(e) => {
                    tracing::warn!(error = %e, "sealing the recording failed");
                    None
                }
            },
            None => None,
        };
        let event = Event::now(
            s.id.clone(),
            Some(s.identity.clone()),
            None,
            EventBody::SessionEnd {
                reason: reason.to_string(),
                recording: seal,
                operations: s.next_index.load(Ordering::Relaxed),
            },
        );
        if let Err(e) = self.proxy.pipeline.recorder.record(event).await {
            tracing::warn!(error = %e, "could not record the end of a session");
        }
    }

    /// Finds the target (host first, then the longest path prefix) and the canonical path the
    /// policy sees and the upstream gets.
    fn route(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(&RoutedTarget, String, Option<String>), HttpProxyError> {
        let raw_path = req.uri().path();
        let query = req.uri().query().map(str::to_string);
        let canonical = http_path::canonicalize(raw_path)
            .map_err(|e| HttpProxyError::PathRefused(e.to_string()))?;
        if canonical.encoded_separator
            && self.proxy.config.encoded_separators == EncodedSeparatorPolicy::Reject
        {
            return Err(HttpProxyError::PathRefused(
                "encoded '/' or '\\' in the path is refused by configuration".into(),
            ));
        }
        let host = req
            .uri()
            .host()
            .map(str::to_string)
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| strip_port(h).to_string())
            })
            .map(|h| h.to_ascii_lowercase());
        let targets = &self.proxy.targets;
        if let Some(host) = &host
            && let Some(t) = targets.iter().find(|t| t.host.as_deref() == Some(host))
        {
            return Ok((t, canonical.path, query));
        }
        let path = canonical.path.as_str();
        let mut best: Option<(&RoutedTarget, usize)> = None;
        for t in targets {
            let Some(prefix) = &t.prefix else { continue };
            let matches = path == prefix
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('/'));
            if matches && best.is_none_or(|(_, len)| prefix.len() > len) {
                best = Some((t, prefix.len()));
            }
        }
        let (t, len) = best.ok_or(HttpProxyError::NoTarget)?;
        let rest = path.get(len..).unwrap_or("");
        let rel = if rest.is_empty() { "/" } else { rest };
        Ok((t, rel.to_string(), query))
    }

    /// Stage two: the gate (decide, record, hold for approval), then forward and mask.
    async fn operate(
        self: Arc<Self>,
        req: Request<Incoming>,
        target: &RoutedTarget,
        mut operation: HttpOperation,
        ctx: &OpCtx,
        upgrade: bool,
    ) -> Result<Response<ResBody>, HttpProxyError> {
        let gate = &self.proxy.gate;
        let config = &self.proxy.config;
        let gctx = GateContext {
            session: &ctx.session.id,
            identity: &ctx.session.identity,
            target: &target.target,
        };
        let mut decision = gate.decide(&gctx, &Classified::new(Operation::Http(operation.clone())));
        let (parts, body) = req.into_parts();
        let held = decision.verdict == Verdict::Review && !upgrade;
        if decision.verdict == Verdict::Review && upgrade {
            // Upgrades are not held (a held handshake would time out in most clients).
            let rule = decision.rule_id.clone();
            decision = tighten(
                &decision,
                Decision::deny(rule, "WebSocket upgrades cannot wait for approval"),
            );
        }
        let body = if held {
            // A reviewed request is bound to its exact body: read it (capped) before asking.
            let bytes = read_capped(body, config.limits.max_request_body).await?;
            if !bytes.is_empty() {
                operation.body_sha256 = Some(hex::encode(Sha256::digest(&bytes)));
            }
            RequestBody::Buffered(bytes)
        } else {
            RequestBody::Stream(body)
        };
        let op = Operation::Http(operation.clone());
        gate.record(&gctx, ctx.index, op.clone(), &decision)
            .await
            .map_err(|o| outcome_error(o, config.retry_after_s))?;
        let outcome = if held {
            let review = Review {
                index: ctx.index,
                operation: &op,
                shown: &op,
                decision: &decision,
                mode: HoldMode::AtMost(ms(config.review_hold_ms)),
            };
            // hyper drops this future when the connection closes: that is "the client has gone".
            gate.approve(&gctx, review, std::future::pending()).await
        } else {
            Gate::settle(decision)
        };
        let decision = match outcome {
            Outcome::Allowed { decision, .. } => decision,
            other => return Err(outcome_error(other, config.retry_after_s)),
        };
        match body {
            RequestBody::Stream(body) if upgrade => {
                crate::websocket::proxy_upgrade(
                    self.clone(),
                    Request::from_parts(parts, body),
                    target,
                    &operation,
                    ctx.clone(),
                    decision.masking_profile,
                    (decision.binary, decision.rule_id),
                )
                .await
            }
            body => {
                self.forward(parts, body, target, &operation, &decision, ctx)
                    .await
            }
        }
    }

    async fn record_result(
        &self,
        ctx: &OpCtx,
        status: &StatusCode,
        code: Option<&str>,
        bytes_out: u64,
        findings: Vec<gatehouse_core::Finding>,
    ) -> bool {
        let status = match code {
            Some(c) => format!("{} {c}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        let event = Event::now(
            ctx.session.id.clone(),
            Some(ctx.session.identity.clone()),
            Some(ctx.target.clone()),
            EventBody::OperationResult(OperationResult {
                index: ctx.index,
                status,
                rows: None,
                bytes_out,
                duration_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
                findings,
            }),
        );
        match self.proxy.pipeline.recorder.record(event).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not record an operation result");
                false
            }
        }
    }

    /// Sends the request upstream with the target's credential and streams the masked response.
    async fn forward(
        self: Arc<Self>,
        parts: http::request::Parts,
        body: RequestBody,
        target: &RoutedTarget,
        operation: &HttpOperation,
        decision: &Decision,
        ctx: &OpCtx,
    ) -> Result<Response<ResBody>, HttpProxyError> {
        let config = &self.proxy.config;
        let pipeline = &self.proxy.pipeline;
        let max_body = config.limits.max_request_body;
        if let Some(len) = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            && len > max_body
        {
            return Err(HttpProxyError::BodyTooLarge(max_body));
        }
        // The recording keeps the request's free text (header values, path, query) as the
        // masking profile's detectors leave it; what goes upstream is the real request.
        let recorded = gatehouse_core::RecordedText::new(
            &*pipeline.masker,
            decision.masking_profile.as_deref(),
        );
        let mut recorded_request_headers =
            headers::recorded_headers(&parts.headers, injected_header(target));
        recorded.json(&mut recorded_request_headers);
        let recorded_path = recorded.text(&operation.path);
        let recorded_query = operation.query.as_deref().map(|q| recorded.query(q));
        drop(recorded);
        let (upstream_req, capture) =
            self.upstream_request(parts, body, target, operation, decision)?;
        let response = match tokio::time::timeout(
            ms(config.timeouts.response_head_ms),
            target.client.request(upstream_req),
        )
        .await
        {
            Err(_) => return Err(HttpProxyError::UpstreamTimeout),
            Ok(Err(e)) => {
                if lock_capture(&capture).too_large {
                    return Err(HttpProxyError::BodyTooLarge(max_body));
                }
                return Err(if e.is_connect() {
                    HttpProxyError::UpstreamUnavailable(source_text(&e))
                } else {
                    HttpProxyError::UpstreamRefused(source_text(&e))
                });
            }
            Ok(Ok(r)) => r,
        };
        let (mut rparts, rbody) = response.into_parts();
        if rparts.status == StatusCode::PARTIAL_CONTENT && decision.binary != BinaryHandling::Raw {
            // `Range` was not forwarded; a part of a body cannot be masked as a whole.
            return Err(HttpProxyError::UpstreamRefused(
                "the upstream sent a partial response (206) to a request without a range; a \
                 part of a body cannot be masked, and only rules with binary = \"raw\" pass \
                 ranges"
                    .into(),
            ));
        }
        headers::strip_hop_by_hop(&mut rparts.headers);
        let processor = BodyProcessor::new(
            &rparts.headers,
            &BodySettings {
                masker: &*pipeline.masker,
                egress: &*pipeline.egress,
                profile: decision.masking_profile.clone(),
                other: config.other_content,
                record_cap: config.record_body_cap,
                max_decoded: config.limits.max_response_body,
                binary: decision.binary,
                rule_id: decision.rule_id.clone(),
                bodiless: operation.method.eq_ignore_ascii_case("HEAD")
                    || rparts.status == StatusCode::NO_CONTENT
                    || rparts.status == StatusCode::NOT_MODIFIED
                    || rparts.status.is_informational()
                    || rparts
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .is_some_and(|v| v.as_bytes() == b"0"),
            },
        )?;
        if processor.transforms() {
            rparts.headers.remove(header::CONTENT_LENGTH);
            rparts.headers.remove(header::CONTENT_ENCODING);
        }
        // After the body's kind was read from the upstream's `Content-Type`.
        headers::mask_response_headers(
            &mut rparts.headers,
            &*pipeline.masker,
            decision.masking_profile.as_deref(),
        );
        for value in rparts.headers.values() {
            if pipeline
                .egress
                .check(EgressSite::Client, value.as_bytes())
                .is_err()
            {
                self.record_block(&ctx.session, &ctx.target, "client").await;
                return Err(HttpProxyError::EgressBlocked);
            }
        }
        let exchange = Exchange {
            conn: self.clone(),
            session: ctx.session.clone(),
            target: ctx.target.clone(),
            index: ctx.index,
            started: ctx.started,
            method: operation.method.clone(),
            path: recorded_path,
            query: recorded_query,
            request_headers: recorded_request_headers,
            request_capture: capture,
            status: rparts.status,
            response_headers: rparts.headers.clone(),
        };
        let idle = ms(config.idle_flush_ms).max(Duration::from_millis(1));
        let mut body = MaskedBody {
            upstream: rbody,
            processor,
            masker: pipeline.masker.clone(),
            ready: None,
            exchange: Some(exchange),
        };
        // Wait briefly for the first safe bytes, so a response the egress guard blocks at once
        // becomes a clean 502 rather than a cut stream. What is already there after them is
        // taken too: a small response then leaves whole, with a `Content-Length`.
        // The body has recorded the outcome of an error already: it is answered, not returned
        // (which would record the operation's result a second time).
        let first = std::future::poll_fn(|cx| body.poll_next(cx));
        match tokio::time::timeout(idle.max(Duration::from_millis(100)), first).await {
            Ok(Some(Err(e))) => return Ok(error_response(&e)),
            Ok(Some(Ok(mut chunk))) => {
                // Bounded: a body that keeps coming (or decodes to much more) streams.
                while !body.is_done() && chunk.len() < PREREAD_MAX {
                    let more = std::future::poll_fn(|cx| body.poll_next(cx));
                    match futures::FutureExt::now_or_never(more) {
                        Some(Some(Ok(next))) => chunk.extend_from_slice(&next),
                        Some(Some(Err(e))) => return Ok(error_response(&e)),
                        Some(None) | None => break,
                    }
                }
                body.ready = Some(Bytes::from(chunk));
            }
            Ok(None) | Err(_) => {}
        }
        Ok(Response::from_parts(rparts, body.boxed_unsync()))
    }

    /// The request as the upstream gets it.
    fn upstream_request(
        &self,
        parts: http::request::Parts,
        body: RequestBody,
        target: &RoutedTarget,
        operation: &HttpOperation,
        decision: &Decision,
    ) -> Result<(Request<upstream::UpstreamBody>, SharedCapture), HttpProxyError> {
        let mut h = parts.headers;
        headers::strip_hop_by_hop(&mut h);
        h.remove(header::HOST);
        h.remove(header::CONTENT_LENGTH);
        headers::restrict_accept_encoding(&mut h);
        h.remove(header::AUTHORIZATION);
        if decision.binary != BinaryHandling::Raw {
            // A byte range of a masked body would be cut from the upstream's bytes, past the
            // masker (`bytes=100-108` gives `alice@exa`, the next range the rest): the caller
            // gets the whole representation, masked, with 200.
            h.remove(header::RANGE);
            h.remove(header::IF_RANGE);
        }
        let query_cred = target
            .credential
            .as_ref()
            .and_then(|c| headers::inject_credential(c, &mut h));
        let query = match &query_cred {
            Some(param) => Some(headers::query_with_credential(
                operation.query.as_deref(),
                param,
            )),
            None => operation.query.clone(),
        };
        let authority = target.url.authority();
        let mut uri = format!(
            "{}://{}{}{}",
            target.url.scheme(),
            authority,
            target.url.base_path,
            operation.path
        );
        if let Some(q) = &query {
            uri.push('?');
            uri.push_str(q);
        }
        let uri: http::Uri = uri
            .parse()
            .map_err(|_| HttpProxyError::BadRequest("request target cannot be forwarded".into()))?;
        if let Ok(v) = HeaderValue::from_str(&authority) {
            h.insert(header::HOST, v);
        }
        let capture = Arc::new(std::sync::Mutex::new(RequestCapture::new(
            &*self.proxy.pipeline.masker,
            decision.masking_profile.clone(),
            &h,
            self.proxy.config.record_body_cap,
        )));
        let max = self.proxy.config.limits.max_request_body;
        let body: upstream::UpstreamBody = match body {
            RequestBody::Buffered(bytes) => {
                let mut c = lock_capture(&capture);
                c.push(&bytes);
                c.finish();
                drop(c);
                Full::new(bytes)
                    .map_err(|never: Infallible| match never {})
                    .boxed_unsync()
            }
            RequestBody::Stream(incoming) => RequestTee {
                inner: Limited::new(incoming, usize::try_from(max).unwrap_or(usize::MAX)),
                capture: capture.clone(),
            }
            .boxed_unsync(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = parts.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = h;
        Ok((req, capture))
    }
}

fn injected_header(target: &RoutedTarget) -> Option<&str> {
    match &target.credential {
        Some(InjectedCredential::Header { name, .. }) => Some(name.as_str()),
        _ => None,
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The text of an error chain, caller-safe (hyper and io errors carry no URL or header).
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// Reads a whole request body, refusing it above `max` bytes.
async fn read_capped(body: Incoming, max: u64) -> Result<Bytes, HttpProxyError> {
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(HttpProxyError::BodyTooLarge(max))
        }
        Err(e) => Err(HttpProxyError::BadRequest(format!("request body: {e}"))),
    }
}

enum RequestBody {
    Stream(Incoming),
    Buffered(Bytes),
}

/// The copy of a request body kept for the recording: text masked and capped; a binary body
/// (a content type the masker cannot read, or NUL bytes / invalid UTF-8 in a text one) by size
/// and SHA-256 only, never run through the text masker. The upstream gets the body unchanged
/// either way.
pub(crate) struct RequestCapture {
    masker: Option<Box<dyn gatehouse_core::StreamMasker>>,
    bytes: Vec<u8>,
    total: u64,
    cap: usize,
    too_large: bool,
    findings: Vec<gatehouse_core::Finding>,
    /// Watches a text body for binary data across chunks.
    detector: gatehouse_core::TextDetector,
    /// The digest of every byte of the body (finished into `sha256` for a binary body).
    hasher: Sha256,
    /// Set when the body is recorded by digest: `"binary content type"` or `"binary body"`.
    raw_why: Option<&'static str>,
    sha256: Option<String>,
    finished: bool,
}

impl RequestCapture {
    fn new(
        masker: &dyn gatehouse_core::Masker,
        profile: Option<String>,
        headers: &http::HeaderMap,
        cap: usize,
    ) -> Self {
        let kind = crate::body::ContentKind::of(headers);
        let masker = match kind {
            crate::body::ContentKind::Other => None,
            k => Some(masker.stream(&gatehouse_core::StreamContext {
                profile,
                field: Some("request_body".into()),
                json: k == crate::body::ContentKind::Json,
            })),
        };
        Self {
            raw_why: masker.is_none().then_some("binary content type"),
            masker,
            bytes: Vec::new(),
            total: 0,
            cap,
            too_large: false,
            findings: Vec::new(),
            detector: gatehouse_core::TextDetector::new(),
            hasher: Sha256::new(),
            sha256: None,
            finished: false,
        }
    }

    /// The body turned out binary: drop what the masker made of it (never recorded).
    fn switch_to_digest(&mut self) {
        self.masker = None;
        self.bytes.clear();
        self.raw_why = Some("binary body");
    }

    fn push(&mut self, chunk: &[u8]) {
        if self.finished {
            return;
        }
        self.total += chunk.len() as u64;
        self.hasher.update(chunk);
        if self.masker.is_some() && !self.detector.push(chunk) {
            self.switch_to_digest();
        }
        if self.bytes.len() >= self.cap {
            return;
        }
        if let Some(m) = &mut self.masker {
            m.push(chunk, &mut self.bytes);
        }
        self.bytes.truncate(self.cap);
    }

    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.masker.is_some() && !self.detector.finish() {
            self.switch_to_digest();
        }
        if let Some(mut m) = self.masker.take() {
            if self.bytes.len() < self.cap {
                m.finish(&mut self.bytes);
                self.bytes.truncate(self.cap);
            }
            self.findings.extend(m.take_findings());
        }
        if self.raw_why.is_some() && self.total > 0 {
            self.sha256 = Some(hex::encode(self.hasher.clone().finalize()));
        }
    }
}

/// A request capture shared by the body on its way upstream and the exchange's recording. A
/// plain mutex, held only for a chunk's masking, never across an await: every chunk is captured
/// (a skipped one would make the recorded digest a lie).
type SharedCapture = Arc<std::sync::Mutex<RequestCapture>>;

fn lock_capture(c: &SharedCapture) -> std::sync::MutexGuard<'_, RequestCapture> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Passes the caller's body upstream while keeping a masked copy for the recording.
struct RequestTee {
    inner: Limited<Incoming>,
    capture: SharedCapture,
}

impl Body for RequestTee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    lock_capture(&self.capture).push(data);
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if e.is::<http_body_util::LengthLimitError>() {
                    lock_capture(&self.capture).too_large = true;
                }
            }
            Poll::Ready(None) => lock_capture(&self.capture).finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// At most this much of a response is gathered before its head leaves (so a small response
/// leaves whole, with a `Content-Length`); a larger one streams.
const PREREAD_MAX: usize = 256 * 1024;

/// A response body driven by hyper's own polling (no task, no channel): upstream frames →
/// decode → mask → egress → caller. Nothing is released on a timer: bytes the masker holds back
/// (a line not yet ended, a JSON string not yet closed) wait for the bytes that decide them or
/// the end of the body, so a value split across upstream writes, however far apart, is masked
/// whole. When it ends, fails, or is dropped early (the caller went away), the exchange is
/// handed to the connection's recording tasks.
struct MaskedBody {
    upstream: Incoming,
    processor: BodyProcessor,
    masker: Arc<dyn gatehouse_core::Masker + Send + Sync>,
    /// Safe bytes produced before the response head left (see `forward`).
    ready: Option<Bytes>,
    /// `None` once the body has ended and the exchange has been handed over.
    exchange: Option<Exchange>,
}

impl MaskedBody {
    fn is_done(&self) -> bool {
        self.exchange.is_none()
    }

    /// The next safe bytes (never empty), `None` at the end. After an error or the end, the
    /// exchange has been handed to the recording and later polls return `None`.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Vec<u8>, HttpProxyError>>> {
        if self.exchange.is_none() {
            return Poll::Ready(None);
        }
        loop {
            // Decoded bytes of an earlier frame first (a compressed frame is emitted in bounded
            // pieces, see `BodyProcessor::push`): an empty frame continues it. Nothing is
            // released on a timer: a held-back tail waits for the bytes that decide it.
            let backlog = self
                .processor
                .has_backlog()
                .then(|| Poll::Ready(Some(Ok(Frame::data(Bytes::new())))));
            let Poll::Ready(step) =
                backlog.unwrap_or_else(|| Pin::new(&mut self.upstream).poll_frame(cx))
            else {
                return Poll::Pending;
            };
            let mut out = Vec::new();
            let mut done = false;
            let result = match step {
                None => {
                    done = true;
                    self.processor.finish(&*self.masker, &mut out)
                }
                Some(Err(e)) => Err(HttpProxyError::UpstreamRefused(format!(
                    "upstream body: {}",
                    source_text(&e)
                ))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let pushed = self.processor.push(&*self.masker, &data, &mut out);
                        // The last byte of a sized body: finish now, as the caller (which has
                        // its Content-Length) may never poll again.
                        if pushed.is_ok()
                            && !self.processor.has_backlog()
                            && self.upstream.is_end_stream()
                        {
                            done = true;
                            self.processor.finish(&*self.masker, &mut out)
                        } else {
                            pushed
                        }
                    }
                    Err(_trailers) => Ok(()),
                },
            };
            let result = result.and_then(|()| self.chunk_hook(&out));
            if let Err(e) = result {
                self.complete(Err(e.clone()), false);
                return Poll::Ready(Some(Err(e)));
            }
            if done {
                self.complete(Ok(()), false);
                return Poll::Ready((!out.is_empty()).then_some(Ok(out)));
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(out)));
            }
        }
    }

    /// Shows `out` (masked and egress-checked: exactly what the caller will receive) to
    /// [`gatehouse_core::GateHooks::on_chunk`], when a hook wants chunks. A `Stop` withholds it
    /// and ends the response ([`HttpProxyError::HookStopped`]).
    fn chunk_hook(&self, out: &[u8]) -> Result<(), HttpProxyError> {
        let Some(ex) = &self.exchange else {
            return Ok(());
        };
        let hooks = &ex.conn.proxy.pipeline.hooks;
        if out.is_empty() || !hooks.wants_chunks() {
            return Ok(());
        }
        let ctx = GateContext {
            session: &ex.session.id,
            identity: &ex.session.identity,
            target: &ex.target,
        };
        match hooks.on_chunk(&ctx, ex.index, out) {
            ChunkVerdict::Continue => Ok(()),
            ChunkVerdict::Stop => Err(HttpProxyError::HookStopped),
        }
    }

    /// Hands the exchange to the connection's recording tasks (once).
    fn complete(&mut self, outcome: Result<(), HttpProxyError>, client_gone: bool) {
        let Some(exchange) = self.exchange.take() else {
            return;
        };
        let (capture, findings) = self.processor.take_parts();
        let conn = exchange.conn.clone();
        conn.spawn_recording(exchange.finish(capture, findings, outcome, client_gone));
    }
}

impl Body for MaskedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(ready) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(ready))));
        }
        this.poll_next(cx).map(|item| {
            item.map(|r| {
                r.map(|data| Frame::data(Bytes::from(data)))
                    .map_err(|e| Box::new(e) as BoxError)
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.exchange.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match (&self.ready, &self.exchange) {
            (Some(ready), None) => hyper::body::SizeHint::with_exact(ready.len() as u64),
            (None, None) => hyper::body::SizeHint::with_exact(0),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

impl Drop for MaskedBody {
    fn drop(&mut self) {
        // Dropped before its end: the caller (or its connection) went away.
        self.complete(Ok(()), true);
    }
}

/// What is recorded when a response is done.
struct Exchange {
    conn: Arc<ConnCtx>,
    session: Arc<SessionState>,
    target: Target,
    index: u64,
    started: Instant,
    method: String,
    path: String,
    query: Option<String>,
    request_headers: serde_json::Value,
    request_capture: SharedCapture,
    status: StatusCode,
    /// Redacted when the entry is built, off the response path.
    response_headers: http::HeaderMap,
}

impl Exchange {
    async fn finish(
        self,
        response: BodyCapture,
        mut findings: Vec<gatehouse_core::Finding>,
        outcome: Result<(), HttpProxyError>,
        client_gone: bool,
    ) {
        let pipeline = &self.conn.proxy.pipeline;
        let (request_body, request_total, request_findings, request_sha256, request_raw) = {
            let mut c = lock_capture(&self.request_capture);
            c.finish();
            (
                String::from_utf8_lossy(&c.bytes).into_owned(),
                c.total,
                std::mem::take(&mut c.findings),
                c.sha256.clone(),
                c.sha256.as_ref().and(c.raw_why),
            )
        };
        findings.extend(request_findings);
        let error = match &outcome {
            Err(e) => Some(e.code()),
            Ok(()) if client_gone => Some("client_gone"),
            Ok(()) => None,
        };
        let entry = serde_json::json!({
            "index": self.index,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "request_headers": self.request_headers,
            "request_body": request_body,
            "request_body_bytes": request_total,
            "request_body_sha256": request_sha256,
            "request_raw": request_raw.map(|why| serde_json::json!({"why": why, "from": 0})),
            "status": self.status.as_u16(),
            "response_headers": headers::recorded_headers(&self.response_headers, None),
            "response_body": String::from_utf8_lossy(&response.bytes),
            "response_body_bytes": response.total,
            "response_body_sha256": response.sha256,
            "response_raw": response.raw_why.map(|why| serde_json::json!({
                "why": why,
                "from": response.raw_from,
            })),
            "error": error,
            "duration_us": u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        });
        if recording_entry_is_clean(&*pipeline.egress, &entry) {
            let frame = RecordingFrame::Entry {
                label: "http_exchange".into(),
                body: entry,
            };
            let mut sink = self.session.recording.lock().await;
            if let Some(sink) = sink.as_mut()
                && let Err(e) = sink.write(frame).await
            {
                tracing::warn!(error = %e, "recording write failed");
                self.conn.recording_failed.store(true, Ordering::Relaxed);
            }
        } else {
            self.conn
                .record_block(&self.session, &self.target, "recording")
                .await;
        }
        if matches!(outcome, Err(HttpProxyError::EgressBlocked)) {
            self.conn
                .record_block(&self.session, &self.target, "client")
                .await;
        }
        let ctx = OpCtx {
            session: self.session.clone(),
            target: self.target.clone(),
            index: self.index,
            started: self.started,
        };
        if !self
            .conn
            .record_result(&ctx, &self.status, error, response.total, findings)
            .await
        {
            self.conn.recording_failed.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs every string of a recording entry (keys and values) through the egress guard, without
/// serialising the entry a second time (the recorder serialises it once), see
/// [`gatehouse_core::json_check`]. The response body is the exception: its bytes are a prefix of
/// what the caller's egress stream already passed.
fn recording_entry_is_clean(
    egress: &dyn gatehouse_core::EgressGuard,
    entry: &serde_json::Value,
) -> bool {
    let clean = |v| gatehouse_core::json_check(egress, EgressSite::Recording, v).is_ok();
    match entry {
        serde_json::Value::Object(m) => m
            .iter()
            .filter(|(k, _)| k.as_str() != "response_body")
            .all(|(_, v)| clean(v)),
        other => clean(other),
    }
}

impl ConnCtx {
    pub(crate) async fn record_block(&self, session: &SessionState, target: &Target, site: &str) {
        let event = Event::now(
            session.id.clone(),
            Some(session.identity.clone()),
            Some(target.clone()),
            EventBody::EgressBlocked {
                site: site.to_string(),
                hits: 1,
            },
        );
        if let Err(e) = self.proxy.pipeline.recorder.record(event).await {
            tracing::warn!(error = %e, "could not record an egress block");
        }
    }

    /// Records how a WebSocket relay ended.
    pub(crate) async fn record_ws_result(
        &self,
        ctx: &OpCtx,
        status: String,
        bytes_out: u64,
        findings: Vec<gatehouse_core::Finding>,
    ) {
        let event = Event::now(
            ctx.session.id.clone(),
            Some(ctx.session.identity.clone()),
            Some(ctx.target.clone()),
            EventBody::OperationResult(OperationResult {
                index: ctx.index,
                status,
                rows: None,
                bytes_out,
                duration_us: u64::try_from(ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
                findings,
            }),
        );
        if let Err(e) = self.proxy.pipeline.recorder.record(event).await {
            tracing::warn!(error = %e, "could not record a websocket result");
        }
    }
}

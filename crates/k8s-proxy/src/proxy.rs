//! [`K8sProxy`]: the listener, the per-connection session, and one request's path through the
//! layers (authenticate → route → parse → decide → approve → record → forward → mask → record).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::{
    AuthErrorKind, BinaryHandling, ChunkVerdict, Classified, Credential, Decision, EgressSite,
    Event, EventBody, Finding, Gate, GateContext, HoldMode, Identity, KubeOperation, Operation,
    OperationResult, Outcome, Pipeline, Protocol, RecordingFrame, RecordingKind, RecordingSink,
    Review, SessionId, StreamContext, Target, TextDetector, Verdict, http_path, tighten,
};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, mpsc, watch};

use crate::config::{K8sProxyConfig, ms};
use crate::error::K8sProxyError;
use crate::mask::mask_document;
use crate::protobuf;
use crate::request::{ParsedRequest, parse_request, sensitive_reason};
use crate::upstream::{self, BoxError, UpstreamClient, UpstreamConnector, UpstreamUrl};

/// The body of every response the gateway sends.
pub(crate) type ResBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long a verified bearer token is trusted on one connection before it is verified again.
const REAUTH_AFTER: Duration = Duration::from_secs(30);

/// Rule id of the built-in allowance for discovery and non-resource `GET`s.
pub const DISCOVERY_RULE: &str = "k8s-discovery";
/// Rule id of the built-in refusal of sensitive operations that no explicit rule allowed.
pub const SENSITIVE_RULE: &str = "k8s-sensitive";
/// Rule id recorded for refused SPDY upgrades.
pub const SPDY_RULE: &str = "k8s-spdy";

/// The Kubernetes API proxy. Cheap to clone; build once, serve on any number of listeners.
#[derive(Clone)]
pub struct K8sProxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for K8sProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sProxy")
            .field("targets", &self.inner.targets.len())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) config: K8sProxyConfig,
    pub(crate) pipeline: Pipeline,
    pub(crate) targets: Vec<Cluster>,
    default_target: Option<usize>,
    /// Decides, records and holds every operation (a retry picks up its own request there).
    pub(crate) gate: Arc<Gate>,
}

/// A configured cluster, ready to forward to.
pub(crate) struct Cluster {
    pub(crate) target: Target,
    pub(crate) url: UpstreamUrl,
    client: UpstreamClient,
    pub(crate) connector: UpstreamConnector,
    bearer: Option<String>,
    impersonate: bool,
}

impl K8sProxy {
    /// Checks the configuration, reads credential files and prepares one pooled upstream client
    /// per cluster. The pipeline's egress guard should watch [`K8sProxyConfig::held_secrets`].
    pub fn new(config: K8sProxyConfig, pipeline: Pipeline) -> Result<K8sProxy, K8sProxyError> {
        config.validate()?;
        let mut targets = Vec::with_capacity(config.targets.len());
        for t in &config.targets {
            let resolved = t.resolve()?;
            let url = UpstreamUrl::parse(&resolved.server).map_err(K8sProxyError::Config)?;
            let tls = match (&resolved.ca_pem, url.tls) {
                (Some(ca), true) => Some(
                    upstream::tls_client_config(ca, resolved.client_cert.as_ref())
                        .map_err(|e| K8sProxyError::Config(format!("target {:?}: {e}", t.name)))?,
                ),
                _ => None,
            };
            let connector =
                UpstreamConnector::new(url.clone(), tls, ms(config.timeouts.connect_ms));
            let client = upstream::client(connector.clone(), ms(config.timeouts.pool_idle_ms));
            let mut target = Target::new(t.name.clone(), Protocol::Kubernetes);
            for tag in &t.tags {
                target = target.with_tag(tag.clone());
            }
            targets.push(Cluster {
                target,
                url,
                client,
                connector,
                bearer: resolved.bearer,
                impersonate: t.impersonate,
            });
        }
        let default_target = config
            .default_target_name()
            .and_then(|n| targets.iter().position(|t| t.target.name == n));
        Ok(K8sProxy {
            inner: Arc::new(Inner {
                config,
                targets,
                default_target,
                gate: Arc::new(Gate::new(pipeline.clone())),
                pipeline,
            }),
        })
    }

    /// Serves `listener` until `shutdown` resolves, then lets open requests finish (at most 10 s).
    /// With `tls`, connections are TLS-terminated and offer HTTP/2 and HTTP/1.1 by ALPN
    /// (WebSocket exec uses HTTP/1.1); without, HTTP/1.1 and h2c are both accepted.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        tls: Option<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), K8sProxyError> {
        let acceptor = tls.map(|mut cfg| {
            if cfg.alpn_protocols.is_empty() {
                cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            }
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let proxy = self.inner.clone();
            let acceptor = acceptor.clone();
            let stop = stop_rx.clone();
            tasks.spawn(async move {
                let header_timeout = ms(proxy.config.timeouts.header_read_ms);
                match acceptor {
                    None => serve_connection(proxy, tcp, peer, stop).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => serve_connection(proxy, tls, peer, stop).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        Ok(())
    }
}

async fn serve_connection<I>(
    proxy: Arc<Inner>,
    io: I,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(ConnCtx {
        proxy: proxy.clone(),
        peer,
        session: Mutex::new(None),
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ms(proxy.config.timeouts.header_read_ms))
        .max_buf_size(proxy.config.limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(proxy.config.limits.max_header_bytes).unwrap_or(u32::MAX),
        );
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
    conn.end_session("connection closed").await;
}

/// One client connection and its lazily started audit session.
pub(crate) struct ConnCtx {
    pub(crate) proxy: Arc<Inner>,
    pub(crate) peer: SocketAddr,
    session: Mutex<Option<Arc<SessionState>>>,
}

/// An authenticated session on one connection.
pub(crate) struct SessionState {
    pub(crate) id: SessionId,
    pub(crate) identity: Identity,
    token_hash: [u8; 32],
    verified_at: Instant,
    next_index: Arc<AtomicU64>,
    pub(crate) recording: Arc<Mutex<Option<Box<dyn RecordingSink>>>>,
}

/// One operation in flight.
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

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<ResBody> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error_response(e: &K8sProxyError) -> Response<ResBody> {
    let mut r = json_response(e.status(), &e.to_status());
    if let Some(retry_after_s) = e.retry_after_s()
        && let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The gate's outcome as this crate's error, rendered per the table in `docs/DESIGN.md`: a
/// `Status` 403 Forbidden for denied and approval denied; 504 Timeout + `Retry-After` for an
/// approval that timed out; 429 + `Retry-After` while held; 503 ServiceUnavailable + `Retry-After` when approvals or the audit log are unavailable.
pub(crate) fn outcome_error(outcome: Outcome, retry_after_s: u64) -> K8sProxyError {
    match outcome {
        Outcome::Denied { decision } => K8sProxyError::Denied {
            rule: decision.rule_id,
            reason: decision.reason,
        },
        Outcome::Held { decision, approval } => K8sProxyError::ApprovalPending {
            id: approval.0,
            rule: decision.rule_id,
            retry_after_s,
        },
        Outcome::ApprovalDenied {
            decision,
            approval,
            by,
            ..
        } => K8sProxyError::ApprovalRefused {
            id: approval.0,
            outcome: format!("was denied by {by}"),
            rule: decision.rule_id,
        },
        Outcome::ApprovalTimedOut { decision, approval } => K8sProxyError::ApprovalTimedOut {
            id: approval.0,
            rule: decision.rule_id,
            retry_after_s,
        },
        Outcome::Abandoned { decision, approval } => K8sProxyError::ApprovalRefused {
            id: approval.0,
            outcome: "was abandoned".into(),
            rule: decision.rule_id,
        },
        Outcome::ApprovalsUnavailable { reason, .. } => K8sProxyError::Approvals(reason),
        Outcome::AuditUnavailable { reason } => K8sProxyError::Recorder(reason),
        other => K8sProxyError::Approvals(format!("unexpected gate outcome: {}", other.name())),
    }
}

/// The bearer token of an `Authorization: Bearer …` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Whether the request asks to upgrade to SPDY (the legacy streaming protocol).
fn is_spdy(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("spdy"))
}

/// Whether the request asks for a WebSocket upgrade.
pub(crate) fn is_websocket<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.method() == http::Method::GET
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
            })
}

impl ConnCtx {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ResBody> {
        let started = Instant::now();
        match self.clone().handle_inner(req, started).await {
            Ok(resp) => resp,
            Err(e) => {
                let mut resp = error_response(&e);
                if matches!(e, K8sProxyError::Approvals(_) | K8sProxyError::Recorder(_)) {
                    // Unavailable, not forbidden: retry later.
                    resp.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(self.proxy.config.retry_after_s),
                    );
                }
                resp
            }
        }
    }

    async fn handle_inner(
        self: Arc<Self>,
        req: Request<Incoming>,
        started: Instant,
    ) -> Result<Response<ResBody>, K8sProxyError> {
        let session = self.authenticate(req.headers()).await?;
        let (target_idx, rest) = self.route(req.uri().path())?;
        let parsed = parse_request(req.method().as_str(), &rest, req.uri().query())
            .map_err(|e| K8sProxyError::BadRequest(e.to_string()))?;
        let target = self
            .proxy
            .targets
            .get(target_idx)
            .ok_or(K8sProxyError::NoTarget)?;
        let ctx = OpCtx {
            session: session.clone(),
            target: target.target.clone(),
            index: session.next_index.fetch_add(1, Ordering::Relaxed),
            started,
        };
        match self.clone().operate(req, target_idx, parsed, &ctx).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.record_result(&ctx, &e.status(), Some(e.code()), 0, Vec::new())
                    .await;
                Err(e)
            }
        }
    }

    /// `/k8s/<target>/rest` → (target, `/rest`); anything else → the default target.
    fn route(&self, raw_path: &str) -> Result<(usize, String), K8sProxyError> {
        let canonical = http_path::canonicalize(raw_path)
            .map_err(|e| K8sProxyError::BadRequest(format!("request path refused: {e}")))?;
        let path = canonical.path;
        if let Some(after) = path.strip_prefix("/k8s/") {
            let (name, rest) = match after.split_once('/') {
                Some((n, r)) => (n, format!("/{r}")),
                None => (after, "/".to_string()),
            };
            let idx = self
                .proxy
                .targets
                .iter()
                .position(|t| t.target.name == name)
                .ok_or(K8sProxyError::NoTarget)?;
            return Ok((idx, rest));
        }
        let idx = self.proxy.default_target.ok_or(K8sProxyError::NoTarget)?;
        Ok((idx, path))
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<SessionState>, K8sProxyError> {
        let pipeline = &self.proxy.pipeline;
        let Some(token) = bearer_token(headers) else {
            self.login_failed(AuthErrorKind::Malformed).await;
            return Err(K8sProxyError::Unauthenticated(AuthErrorKind::Malformed));
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
                    K8sProxyError::AuthUnavailable
                } else {
                    K8sProxyError::Unauthenticated(e.kind)
                });
            }
        };
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
                details: serde_json::json!({ "protocol": "kubernetes" }),
            },
        );
        pipeline
            .recorder
            .record(start)
            .await
            .map_err(|e| K8sProxyError::Recorder(e.to_string()))?;
        let sink = pipeline
            .recorder
            .open_recording(&id, RecordingKind::Http)
            .await
            .map_err(|e| K8sProxyError::Recorder(e.to_string()))?;
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
            Some(sink) => sink.seal().await.ok(),
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

    /// Who asks, on which target, in which session: what the gate and its hooks are given.
    pub(crate) fn gate_ctx<'a>(ctx: &'a OpCtx, target: &'a Target) -> GateContext<'a> {
        GateContext {
            session: &ctx.session.id,
            identity: &ctx.session.identity,
            target,
        }
    }

    /// Shows `chunk` (masked and egress-checked: exactly what the caller will receive) to
    /// [`gatehouse_core::GateHooks::on_chunk`], when a hook wants chunks. A `Stop` withholds it
    /// ([`K8sProxyError::HookStopped`]).
    pub(crate) fn chunk_hook(&self, ctx: &OpCtx, chunk: &[u8]) -> Result<(), K8sProxyError> {
        let hooks = &self.proxy.pipeline.hooks;
        if chunk.is_empty() || !hooks.wants_chunks() {
            return Ok(());
        }
        let gctx = Self::gate_ctx(ctx, &ctx.target);
        match hooks.on_chunk(&gctx, ctx.index, chunk) {
            ChunkVerdict::Continue => Ok(()),
            ChunkVerdict::Stop => Err(K8sProxyError::HookStopped),
        }
    }

    /// The gate's decision (policy and hooks), with the built-in defaults: discovery and
    /// non-resource `GET`s are allowed when no rule matched (the default verdict only);
    /// sensitive operations are denied unless a rule (not the default verdict) allowed them.
    pub(crate) fn decide(
        &self,
        ctx: &OpCtx,
        target: &Target,
        op: &KubeOperation,
        body: Option<&serde_json::Value>,
    ) -> Decision {
        self.decide_with(ctx, target, op, sensitive_reason(op, body))
    }

    /// [`Self::decide`] with the sensitive reason already found (e.g. in a protobuf body).
    pub(crate) fn decide_with(
        &self,
        ctx: &OpCtx,
        target: &Target,
        op: &KubeOperation,
        sensitive: Option<String>,
    ) -> Decision {
        let mut classified = Classified::new(Operation::Kubernetes(op.clone()));
        if let Some(cmd) = &op.command {
            classified = classified.with_facts(gatehouse_core::command::ExecFacts::of(cmd));
        }
        // The built-in defaults adjust the policy's own `default` verdict, before any hook
        // sees it: a hook's decision is never loosened.
        let adjust = |decision: Decision| {
            let by_default = decision.rule_id == "default";
            if by_default
                && decision.verdict != Verdict::Allow
                && op.resource.is_empty()
                && matches!(op.verb.as_str(), "get" | "head")
            {
                return Decision::allow(DISCOVERY_RULE, "discovery and non-resource reads");
            }
            if by_default && let Some(why) = sensitive {
                return tighten(
                    &decision,
                    Decision::deny(
                        SENSITIVE_RULE,
                        format!("{why} needs an explicit allow rule"),
                    ),
                );
            }
            decision
        };
        self.proxy
            .gate
            .decide_adjusted(&Self::gate_ctx(ctx, target), &classified, adjust)
    }

    async fn operate(
        self: Arc<Self>,
        req: Request<Incoming>,
        target_idx: usize,
        parsed: ParsedRequest,
        ctx: &OpCtx,
    ) -> Result<Response<ResBody>, K8sProxyError> {
        let proxy = self.proxy.clone();
        let target = proxy
            .targets
            .get(target_idx)
            .ok_or(K8sProxyError::NoTarget)?;
        // Named for the port-forward and exec call sites below: the operation's context (session
        // and identity), which the gate's decision needs.
        let identity = ctx;
        if parsed.operation.verb == "portforward" {
            // Both of kubectl's attempts (the SPDY-over-WebSocket tunnel, then a plain SPDY
            // upgrade) are decided, so a refusal is what kubectl prints whichever it reports.
            let decision = self.decide(identity, &target.target, &parsed.operation, None);
            return crate::portforward::handle(
                self.clone(),
                req,
                target_idx,
                parsed,
                decision,
                ctx.clone(),
            )
            .await;
        }
        if is_spdy(req.headers()) {
            let decision = Decision::deny(SPDY_RULE, K8sProxyError::SpdyRefused.to_string());
            self.record_operation(ctx, &parsed.operation, &decision)
                .await?;
            return Err(K8sProxyError::SpdyRefused);
        }
        if matches!(parsed.operation.verb.as_str(), "exec" | "attach") && is_websocket(&req) {
            let decision = self.decide(identity, &target.target, &parsed.operation, None);
            return crate::exec::handle(
                self.clone(),
                req,
                target_idx,
                parsed,
                decision,
                ctx.clone(),
            )
            .await;
        }
        let (parts, body) = req.into_parts();
        let body = read_capped(body, proxy.config.limits.max_request_body).await?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let protobuf_body = !body.is_empty() && protobuf::is_protobuf(&content_type);
        let inspectable = body.is_empty() || inspectable_body(&parts.headers);
        let body_json = if inspectable {
            parse_body(&parts.headers, &body)
        } else {
            None
        };
        let mut operation = parsed.operation.clone();
        let writes = matches!(operation.verb.as_str(), "create" | "update" | "patch");
        // What the body says, for the privileged-spec check; or why it cannot be vouched for.
        let mut pod_setting = None;
        let mut refusal: Option<K8sProxyError> = None;
        if protobuf_body {
            match protobuf::read_envelope(&body).and_then(|env| {
                protobuf::privileged_setting(
                    &env,
                    &operation.resource,
                    operation.subresource.as_deref(),
                )
            }) {
                Ok(found) => pod_setting = found,
                Err(e) => {
                    refusal = Some(K8sProxyError::BadRequest(format!(
                        "gatehouse cannot vouch for this request body: {e}"
                    )));
                }
            }
        } else if !inspectable {
            refusal = Some(K8sProxyError::UnsupportedBody(content_type.clone()));
        } else if writes
            && !body.is_empty()
            && body_json.is_none()
            && protobuf::holds_pod_spec(&operation.resource)
        {
            // A pod spec the privileged check could not read is never forwarded.
            refusal = Some(K8sProxyError::BadRequest(format!(
                "gatehouse cannot vouch for this request body: it does not parse as {}",
                if content_type.contains("yaml") {
                    "YAML"
                } else {
                    "JSON"
                }
            )));
        }
        let decision = match pod_setting.filter(|_| writes) {
            Some(what) => self.decide_with(
                ctx,
                &target.target,
                &operation,
                Some(format!("privileged pod spec ({what})")),
            ),
            None => self.decide(ctx, &target.target, &operation, body_json.as_ref()),
        };
        if let Some(refusal) = refusal
            && decision.verdict != Verdict::Deny
        {
            let recorded = tighten(
                &decision,
                Decision::deny("k8s-uninspectable-body", refusal.to_string()),
            );
            self.record_operation(ctx, &operation, &recorded).await?;
            return Err(refusal);
        }
        self.record_operation(ctx, &operation, &decision).await?;
        match decision.verdict {
            Verdict::Deny => {
                return Err(K8sProxyError::Denied {
                    rule: decision.rule_id,
                    reason: decision.reason,
                });
            }
            Verdict::Review => {
                // The approval binds everything that changes the request's effect, and the
                // approver sees it: method, path, query (dryRun, fieldManager, force, …),
                // content type (the patch type) and the body's digest.
                let content_type = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                operation.path = Some(crate::request::review_binding(
                    parts.method.as_str(),
                    &parsed,
                    content_type,
                    &body,
                ));
                let op = Operation::Kubernetes(operation.clone());
                let review = Review {
                    index: ctx.index,
                    operation: &op,
                    shown: &op,
                    decision: &decision,
                    mode: HoldMode::AtMost(ms(proxy.config.review_hold_ms)),
                };
                // hyper drops this future when the connection closes: "the client has gone".
                let gctx = Self::gate_ctx(ctx, &target.target);
                match proxy
                    .gate
                    .approve(&gctx, review, std::future::pending())
                    .await
                {
                    Outcome::Allowed { .. } => {}
                    other => return Err(outcome_error(other, proxy.config.retry_after_s)),
                }
            }
            Verdict::Allow => {}
        }
        self.forward(parts, body, target, &parsed, &decision, ctx)
            .await
    }

    /// Records the operation and its decision through the gate; durable before anything runs.
    pub(crate) async fn record_operation(
        &self,
        ctx: &OpCtx,
        operation: &KubeOperation,
        decision: &Decision,
    ) -> Result<(), K8sProxyError> {
        self.proxy
            .gate
            .record(
                &Self::gate_ctx(ctx, &ctx.target),
                ctx.index,
                Operation::Kubernetes(operation.clone()),
                decision,
            )
            .await
            .map_err(|o| outcome_error(o, self.proxy.config.retry_after_s))
    }

    pub(crate) async fn record_result(
        &self,
        ctx: &OpCtx,
        status: &StatusCode,
        code: Option<&str>,
        bytes_out: u64,
        findings: Vec<Finding>,
    ) {
        let status = match code {
            Some(c) => format!("{} {c}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        self.record_status(ctx, status, bytes_out, findings).await;
    }

    pub(crate) async fn record_status(
        &self,
        ctx: &OpCtx,
        status: String,
        bytes_out: u64,
        findings: Vec<Finding>,
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
            tracing::warn!(error = %e, "could not record an operation result");
        }
    }

    pub(crate) async fn record_block(&self, ctx: &OpCtx, site: &str) {
        let event = Event::now(
            ctx.session.id.clone(),
            Some(ctx.session.identity.clone()),
            Some(ctx.target.clone()),
            EventBody::EgressBlocked {
                site: site.to_string(),
                hits: 1,
            },
        );
        if let Err(e) = self.proxy.pipeline.recorder.record(event).await {
            tracing::warn!(error = %e, "could not record an egress block");
        }
    }

    /// Writes one structured entry to the session recording (egress-checked).
    pub(crate) async fn write_entry(&self, ctx: &OpCtx, label: &str, body: serde_json::Value) {
        let text = body.to_string();
        if self
            .proxy
            .pipeline
            .egress
            .check(EgressSite::Recording, text.as_bytes())
            .is_err()
        {
            self.record_block(ctx, "recording").await;
            return;
        }
        let mut sink = ctx.session.recording.lock().await;
        if let Some(sink) = sink.as_mut()
            && let Err(e) = sink
                .write(RecordingFrame::Entry {
                    label: label.into(),
                    body,
                })
                .await
        {
            tracing::warn!(error = %e, "recording write failed");
        }
    }

    /// The headers the API server gets: the caller's minus hop-by-hop, credentials and
    /// impersonation; the cluster's credential; JSON only, no compression.
    pub(crate) fn upstream_headers(
        &self,
        caller: &HeaderMap,
        target: &Cluster,
        identity: &Identity,
    ) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in caller {
            let n = name.as_str();
            if is_hop_by_hop(n)
                || n == "host"
                || n == "authorization"
                || n == "proxy-authorization"
                || n == "cookie"
                || n == "content-length"
                || n == "accept"
                || n == "accept-encoding"
                // Responses are masked whole: a byte range of one (through a proxy
                // subresource) would be cut past the masker.
                || n == "range"
                || n == "if-range"
                || n.starts_with("impersonate-")
                || n.starts_with("x-remote-")
                || n.starts_with("sec-websocket-")
            {
                continue;
            }
            h.append(name.clone(), value.clone());
        }
        h.insert(header::ACCEPT, json_accept(caller));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if let Some(token) = &target.bearer
            && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            v.set_sensitive(true);
            h.insert(header::AUTHORIZATION, v);
        }
        if target.impersonate {
            if let Ok(v) = HeaderValue::from_str(&identity.subject) {
                h.insert(HeaderName::from_static("impersonate-user"), v);
            }
            for g in &identity.groups {
                if let Ok(v) = HeaderValue::from_str(g) {
                    h.append(HeaderName::from_static("impersonate-group"), v);
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&target.url.authority()) {
            h.insert(header::HOST, v);
        }
        h
    }

    /// Sends the request upstream and answers with the masked response.
    async fn forward(
        self: Arc<Self>,
        parts: http::request::Parts,
        body: Bytes,
        target: &Cluster,
        parsed: &ParsedRequest,
        decision: &Decision,
        ctx: &OpCtx,
    ) -> Result<Response<ResBody>, K8sProxyError> {
        let config = &self.proxy.config;
        let pipeline = &self.proxy.pipeline;
        let headers = self.upstream_headers(&parts.headers, target, &ctx.session.identity);
        let mut uri = format!(
            "{}://{}{}{}",
            target.url.scheme(),
            target.url.authority(),
            target.url.base_path,
            parsed.path
        );
        if let Some(q) = &parsed.query {
            uri.push('?');
            uri.push_str(q);
        }
        let uri: http::Uri = uri
            .parse()
            .map_err(|_| K8sProxyError::BadRequest("request target cannot be forwarded".into()))?;
        let secrets_ctx = parsed.operation.resource == "secrets";
        let protobuf_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|ct| !body.is_empty() && protobuf::is_protobuf(ct))
            .map(|_| {
                protobuf::read_envelope(&body)
                    .map(|e| e.type_name())
                    .unwrap_or_default()
            });
        let request_record = match protobuf_type {
            // A protobuf body is forwarded byte-exact and recorded by digest only: its strings
            // (a Secret's data among them) are never written to the recording.
            Some(kind) => (
                format!(
                    "<protobuf {kind}, {} bytes, sha256 {}>",
                    body.len(),
                    hex::encode(Sha256::digest(&body))
                ),
                body.len() as u64,
                Vec::new(),
            ),
            None => self.masked_record(&body, secrets_ctx, decision, "request_body"),
        };
        let mut up = Request::new(
            Full::new(body)
                .map_err(|never: Infallible| match never {})
                .boxed_unsync(),
        );
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.headers_mut() = headers;
        let response = match tokio::time::timeout(
            ms(config.timeouts.response_head_ms),
            target.client.request(up),
        )
        .await
        {
            Err(_) => return Err(K8sProxyError::UpstreamTimeout),
            Ok(Err(e)) => {
                return Err(if e.is_connect() {
                    K8sProxyError::UpstreamUnavailable(source_text(&e))
                } else {
                    K8sProxyError::UpstreamRefused(source_text(&e))
                });
            }
            Ok(Ok(r)) => r,
        };
        let (mut rparts, rbody) = response.into_parts();
        let mut out_headers = HeaderMap::new();
        for (name, value) in &rparts.headers {
            let n = name.as_str();
            if is_hop_by_hop(n) || n == "content-length" || n == "content-encoding" {
                continue;
            }
            if pipeline
                .egress
                .check(EgressSite::Client, value.as_bytes())
                .is_err()
            {
                self.record_block(ctx, "client").await;
                return Err(K8sProxyError::EgressBlocked);
            }
            out_headers.append(name.clone(), value.clone());
        }
        if rparts.headers.contains_key(header::CONTENT_ENCODING)
            && rparts
                .headers
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| !v.eq_ignore_ascii_case("identity"))
        {
            return Err(K8sProxyError::UpstreamRefused(
                "compressed response (identity was requested)".into(),
            ));
        }
        let content_type = rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let kind = if parsed.is_watch() {
            BodyKind::WatchEvents
        } else if content_type.starts_with("application/json")
            || content_type.is_empty()
            || content_type.contains("+json")
        {
            BodyKind::Json
        } else if content_type.starts_with("text/") {
            BodyKind::Text
        } else if decision.binary == BinaryHandling::Raw {
            BodyKind::Raw
        } else {
            return Err(K8sProxyError::UpstreamRefused(binary_refusal(
                &format!("content type {content_type:?}"),
                &decision.rule_id,
            )));
        };
        rparts.headers = out_headers;
        let recorded = gatehouse_core::RecordedText::new(
            &*pipeline.masker,
            decision.masking_profile.as_deref(),
        );
        let exchange = Exchange {
            conn: self.clone(),
            ctx: ctx.clone(),
            verb: parsed.operation.verb.clone(),
            method: parts.method.to_string(),
            // The recording keeps the path and query as the masking profile's detectors leave
            // them (a `labelSelector=owner=carol@example.net`); the API server got them whole.
            path: recorded.text(&parsed.path),
            query: parsed.query.as_deref().map(|q| recorded.query(q)),
            status: rparts.status,
            request: request_record,
        };
        let kind = if kind == BodyKind::Json && !may_hold_secrets(&parsed.operation) {
            BodyKind::JsonStream
        } else {
            kind
        };
        if kind == BodyKind::Json || kind == BodyKind::Raw {
            let bytes = read_upstream(rbody, config.limits.max_response_body).await?;
            let mut detector = TextDetector::new();
            let text = kind == BodyKind::Json && detector.push(&bytes) && detector.finish();
            if !text {
                // Binary: never rewritten. Passed unchanged under `binary = "raw"`, its size
                // and SHA-256 recorded instead of its bytes; refused otherwise.
                if decision.binary != BinaryHandling::Raw {
                    return Err(K8sProxyError::UpstreamRefused(binary_refusal(
                        "NUL bytes or invalid UTF-8 in a JSON body",
                        &decision.rule_id,
                    )));
                }
                if pipeline.egress.check(EgressSite::Client, &bytes).is_err() {
                    self.record_block(ctx, "client").await;
                    return Err(K8sProxyError::EgressBlocked);
                }
                if let Err(e) = self.chunk_hook(ctx, &bytes) {
                    exchange
                        .finish(String::new(), 0, Vec::new(), Some(e.code()))
                        .await;
                    return Err(e);
                }
                let record = format!(
                    "<unmasked binary body (rule {}, binary = \"raw\"), {} bytes, sha256 {}>",
                    decision.rule_id,
                    bytes.len(),
                    hex::encode(Sha256::digest(&bytes))
                );
                exchange
                    .finish(record, bytes.len() as u64, Vec::new(), None)
                    .await;
                return Ok(Response::from_parts(rparts, full(bytes)));
            }
            let mut findings = Vec::new();
            let masked = self.mask_json_bytes(&bytes, secrets_ctx, decision, &mut findings);
            if pipeline.egress.check(EgressSite::Client, &masked).is_err() {
                self.record_block(ctx, "client").await;
                return Err(K8sProxyError::EgressBlocked);
            }
            if let Err(e) = self.chunk_hook(ctx, &masked) {
                exchange
                    .finish(String::new(), 0, findings, Some(e.code()))
                    .await;
                return Err(e);
            }
            let record = cap(&masked, config.record_body_cap);
            let total = masked.len() as u64;
            exchange.finish(record, total, findings, None).await;
            let mut resp = Response::from_parts(rparts, full(masked));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(resp);
        }
        // Streams: watch events (one JSON document per line) and text (logs).
        let (tx, rx) = mpsc::channel::<Result<Bytes, K8sProxyError>>(16);
        let stream = StreamPump {
            conn: self.clone(),
            kind,
            secrets_ctx,
            profile: decision.masking_profile.clone(),
            max_line: usize::try_from(config.limits.max_response_body).unwrap_or(usize::MAX),
            record_cap: config.record_body_cap,
            binary: decision.binary,
            rule_id: decision.rule_id.clone(),
        };
        tokio::spawn(stream.run(rbody, tx, exchange));
        let mut rx = rx;
        let mut first = Vec::new();
        if kind == BodyKind::JsonStream {
            // Most documents are small: take up to 1 MiB before answering, so that an egress
            // block there is a clean 502 `Status` rather than a cut stream.
            while first.len() < FIRST_CHUNK_BYTES {
                match rx.recv().await {
                    Some(Ok(b)) => first.extend_from_slice(&b),
                    // The pump has recorded the outcome already.
                    Some(Err(e)) => return Ok(error_response(&e)),
                    None => break,
                }
            }
        }
        let first = (!first.is_empty()).then(|| Bytes::from(first));
        Ok(Response::from_parts(
            rparts,
            ChannelBody { first, rx }.boxed_unsync(),
        ))
    }

    /// Masks a JSON document: Secret material first (structurally), then the masking profile.
    /// Something that is not JSON is masked as text, JSON escapes decoded (never passed raw).
    pub(crate) fn mask_json_bytes(
        &self,
        bytes: &[u8],
        secrets_ctx: bool,
        decision: &Decision,
        findings: &mut Vec<Finding>,
    ) -> Vec<u8> {
        mask_json_with(
            &*self.proxy.pipeline.masker,
            bytes,
            secrets_ctx,
            decision.masking_profile.clone(),
            findings,
        )
    }

    fn masked_record(
        &self,
        body: &[u8],
        secrets_ctx: bool,
        decision: &Decision,
        _field: &str,
    ) -> (String, u64, Vec<Finding>) {
        if body.is_empty() {
            return (String::new(), 0, Vec::new());
        }
        let mut detector = TextDetector::new();
        if !(detector.push(body) && detector.finish()) {
            // Binary (NUL bytes, invalid UTF-8): never run through the text masker; the
            // upstream gets it unchanged, the recording its size and digest.
            return (
                format!(
                    "<binary body, {} bytes, sha256 {}>",
                    body.len(),
                    hex::encode(Sha256::digest(body))
                ),
                body.len() as u64,
                Vec::new(),
            );
        }
        let mut findings = Vec::new();
        let masked = self.mask_json_bytes(body, secrets_ctx, decision, &mut findings);
        (
            cap(&masked, self.proxy.config.record_body_cap),
            body.len() as u64,
            findings,
        )
    }
}

/// Masks a JSON document with the Kubernetes rules and then `masker`'s profile.
pub fn mask_json_with(
    masker: &dyn gatehouse_core::Masker,
    bytes: &[u8],
    secrets_ctx: bool,
    profile: Option<String>,
    findings: &mut Vec<Finding>,
) -> Vec<u8> {
    let mut had_secrets = false;
    let (input, json) = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(mut v) => {
            had_secrets = mask_document(&mut v, secrets_ctx, findings);
            (serde_json::to_vec(&v).unwrap_or_default(), true)
        }
        Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => (Vec::new(), false),
        // Not JSON after all: the JSON masker masks what parses and text-masks the rest with
        // its JSON escapes decoded, so `\u0040` cannot hide an address from the detectors.
        Err(_) => (bytes.to_vec(), true),
    };
    let mut m = masker.stream(&StreamContext {
        profile,
        field: Some("body".into()),
        json,
    });
    let mut out = Vec::with_capacity(input.len());
    m.push(&input, &mut out);
    m.finish(&mut out);
    findings.extend(m.take_findings());
    // The profile may have replaced the placeholders (e.g. a `password` key rule): put valid
    // base64 placeholders back so typed clients still decode Secret data.
    if had_secrets && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&out) {
        mask_document(&mut v, secrets_ctx, &mut Vec::new());
        if let Ok(restored) = serde_json::to_vec(&v) {
            out = restored;
        }
    }
    out
}

/// Whether a response to `op` can contain Secret objects (and so must be parsed whole to mask
/// them structurally): requests on `secrets`, and anything outside the core and `apps`-like
/// resource paths that the gateway cannot vouch for (non-resource URLs, unknown kinds go the
/// careful way too).
fn may_hold_secrets(op: &KubeOperation) -> bool {
    const NEVER: &[&str] = &[
        "pods",
        "configmaps",
        "namespaces",
        "services",
        "endpoints",
        "events",
        "nodes",
        "deployments",
        "replicasets",
        "statefulsets",
        "daemonsets",
        "jobs",
        "cronjobs",
        "ingresses",
        "persistentvolumeclaims",
        "persistentvolumes",
        "serviceaccounts",
        "endpointslices",
    ];
    !(NEVER.contains(&op.resource.as_str()) && op.subresource.is_none())
}

/// The `Accept` header sent upstream: the caller's JSON media ranges (Table included), and
/// never protobuf or CBOR, which the gateway could not mask.
pub fn json_accept(caller: &HeaderMap) -> HeaderValue {
    let kept: Vec<String> = caller
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|r| {
            let media = r
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media == "application/json"
        })
        .map(str::to_string)
        .collect();
    let mut value = kept.join(",");
    if !kept
        .iter()
        .any(|r| r.eq_ignore_ascii_case("application/json"))
    {
        if !value.is_empty() {
            value.push(',');
        }
        value.push_str("application/json");
    }
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("application/json"))
}

fn is_hop_by_hop(n: &str) -> bool {
    matches!(
        n,
        "connection"
            | "proxy-connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
    )
}

fn cap(bytes: &[u8], cap: usize) -> String {
    let slice = bytes.get(..cap.min(bytes.len())).unwrap_or(bytes);
    String::from_utf8_lossy(slice).into_owned()
}

/// Whether a request body is JSON or YAML (the only bodies the gateway can inspect: the
/// privileged-spec check and the recording read them; protobuf and CBOR are refused).
fn inspectable_body(headers: &HeaderMap) -> bool {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let media = ct.split(';').next().unwrap_or("").trim();
    media.is_empty()
        || media == "application/json"
        || media.ends_with("+json")
        || media == "application/yaml"
        || media.ends_with("+yaml")
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Option<serde_json::Value> {
    if body.is_empty() {
        return None;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ct.contains("yaml") {
        let text = std::str::from_utf8(body).ok()?;
        return serde_saphyr::from_str::<serde_json::Value>(text).ok();
    }
    serde_json::from_slice(body).ok()
}

/// The text of an error chain.
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

async fn read_capped(body: Incoming, max: u64) -> Result<Bytes, K8sProxyError> {
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(K8sProxyError::BodyTooLarge(max))
        }
        Err(e) => Err(K8sProxyError::BadRequest(format!("request body: {e}"))),
    }
}

async fn read_upstream(body: Incoming, max: u64) -> Result<Bytes, K8sProxyError> {
    let limited = Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(
            K8sProxyError::UpstreamRefused(format!("response over {max} bytes")),
        ),
        Err(e) => Err(K8sProxyError::UpstreamRefused(format!(
            "response body: {e}"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// A JSON document that may hold Secrets: parsed whole, Secrets masked structurally.
    Json,
    /// A JSON document of a resource that never holds Secrets: streamed through the JSON
    /// stream masker (large lists are never buffered whole).
    JsonStream,
    WatchEvents,
    Text,
    /// Not text, under `binary = "raw"`: passed unchanged, recorded by digest.
    Raw,
}

/// Why a binary response body is refused, naming the rule and the setting that would pass it.
fn binary_refusal(what: &str, rule: &str) -> String {
    format!(
        "the response body is binary ({what}), which masking cannot rewrite safely, and rule '{rule}' does not pass it unmasked (binary = \"raw\")"
    )
}

/// What recording the outcome of one forwarded request needs.
struct Exchange {
    conn: Arc<ConnCtx>,
    ctx: OpCtx,
    verb: String,
    method: String,
    path: String,
    query: Option<String>,
    status: StatusCode,
    /// Masked, capped request body; its full length; findings.
    request: (String, u64, Vec<Finding>),
}

impl Exchange {
    async fn finish(
        self,
        response: String,
        response_total: u64,
        mut findings: Vec<Finding>,
        error: Option<&str>,
    ) {
        let (req_body, req_total, req_findings) = self.request;
        findings.extend(req_findings);
        let entry = serde_json::json!({
            "index": self.ctx.index,
            "verb": self.verb,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "request_body": req_body,
            "request_body_bytes": req_total,
            "status": self.status.as_u16(),
            "response_body": response,
            "response_body_bytes": response_total,
            "error": error,
        });
        self.conn.write_entry(&self.ctx, "k8s_request", entry).await;
        self.conn
            .record_result(&self.ctx, &self.status, error, response_total, findings)
            .await;
    }
}

/// Drives one streamed response (watch events or text) through the maskers and the egress
/// guard to the caller, without buffering more than one event or the masker's tail.
struct StreamPump {
    conn: Arc<ConnCtx>,
    kind: BodyKind,
    secrets_ctx: bool,
    profile: Option<String>,
    max_line: usize,
    record_cap: usize,
    /// What the policy says about binary data in the stream.
    binary: BinaryHandling,
    rule_id: String,
}

impl StreamPump {
    async fn run(
        self,
        mut upstream: Incoming,
        tx: mpsc::Sender<Result<Bytes, K8sProxyError>>,
        exchange: Exchange,
    ) {
        let pipeline = self.conn.proxy.pipeline.clone();
        // Text (logs) and whole JSON documents of resources that never hold Secrets go through
        // one stream masker each; nothing is released on a timer.
        let json_stream = self.kind == BodyKind::JsonStream;
        let mut text = matches!(self.kind, BodyKind::Text | BodyKind::JsonStream).then(|| {
            pipeline.masker.stream(&StreamContext {
                profile: self.profile.clone(),
                field: Some(if json_stream { "body" } else { "log" }.into()),
                json: json_stream,
            })
        });
        let mut egress = pipeline.egress.stream(EgressSite::Client);
        let mut line = Vec::new();
        let mut record = Vec::new();
        let mut total = 0u64;
        let mut findings = Vec::new();
        let mut error: Option<&'static str> = None;
        let mut detector = TextDetector::new();
        // Under `binary = "raw"`, once the stream turned binary: (bytes sent before, hasher, raw bytes).
        let mut raw: Option<(u64, Sha256, u64)> = None;
        loop {
            // Nothing is released on a timer: a held partial line waits for the bytes that
            // decide it or the end of the stream (a value cut across writes is masked whole).
            let step = upstream.frame().await;
            let mut out = Vec::new();
            let mut done = false;
            match step {
                None => {
                    done = true;
                    if let Some(m) = text.as_mut() {
                        m.finish(&mut out);
                    } else if !line.is_empty() {
                        let masked = mask_json_with(
                            &*pipeline.masker,
                            &line,
                            self.secrets_ctx,
                            self.profile.clone(),
                            &mut findings,
                        );
                        out.extend_from_slice(&masked);
                        line.clear();
                    }
                }
                Some(Err(_)) => {
                    error = Some("upstream_stream_error");
                    done = true;
                }
                Some(Ok(frame)) => {
                    let data = frame.into_data().ok();
                    let data = data.as_deref().unwrap_or_default();
                    if raw.is_none() && !detector.push(data) {
                        if self.binary == BinaryHandling::Raw {
                            // Text before it went out masked; from here on the stream is raw.
                            if let Some(m) = text.as_mut() {
                                m.flush(&mut out);
                            }
                            raw = Some((total + out.len() as u64, Sha256::new(), 0));
                        } else {
                            error = Some("binary_refused");
                            done = true;
                        }
                    }
                    if let Some((_, hasher, n)) = raw.as_mut() {
                        hasher.update(data);
                        *n += data.len() as u64;
                        out.extend_from_slice(data);
                    } else if !done && !data.is_empty() {
                        match text.as_mut() {
                            Some(m) => {
                                m.push(data, &mut out);
                            }
                            None => {
                                let mut rest: &[u8] = data;
                                while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
                                    line.extend_from_slice(rest.get(..pos).unwrap_or_default());
                                    rest = rest.get(pos + 1..).unwrap_or_default();
                                    if !line.iter().all(u8::is_ascii_whitespace) {
                                        let masked = mask_json_with(
                                            &*pipeline.masker,
                                            &line,
                                            self.secrets_ctx,
                                            self.profile.clone(),
                                            &mut findings,
                                        );
                                        out.extend_from_slice(&masked);
                                        out.push(b'\n');
                                    }
                                    line.clear();
                                }
                                line.extend_from_slice(rest);
                                if line.len() > self.max_line {
                                    error = Some("watch_event_too_large");
                                    done = true;
                                    out.clear();
                                }
                            }
                        }
                    }
                }
            }
            if let Some(m) = text.as_mut() {
                findings.extend(m.take_findings());
            }
            if error == Some("binary_refused") {
                let _ = tx
                    .send(Err(K8sProxyError::UpstreamRefused(binary_refusal(
                        "NUL bytes or invalid UTF-8 in a text or JSON body",
                        &self.rule_id,
                    ))))
                    .await;
                break;
            }
            if !out.is_empty() {
                if egress.check(&out).is_err() {
                    self.conn.record_block(&exchange.ctx, "client").await;
                    error = Some("egress_blocked");
                    let _ = tx.send(Err(K8sProxyError::EgressBlocked)).await;
                    break;
                }
                if let Err(e) = self.conn.chunk_hook(&exchange.ctx, &out) {
                    error = Some(e.code());
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                total += out.len() as u64;
                // Raw bytes stay out of the recording (their digest is recorded instead).
                if raw.is_none() && record.len() < self.record_cap {
                    let room = self.record_cap - record.len();
                    record.extend_from_slice(out.get(..room.min(out.len())).unwrap_or_default());
                }
                if tx.send(Ok(Bytes::from(out))).await.is_err() {
                    error = error.or(Some("client_gone"));
                    break;
                }
            }
            if done {
                break;
            }
        }
        drop(tx);
        let mut record = String::from_utf8_lossy(&record).into_owned();
        if let Some((from, hasher, n)) = raw {
            record.push_str(&format!(
                "<unmasked binary data from byte {from} (rule {}, binary = \"raw\"), {n} bytes, sha256 {}>",
                self.rule_id,
                hex::encode(hasher.finalize())
            ));
        }
        exchange.finish(record, total, findings, error).await;
    }
}

/// A response body fed by a pump task.
struct ChannelBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Result<Bytes, K8sProxyError>>,
}

/// How much of a streamed JSON document is collected before the response head is sent.
const FIRST_CHUNK_BYTES: usize = 1024 * 1024;

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data).map_err(|e| Box::new(e) as BoxError)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_is_json_only() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf, application/json"),
        );
        assert_eq!(json_accept(&h), "application/json");
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
            ),
        );
        assert_eq!(
            json_accept(&h),
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/cbor"));
        assert_eq!(json_accept(&h), "application/json");
        assert_eq!(json_accept(&HeaderMap::new()), "application/json");
    }
}

//! The admin API listener: health, Prometheus metrics, approvals (list, show, approve, deny),
//! sessions, and token exchange. Every route but `/healthz` is authenticated by the identity layer
//! (`Authorization: Bearer <JWT or gateway key>`); approvers are checked per rule by the approvals
//! broker; sessions and metrics need one of `admin.operator_groups`. Errors are JSON
//! `{"error": "..."}` with a fitting status.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse_core::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalRecord, ApprovalState,
    Approvals, Authenticator, Credential, EgressGuard, Identity,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::metrics::Metrics;

/// What the admin API serves from.
pub struct AdminState {
    /// Verifies callers.
    pub authenticator: Arc<dyn Authenticator + Send + Sync>,
    /// The approvals broker.
    pub approvals: Arc<dyn Approvals + Send + Sync>,
    /// Token exchange: the gateway-key issuer and the JWT verifier it trusts.
    pub exchange: Option<(
        Arc<gatehouse_identity::GatewayKeyIssuer>,
        Arc<dyn Authenticator + Send + Sync>,
    )>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The egress guard (its counters go on /metrics).
    pub egress: Arc<dyn EgressGuard + Send + Sync>,
    /// The audit directory (sessions list).
    pub audit_dir: PathBuf,
    /// Groups that may read sessions and metrics.
    pub operator_groups: Vec<String>,
}

const MAX_BODY: usize = 64 * 1024;

type Body = Full<Bytes>;

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<AdminState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _peer)) = accepted else {
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let Ok(Ok(tls)) = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    else {
                        return;
                    };
                    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json_response(status, json!({ "error": message.into() }))
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let value = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

async fn authenticate(
    state: &AdminState,
    req: &Request<Incoming>,
) -> Result<Identity, Response<Body>> {
    let Some(token) = bearer(req) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>`",
        ));
    };
    state
        .authenticator
        .authenticate(&Credential::Bearer(token))
        .await
        .map_err(|e| error(StatusCode::UNAUTHORIZED, e.to_string()))
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, Response<Body>> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {MAX_BODY} bytes"),
            )
        })?
        .to_bytes();
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn approval_status(e: &ApprovalError) -> StatusCode {
    match e {
        ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
        ApprovalError::AlreadyClosed(..) | ApprovalError::DuplicateVote(_) => StatusCode::CONFLICT,
        ApprovalError::SelfApproval | ApprovalError::NotAnApprover(_) => StatusCode::FORBIDDEN,
        ApprovalError::JustificationRequired => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Whether `who` may see a request: its requester, an approver for it, or an operator.
fn may_see(state: &AdminState, who: &Identity, r: &ApprovalRecord) -> bool {
    r.request.requester.principal() == who.principal()
        || r.request
            .requirement
            .approver_groups
            .iter()
            .any(|g| who.in_group(g))
        || is_operator(state, who)
}

fn is_operator(state: &AdminState, who: &Identity) -> bool {
    state.operator_groups.iter().any(|g| who.in_group(g))
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    if method == Method::GET && path == "/healthz" {
        return json_response(StatusCode::OK, json!({ "status": "ok" }));
    }
    if method == Method::POST && path == "/v1/token/exchange" {
        return exchange(state, req).await;
    }
    let who = match authenticate(state, &req).await {
        Ok(who) => who,
        Err(resp) => return resp,
    };
    match (method, segments.as_slice()) {
        (Method::GET, ["metrics"]) => {
            if !is_operator(state, &who) {
                return error(StatusCode::FORBIDDEN, "metrics need an operator group");
            }
            let pending = state
                .approvals
                .list(&ApprovalFilter {
                    state: Some(ApprovalState::Pending),
                    ..Default::default()
                })
                .await
                .map(|v| v.len() as u64)
                .unwrap_or(0);
            let egress = state.egress.counters();
            let egress_hits: u64 = egress.hits.values().sum();
            let text = state.metrics.render(&[
                (
                    "gatehouse_approvals_pending",
                    "Approval requests waiting for a decision.",
                    pending,
                ),
                (
                    "gatehouse_egress_guard_hits",
                    "Held-secret occurrences the egress guard has blocked.",
                    egress_hits,
                ),
                (
                    "gatehouse_egress_guard_patterns",
                    "Held secrets (and encoded forms) watched.",
                    egress.patterns,
                ),
            ]);
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        (Method::GET, ["v1", "approvals"]) => {
            let state_filter = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("state="))
                    .map(str::to_string)
            });
            let filter = ApprovalFilter {
                state: match state_filter.as_deref() {
                    None | Some("all") => None,
                    Some("pending") => Some(ApprovalState::Pending),
                    Some("approved") => Some(ApprovalState::Approved),
                    Some("denied") => Some(ApprovalState::Denied),
                    Some("timed_out") => Some(ApprovalState::TimedOut),
                    Some("abandoned") => Some(ApprovalState::Abandoned),
                    Some(other) => {
                        return error(StatusCode::BAD_REQUEST, format!("unknown state `{other}`"));
                    }
                },
                ..Default::default()
            };
            match state.approvals.list(&filter).await {
                Ok(list) => {
                    let visible: Vec<_> = list
                        .into_iter()
                        .filter(|r| may_see(state, &who, r))
                        .collect();
                    json_response(StatusCode::OK, json!({ "approvals": visible }))
                }
                Err(e) => error(approval_status(&e), e.to_string()),
            }
        }
        (Method::GET, ["v1", "approvals", id]) => {
            match state.approvals.get(&ApprovalId((*id).to_string())).await {
                Ok(r) if may_see(state, &who, &r) => json_response(StatusCode::OK, json!(r)),
                Ok(_) => error(StatusCode::NOT_FOUND, format!("no approval request {id}")),
                Err(e) => error(approval_status(&e), e.to_string()),
            }
        }
        (Method::POST, ["v1", "approvals", id, action @ ("approve" | "deny")]) => {
            let decision = if *action == "approve" {
                ApprovalDecision::Approve
            } else {
                ApprovalDecision::Deny
            };
            let id = ApprovalId((*id).to_string());
            let body = match read_json(req).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            let justification = body
                .get("justification")
                .and_then(|j| j.as_str())
                .unwrap_or("");
            match state
                .approvals
                .decide(&id, &who, decision, justification)
                .await
            {
                Ok(r) => json_response(StatusCode::OK, json!(r)),
                Err(e) => error(approval_status(&e), e.to_string()),
            }
        }
        (Method::GET, ["v1", "sessions"]) => {
            if !is_operator(state, &who) {
                return error(StatusCode::FORBIDDEN, "sessions need an operator group");
            }
            let dir = state.audit_dir.clone();
            let listed = tokio::task::spawn_blocking(move || {
                gatehouse_recorder::read::load_local_logs(&dir)
                    .map(|logs| gatehouse_recorder::read::list_sessions(&logs))
            })
            .await;
            match listed {
                Ok(Ok(sessions)) => json_response(StatusCode::OK, json!({ "sessions": sessions })),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route {} {path}", req.method()),
        ),
    }
}

async fn exchange(state: &AdminState, req: Request<Incoming>) -> Response<Body> {
    let Some((issuer, verifier)) = &state.exchange else {
        return error(StatusCode::NOT_FOUND, "token exchange is not enabled");
    };
    let Some(token) = bearer(&req) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <JWT>`",
        );
    };
    let body = match read_json(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let ttl = body
        .get("ttl_secs")
        .and_then(|t| t.as_u64())
        .map(std::time::Duration::from_secs);
    match issuer.exchange(verifier.as_ref(), &token, ttl).await {
        Ok(key) => json_response(
            StatusCode::OK,
            json!({
                "key": key.as_str(),
                "expires_at": key.expires_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            }),
        ),
        Err(e) => error(StatusCode::UNAUTHORIZED, e.to_string()),
    }
}

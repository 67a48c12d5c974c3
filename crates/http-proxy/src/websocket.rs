//! WebSocket upgrades: decided by policy as method `WEBSOCKET` on the canonical path (so allowing
//! `GET /x` never silently allows a long-lived two-way channel), relayed message by message so
//! that text frames are masked and everything is egress-checked and recorded. Compression
//! (`permessage-deflate`) is never offered upstream: compressed frames could be neither masked
//! nor recorded, and an upstream that negotiates an extension anyway is refused.

use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use gatehouse_core::{
    ChunkVerdict, EgressSite, GateContext, HttpOperation, RecordingFrame, StreamContext,
};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::error::HttpProxyError;
use crate::headers;
use crate::proxy::{ConnCtx, OpCtx, ResBody, RoutedTarget, full};

/// The method a WebSocket upgrade is decided as.
pub const WEBSOCKET_METHOD: &str = "WEBSOCKET";

/// Whether `req` asks for a WebSocket upgrade (HTTP/1.1 `Upgrade: websocket`).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
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

/// Headers of the client's handshake passed upstream (everything else is dropped, extensions
/// included).
const HANDSHAKE_HEADERS: &[&str] = &[
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "origin",
    "user-agent",
];

/// Performs the upstream handshake; on `101` answers the client with `101` and relays frames.
pub(crate) async fn proxy_upgrade(
    conn: Arc<ConnCtx>,
    mut req: Request<Incoming>,
    target: &RoutedTarget,
    operation: &HttpOperation,
    ctx: OpCtx,
    profile: Option<String>,
    binary: BinaryPolicy,
) -> Result<Response<ResBody>, HttpProxyError> {
    let stream = target
        .connector
        .connect()
        .await
        .map_err(|e| HttpProxyError::UpstreamUnavailable(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| HttpProxyError::UpstreamUnavailable(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream websocket connection ended");
        }
    });

    let mut h = http::HeaderMap::new();
    for name in HANDSHAKE_HEADERS {
        for v in req.headers().get_all(*name) {
            h.append(HeaderName::from_static(name), v.clone());
        }
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let authority = target.url.authority();
    if let Ok(v) = HeaderValue::from_str(&authority) {
        h.insert(header::HOST, v);
    }
    let query_cred = target
        .credential
        .as_ref()
        .and_then(|c| headers::inject_credential(c, &mut h));
    let query = match &query_cred {
        Some(p) => Some(headers::query_with_credential(
            operation.query.as_deref(),
            p,
        )),
        None => operation.query.clone(),
    };
    let mut path = format!("{}{}", target.url.base_path, operation.path);
    if let Some(q) = &query {
        path.push('?');
        path.push_str(q);
    }
    let mut up_req = Request::new(http_body_util::Empty::<Bytes>::new());
    *up_req.uri_mut() = path
        .parse()
        .map_err(|_| HttpProxyError::BadRequest("request target cannot be forwarded".into()))?;
    *up_req.headers_mut() = h;
    let mut up_resp = sender
        .send_request(up_req)
        .await
        .map_err(|e| HttpProxyError::UpstreamUnavailable(e.to_string()))?;
    if up_resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(HttpProxyError::UpstreamRefused(format!(
            "upstream answered the WebSocket upgrade with {}",
            up_resp.status().as_u16()
        )));
    }
    if up_resp.headers().contains_key("sec-websocket-extensions") {
        return Err(HttpProxyError::UpstreamRefused(
            "upstream negotiated a WebSocket extension that was not offered".into(),
        ));
    }
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for name in ["sec-websocket-accept", "sec-websocket-protocol"] {
        if let Some(v) = up_resp.headers().get(name) {
            resp.headers_mut()
                .insert(HeaderName::from_static(name), v.clone());
        }
    }
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));

    let client_upgrade = hyper::upgrade::on(&mut req);
    let upstream_upgrade = hyper::upgrade::on(&mut up_resp);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let client =
            WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, None).await;
        let upstream =
            WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, None).await;
        relay(conn, client, upstream, ctx, profile, binary).await;
    });
    Ok(resp)
}

/// What the policy says about binary frames from the upstream: the decision's `binary` and the
/// rule that allowed the upgrade.
pub(crate) type BinaryPolicy = (gatehouse_core::BinaryHandling, String);

async fn relay<C, U>(
    conn: Arc<ConnCtx>,
    client: WebSocketStream<C>,
    upstream: WebSocketStream<U>,
    ctx: OpCtx,
    profile: Option<String>,
    (binary, rule_id): BinaryPolicy,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let pipeline = conn.proxy.pipeline.clone();
    let (mut client_tx, mut client_rx) = client.split();
    let (mut up_tx, mut up_rx) = upstream.split();
    let mut egress = pipeline.egress.stream(EgressSite::Client);
    let mut bytes_out = 0u64;
    let mut findings = Vec::new();
    let mut status = "101".to_string();
    // Binary frames passed under `binary = "raw"`: count and SHA-256 (their bytes are not
    // recorded).
    let mut raw: Option<(u64, sha2::Sha256)> = None;
    let hooks = pipeline.hooks.clone();
    let gctx = GateContext {
        session: &ctx.session.id,
        identity: &ctx.session.identity,
        target: &ctx.target,
    };
    let mask_text = |text: &str, field: &str, findings: &mut Vec<gatehouse_core::Finding>| {
        let json = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
        let mut m = pipeline.masker.stream(&StreamContext {
            profile: profile.clone(),
            field: Some(field.to_string()),
            json,
        });
        let mut out = Vec::with_capacity(text.len());
        m.push(text.as_bytes(), &mut out);
        m.finish(&mut out);
        findings.extend(m.take_findings());
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    loop {
        tokio::select! {
            msg = up_rx.next() => {
                let Some(Ok(msg)) = msg else { break };
                let (out, record) = match msg {
                    Message::Text(t) => {
                        let masked = mask_text(t.as_str(), "ws.text", &mut findings);
                        let rec = masked.clone().into_bytes();
                        (Message::text(masked), Some(rec))
                    }
                    // Masking cannot rewrite a binary frame: it passes unchanged only under
                    // `binary = "raw"`; otherwise the stream ends with a policy close.
                    Message::Binary(b) if binary == gatehouse_core::BinaryHandling::Raw => {
                        use sha2::Digest as _;
                        let (n, h) = raw.get_or_insert_with(|| (0, sha2::Sha256::new()));
                        *n += b.len() as u64;
                        h.update(&b);
                        (Message::Binary(b), None)
                    }
                    Message::Binary(_) => {
                        let mut reason = format!(
                            "gatehouse: binary frame withheld; rule '{rule_id}' does not pass it unmasked (binary = \"raw\")"
                        );
                        // A close reason holds at most 123 bytes.
                        while reason.len() > 123 {
                            reason.pop();
                        }
                        let _ = client_tx
                            .send(Message::Close(Some(CloseFrame {
                                code: CloseCode::Policy,
                                reason: reason.into(),
                            })))
                            .await;
                        status = "101 refused: binary frame".into();
                        break;
                    }
                    Message::Close(f) => {
                        let _ = client_tx.send(Message::Close(f)).await;
                        break;
                    }
                    other => (other, None),
                };
                let payload: &[u8] = match &out {
                    Message::Text(t) => t.as_bytes(),
                    Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b,
                    _ => &[],
                };
                if egress.check(payload).is_err() {
                    conn.record_block(&ctx.session, &ctx.target, "client").await;
                    status = "101 egress_blocked".into();
                    let _ = client_tx.send(Message::Close(None)).await;
                    break;
                }
                // The message as the client will receive it (masked), shown to the chunk hook;
                // a `Stop` withholds it and ends the stream with a policy close.
                if matches!(out, Message::Text(_) | Message::Binary(_))
                    && hooks.wants_chunks()
                    && hooks.on_chunk(&gctx, ctx.index, payload) == ChunkVerdict::Stop
                {
                    let _ = client_tx
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::Policy,
                            reason: "gatehouse: stopped by a gateway hook (GateHooks::on_chunk)"
                                .into(),
                        })))
                        .await;
                    status = "101 hook_stopped".into();
                    break;
                }
                bytes_out += payload.len() as u64;
                if let Some(rec) = record {
                    write_frame(&ctx, RecordingFrame::Output { data: rec }).await;
                }
                if client_tx.send(out).await.is_err() {
                    break;
                }
            }
            msg = client_rx.next() => {
                let Some(Ok(msg)) = msg else { break };
                if let Message::Text(t) = &msg {
                    let masked = mask_text(t.as_str(), "ws.input", &mut Vec::new());
                    write_frame(&ctx, RecordingFrame::Input { data: masked.into_bytes() }).await;
                }
                let closing = matches!(msg, Message::Close(_));
                if up_tx.send(msg).await.is_err() || closing {
                    break;
                }
            }
        }
    }
    let _ = up_tx.close().await;
    let _ = client_tx.close().await;
    if let Some((bytes, hasher)) = raw {
        use sha2::Digest as _;
        // An audit event (the session recording may already be sealed when a relay ends).
        let details = serde_json::json!({
            "index": ctx.index,
            "why": "binary frames",
            "rule_id": rule_id,
            "bytes": bytes,
            "sha256": hex::encode(hasher.finalize()),
        });
        let event = gatehouse_core::Event::now(
            ctx.session.id.clone(),
            Some(ctx.session.identity.clone()),
            Some(ctx.target.clone()),
            gatehouse_core::EventBody::Other {
                name: "http_ws_raw_output".into(),
                details,
            },
        );
        if let Err(e) = conn.proxy.pipeline.recorder.record(event).await {
            tracing::warn!(error = %e, "could not record raw frames digest");
        }
    }
    conn.record_ws_result(&ctx, status, bytes_out, findings)
        .await;
}

async fn write_frame(ctx: &OpCtx, frame: RecordingFrame) {
    let mut sink = ctx.session.recording.lock().await;
    if let Some(sink) = sink.as_mut()
        && let Err(e) = sink.write(frame).await
    {
        tracing::warn!(error = %e, "recording write failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_upgrades() {
        let req = Request::builder()
            .header("upgrade", "WebSocket")
            .header("connection", "Upgrade")
            .body(())
            .unwrap();
        assert!(is_upgrade(&req));
        let req = Request::builder()
            .header("upgrade", "h2c")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&req));
        let req = Request::builder()
            .method("POST")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_upgrade(&req));
    }
}

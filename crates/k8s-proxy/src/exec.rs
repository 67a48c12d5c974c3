//! exec/attach over WebSocket (`v5.channel.k8s.io`, then `v4.channel.k8s.io`, as negotiated
//! upstream): decided like an SSH exec, relayed channel by channel with stdout/stderr masked,
//! egress-checked and recorded (asciicast v2 for a tty, resizes included).
//!
//! Every WebSocket request is answered with `101`, whatever the verdict: a refusal before the
//! upgrade would make client-go fall back to SPDY and ask a second time. A denial is a `Status`
//! on the error channel (3); a review sends the approval notice on stderr (channel 2), holds
//! until decided, then runs the command or ends with a `Status` on channel 3.
//!
//! Wire format (both subprotocols): every binary message starts with its channel byte — 0 stdin,
//! 1 stdout, 2 stderr, 3 error (a `Status` JSON document), 4 resize (`{"Width":…,"Height":…}`);
//! v5 adds 255, "close channel N" (stdin half-close).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use gatehouse_core::{
    ApprovalFilter, ApprovalState, BinaryHandling, Decision, EgressSite, Event, EventBody, Finding,
    HoldMode, Operation, Outcome, RecordingFrame, RecordingKind, RecordingSink, Review, SessionId,
    StreamContext, StreamMasker, TextDetector, Verdict,
};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::config::ms;
use crate::error::{K8sProxyError, status_object};
use crate::proxy::{ConnCtx, OpCtx, ResBody, full, mask_json_with};
use crate::request::ParsedRequest;

/// The subprotocols relayed, in the gateway's order of preference.
pub const SUBPROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

pub(crate) type Upstream = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Handles one exec/attach WebSocket request.
pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    mut req: Request<Incoming>,
    target_idx: usize,
    parsed: ParsedRequest,
    decision: Decision,
    ctx: OpCtx,
) -> Result<Response<ResBody>, K8sProxyError> {
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| SUBPROTOCOLS.contains(&p.as_str()))
        .collect();
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    conn.record_operation(&ctx, &parsed.operation, &decision)
        .await?;
    let (Some(accept), Some(first)) = (key, offered.first().cloned()) else {
        return Err(K8sProxyError::BadRequest(format!(
            "exec/attach needs a WebSocket handshake offering {}",
            SUBPROTOCOLS.join(" or ")
        )));
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let caller_headers = req.headers().clone();
    let tty = parsed.streams.as_ref().is_some_and(|s| s.tty);
    let exec = ExecCtx {
        conn: conn.clone(),
        ctx: ctx.clone(),
        target_idx,
        parsed,
        decision: decision.clone(),
        caller_headers,
        tty,
    };
    match decision.verdict {
        Verdict::Allow => {
            // Negotiate upstream first, so the caller gets the protocol the API server chose.
            match exec.connect_upstream(&offered).await {
                Ok((upstream, protocol)) => {
                    tokio::spawn(async move {
                        let Some(client) = upgrade_client(client_upgrade).await else {
                            return;
                        };
                        exec.relay(client, upstream, Vec::new()).await;
                    });
                    Ok(switching(&accept, &protocol))
                }
                Err(status) => {
                    tokio::spawn(async move {
                        let Some(client) = upgrade_client(client_upgrade).await else {
                            return;
                        };
                        exec.refuse(client, status).await;
                    });
                    Ok(switching(&accept, &first))
                }
            }
        }
        Verdict::Deny => {
            let status = status_object(
                403,
                "Forbidden",
                &format!(
                    "denied by gatehouse rule {}: {}",
                    decision.rule_id, decision.reason
                ),
            );
            tokio::spawn(async move {
                let Some(client) = upgrade_client(client_upgrade).await else {
                    return;
                };
                exec.refuse(client, status).await;
            });
            Ok(switching(&accept, &first))
        }
        Verdict::Review => {
            tokio::spawn(async move {
                let Some(client) = upgrade_client(client_upgrade).await else {
                    return;
                };
                exec.reviewed(client, first).await;
            });
            Ok(switching(
                &accept,
                &offered.first().cloned().unwrap_or_default(),
            ))
        }
    }
}

pub(crate) fn switching(accept: &str, protocol: &str) -> Response<ResBody> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(protocol) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    resp
}

pub(crate) async fn upgrade_client(
    upgrade: hyper::upgrade::OnUpgrade,
) -> Option<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    match upgrade.await {
        Ok(io) => {
            Some(WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, None).await)
        }
        Err(e) => {
            tracing::debug!(error = %e, "client websocket upgrade failed");
            None
        }
    }
}

/// A normal closure (1000): client-go reports any other close code, even an absent one, as a
/// stream error after the final `Status`.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// The exit status an error-channel `Status` reports.
fn exit_status(status: &serde_json::Value) -> String {
    match status.get("status").and_then(|s| s.as_str()) {
        Some("Success") => "exit 0".into(),
        _ => {
            let code = status
                .pointer("/details/causes")
                .and_then(|c| c.as_array())
                .and_then(|causes| {
                    causes.iter().find_map(|c| {
                        (c.get("reason").and_then(|r| r.as_str()) == Some("ExitCode"))
                            .then(|| c.get("message").and_then(|m| m.as_str()))
                            .flatten()
                    })
                });
            match code {
                Some(c) => format!("exit {c}"),
                None => format!(
                    "failure {}",
                    status.get("reason").and_then(|r| r.as_str()).unwrap_or("")
                ),
            }
        }
    }
}

/// One output channel (stdout or stderr) of an exec stream.
enum OutStream {
    /// Masked as text while it is text (checked across frame boundaries).
    Text {
        masker: Box<dyn StreamMasker>,
        detector: TextDetector,
        /// Masked bytes released so far.
        released: u64,
    },
    /// Binary data under `binary = "raw"`: passed unchanged, counted and hashed; its bytes stay
    /// out of the recording.
    Raw {
        hasher: Box<Sha256>,
        bytes: u64,
        /// Bytes of this channel sent (masked) before it turned raw.
        from: u64,
    },
}

/// The channel carries binary data and the rule does not pass it raw.
struct BinaryOutput;

impl OutStream {
    fn is_raw(&self) -> bool {
        matches!(self, OutStream::Raw { .. })
    }

    /// Feeds `data`; appends what may be sent to `out`. On binary data: refused (no raw rule),
    /// or the channel turns raw for good after what the masker still holds of the text.
    fn push(
        &mut self,
        data: &[u8],
        binary: BinaryHandling,
        out: &mut Vec<u8>,
    ) -> Result<(), BinaryOutput> {
        if let OutStream::Text {
            masker,
            detector,
            released,
        } = self
        {
            let start = out.len();
            if detector.push(data) {
                masker.push(data, out);
                *released += (out.len() - start) as u64;
                return Ok(());
            }
            if binary != BinaryHandling::Raw {
                return Err(BinaryOutput);
            }
            masker.flush(out);
            let from = *released + (out.len() - start) as u64;
            *self = OutStream::Raw {
                hasher: Box::new(Sha256::new()),
                bytes: 0,
                from,
            };
        }
        if let OutStream::Raw { hasher, bytes, .. } = self {
            hasher.update(data);
            *bytes += data.len() as u64;
            out.extend_from_slice(data);
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if let OutStream::Text {
            masker, released, ..
        } = self
        {
            let start = out.len();
            masker.flush(out);
            *released += (out.len() - start) as u64;
        }
    }

    /// For a raw channel: (bytes released masked before it turned raw, raw bytes, SHA-256).
    fn raw_summary(&self) -> Option<(u64, u64, String)> {
        match self {
            OutStream::Raw {
                hasher,
                bytes,
                from,
            } => Some((
                *from,
                *bytes,
                hex::encode(hasher.as_ref().clone().finalize()),
            )),
            OutStream::Text { .. } => None,
        }
    }

    /// The channel ended: one that stops inside a multi-byte character is binary.
    fn finish(&mut self, binary: BinaryHandling, out: &mut Vec<u8>) -> Result<(), BinaryOutput> {
        if let OutStream::Text {
            masker, detector, ..
        } = self
        {
            if !detector.finish() && binary != BinaryHandling::Raw {
                return Err(BinaryOutput);
            }
            masker.finish(out);
        }
        Ok(())
    }

    fn take_findings(&mut self) -> Vec<Finding> {
        match self {
            OutStream::Text { masker, .. } => masker.take_findings(),
            OutStream::Raw { .. } => Vec::new(),
        }
    }
}

struct ExecCtx {
    conn: Arc<ConnCtx>,
    ctx: OpCtx,
    target_idx: usize,
    parsed: ParsedRequest,
    decision: Decision,
    caller_headers: http::HeaderMap,
    tty: bool,
}

impl ExecCtx {
    /// Opens the WebSocket to the API server offering `protocols`; on refusal returns the
    /// `Status` to send the caller on the error channel.
    async fn connect_upstream(
        &self,
        protocols: &[String],
    ) -> Result<(Upstream, String), serde_json::Value> {
        connect_upstream_ws(
            &self.conn,
            &self.ctx,
            self.target_idx,
            &self.parsed,
            &self.decision,
            &self.caller_headers,
            protocols,
        )
        .await
    }

    /// Ends the stream with `status` on the error channel.
    async fn refuse<C>(self, mut client: WebSocketStream<C>, status: serde_json::Value)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let text = status.to_string();
        let code = status.get("code").and_then(|c| c.as_u64()).unwrap_or(0);
        let reason = status
            .get("reason")
            .and_then(|c| c.as_str())
            .unwrap_or("")
            .to_string();
        if self
            .conn
            .proxy
            .pipeline
            .egress
            .check(EgressSite::Client, text.as_bytes())
            .is_ok()
        {
            let _ = client.send(channel_message(ERROR, text.as_bytes())).await;
        }
        let _ = client.send(normal_close()).await;
        let _ = client.close(None).await;
        self.conn
            .record_status(&self.ctx, format!("101 {code} {reason}"), 0, Vec::new())
            .await;
    }

    /// Holds the upgraded stream until the review is decided.
    async fn reviewed<C>(self, mut client: WebSocketStream<C>, protocol: String)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let refuse = |msg: String| status_object(403, "Forbidden", &msg);
        let rule = self.decision.rule_id.clone();
        // The approval binds the whole request (container, stdin, tty and every command word
        // are in the query), not only the pod and the command.
        let mut operation = self.parsed.operation.clone();
        operation.path = Some(crate::request::review_binding(
            "GET",
            &self.parsed,
            None,
            &[],
        ));
        let op = Operation::Kubernetes(operation);
        let gate = self.conn.proxy.gate.clone();
        let gctx = ConnCtx::gate_ctx(&self.ctx, &self.ctx.target);
        let review = Review {
            index: self.ctx.index,
            operation: &op,
            shown: &op,
            decision: &self.decision,
            mode: HoldMode::UntilDecided,
        };
        // Held like an SSH exec (the stream is upgraded: nobody retries). While waiting, the
        // caller's pings are answered (client-go gives up after about a minute without a pong)
        // and its early input (stdin, resizes) is kept for the command; a caller that goes away
        // abandons the request. `gone` is first polled once the request is open: it tells the
        // caller which request to have approved.
        let mut early: Vec<Bytes> = Vec::new();
        let approvals = self.conn.proxy.pipeline.approvals.clone();
        let reason = self.decision.reason.clone();
        let gone = async {
            let filter = ApprovalFilter {
                state: Some(ApprovalState::Pending),
                requester: Some(self.ctx.session.identity.subject.clone()),
                target: Some(self.ctx.target.name.clone()),
            };
            let id = approvals
                .list(&filter)
                .await
                .ok()
                .and_then(|l| l.into_iter().find(|r| r.request.operation == op))
                .map(|r| format!(" {}", r.id))
                .unwrap_or_default();
            let notice = format!("gatehouse: waiting for approval{id} (rule {rule}: {reason})\r\n");
            let _ = client
                .send(channel_message(STDERR, notice.as_bytes()))
                .await;
            loop {
                match client.next().await {
                    Some(Ok(Message::Binary(b))) if early.len() < 1024 => early.push(b),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    _ => {}
                }
            }
        };
        let outcome = gate.approve(&gctx, review, gone).await;
        match outcome {
            Outcome::Allowed { approval, .. } => {
                let id = approval.map(|a| format!(" {a}")).unwrap_or_default();
                let _ = client
                    .send(channel_message(
                        STDERR,
                        format!("gatehouse: approval{id} granted\r\n").as_bytes(),
                    ))
                    .await;
                match self.connect_upstream(&[protocol]).await {
                    Ok((upstream, _)) => self.relay(client, upstream, early).await,
                    Err(status) => self.refuse(client, status).await,
                }
            }
            Outcome::Abandoned { .. } => {
                self.conn
                    .record_status(
                        &self.ctx,
                        "101 client_gone_waiting_for_approval".into(),
                        0,
                        Vec::new(),
                    )
                    .await;
            }
            Outcome::ApprovalDenied { approval, by, .. } => {
                let status = refuse(format!(
                    "approval {approval} was denied by {by} (gatehouse rule {rule})"
                ));
                self.refuse(client, status).await
            }
            other => {
                let e = crate::proxy::outcome_error(other, self.conn.proxy.config.retry_after_s);
                self.refuse(client, e.to_status()).await
            }
        }
    }

    /// Relays frames both ways until either side ends; records the session.
    async fn relay<C>(self, client: WebSocketStream<C>, upstream: Upstream, early: Vec<Bytes>)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let pipeline = self.conn.proxy.pipeline.clone();
        let profile = self.decision.masking_profile.clone();
        let idle = ms(self.conn.proxy.config.idle_flush_ms).max(Duration::from_millis(1));
        let mut recording = ExecRecording::open(&self, self.tty).await;
        let (mut client_tx, mut client_rx) = client.split();
        let (mut up_tx, mut up_rx) = upstream.split();
        let new_masker = |field: &str| -> Box<dyn StreamMasker> {
            pipeline.masker.stream(&StreamContext {
                profile: profile.clone(),
                field: Some(field.into()),
                json: false,
            })
        };
        let text = |field: &str| OutStream::Text {
            masker: new_masker(field),
            detector: TextDetector::new(),
            released: 0,
        };
        let mut out_masker = text("stdout");
        let mut err_masker = text("stderr");
        let binary = self.decision.binary;
        let mut withheld: Option<&'static str> = None;
        let mut in_masker = new_masker("stdin");
        let mut egress = pipeline.egress.stream(EgressSite::Client);
        let mut findings: Vec<Finding> = Vec::new();
        let mut bytes_out = 0u64;
        let mut dirty = false;
        let mut status = "101 closed".to_string();
        for b in early {
            if b.first() == Some(&RESIZE)
                && let Some(data) = b.get(1..)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
            {
                let dim = |k: &str| {
                    v.get(k)
                        .and_then(serde_json::Value::as_u64)
                        .and_then(|n| u16::try_from(n).ok())
                        .unwrap_or(0)
                };
                recording
                    .write(RecordingFrame::Resize {
                        cols: dim("Width"),
                        rows: dim("Height"),
                    })
                    .await;
            }
            if up_tx.send(Message::Binary(b)).await.is_err() {
                break;
            }
        }
        // Sends masked channel output to the caller and the recording.
        macro_rules! emit {
            ($channel:expr, $data:expr) => {{
                let data: Vec<u8> = $data;
                if !data.is_empty() {
                    if egress.check(&data).is_err() {
                        self.conn.record_block(&self.ctx, "client").await;
                        status = "101 egress_blocked".into();
                        break;
                    }
                    if self.conn.chunk_hook(&self.ctx, &data).is_err() {
                        status = "101 hook_stopped".into();
                        break;
                    }
                    bytes_out += data.len() as u64;
                    let raw = if $channel == STDOUT {
                        out_masker.is_raw()
                    } else {
                        err_masker.is_raw()
                    };
                    // Raw bytes stay out of the recording (their digest is recorded instead).
                    if !raw {
                        recording
                            .write(if $channel == STDOUT {
                                RecordingFrame::Output { data: data.clone() }
                            } else {
                                RecordingFrame::ErrorOutput { data: data.clone() }
                            })
                            .await;
                    }
                    if client_tx
                        .send(channel_message($channel, &data))
                        .await
                        .is_err()
                    {
                        status = "101 client_gone".into();
                        break;
                    }
                }
            }};
        }
        loop {
            // Only a terminal (tty) session releases a partial line on a timer (a prompt,
            // echo); otherwise held bytes wait for what decides them, or the stream's end.
            let idle_tick = async {
                if dirty && self.tty {
                    tokio::time::sleep(idle).await
                } else {
                    std::future::pending::<()>().await
                }
            };
            tokio::select! {
                () = idle_tick => {
                    dirty = false;
                    let mut o = Vec::new();
                    out_masker.flush(&mut o);
                    emit!(STDOUT, o);
                    let mut e = Vec::new();
                    err_masker.flush(&mut e);
                    emit!(STDERR, e);
                }
                msg = up_rx.next() => {
                    let Some(Ok(msg)) = msg else {
                        if !status.starts_with("101 exit") {
                            status = "101 upstream_closed".into();
                        }
                        let mut o = Vec::new();
                        if out_masker.finish(binary, &mut o).is_err() {
                            withheld = Some("stdout");
                            break;
                        }
                        emit!(STDOUT, o);
                        let mut e = Vec::new();
                        if err_masker.finish(binary, &mut e).is_err() {
                            withheld = Some("stderr");
                            break;
                        }
                        emit!(STDERR, e);
                        let _ = client_tx.send(normal_close()).await;
                        break;
                    };
                    match msg {
                        Message::Binary(b) => {
                            let Some((&channel, data)) = b.split_first() else { continue };
                            match channel {
                                STDOUT => {
                                    let mut o = Vec::new();
                                    if out_masker.push(data, binary, &mut o).is_err() {
                                        withheld = Some("stdout");
                                        break;
                                    }
                                    dirty = true;
                                    emit!(STDOUT, o);
                                }
                                STDERR => {
                                    let mut o = Vec::new();
                                    if err_masker.push(data, binary, &mut o).is_err() {
                                        withheld = Some("stderr");
                                        break;
                                    }
                                    dirty = true;
                                    emit!(STDERR, o);
                                }
                                ERROR => {
                                    // Output first, then the final status.
                                    let mut o = Vec::new();
                                    if out_masker.finish(binary, &mut o).is_err() {
                                        withheld = Some("stdout");
                                        break;
                                    }
                                    emit!(STDOUT, o);
                                    let mut e = Vec::new();
                                    if err_masker.finish(binary, &mut e).is_err() {
                                        withheld = Some("stderr");
                                        break;
                                    }
                                    emit!(STDERR, e);
                                    let masked = mask_json_with(
                                        &*pipeline.masker, data, false, profile.clone(), &mut findings,
                                    );
                                    if egress.check(&masked).is_err() {
                                        self.conn.record_block(&self.ctx, "client").await;
                                        status = "101 egress_blocked".into();
                                        break;
                                    }
                                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&masked) {
                                        status = format!("101 {}", exit_status(&v));
                                        recording.entry(v).await;
                                    }
                                    if client_tx.send(channel_message(ERROR, &masked)).await.is_err() {
                                        break;
                                    }
                                }
                                _ => {
                                    // v5 close frames (255) and anything else carry no data.
                                    if data.len() <= 1 && client_tx.send(Message::Binary(b)).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        Message::Close(frame) => {
                            let mut o = Vec::new();
                            if out_masker.finish(binary, &mut o).is_err() {
                                withheld = Some("stdout");
                                break;
                            }
                            emit!(STDOUT, o);
                            let mut e = Vec::new();
                            if err_masker.finish(binary, &mut e).is_err() {
                                withheld = Some("stderr");
                                break;
                            }
                            emit!(STDERR, e);
                            let close = match frame {
                                Some(f) => Message::Close(Some(f)),
                                None => normal_close(),
                            };
                            let _ = client_tx.send(close).await;
                            break;
                        }
                        // Text frames belong to the old base64 protocols, never negotiated here.
                        _ => {}
                    }
                }
                msg = client_rx.next() => {
                    let Some(Ok(msg)) = msg else {
                        status = "101 client_closed".into();
                        break;
                    };
                    match msg {
                        Message::Binary(b) => {
                            if let Some((&channel, data)) = b.split_first() {
                                if channel == STDIN {
                                    let mut rec = Vec::new();
                                    in_masker.push(data, &mut rec);
                                    in_masker.flush(&mut rec);
                                    findings.extend(in_masker.take_findings());
                                    recording.write(RecordingFrame::Input { data: rec }).await;
                                } else if channel == RESIZE
                                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(data)
                                {
                                    let dim = |k: &str| {
                                        v.get(k)
                                            .and_then(serde_json::Value::as_u64)
                                            .and_then(|n| u16::try_from(n).ok())
                                            .unwrap_or(0)
                                    };
                                    recording
                                        .write(RecordingFrame::Resize { cols: dim("Width"), rows: dim("Height") })
                                        .await;
                                }
                            }
                            if up_tx.send(Message::Binary(b)).await.is_err() {
                                break;
                            }
                        }
                        Message::Close(frame) => {
                            let _ = up_tx.send(Message::Close(frame)).await;
                            status = "101 client_closed".into();
                            break;
                        }
                        _ => {}
                    }
                }
            }
            findings.extend(out_masker.take_findings());
            findings.extend(err_masker.take_findings());
        }
        findings.extend(out_masker.take_findings());
        findings.extend(err_masker.take_findings());
        if let Some(name) = withheld {
            // Said in the final Status (kubectl prints its message and exits 1; a
            // `NonZeroExitCode` Status would hide the message behind "command terminated with
            // exit code"), and on stderr for clients that show the streams.
            let message = format!(
                "gatehouse: output withheld: {name} carries binary data (NUL bytes or invalid UTF-8), which masking cannot rewrite safely, and rule '{}' does not pass it unmasked (binary = \"raw\")",
                self.decision.rule_id
            );
            status = "101 refused: binary output".into();
            let refusal = status_object(403, "Forbidden", &message);
            let _ = client_tx
                .send(channel_message(STDERR, format!("{message}\n").as_bytes()))
                .await;
            let _ = client_tx
                .send(channel_message(ERROR, refusal.to_string().as_bytes()))
                .await;
            let _ = client_tx.send(normal_close()).await;
            recording.entry(refusal).await;
        }
        let raw = [
            (out_masker.raw_summary(), "stdout"),
            (err_masker.raw_summary(), "stderr"),
        ];
        for (summary, name) in raw {
            if let Some((from, bytes, sha256)) = summary {
                let details = serde_json::json!({
                    "index": self.ctx.index,
                    "stream": name,
                    "why": "binary output",
                    "rule_id": self.decision.rule_id,
                    "from": from,
                    "bytes": bytes,
                    "sha256": sha256,
                });
                let event = Event::now(
                    self.ctx.session.id.clone(),
                    Some(self.ctx.session.identity.clone()),
                    Some(self.ctx.target.clone()),
                    EventBody::Other {
                        name: "k8s_raw_output".into(),
                        details,
                    },
                );
                if let Err(e) = pipeline.recorder.record(event).await {
                    tracing::warn!(error = %e, "could not record raw output digest");
                }
            }
        }
        let ended_by = match status.as_str() {
            "101 egress_blocked" => Some(K8sProxyError::EgressBlocked),
            "101 hook_stopped" => Some(K8sProxyError::HookStopped),
            _ => None,
        };
        if let Some(e) = ended_by {
            // Say why the stream ends, in the form client-go prints.
            let blocked = e.to_status().to_string();
            let _ = client_tx
                .send(channel_message(ERROR, blocked.as_bytes()))
                .await;
            let _ = client_tx.send(normal_close()).await;
        }
        let _ = up_tx.close().await;
        let _ = client_tx.close().await;
        recording.close(&status).await;
        self.conn
            .record_status(&self.ctx, status, bytes_out, findings)
            .await;
    }
}

/// The recording of one exec stream: its own recording session (a terminal replays as asciicast
/// v2), linked to the API session and operation index in its `SessionStart`.
struct ExecRecording {
    conn: Arc<ConnCtx>,
    ctx: OpCtx,
    id: SessionId,
    sink: Option<Box<dyn RecordingSink>>,
}

impl ExecRecording {
    async fn open(exec: &ExecCtx, tty: bool) -> ExecRecording {
        let pipeline = &exec.conn.proxy.pipeline;
        let id = SessionId::generate();
        let start = Event::now(
            id.clone(),
            Some(exec.ctx.session.identity.clone()),
            Some(exec.ctx.target.clone()),
            EventBody::SessionStart {
                client_addr: exec.conn.peer.to_string(),
                details: serde_json::json!({
                    "protocol": "kubernetes",
                    "stream": exec.parsed.operation.verb,
                    "parent_session": exec.ctx.session.id,
                    "operation_index": exec.ctx.index,
                    "tty": tty,
                }),
            },
        );
        let mut sink = None;
        if pipeline.recorder.record(start).await.is_ok() {
            let kind = if tty {
                RecordingKind::Terminal { cols: 80, rows: 24 }
            } else {
                RecordingKind::Exec
            };
            match pipeline.recorder.open_recording(&id, kind).await {
                Ok(s) => sink = Some(s),
                Err(e) => tracing::warn!(error = %e, "could not open the exec recording"),
            }
        }
        ExecRecording {
            conn: exec.conn.clone(),
            ctx: exec.ctx.clone(),
            id,
            sink,
        }
    }

    async fn write(&mut self, frame: RecordingFrame) {
        let bytes: &[u8] = match &frame {
            RecordingFrame::Output { data }
            | RecordingFrame::ErrorOutput { data }
            | RecordingFrame::Input { data } => data,
            _ => &[],
        };
        if bytes.is_empty() && !matches!(frame, RecordingFrame::Resize { .. }) {
            return;
        }
        if self
            .conn
            .proxy
            .pipeline
            .egress
            .check(EgressSite::Recording, bytes)
            .is_err()
        {
            self.conn.record_block(&self.ctx, "recording").await;
            return;
        }
        if let Some(sink) = self.sink.as_mut()
            && let Err(e) = sink.write(frame).await
        {
            tracing::warn!(error = %e, "exec recording write failed");
        }
    }

    async fn entry(&mut self, status: serde_json::Value) {
        if let Some(sink) = self.sink.as_mut() {
            let _ = sink
                .write(RecordingFrame::Entry {
                    label: "exec_status".into(),
                    body: status,
                })
                .await;
        }
    }

    async fn close(mut self, reason: &str) {
        let seal = match self.sink.take() {
            Some(s) => s.seal().await.ok(),
            None => None,
        };
        let end = Event::now(
            self.id.clone(),
            Some(self.ctx.session.identity.clone()),
            Some(self.ctx.target.clone()),
            EventBody::SessionEnd {
                reason: reason.to_string(),
                recording: seal,
                operations: 1,
            },
        );
        if let Err(e) = self.conn.proxy.pipeline.recorder.record(end).await {
            tracing::warn!(error = %e, "could not record the end of an exec stream");
        }
    }
}

/// Opens the WebSocket to the API server offering `protocols`; on refusal returns the
/// `Status` to send the caller on the error channel (exec/attach and port forwarding).
pub(crate) async fn connect_upstream_ws(
    conn: &ConnCtx,
    ctx: &OpCtx,
    target_idx: usize,
    parsed: &ParsedRequest,
    decision: &Decision,
    caller_headers: &http::HeaderMap,
    protocols: &[String],
) -> Result<(Upstream, String), serde_json::Value> {
    let proxy = &conn.proxy;
    let gateway_status = |msg: String| status_object(502, "InternalError", &msg);
    let Some(target) = proxy.targets.get(target_idx) else {
        return Err(gateway_status("target vanished".into()));
    };
    let stream = target
        .connector
        .connect()
        .await
        .map_err(|e| gateway_status(format!("upstream API server unavailable: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| gateway_status(format!("upstream API server unavailable: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream exec connection ended");
        }
    });
    let mut h = conn.upstream_headers(caller_headers, target, &ctx.session.identity);
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(header::SEC_WEBSOCKET_KEY, v);
    }
    if let Ok(v) = HeaderValue::from_str(&protocols.join(", ")) {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    h.remove(HeaderName::from_static("sec-websocket-extensions"));
    let mut path = format!("{}{}", target.url.base_path, parsed.path);
    if let Some(q) = &parsed.query {
        path.push('?');
        path.push_str(q);
    }
    let mut up_req = Request::new(http_body_util::Empty::<Bytes>::new());
    *up_req.uri_mut() = path
        .parse()
        .map_err(|_| gateway_status("request target cannot be forwarded".into()))?;
    *up_req.headers_mut() = h;
    let mut resp = tokio::time::timeout(
        ms(proxy.config.timeouts.response_head_ms),
        sender.send_request(up_req),
    )
    .await
    .map_err(|_| gateway_status("upstream API server timed out".into()))?
    .map_err(|e| gateway_status(format!("upstream API server unavailable: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt as _;
        let code = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let mut findings = Vec::new();
        let masked = mask_json_with(
            &*proxy.pipeline.masker,
            &body,
            false,
            decision.masking_profile.clone(),
            &mut findings,
        );
        return Err(serde_json::from_slice(&masked).unwrap_or_else(|_| {
            status_object(
                code,
                "InternalError",
                &format!("upstream API server refused the stream with HTTP {code}"),
            )
        }));
    }
    let accepted = resp
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accepted != derive_accept_key(key.as_bytes())
        || resp.headers().contains_key("sec-websocket-extensions")
    {
        return Err(gateway_status(
            "upstream API server answered the WebSocket handshake incorrectly".into(),
        ));
    }
    let protocol = resp
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if !protocols.contains(&protocol) {
        return Err(gateway_status(format!(
            "upstream API server chose subprotocol {protocol:?}, which was not offered"
        )));
    }
    let upgraded = hyper::upgrade::on(&mut resp)
        .await
        .map_err(|e| gateway_status(format!("upstream upgrade failed: {e}")))?;
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok((ws, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_from_error_channel() {
        assert_eq!(
            exit_status(&serde_json::json!({"metadata": {}, "status": "Success"})),
            "exit 0"
        );
        let failed = serde_json::json!({"status": "Failure", "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}});
        assert_eq!(exit_status(&failed), "exit 3");
        let denied = status_object(403, "Forbidden", "no");
        assert_eq!(exit_status(&denied), "failure Forbidden");
        let m = channel_message(STDERR, b"hi");
        assert_eq!(m.into_data().as_ref(), b"\x02hi");
    }
}

//! Port forwarding (`pods/portforward`) relayed as kubectl 1.31+ speaks it: SPDY/3.1 tunnelled
//! in WebSocket binary messages (subprotocol `SPDY/3.1+portforward.k8s.io`), byte for byte to
//! the API server, while the gateway reads every frame the caller sends:
//!
//! - each stream the caller opens (SYN_STREAM) must name a port (`port` header, 1–65535) and a
//!   `streamType` of `data` or `error`; where the request names `ports=` (the v4 WebSocket
//!   form), a stream naming another port ends the tunnel; a HEADERS frame (which could rename
//!   a stream after the check) or a stream opened by the API server ends it too;
//! - the bytes of every stream, both ways, are recorded by size and SHA-256 (port-forward data is
//!   binary: the rule must say `binary = "raw"`, checked before the tunnel opens), and the bytes
//!   from the pod pass the egress guard.
//!
//! Only whole frames are forwarded, so a refused frame never reaches either side. Header blocks
//! share one zlib context per direction, so a refused SYN_STREAM cannot be dropped alone: the
//! whole tunnel ends (kubectl reports the lost connection; the audit log says why).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use gatehouse_core::{
    BinaryHandling, Decision, EgressSite, EgressStream, Event, EventBody, Verdict,
};
use http::Request;
use http::header;
use hyper::body::Incoming;
use sha2::{Digest as _, Sha256};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::error::K8sProxyError;
use crate::proxy::{ConnCtx, OpCtx, ResBody, SPDY_RULE};
use crate::request::ParsedRequest;
use crate::spdy::{self, Frame, FrameReader, HeaderInflater};

/// The WebSocket subprotocol of kubectl's SPDY tunnel.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// The rule id recorded when an allowed port forward is refused because its rule does not
/// pass binary data (`binary = "raw"`).
pub const BINARY_RULE: &str = "k8s-portforward-binary";
/// The rule id recorded for a port-forward request the gateway cannot read (bad `ports=`).
const BAD_REQUEST_RULE: &str = "k8s-portforward-bad-request";

/// Streams one tunnel may open (kubectl opens two per local connection).
const MAX_STREAMS: usize = 4096;

/// Handles a `pods/portforward` request the policy has decided. Deny and review never open a
/// tunnel; an allow without `binary = "raw"` is refused; a plain SPDY upgrade is refused.
pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    mut req: Request<Incoming>,
    target_idx: usize,
    parsed: ParsedRequest,
    decision: Decision,
    ctx: OpCtx,
) -> Result<Response, K8sProxyError> {
    let ports = requested_ports(parsed.query.as_deref());
    let refusal = match decision.verdict {
        Verdict::Deny => Some(K8sProxyError::Denied {
            rule: decision.rule_id.clone(),
            reason: decision.reason.clone(),
        }),
        Verdict::Review => Some(K8sProxyError::Denied {
            rule: decision.rule_id.clone(),
            reason: "port-forward tunnels cannot wait for approval".into(),
        }),
        _ if decision.binary != BinaryHandling::Raw => Some(K8sProxyError::PortForwardBinary {
            rule: decision.rule_id.clone(),
        }),
        _ if !offers_tunnel(&req) => Some(K8sProxyError::PortForwardNotRelayed {
            rule: decision.rule_id.clone(),
        }),
        _ => ports
            .as_ref()
            .err()
            .map(|e| K8sProxyError::BadRequest(e.clone())),
    };
    if let Some(refusal) = refusal {
        // What the audit log says refused it: the policy's own deny, or the gateway's.
        let recorded = match &refusal {
            _ if decision.verdict != Verdict::Allow => decision.clone(),
            K8sProxyError::PortForwardBinary { .. } => {
                Decision::deny(BINARY_RULE, refusal.to_string())
            }
            K8sProxyError::PortForwardNotRelayed { .. } => {
                Decision::deny(SPDY_RULE, refusal.to_string())
            }
            _ => Decision::deny(BAD_REQUEST_RULE, refusal.to_string()),
        };
        conn.record_operation(&ctx, &parsed.operation, &recorded)
            .await?;
        return Err(refusal);
    }
    let allowed_ports = ports.unwrap_or_default();
    conn.record_operation(&ctx, &parsed.operation, &decision)
        .await?;
    let accept = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    let caller_headers = req.headers().clone();
    let (upstream, protocol) = match crate::exec::connect_upstream_ws(
        &conn,
        &ctx,
        target_idx,
        &parsed,
        &decision,
        &caller_headers,
        &[TUNNEL_PROTOCOL.to_string()],
    )
    .await
    {
        Ok(up) => up,
        Err(status) => {
            let message = status["message"]
                .as_str()
                .unwrap_or("the API server refused the port-forward tunnel")
                .to_string();
            return Err(K8sProxyError::UpstreamRefused(message));
        }
    };
    let client_upgrade = hyper::upgrade::on(&mut req);
    let tunnel = Tunnel {
        conn: conn.clone(),
        ctx,
        rule_id: decision.rule_id.clone(),
        allowed_ports,
    };
    tokio::spawn(async move {
        let Some(client) = crate::exec::upgrade_client(client_upgrade).await else {
            return;
        };
        tunnel.relay(client, upstream).await;
    });
    Ok(crate::exec::switching(&accept, &protocol))
}

type Response = http::Response<ResBody>;

fn offers_tunnel(req: &Request<Incoming>) -> bool {
    crate::proxy::is_websocket(req)
        && req
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == TUNNEL_PROTOCOL)
}

/// The ports a request names (`ports=80&ports=8080` or `ports=80,8080`); `None` when it names
/// none (kubectl sends the port in each stream only).
fn requested_ports(query: Option<&str>) -> Result<Option<Vec<u16>>, String> {
    let mut ports: Option<Vec<u16>> = None;
    for (k, v) in form_pairs(query.unwrap_or("")) {
        if k != "ports" {
            continue;
        }
        for p in v.split(',').filter(|p| !p.is_empty()) {
            let port = parse_port(p).ok_or_else(|| format!("invalid port {p:?} in ports="))?;
            ports.get_or_insert_with(Vec::new).push(port);
        }
    }
    Ok(ports)
}

fn form_pairs(q: &str) -> impl Iterator<Item = (&str, &str)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

fn parse_port(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok().filter(|p| *p > 0)
}

/// What one stream carried.
struct StreamLog {
    port: u16,
    kind: String,
    request_id: String,
    to_pod: (u64, Sha256),
    from_pod: (u64, Sha256),
    egress: Box<dyn EgressStream>,
}

/// Reads the caller's frames (and the pod's, for the record) of one tunnel.
struct Inspector {
    from_client: FrameReader,
    from_pod: FrameReader,
    headers: HeaderInflater,
    streams: BTreeMap<u32, StreamLog>,
    allowed_ports: Option<Vec<u16>>,
}

/// Why a tunnel ended early.
#[derive(Debug)]
enum Stop {
    /// The caller asked for something the decision does not cover.
    Refused(String),
    /// The pod's bytes held gateway-held credential material.
    Egress,
}

impl Inspector {
    /// Takes caller bytes; returns the whole frames that may go on to the API server.
    fn caller_bytes(
        &mut self,
        bytes: &[u8],
        egress: &dyn gatehouse_core::EgressGuard,
    ) -> Result<Vec<u8>, Stop> {
        self.from_client.push(bytes);
        let mut out = Vec::new();
        loop {
            let next = self
                .from_client
                .next_frame()
                .map_err(|e| Stop::Refused(e.to_string()))?;
            let Some((frame, raw)) = next else {
                return Ok(out);
            };
            match &frame {
                Frame::Control {
                    kind: spdy::SYN_STREAM,
                    ..
                } => self.open_stream(&frame, egress)?,
                Frame::Control {
                    kind: spdy::HEADERS,
                    ..
                } => {
                    return Err(Stop::Refused(
                        "a HEADERS frame (stream headers are checked when it opens)".into(),
                    ));
                }
                Frame::Data {
                    stream_id, payload, ..
                } => {
                    let Some(s) = self.streams.get_mut(stream_id) else {
                        return Err(Stop::Refused(format!(
                            "data for stream {stream_id}, which was never opened"
                        )));
                    };
                    s.to_pod.0 += payload.len() as u64;
                    s.to_pod.1.update(payload);
                }
                Frame::Control { .. } => {}
            }
            out.extend_from_slice(&raw);
        }
    }

    fn open_stream(
        &mut self,
        frame: &Frame,
        egress: &dyn gatehouse_core::EgressGuard,
    ) -> Result<(), Stop> {
        let refuse = |m: String| Err(Stop::Refused(m));
        let id = frame.stream_id().unwrap_or(0);
        let block = frame.header_block().unwrap_or(&[]);
        let headers = self
            .headers
            .decode(block)
            .map_err(|e| Stop::Refused(e.to_string()))?;
        let Some(port) = spdy::header(&headers, "port").and_then(parse_port) else {
            return refuse(format!("stream {id} names no valid port"));
        };
        let kind = spdy::header(&headers, "streamtype")
            .unwrap_or("")
            .to_string();
        if kind != "data" && kind != "error" {
            return refuse(format!("stream {id} has streamType {kind:?}"));
        }
        if let Some(allowed) = &self.allowed_ports
            && !allowed.contains(&port)
        {
            return refuse(format!(
                "stream {id} names port {port}, which the request did not (ports={})",
                allowed
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        if self.streams.contains_key(&id) || id.is_multiple_of(2) {
            return refuse(format!("stream id {id} reused or not the caller's"));
        }
        if self.streams.len() >= MAX_STREAMS {
            return refuse(format!("more than {MAX_STREAMS} streams"));
        }
        self.streams.insert(
            id,
            StreamLog {
                port,
                kind,
                request_id: spdy::header(&headers, "requestid")
                    .unwrap_or("")
                    .to_string(),
                to_pod: (0, Sha256::new()),
                from_pod: (0, Sha256::new()),
                egress: egress.stream(EgressSite::Client),
            },
        );
        Ok(())
    }

    /// Takes API-server bytes; returns the whole frames that may go on to the caller.
    fn pod_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>, Stop> {
        self.from_pod.push(bytes);
        let mut out = Vec::new();
        loop {
            let next = self
                .from_pod
                .next_frame()
                .map_err(|e| Stop::Refused(format!("the API server sent {e}")))?;
            let Some((frame, raw)) = next else {
                return Ok(out);
            };
            match &frame {
                Frame::Control {
                    kind: spdy::SYN_STREAM,
                    ..
                } => {
                    return Err(Stop::Refused(
                        "the API server opened a stream (port forwarding has none)".into(),
                    ));
                }
                Frame::Data {
                    stream_id, payload, ..
                } => {
                    if let Some(s) = self.streams.get_mut(stream_id) {
                        if s.egress.check(payload).is_err() {
                            return Err(Stop::Egress);
                        }
                        s.from_pod.0 += payload.len() as u64;
                        s.from_pod.1.update(payload);
                    }
                }
                Frame::Control { .. } => {}
            }
            out.extend_from_slice(&raw);
        }
    }
}

struct Tunnel {
    conn: Arc<ConnCtx>,
    ctx: OpCtx,
    rule_id: String,
    allowed_ports: Option<Vec<u16>>,
}

impl Tunnel {
    async fn relay<C>(
        self,
        client: tokio_tungstenite::WebSocketStream<C>,
        upstream: crate::exec::Upstream,
    ) where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let egress = self.conn.proxy.pipeline.egress.clone();
        let mut insp = Inspector {
            from_client: FrameReader::new(),
            from_pod: FrameReader::new(),
            headers: HeaderInflater::new(),
            streams: BTreeMap::new(),
            allowed_ports: self.allowed_ports.clone(),
        };
        let (mut c_tx, mut c_rx) = client.split();
        let (mut u_tx, mut u_rx) = upstream.split();
        let mut bytes_out = 0u64;
        let stop: Option<Stop> = loop {
            tokio::select! {
                m = c_rx.next() => match m {
                    Some(Ok(Message::Binary(b))) => match insp.caller_bytes(&b, &*egress) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => {
                            if u_tx.send(Message::Binary(Bytes::from(out))).await.is_err() {
                                break None;
                            }
                        }
                        Err(stop) => break Some(stop),
                    },
                    Some(Ok(Message::Close(f))) => {
                        let _ = u_tx.send(Message::Close(f)).await;
                        break None;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(_))) => {
                        break Some(Stop::Refused("a text message in a binary tunnel".into()));
                    }
                    Some(Err(_)) | None => break None,
                },
                m = u_rx.next() => match m {
                    Some(Ok(Message::Binary(b))) => match insp.pod_bytes(&b) {
                        Ok(out) if out.is_empty() => {}
                        Ok(out) => {
                            bytes_out += out.len() as u64;
                            if c_tx.send(Message::Binary(Bytes::from(out))).await.is_err() {
                                break None;
                            }
                        }
                        Err(stop) => break Some(stop),
                    },
                    Some(Ok(Message::Close(f))) => {
                        let _ = c_tx.send(Message::Close(f)).await;
                        break None;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(_))) => {
                        break Some(Stop::Refused("the API server sent a text message".into()));
                    }
                    Some(Err(_)) | None => break None,
                },
            }
        };
        let status = match &stop {
            None => "101 closed".to_string(),
            Some(Stop::Refused(why)) => {
                let reason = format!("gatehouse: port-forward refused: {why}");
                tracing::info!(rule = %self.rule_id, "{reason}");
                let _ = c_tx
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: truncate(&reason, 120).into(),
                    })))
                    .await;
                let _ = u_tx.send(Message::Close(None)).await;
                format!("101 refused: {why}")
            }
            Some(Stop::Egress) => {
                self.conn.record_block(&self.ctx, "client").await;
                let _ = c_tx
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "gatehouse: blocked gateway-held credential material".into(),
                    })))
                    .await;
                let _ = u_tx.send(Message::Close(None)).await;
                "101 egress_blocked".to_string()
            }
        };
        let _ = c_tx.close().await;
        let _ = u_tx.close().await;
        self.record_streams(insp.streams).await;
        self.conn
            .record_status(&self.ctx, status, bytes_out, Vec::new())
            .await;
    }

    /// One audit event per stream: its port and what it carried, by size and SHA-256.
    async fn record_streams(&self, streams: BTreeMap<u32, StreamLog>) {
        for (id, s) in streams {
            let details = serde_json::json!({
                "index": self.ctx.index,
                "stream_id": id,
                "request_id": s.request_id,
                "stream_type": s.kind,
                "port": s.port,
                "why": "port forward",
                "rule_id": self.rule_id,
                "to_pod": {"bytes": s.to_pod.0, "sha256": hex::encode(s.to_pod.1.finalize())},
                "from_pod": {"bytes": s.from_pod.0, "sha256": hex::encode(s.from_pod.1.finalize())},
            });
            let event = Event::now(
                self.ctx.session.id.clone(),
                Some(self.ctx.session.identity.clone()),
                Some(self.ctx.target.clone()),
                EventBody::Other {
                    name: "k8s_portforward_stream".into(),
                    details,
                },
            );
            if let Err(e) = self.conn.proxy.pipeline.recorder.record(event).await {
                tracing::warn!(error = %e, "could not record a port-forward stream");
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_named_by_the_request() {
        assert_eq!(requested_ports(None).unwrap(), None);
        assert_eq!(requested_ports(Some("x=1")).unwrap(), None);
        assert_eq!(
            requested_ports(Some("ports=80&ports=8080,9090")).unwrap(),
            Some(vec![80, 8080, 9090])
        );
        assert!(requested_ports(Some("ports=0")).is_err());
        assert!(requested_ports(Some("ports=http")).is_err());
    }

    /// Lets everything pass (the egress guard has its own tests).
    struct OpenGuard;
    struct OpenStream;
    impl gatehouse_core::EgressStream for OpenStream {
        fn check(&mut self, _: &[u8]) -> Result<(), gatehouse_core::EgressBlocked> {
            Ok(())
        }
    }
    impl gatehouse_core::EgressGuard for OpenGuard {
        fn check(&self, _: EgressSite, _: &[u8]) -> Result<(), gatehouse_core::EgressBlocked> {
            Ok(())
        }
        fn stream(&self, _: EgressSite) -> Box<dyn EgressStream> {
            Box::new(OpenStream)
        }
        fn counters(&self) -> gatehouse_core::EgressCounters {
            gatehouse_core::EgressCounters::default()
        }
    }

    fn inspector(allowed: Option<Vec<u16>>) -> Inspector {
        Inspector {
            from_client: FrameReader::new(),
            from_pod: FrameReader::new(),
            headers: HeaderInflater::new(),
            streams: BTreeMap::new(),
            allowed_ports: allowed,
        }
    }

    #[test]
    fn streams_are_checked_and_counted() {
        let guard = OpenGuard;
        let mut d = spdy::HeaderDeflater::new().unwrap();
        let mut wire = Vec::new();
        for (id, kind) in [(1, "error"), (3, "data")] {
            let block = d
                .encode(&[("streamType", kind), ("port", "80"), ("requestID", "0")])
                .unwrap();
            wire.extend(Frame::syn_stream(id, &block, false).encode());
        }
        wire.extend(Frame::data(3, b"ping\0", false).encode());
        let mut i = inspector(Some(vec![80]));
        // Whatever the cut, the same whole frames pass.
        let (a, b) = wire.split_at(7);
        let mut out = i.caller_bytes(a, &guard).unwrap();
        out.extend(i.caller_bytes(b, &guard).unwrap());
        assert_eq!(out, wire);
        assert_eq!(i.streams[&3].to_pod.0, 5);
        assert_eq!(i.streams[&3].port, 80);
        // Another port: refused, and its frame goes nowhere.
        let block = d
            .encode(&[("streamType", "data"), ("port", "22"), ("requestID", "1")])
            .unwrap();
        let syn = Frame::syn_stream(5, &block, false).encode();
        assert!(
            matches!(i.caller_bytes(&syn, &guard), Err(Stop::Refused(m)) if m.contains("port 22"))
        );
    }

    #[test]
    fn no_port_or_headers_frames_or_pod_streams_are_refused() {
        let guard = OpenGuard;
        let mut d = spdy::HeaderDeflater::new().unwrap();
        let block = d.encode(&[("streamType", "data")]).unwrap();
        let mut i = inspector(None);
        let syn = Frame::syn_stream(1, &block, false).encode();
        assert!(i.caller_bytes(&syn, &guard).is_err());
        let mut i = inspector(None);
        let headers = Frame::Control {
            kind: spdy::HEADERS,
            flags: 0,
            payload: Bytes::from(vec![0, 0, 0, 1, 0, 0]),
        };
        assert!(i.caller_bytes(&headers.encode(), &guard).is_err());
        let mut i = inspector(None);
        let syn = Frame::syn_stream(2, &block, false).encode();
        assert!(i.pod_bytes(&syn).is_err());
    }
}

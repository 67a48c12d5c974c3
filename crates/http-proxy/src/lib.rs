//! Gatehouse's HTTP(S) reverse proxy: strips the caller's token, injects the target's credential,
//! decides each request on its canonical path, masks responses and records the exchange.
//!
//! An agent calls `https://gateway/<prefix>/…` (or a host name routed to a target) with
//! `Authorization: Bearer <JWT or gateway key>`. For every request the proxy
//!
//! 1. verifies the bearer token with the pipeline's [`gatehouse_core::Authenticator`] (cached per
//!    connection for 30 s) and starts the connection's audit session on first use;
//! 2. routes by host, then by the longest whole-segment path prefix, on the path canonicalised by
//!    [`gatehouse_core::http_path`]: what the policy sees is exactly what the upstream receives
//!    (`%2F`/`%5C` stay opaque, or are refused by configuration);
//! 3. asks the [`gatehouse_core::Policy`] about `(method, canonical path, query)`; a WebSocket
//!    upgrade is decided as method [`WEBSOCKET_METHOD`]. Deny → `403` JSON naming the rule.
//!    Review → the request (bound to its body hash) is held up to `review_hold_ms`; past that the
//!    caller gets `409` + `Retry-After` + the approval id, and the retried request goes through
//!    once approved (the rule's grant window) — only on an approval that still meets the rule as
//!    it stands and that no later denial overrode; an approver's denial is `403`
//!    `approval_denied`, a request nobody decided in time `504` `approval_timed_out` +
//!    `Retry-After` (retry later: a new request is opened);
//! 4. records the operation and decision before anything is forwarded (fail closed);
//! 5. forwards with hop-by-hop headers removed, the caller's token replaced by the target's
//!    credential (bearer, basic, header or query), `Accept-Encoding` narrowed to gzip/deflate;
//! 6. decodes, masks (JSON token-level; text and NDJSON as streams; server-sent events per event,
//!    `data:` lines joined as a client joins them) with an idle flush so streams keep streaming,
//!    and runs every byte through the egress guard — response headers too. A body masking cannot
//!    rewrite (a non-text content type, NUL bytes or invalid UTF-8 in a text body, a binary
//!    WebSocket frame) is never rewritten: refused (`502 binary_refused`, a cut stream, or a
//!    policy close) unless the rule says `binary = "raw"`, then passed unchanged and recorded
//!    by size and SHA-256. A [`gatehouse_core::GateHooks::on_chunk`] hook is then shown each piece of the body and
//!    each upstream WebSocket message as the caller receives it; its `Stop` is a
//!    `403 hook_stopped` before the response head left, a cut body after it, a policy close on
//!    a WebSocket;
//! 7. records the exchange (masked, capped bodies; `authorization`, `cookie`, `set-cookie`
//!    redacted) and the result.
//!
//! # What is recorded when (fail closed, without a second durable write per request)
//!
//! The invariant is *nothing runs unrecorded*: the upstream must never see a request whose
//! operation and decision are not in the audit log. So the `Operation` event (identity, target,
//! method, canonical path, query, body hash for reviewed requests, decision, rule) is awaited —
//! durable to the recorder's configured level — before a single byte goes upstream; if that
//! fails the caller gets `503 audit_unavailable` and the upstream sees nothing.
//!
//! What happens *after* the response exists is evidence about an operation that is already on
//! record: the `OperationResult` event and the `http_exchange` recording entry are written by a
//! background task of the connection once the response body has ended (or the caller went
//! away), so the caller never waits on their durability. They stay attributable (same session,
//! same operation index), the connection's `SessionEnd` is only written after them, and if one
//! of them fails the connection refuses its later requests with `503` (fail closed), as if the
//! recorder had failed on their own operation.
//!
//! The response body is driven by hyper's own polling (decode → mask → egress → caller in
//! `poll_frame`, an idle timer only while the masker holds bytes back): no task or channel per
//! response.
//!
//! [`HttpProxy::serve_threaded`] serves from several threads, each with its own single-threaded
//! runtime and upstream pools, so a connection's tasks never migrate between cores (on two
//! cores that cut the CPU per request by a third; docs/BENCHMARKS.md).
//!
//! Errors are JSON (`{"error", "message", "side", …}`) with the status that fits
//! ([`HttpProxyError`]). Conflicting `Content-Length`/`Transfer-Encoding` is refused
//! ([`framing`]).
//!
//! ```no_run
//! # async fn run(pipeline: gatehouse_core::Pipeline, config: gatehouse_http::HttpProxyConfig)
//! # -> Result<(), gatehouse_http::HttpProxyError> {
//! let proxy = gatehouse_http::HttpProxy::new(config, pipeline)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await
//!     .map_err(|e| gatehouse_http::HttpProxyError::Listener(e.to_string()))?;
//! proxy.serve(listener, None, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
pub mod config;
pub mod error;
pub mod framing;
mod headers;
mod proxy;
mod sse;
mod upstream;
mod websocket;

pub use config::{
    EncodedSeparatorPolicy, HttpProxyConfig, HttpTargetConfig, InjectedCredential, Limits,
    OtherContentPolicy, Timeouts,
};
pub use error::HttpProxyError;
pub use proxy::HttpProxy;
pub use websocket::WEBSOCKET_METHOD;

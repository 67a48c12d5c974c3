//! The crate's one error type. Every variant says which side failed and maps to a Kubernetes
//! `Status` object with the HTTP code kubectl and client-go expect, so the caller sees
//! `Error from server (Forbidden): …` naturally. Messages never carry a token or a masked value.

use gatehouse_core::{AuthErrorKind, Side};
use http::StatusCode;

/// A refusal or failure, as the caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum K8sProxyError {
    /// Bad configuration (startup only).
    #[error("configuration: {0}")]
    Config(String),
    /// The listener failed.
    #[error("listener: {0}")]
    Listener(String),
    /// No or an invalid bearer token.
    #[error("Unauthorized: {0}")]
    Unauthenticated(AuthErrorKind),
    /// The identity provider cannot be reached (fail closed).
    #[error("identity provider unavailable")]
    AuthUnavailable,
    /// The path names no configured target.
    #[error("no Kubernetes target at this path")]
    NoTarget,
    /// The request could not be read.
    #[error("{0}")]
    BadRequest(String),
    /// The policy (or a built-in floor) denied the operation.
    #[error("denied by gatehouse rule {rule}: {reason}")]
    Denied {
        /// Rule id.
        rule: String,
        /// Why.
        reason: String,
    },
    /// The operation awaits approval; retry later.
    #[error("waiting for approval {id} (rule {rule}); retry in {retry_after_s}s")]
    ApprovalPending {
        /// Approval id.
        id: String,
        /// Rule id.
        rule: String,
        /// Seconds.
        retry_after_s: u64,
    },
    /// An approver denied (or the request was abandoned).
    #[error("approval {id} {outcome} (rule {rule})")]
    ApprovalRefused {
        /// Approval id.
        id: String,
        /// `denied` / `timed out`.
        outcome: String,
        /// Rule id.
        rule: String,
    },
    /// Nobody decided in time: `504` Timeout with `Retry-After` (retry later; a retry opens a
    /// new approval request), never Forbidden.
    #[error("approval {id} timed out (rule {rule}); retry in {retry_after_s}s to ask again")]
    ApprovalTimedOut {
        /// Approval id.
        id: String,
        /// Rule id.
        rule: String,
        /// Seconds.
        retry_after_s: u64,
    },
    /// SPDY streams are never relayed.
    #[error(
        "SPDY/3.1 streams are not relayed by gatehouse; use a client with WebSocket streaming \
         (v5.channel.k8s.io or v4.channel.k8s.io, kubectl 1.30 or later)"
    )]
    SpdyRefused,
    /// A port forward a rule allowed, asked for as a plain SPDY upgrade: the gateway relays
    /// port forwarding only as SPDY tunnelled over a WebSocket (kubectl 1.31 and later).
    #[error(
        "port-forward allowed by gatehouse rule {rule}, but gatehouse relays port-forward only \
         over WebSocket (subprotocol SPDY/3.1+portforward.k8s.io, kubectl 1.31 or later), not \
         as a plain SPDY upgrade"
    )]
    PortForwardNotRelayed {
        /// The rule that allowed it.
        rule: String,
    },
    /// A port forward a rule allowed without `binary = "raw"`: its data is binary, which
    /// masking cannot rewrite, so it passes only unmasked.
    #[error(
        "port-forward refused: its data is binary, which masking cannot rewrite safely, and \
         gatehouse rule {rule} does not pass it unmasked (binary = \"raw\")"
    )]
    PortForwardBinary {
        /// The rule that allowed it.
        rule: String,
    },
    /// A request body the gateway cannot inspect (CBOR, …): JSON, YAML or Kubernetes protobuf.
    #[error(
        "request body of type {0:?} cannot be inspected by gatehouse: send JSON, YAML or \
         Kubernetes protobuf (e.g. `kubectl create -f file.yaml` or `kubectl apply -f`)"
    )]
    UnsupportedBody(String),
    /// The request body is over the limit.
    #[error("request body over {0} bytes")]
    BodyTooLarge(u64),
    /// The upstream cannot be reached.
    #[error("upstream API server unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream answered something the gateway cannot pass on safely.
    #[error("upstream API server response refused: {0}")]
    UpstreamRefused(String),
    /// The upstream took too long.
    #[error("upstream API server timed out")]
    UpstreamTimeout,
    /// The egress guard found held secret material.
    #[error("response blocked: it contained gateway-held credential material")]
    EgressBlocked,
    /// A [`gatehouse_core::GateHooks::on_chunk`] hook stopped the response or stream: what it
    /// had not seen is withheld.
    #[error("response stopped by a gateway hook (GateHooks::on_chunk)")]
    HookStopped,
    /// The recorder failed (fail closed).
    #[error("audit recorder unavailable: {0}")]
    Recorder(String),
    /// The approvals broker failed (fail closed).
    #[error("approvals unavailable: {0}")]
    Approvals(String),
}

impl K8sProxyError {
    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            K8sProxyError::Unauthenticated(_)
            | K8sProxyError::NoTarget
            | K8sProxyError::BadRequest(_)
            | K8sProxyError::Denied { .. }
            | K8sProxyError::ApprovalPending { .. }
            | K8sProxyError::ApprovalRefused { .. }
            | K8sProxyError::ApprovalTimedOut { .. }
            | K8sProxyError::SpdyRefused
            | K8sProxyError::PortForwardNotRelayed { .. }
            | K8sProxyError::PortForwardBinary { .. }
            | K8sProxyError::UnsupportedBody(_)
            | K8sProxyError::BodyTooLarge(_) => Side::Client,
            K8sProxyError::UpstreamUnavailable(_)
            | K8sProxyError::UpstreamRefused(_)
            | K8sProxyError::UpstreamTimeout => Side::Upstream,
            _ => Side::Gateway,
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            K8sProxyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            K8sProxyError::NoTarget => StatusCode::NOT_FOUND,
            K8sProxyError::BadRequest(_)
            | K8sProxyError::SpdyRefused
            | K8sProxyError::PortForwardNotRelayed { .. } => StatusCode::BAD_REQUEST,
            K8sProxyError::Denied { .. }
            | K8sProxyError::ApprovalRefused { .. }
            | K8sProxyError::PortForwardBinary { .. }
            | K8sProxyError::HookStopped => StatusCode::FORBIDDEN,
            // client-go retries 429 with Retry-After by itself: kubectl waits transparently.
            K8sProxyError::ApprovalPending { .. } => StatusCode::TOO_MANY_REQUESTS,
            K8sProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            K8sProxyError::UnsupportedBody(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            K8sProxyError::UpstreamUnavailable(_)
            | K8sProxyError::UpstreamRefused(_)
            | K8sProxyError::EgressBlocked => StatusCode::BAD_GATEWAY,
            // `Timeout`: client-go's `IsTimeout`; it retries a 5xx with `Retry-After` by itself.
            K8sProxyError::UpstreamTimeout | K8sProxyError::ApprovalTimedOut { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            K8sProxyError::AuthUnavailable
            | K8sProxyError::Recorder(_)
            | K8sProxyError::Approvals(_) => StatusCode::SERVICE_UNAVAILABLE,
            K8sProxyError::Config(_) | K8sProxyError::Listener(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The `Status.reason` (a Kubernetes `StatusReason`).
    pub fn reason(&self) -> &'static str {
        match self.status() {
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            StatusCode::PAYLOAD_TOO_LARGE => "RequestEntityTooLarge",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
            StatusCode::GATEWAY_TIMEOUT => "Timeout",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            _ => "InternalError",
        }
    }

    /// A short stable code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            K8sProxyError::Config(_) => "config",
            K8sProxyError::Listener(_) => "listener",
            K8sProxyError::Unauthenticated(_) => "unauthenticated",
            K8sProxyError::AuthUnavailable => "auth_unavailable",
            K8sProxyError::NoTarget => "no_target",
            K8sProxyError::BadRequest(_) => "bad_request",
            K8sProxyError::Denied { .. } => "denied",
            K8sProxyError::ApprovalPending { .. } => "approval_pending",
            K8sProxyError::ApprovalRefused { .. } => "approval_refused",
            K8sProxyError::ApprovalTimedOut { .. } => "approval_timed_out",
            K8sProxyError::SpdyRefused => "spdy_refused",
            K8sProxyError::PortForwardNotRelayed { .. } => "portforward_not_relayed",
            K8sProxyError::PortForwardBinary { .. } => "binary_refused",
            K8sProxyError::BodyTooLarge(_) => "body_too_large",
            K8sProxyError::UnsupportedBody(_) => "unsupported_body",
            K8sProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            K8sProxyError::UpstreamRefused(_) => "upstream_refused",
            K8sProxyError::UpstreamTimeout => "upstream_timeout",
            K8sProxyError::EgressBlocked => "egress_blocked",
            K8sProxyError::HookStopped => "hook_stopped",
            K8sProxyError::Recorder(_) => "audit_unavailable",
            K8sProxyError::Approvals(_) => "approvals_unavailable",
        }
    }

    /// The Kubernetes `Status` object for this error.
    pub fn to_status(&self) -> serde_json::Value {
        let mut status = status_object(self.status().as_u16(), self.reason(), &self.to_string());
        if let K8sProxyError::ApprovalPending { retry_after_s, .. } = self {
            status["details"] = serde_json::json!({ "retryAfterSeconds": retry_after_s });
        }
        status
    }

    /// The `Retry-After` seconds that go with this error, if any. A timed-out approval has
    /// none: client-go would retry it by itself, and each retry would open a new request for
    /// the approvers that nobody asked for.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            K8sProxyError::ApprovalPending { retry_after_s, .. } => Some(*retry_after_s),
            _ => None,
        }
    }
}

/// A `Status` object (`kind: Status`, `status: Failure`).
pub fn status_object(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_naturally() {
        let e = K8sProxyError::Denied {
            rule: "no-delete".into(),
            reason: "pods are not deleted by agents".into(),
        };
        let s = e.to_status();
        assert_eq!(s["code"], 403);
        assert_eq!(s["reason"], "Forbidden");
        assert_eq!(
            s["message"],
            "denied by gatehouse rule no-delete: pods are not deleted by agents"
        );
        assert_eq!(
            K8sProxyError::Unauthenticated(AuthErrorKind::Expired).status(),
            401
        );
        assert_eq!(K8sProxyError::SpdyRefused.side(), Side::Client);
    }

    #[test]
    fn timed_out_approval_is_a_timeout_not_forbidden() {
        let e = K8sProxyError::ApprovalTimedOut {
            id: "apr-1".into(),
            rule: "review".into(),
            retry_after_s: 4,
        };
        let s = e.to_status();
        assert_eq!(s["code"], 504);
        assert_eq!(s["reason"], "Timeout");
        assert!(s.get("details").is_none(), "{s}");
        assert_eq!(e.retry_after_s(), None);
    }
}

//! The crate's one error type. Every variant knows which side failed and how it reads to an HTTP
//! client: a status code and a small JSON body (`{"error": code, "message": …, "side": …}` plus
//! the rule or approval id where there is one). Messages never carry a secret or a token.

use bytes::Bytes;
use gatehouse_core::{AuthErrorKind, Side};
use http::{HeaderValue, StatusCode, header};

/// `Retry-After` seconds on a 503 for unavailable approvals or audit and on a 504 for a timed-out
/// approval, unless the proxy's configuration says otherwise.
pub const UNAVAILABLE_RETRY_AFTER_S: u64 = 5;

/// What went wrong, and on which side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpProxyError {
    /// The proxy configuration is unusable (startup).
    #[error("configuration: {0}")]
    Config(String),
    /// The listener failed (startup or accept).
    #[error("listener: {0}")]
    Listener(String),
    /// The request is malformed or ambiguous.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Content-Length and Transfer-Encoding disagree (request smuggling attempt): refused.
    #[error("conflicting message framing: {0}")]
    ConflictingFraming(String),
    /// The request path cannot be canonicalised (or has an encoded separator and policy refuses it).
    #[error("path refused: {0}")]
    PathRefused(String),
    /// No bearer credential, or the authenticator refused it.
    #[error("authentication failed: {0}")]
    Unauthenticated(AuthErrorKind),
    /// No target matches the request's host or path.
    #[error("no target matches this request")]
    NoTarget,
    /// The request body is larger than the configured limit.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The policy denied the request.
    #[error("denied by rule {rule}: {reason}")]
    Denied {
        /// The rule that denied.
        rule: String,
        /// Its reason.
        reason: String,
    },
    /// An approver denied the reviewed request.
    #[error("approval {id} was denied")]
    ApprovalDenied {
        /// Approval id.
        id: String,
        /// Rule that asked for review.
        rule: String,
    },
    /// Nobody decided the reviewed request before its timeout: `504` with `Retry-After`
    /// (retry later, a new approval request is opened), never a permission error.
    #[error("approval {id} timed out; retry to ask again")]
    ApprovalTimedOut {
        /// Approval id.
        id: String,
        /// Rule that asked for review.
        rule: String,
    },
    /// The reviewed request is still waiting for an approver: retry after the hint.
    #[error("approval {id} is pending; retry after {retry_after_s} s")]
    ApprovalPending {
        /// Approval id.
        id: String,
        /// Rule that asked for review.
        rule: String,
        /// `Retry-After` seconds.
        retry_after_s: u64,
    },
    /// The identity provider could not be reached (fail closed).
    #[error("identity provider unavailable")]
    AuthUnavailable,
    /// The approvals broker failed (fail closed).
    #[error("approvals unavailable: {0}")]
    Approvals(String),
    /// The recorder failed (fail closed: nothing runs unrecorded).
    #[error("audit recording failed: {0}")]
    Recorder(String),
    /// The egress guard found held credential material in the response; it was withheld.
    #[error("response withheld: it contained held credential material")]
    EgressBlocked,
    /// A [`gatehouse_core::GateHooks::on_chunk`] hook stopped the response: what it had not
    /// seen is withheld (403 before the response head left; a cut body after).
    #[error("response stopped by a gateway hook (GateHooks::on_chunk)")]
    HookStopped,
    /// The upstream could not be reached.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream sent something the gateway will not forward (bad framing, an encoding it
    /// cannot decode for masking, a refused content type).
    #[error("upstream response refused: {0}")]
    UpstreamRefused(String),
    /// The response body is binary (by content type, or NUL bytes / invalid UTF-8 in a text
    /// body): masking cannot rewrite it safely and the rule does not pass it unmasked
    /// (`binary = "raw"`). Refused, never rewritten.
    #[error(
        "response withheld: its body is binary ({what}), which masking cannot rewrite safely, and rule '{rule}' does not pass it unmasked (binary = \"raw\")"
    )]
    BinaryRefused {
        /// The rule that allowed the request.
        rule: String,
        /// What made it binary.
        what: String,
    },
}

impl HttpProxyError {
    /// Which side failed.
    pub fn side(&self) -> Side {
        use HttpProxyError::*;
        match self {
            BadRequest(_)
            | ConflictingFraming(_)
            | PathRefused(_)
            | Unauthenticated(_)
            | NoTarget
            | BodyTooLarge(_)
            | Denied { .. }
            | ApprovalDenied { .. }
            | ApprovalTimedOut { .. }
            | ApprovalPending { .. } => Side::Client,
            UpstreamUnavailable(_)
            | UpstreamTimeout
            | UpstreamRefused(_)
            | BinaryRefused { .. } => Side::Upstream,
            Config(_) | Listener(_) | AuthUnavailable | Approvals(_) | Recorder(_)
            | EgressBlocked | HookStopped => Side::Gateway,
        }
    }

    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        use HttpProxyError::*;
        match self {
            BadRequest(_) | ConflictingFraming(_) | PathRefused(_) => StatusCode::BAD_REQUEST,
            Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            NoTarget => StatusCode::NOT_FOUND,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Denied { .. } | ApprovalDenied { .. } | HookStopped => StatusCode::FORBIDDEN,
            // The gateway waited on its approvers, as it waits on an upstream: retry later.
            ApprovalTimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            ApprovalPending { .. } => StatusCode::CONFLICT,
            AuthUnavailable | Approvals(_) | Recorder(_) => StatusCode::SERVICE_UNAVAILABLE,
            EgressBlocked | UpstreamUnavailable(_) | UpstreamRefused(_) | BinaryRefused { .. } => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Config(_) | Listener(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        use HttpProxyError::*;
        match self {
            Config(_) => "config",
            Listener(_) => "listener",
            BadRequest(_) => "bad_request",
            ConflictingFraming(_) => "conflicting_framing",
            PathRefused(_) => "path_refused",
            Unauthenticated(_) => "unauthenticated",
            NoTarget => "no_target",
            BodyTooLarge(_) => "body_too_large",
            Denied { .. } => "denied",
            ApprovalDenied { .. } => "approval_denied",
            ApprovalTimedOut { .. } => "approval_timed_out",
            ApprovalPending { .. } => "approval_pending",
            AuthUnavailable => "auth_unavailable",
            Approvals(_) => "approvals_unavailable",
            Recorder(_) => "audit_unavailable",
            EgressBlocked => "egress_blocked",
            HookStopped => "hook_stopped",
            UpstreamUnavailable(_) => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamRefused(_) => "upstream_refused",
            BinaryRefused { .. } => "binary_refused",
        }
    }

    /// The JSON body the client gets.
    pub fn json(&self) -> serde_json::Value {
        use HttpProxyError::*;
        let mut body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "side": self.side(),
        });
        let extra = match self {
            Denied { rule, .. } => serde_json::json!({ "rule": rule }),
            BinaryRefused { rule, .. } => serde_json::json!({ "rule": rule, "setting": "binary" }),
            ApprovalDenied { id, rule } | ApprovalTimedOut { id, rule } => {
                serde_json::json!({ "rule": rule, "approval_id": id })
            }
            ApprovalPending {
                id,
                rule,
                retry_after_s,
            } => serde_json::json!({
                "rule": rule, "approval_id": id, "retry_after": retry_after_s
            }),
            _ => serde_json::Value::Null,
        };
        if let (Some(b), serde_json::Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        body
    }

    /// The whole response: status, JSON body and the headers that go with it
    /// (`WWW-Authenticate` for 401, `Retry-After` for a pending or timed-out approval and for
    /// approvals or audit unavailable).
    pub fn to_response(&self) -> http::Response<Bytes> {
        let body = Bytes::from(self.json().to_string());
        let mut resp = http::Response::new(body);
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            HttpProxyError::Unauthenticated(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
                );
            }
            HttpProxyError::ApprovalPending { retry_after_s, .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            // Unavailable, not forbidden: the client may try again later (the proxy replaces
            // this default with its configured `retry_after_s`).
            HttpProxyError::Approvals(_)
            | HttpProxyError::Recorder(_)
            | HttpProxyError::ApprovalTimedOut { .. } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_AFTER_S),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_names_the_rule() {
        let e = HttpProxyError::Denied {
            rule: "no-admin".into(),
            reason: "admin is off limits".into(),
        };
        let r = e.to_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["rule"], "no-admin");
        assert_eq!(v["error"], "denied");
        assert_eq!(v["side"], "client");
    }

    #[test]
    fn pending_carries_retry_after_and_id() {
        let e = HttpProxyError::ApprovalPending {
            id: "apr-1".into(),
            rule: "review-delete".into(),
            retry_after_s: 7,
        };
        let r = e.to_response();
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["approval_id"], "apr-1");
    }

    #[test]
    fn timed_out_is_retry_later_not_forbidden() {
        let e = HttpProxyError::ApprovalTimedOut {
            id: "apr-2".into(),
            rule: "review-delete".into(),
        };
        let r = e.to_response();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(r.headers().contains_key(header::RETRY_AFTER));
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["error"], "approval_timed_out");
    }
}

//! The proxy's configuration: targets, credential injection, limits, timeouts and policies for the
//! awkward cases (encoded separators, content types the gateway cannot mask).
//!
//! Deserialises from the binary's TOML with unknown fields refused. Secrets are not read here: the
//! binary resolves `env:`/`file:` references and hands the resolved value in
//! [`InjectedCredential::secret`], whose `Debug` never prints it.
//!
//! ```toml
//! review_hold_ms = 10000
//! encoded_separators = "reject"
//! other_content = "pass_and_hash"
//!
//! [[targets]]
//! name = "billing"
//! path_prefix = "/billing"
//! upstream = "https://billing.internal:8443/api"
//! ca_file = "/etc/gatehouse/billing-ca.pem"
//! credential = { kind = "bearer", secret = "…resolved by the binary…" }
//!
//! [[targets]]
//! name = "crm"
//! host = "crm.gateway.example"
//! upstream = "http://10.0.0.7:8080"
//! credential = { kind = "header", name = "X-Api-Key", secret = "…" }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::HttpProxyError;

/// The whole proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProxyConfig {
    /// The APIs behind the gateway.
    pub targets: Vec<HttpTargetConfig>,
    /// How long a reviewed request is held waiting for approval before the gateway answers
    /// `409` with the approval id and `Retry-After` (0: answer `409` at once). The retried request
    /// goes through once approved, within the rule's grant window.
    #[serde(default = "default_review_hold_ms")]
    pub review_hold_ms: u64,
    /// The `Retry-After` value (seconds) sent with a `409` for a pending approval.
    #[serde(default = "default_retry_after_s")]
    pub retry_after_s: u64,
    /// What to do with `%2F` / `%5C` in a path.
    #[serde(default)]
    pub encoded_separators: EncodedSeparatorPolicy,
    /// What to do with response bodies the gateway cannot mask (images, archives, protobuf…).
    #[serde(default)]
    pub other_content: OtherContentPolicy,
    /// Size limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// How long the gateway waits for a response body's first safe bytes before it sends the
    /// head (a small response then leaves whole, with a `Content-Length`). Held-back bytes of a
    /// body are never released on a timer: they wait for the bytes that decide them, or the end.
    #[serde(default = "default_idle_flush_ms")]
    pub idle_flush_ms: u64,
    /// At most this many bytes of each (masked) request and response body go into the session
    /// recording; the rest is counted, not stored.
    #[serde(default = "default_record_body_cap")]
    pub record_body_cap: usize,
}

fn default_review_hold_ms() -> u64 {
    10_000
}
fn default_retry_after_s() -> u64 {
    5
}
fn default_idle_flush_ms() -> u64 {
    50
}
fn default_record_body_cap() -> usize {
    64 * 1024
}

impl HttpProxyConfig {
    /// A configuration with these targets and every other setting at its default.
    pub fn with_targets(targets: Vec<HttpTargetConfig>) -> Self {
        Self {
            targets,
            review_hold_ms: default_review_hold_ms(),
            retry_after_s: default_retry_after_s(),
            encoded_separators: EncodedSeparatorPolicy::default(),
            other_content: OtherContentPolicy::default(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            idle_flush_ms: default_idle_flush_ms(),
            record_body_cap: default_record_body_cap(),
        }
    }

    /// Every secret this proxy injects, in every form it travels upstream: register them all
    /// with the pipeline's egress guard so that none can come back to a caller or a record.
    pub fn held_secrets(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter_map(|t| t.credential.as_ref())
            .flat_map(InjectedCredential::watched_forms)
            .collect()
    }

    /// Checks what serde cannot: every target is routable, names are unique, upstream URLs parse.
    pub fn validate(&self) -> Result<(), HttpProxyError> {
        let bad = |msg: String| Err(HttpProxyError::Config(msg));
        let mut names = std::collections::BTreeSet::new();
        for t in &self.targets {
            if !names.insert(t.name.as_str()) {
                return bad(format!("target name {:?} is used twice", t.name));
            }
            match (&t.host, &t.path_prefix) {
                (None, None) => {
                    return bad(format!("target {:?} needs a host or a path_prefix", t.name));
                }
                (_, Some(p)) if !p.starts_with('/') => {
                    return bad(format!(
                        "target {:?}: path_prefix must start with '/'",
                        t.name
                    ));
                }
                _ => {}
            }
            crate::upstream::UpstreamUrl::parse(&t.upstream)
                .map_err(|e| HttpProxyError::Config(format!("target {:?}: {e}", t.name)))?;
            if let Some(c) = &t.credential
                && c.secret().is_empty()
            {
                return bad(format!("target {:?}: credential secret is empty", t.name));
            }
        }
        Ok(())
    }
}

/// One API behind the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTargetConfig {
    /// Target name, as policy and audit see it.
    pub name: String,
    /// Tags for policy matching.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Route requests whose `Host` (or HTTP/2 `:authority`) is this name (port ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Route requests whose canonical path starts with this prefix (whole segments). The prefix is
    /// removed: policy sees, and the upstream receives, the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// `http://host:port[/base]` or `https://…`. A base path is prepended to the forwarded path.
    pub upstream: String,
    /// PEM file of the CA(s) that sign the upstream's certificate (default: the system bundle,
    /// else the built-in Mozilla roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The credential the gateway adds to every forwarded request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<InjectedCredential>,
}

/// A target credential, injected by the gateway and never shown to the caller. `secret` is the
/// resolved value (the binary reads it from an env var or a file); `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum InjectedCredential {
    /// `Authorization: Bearer <secret>`.
    Bearer {
        /// The token.
        secret: String,
    },
    /// `Authorization: Basic base64(<username>:<secret>)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        secret: String,
    },
    /// `<name>: <secret>` (e.g. `X-Api-Key`).
    Header {
        /// Header name.
        name: String,
        /// The header value.
        secret: String,
    },
    /// `?<param>=<secret>` added to the query string (percent-encoded).
    Query {
        /// Query parameter name.
        param: String,
        /// The parameter value.
        secret: String,
    },
}

impl InjectedCredential {
    /// The secret itself (what the egress guard must watch for).
    pub fn secret(&self) -> &str {
        match self {
            InjectedCredential::Bearer { secret }
            | InjectedCredential::Basic { secret, .. }
            | InjectedCredential::Header { secret, .. }
            | InjectedCredential::Query { secret, .. } => secret,
        }
    }

    /// Every form in which the secret travels upstream, for the egress guard: the raw secret,
    /// and for basic auth the base64 of `user:secret` as well.
    pub fn watched_forms(&self) -> Vec<String> {
        let mut forms = vec![self.secret().to_string()];
        if let InjectedCredential::Basic { username, secret } = self {
            use base64::Engine as _;
            forms.push(
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}")),
            );
        }
        forms
    }
}

impl std::fmt::Debug for InjectedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = format!("<{} bytes redacted>", self.secret().len());
        match self {
            InjectedCredential::Bearer { .. } => write!(f, "Bearer({redacted})"),
            InjectedCredential::Basic { username, .. } => {
                write!(f, "Basic({username}, {redacted})")
            }
            InjectedCredential::Header { name, .. } => write!(f, "Header({name}, {redacted})"),
            InjectedCredential::Query { param, .. } => write!(f, "Query({param}, {redacted})"),
        }
    }
}

/// What to do with an encoded `/` or `\` in a request path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EncodedSeparatorPolicy {
    /// Keep them opaque (`%2F`, `%5C`): policy and upstream see the same encoded byte.
    #[default]
    Opaque,
    /// Refuse the request with `400`.
    Reject,
}

/// What to do with a response body the gateway cannot mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OtherContentPolicy {
    /// Follow the policy: pass it through unmasked (still egress-checked, its size and SHA-256
    /// recorded instead of its bytes) where the rule says `binary = "raw"`, refuse it with `502`
    /// otherwise.
    #[default]
    PassAndHash,
    /// Refuse it with `502`, whatever the policy says.
    Refuse,
}

/// Size limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request head (HTTP/1 read buffer, HTTP/2 header list), bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header lines in a request (HTTP/1).
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Largest request body, bytes (`413` above it).
    #[serde(default = "default_max_request_body")]
    pub max_request_body: u64,
    /// Largest response body after decompression, bytes (the stream is cut above it).
    #[serde(default = "default_max_response_body")]
    pub max_response_body: u64,
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_request_body() -> u64 {
    10 * 1024 * 1024
}
fn default_max_response_body() -> u64 {
    256 * 1024 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_request_body: default_max_request_body(),
            max_response_body: default_max_response_body(),
        }
    }
}

/// Timeouts, in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Reading a request head from the client.
    #[serde(default = "default_header_read_ms")]
    pub header_read_ms: u64,
    /// Connecting (TCP + TLS) to the upstream.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// From sending the request to the upstream's response head.
    #[serde(default = "default_response_head_ms")]
    pub response_head_ms: u64,
    /// Idle upstream connections are closed after this.
    #[serde(default = "default_pool_idle_ms")]
    pub pool_idle_ms: u64,
}

fn default_header_read_ms() -> u64 {
    10_000
}
fn default_connect_ms() -> u64 {
    5_000
}
fn default_response_head_ms() -> u64 {
    60_000
}
fn default_pool_idle_ms() -> u64 {
    90_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read_ms: default_header_read_ms(),
            connect_ms: default_connect_ms(),
            response_head_ms: default_response_head_ms(),
            pool_idle_ms: default_pool_idle_ms(),
        }
    }
}

pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_like_json_round_trip_and_unknown_fields() {
        let json = serde_json::json!({
            "targets": [{
                "name": "api", "path_prefix": "/api", "upstream": "http://127.0.0.1:9/base",
                "credential": {"kind": "header", "name": "X-Api-Key", "secret": "s3cr3t-value"}
            }],
            "encoded_separators": "reject"
        });
        let cfg: HttpProxyConfig = serde_json::from_value(json).unwrap();
        assert_eq!(cfg.encoded_separators, EncodedSeparatorPolicy::Reject);
        assert_eq!(cfg.review_hold_ms, 10_000);
        let cred = cfg.targets[0].credential.as_ref().unwrap();
        assert_eq!(
            *cred,
            InjectedCredential::Header {
                name: "X-Api-Key".into(),
                secret: "s3cr3t-value".into()
            }
        );
        assert!(!format!("{cred:?}").contains("s3cr3t"));
        cfg.validate().unwrap();

        let bad = serde_json::json!({"targets": [], "review_hold": 1});
        assert!(serde_json::from_value::<HttpProxyConfig>(bad).is_err());
    }

    #[test]
    fn validate_refuses_unroutable_and_duplicate_targets() {
        let t = |name: &str, prefix: Option<&str>| HttpTargetConfig {
            name: name.into(),
            tags: vec![],
            host: None,
            path_prefix: prefix.map(str::to_string),
            upstream: "http://127.0.0.1:1".into(),
            ca_file: None,
            credential: None,
        };
        assert!(
            HttpProxyConfig::with_targets(vec![t("a", None)])
                .validate()
                .is_err()
        );
        assert!(
            HttpProxyConfig::with_targets(vec![t("a", Some("/x")), t("a", Some("/y"))])
                .validate()
                .is_err()
        );
        assert!(
            HttpProxyConfig::with_targets(vec![t("a", Some("x"))])
                .validate()
                .is_err()
        );
        let mut bad_url = t("a", Some("/x"));
        bad_url.upstream = "ftp://host".into();
        assert!(
            HttpProxyConfig::with_targets(vec![bad_url])
                .validate()
                .is_err()
        );
    }
}

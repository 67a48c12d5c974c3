//! Gatehouse's Kubernetes API proxy: every request becomes an operation (exec/attach included),
//! decided by policy, with responses and exec streams masked and recorded.
//!
//! Agents use the real `kubectl` (or client-go, kube-rs) with a kubeconfig whose `server` is the
//! gateway and whose token is their JWT or gateway key. The gateway talks to the API server with
//! the credential *it* holds ([`UpstreamCredential`]: bearer token, client certificate or a
//! kubeconfig context; the CA is always pinned).
//!
//! **Which cluster.** One listener serves any number of targets. A request to
//! `/k8s/<target>/<kubernetes path>` goes to that target; any other path goes to the
//! listener's default target (`default_target`, or the only target). A kubeconfig selects a
//! cluster with a path prefix in its server URL, which kubectl and client-go keep:
//!
//! ```yaml
//! clusters:
//! - name: prod-via-gatehouse
//!   cluster: { server: "https://gatehouse.example:6443/k8s/prod" }
//! users:
//! - name: agent
//!   user: { token: "<JWT or gateway key>" }
//! ```
//!
//! For every request the proxy
//!
//! 1. verifies the bearer token with the pipeline's [`gatehouse_core::Authenticator`] (cached
//!    per connection for 30 s); a refusal is a `401` Kubernetes `Status`;
//! 2. parses the request into a [`gatehouse_core::KubeOperation`] ([`request`]): verb, group,
//!    version, resource, subresource, namespace, name; exec/attach/portforward by subresource
//!    whatever the method; the `command=` argv of an exec parsed like an SSH exec. Path tricks
//!    (`pods/../secrets`, `%2F`) are resolved the way the API server resolves them, and the
//!    resolved path is what is forwarded;
//! 3. asks the [`gatehouse_core::Policy`], then applies two built-in defaults that only an
//!    explicit rule overrides (they apply when the decision's rule id is `default`): discovery
//!    and non-resource `GET`s are allowed ([`DISCOVERY_RULE`]); port forwarding, API proxying,
//!    ephemeral containers (`kubectl debug`) and privileged pod specs (`privileged`, `hostPID`,
//!    `hostNetwork`, `hostIPC`, `hostPath`, `allowPrivilegeEscalation`) are denied
//!    ([`SENSITIVE_RULE`]). A deny is a `403 Forbidden` `Status` naming the rule, which kubectl
//!    prints as `Error from server (Forbidden): denied by gatehouse rule …`;
//! 4. for a review, holds the request up to `review_hold_ms`, then answers `429` +
//!    `Retry-After` (client-go retries it by itself, up to ten times); the retry picks up its
//!    own request, and a decision answers exactly one retry (within ten minutes): an approval
//!    that still meets the rule as it stands runs it, a denial is `403 Forbidden`, a request
//!    nobody decided in time `504 Timeout` without `Retry-After` (client-go would retry it by
//!    itself, opening a new request each time);
//! 5. records the operation and decision before anything is forwarded (fail closed);
//! 6. forwards with the caller's `Authorization`, `Impersonate-*` and `X-Remote-*` headers
//!    removed, the cluster's credential added (and, with `impersonate = true`, the caller's
//!    identity as `Impersonate-User`/`Impersonate-Group`), `Accept` narrowed to JSON (Table
//!    included) and `Accept-Encoding: identity`, so protobuf, CBOR or gzip never carry data past
//!    masking — a non-JSON, non-text answer is refused;
//! 7. masks: `Secret` `data`/`stringData` and the last-applied annotation always ([`mask`]), in
//!    objects, lists, `Table` rows and watch events; then the decision's masking profile; logs
//!    and exec output through stream maskers (an idle flush only for a tty); every byte (headers too)
//!    through the egress guard;
//! 8. streams watches (event by event) and `logs -f` without buffering;
//! 9. records the exchange (masked, capped bodies) and the result.
//!
//! A [`gatehouse_core::GateHooks::on_chunk`] hook is shown each response body, each piece of a
//! stream (watch, logs) and of exec/attach output, after masking and the egress guard; its
//! `Stop` is a `403` Forbidden `Status` before the response head left, a cut stream after it,
//! and a `Status` on the error channel of an exec stream.
//!
//! exec/attach over WebSocket are described in the `exec` module: `v5.channel.k8s.io` /
//! `v4.channel.k8s.io` as the API server negotiates, `Upgrade: SPDY/3.1` refused with a
//! `400 Status` and never relayed; every WebSocket request is upgraded so that a denial or a
//! pending review never makes kubectl fall back to SPDY.
//!
//! ```no_run
//! # async fn run(pipeline: gatehouse_core::Pipeline, config: gatehouse_k8s::K8sProxyConfig)
//! # -> Result<(), gatehouse_k8s::K8sProxyError> {
//! let proxy = gatehouse_k8s::K8sProxy::new(config, pipeline)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:6443").await
//!     .map_err(|e| gatehouse_k8s::K8sProxyError::Listener(e.to_string()))?;
//! proxy.serve(listener, None, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Request bodies are JSON, YAML or Kubernetes protobuf (`415` otherwise). kubectl's typed
//! generators (`kubectl create configmap …`, `kubectl run`) send protobuf: kinds that carry a
//! pod template are decoded for the privileged-spec check ([`protobuf`]), other kinds are
//! forwarded byte-exact and recorded by digest; a body the check needs and cannot read is
//! refused with a `400 Status`.
//!
//! Large lists stream: JSON responses of resources that never hold Secrets (pods, config maps,
//! workloads, …) go through the masking profile's JSON stream masker chunk by chunk (the first
//! MiB is collected before the response head, so an egress block there is a clean `502`).
//!
//! Port forwarding (`pods/portforward`) is decided like any operation (refused unless a rule
//! allows it, see step 3), on both of kubectl's attempts — the SPDY-over-WebSocket tunnel
//! (`SPDY/3.1+portforward.k8s.io`) and its plain SPDY fallback — so kubectl prints
//! `error upgrading connection: denied by gatehouse rule …`. An allowed tunnel is relayed when
//! the rule says `binary = "raw"`, reading every SPDY frame the caller sends ([`spdy`]): each
//! stream's port is checked and recorded, its bytes both ways recorded by size and SHA-256. A
//! plain SPDY upgrade is never relayed.
//!
//! Known limits: responses that may hold Secrets (resource `secrets`, unknown resources,
//! subresources) are parsed whole, up to `limits.max_response_body`; SPDY-only clients
//! cannot exec (kubectl before 1.30) or port-forward (before 1.31); a policy rule cannot name
//! ports of a port forward (a request's `ports=` query, when present, bounds its streams).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
mod exec;
mod kubeconfig;
pub mod mask;
mod portforward;
pub mod protobuf;
mod proxy;
pub mod request;
pub mod spdy;
mod upstream;

pub use config::{K8sProxyConfig, K8sTargetConfig, Limits, Timeouts, UpstreamCredential};
pub use error::K8sProxyError;
pub use exec::SUBPROTOCOLS;
pub use proxy::{DISCOVERY_RULE, K8sProxy, SENSITIVE_RULE, SPDY_RULE, json_accept, mask_json_with};

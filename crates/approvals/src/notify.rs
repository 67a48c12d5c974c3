//! Telling humans that a request is waiting: the notifier trait and its webhook implementation.
//!
//! Promise: notifying never blocks or fails the approval flow. The webhook notifier queues each
//! message and a background task delivers them in order, retrying a failing receiver with
//! exponential backoff until it answers 2xx, so a receiver that is down gets every message when it
//! comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_core::{ApprovalDecision, ApprovalRecord, ApproverVote};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::BrokerError;
use crate::store::state_name;

/// Something worth telling approvers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ApprovalNotice {
    /// A request opened and waits for approvers.
    Opened(ApprovalRecord),
    /// An approver voted (the record shows the resulting state).
    Decided {
        /// The request after the vote.
        record: ApprovalRecord,
        /// The vote.
        vote: ApproverVote,
    },
    /// The request closed without a vote (timed out, or the caller went away).
    Closed(ApprovalRecord),
}

impl ApprovalNotice {
    /// The Slack-compatible message text (mrkdwn).
    pub fn text(&self) -> String {
        match self {
            ApprovalNotice::Opened(r) => {
                let req = &r.request;
                format!(
                    "Approval requested `{id}`: *{who}* wants to run on `{target}`:\n```{op}```\nRule `{rule}`: {reason}\nNeeds {n} approval(s) from {groups} within {secs} s. Decide with `gatehouse approvals approve {id}` or `gatehouse approvals deny {id}`.",
                    id = r.id,
                    who = req.requester.subject,
                    target = req.target.name,
                    op = req.shown().summary(),
                    rule = req.rule_id,
                    reason = req.reason,
                    n = req.requirement.approvals_required.max(1),
                    groups = req.requirement.approver_groups.join(", "),
                    secs = req.requirement.timeout_ms / 1000,
                )
            }
            ApprovalNotice::Decided { record, vote } => {
                let verb = match vote.decision {
                    ApprovalDecision::Approve => "approved",
                    ApprovalDecision::Deny => "denied",
                };
                format!(
                    "Approval `{id}` {verb} by *{who}*: {why}\nRequest is now {state}.",
                    id = record.id,
                    who = vote.approver,
                    why = vote.justification,
                    state = state_name(record.state),
                )
            }
            ApprovalNotice::Closed(record) => format!(
                "Approval `{id}` closed: {state}.",
                id = record.id,
                state = state_name(record.state)
            ),
        }
    }
}

/// Receives notices. Must return at once (queue, don't send inline).
pub trait ApprovalNotifier: Send + Sync + std::fmt::Debug {
    /// Queues a notice for delivery.
    fn notify(&self, notice: ApprovalNotice);
}

/// Webhook settings. A Slack incoming-webhook URL is itself a credential: prefer `url_env` or
/// `url_file` to a literal `url`, and note that `Debug` never prints the URL's path or query.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL that receives `POST {"text": …}` (a Slack incoming webhook or
    /// anything compatible). Exactly one of `url`, `url_env`, `url_file` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Read the URL from this environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// Read the URL from this file (surrounding whitespace ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<std::path::PathBuf>,
    /// First retry delay.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Retry delay cap.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Deadline of one delivery attempt (connect + request + response head).
    #[serde(default = "default_attempt_timeout_ms")]
    pub attempt_timeout_ms: u64,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.url.as_deref().map(|u| match u.parse::<http::Uri>() {
            Ok(uri) => format!(
                "{}://{}/<redacted>",
                uri.scheme_str().unwrap_or("?"),
                uri.authority().map_or("?", |a| a.as_str())
            ),
            Err(_) => "<redacted>".to_string(),
        });
        f.debug_struct("WebhookConfig")
            .field("url", &url)
            .field("url_env", &self.url_env)
            .field("url_file", &self.url_file)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("attempt_timeout_ms", &self.attempt_timeout_ms)
            .finish()
    }
}

fn default_initial_backoff_ms() -> u64 {
    500
}
fn default_max_backoff_ms() -> u64 {
    60_000
}
fn default_attempt_timeout_ms() -> u64 {
    5_000
}

impl WebhookConfig {
    /// Settings with default backoff for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            url_env: None,
            url_file: None,
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            attempt_timeout_ms: default_attempt_timeout_ms(),
        }
    }
}

impl WebhookConfig {
    /// The URL from whichever of `url`, `url_env`, `url_file` is set (exactly one must be).
    pub fn resolve_url(&self) -> Result<String, BrokerError> {
        let bad = |why: String| BrokerError::Config(format!("webhook: {why}"));
        match (&self.url, &self.url_env, &self.url_file) {
            (Some(url), None, None) => Ok(url.clone()),
            (None, Some(var), None) => std::env::var(var)
                .map(|v| v.trim().to_string())
                .map_err(|_| bad(format!("environment variable {var} is not set"))),
            (None, None, Some(path)) => std::fs::read_to_string(path)
                .map(|v| v.trim().to_string())
                .map_err(|e| bad(format!("url file {}: {e}", path.display()))),
            _ => Err(bad("set exactly one of url, url_env, url_file".into())),
        }
    }
}

/// Delivery counters, for health endpoints and tests.
#[derive(Debug, Default)]
pub struct WebhookStats {
    queued: AtomicU64,
    delivered: AtomicU64,
    failed_attempts: AtomicU64,
}

impl WebhookStats {
    /// Messages queued so far.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
    /// Messages the receiver accepted (2xx).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
    /// Attempts that failed and were retried.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct Endpoint {
    uri: http::Uri,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Posts Slack-compatible JSON to a webhook from a background task, retrying with backoff.
#[derive(Debug)]
pub struct WebhookNotifier {
    queue: mpsc::UnboundedSender<Bytes>,
    stats: Arc<WebhookStats>,
    worker: JoinHandle<()>,
}

impl Drop for WebhookNotifier {
    fn drop(&mut self) {
        self.worker.abort();
    }
}

impl WebhookNotifier {
    /// Resolves and validates the URL and starts the delivery task (needs a tokio runtime).
    pub fn spawn(config: WebhookConfig) -> Result<Self, BrokerError> {
        let endpoint = endpoint(&config.resolve_url()?)?;
        let (queue, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WebhookStats::default());
        let worker = tokio::spawn(deliver_forever(config, endpoint, rx, Arc::clone(&stats)));
        Ok(Self {
            queue,
            stats,
            worker,
        })
    }

    /// Delivery counters.
    pub fn stats(&self) -> Arc<WebhookStats> {
        Arc::clone(&self.stats)
    }

    /// Queues a raw message text.
    pub fn send_text(&self, text: &str) {
        let body = serde_json::json!({ "text": text }).to_string();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.queue.send(Bytes::from(body)).is_err() {
            tracing::error!("approval webhook worker is gone; notice not queued");
        }
    }
}

impl ApprovalNotifier for WebhookNotifier {
    fn notify(&self, notice: ApprovalNotice) {
        self.send_text(&notice.text());
    }
}

fn endpoint(url: &str) -> Result<Endpoint, BrokerError> {
    let bad = |why: &str| BrokerError::Config(format!("webhook url: {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let tls = match uri.scheme_str() {
        Some("http") => None,
        Some("https") => {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        }
        _ => return Err(bad("scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    Ok(Endpoint {
        uri,
        host,
        port,
        tls,
    })
}

async fn deliver_forever(
    config: WebhookConfig,
    endpoint: Endpoint,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    stats: Arc<WebhookStats>,
) {
    let attempt_timeout = Duration::from_millis(config.attempt_timeout_ms.max(1));
    let initial = Duration::from_millis(config.initial_backoff_ms.max(1));
    let cap = Duration::from_millis(config.max_backoff_ms.max(config.initial_backoff_ms).max(1));
    while let Some(body) = rx.recv().await {
        let mut backoff = initial;
        loop {
            let attempt =
                tokio::time::timeout(attempt_timeout, post(&endpoint, body.clone())).await;
            match attempt {
                Ok(Ok(())) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(why)) => {
                    tracing::warn!(%why, retry_in_ms = backoff.as_millis() as u64, "approval webhook failed");
                }
                Err(_) => {
                    tracing::warn!(
                        retry_in_ms = backoff.as_millis() as u64,
                        "approval webhook timed out"
                    );
                }
            }
            stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(cap);
        }
    }
}

async fn post(endpoint: &Endpoint, body: Bytes) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match &endpoint.tls {
        None => send(tcp, endpoint, body).await,
        Some(tls) => {
            let name = rustls_pki_types::ServerName::try_from(endpoint.host.clone())
                .map_err(|e| format!("server name: {e}"))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            send(stream, endpoint, body).await
        }
    }
}

async fn send<S>(io: S, endpoint: &Endpoint, body: Bytes) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(connection);
    let path = endpoint
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let host = match endpoint.uri.port_u16() {
        Some(p) => format!("{}:{p}", endpoint.host),
        None => endpoint.host.clone(),
    };
    let request = http::Request::post(path)
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "gatehouse-approvals")
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"));
    driver.abort();
    let response = response?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::{
        ApprovalId, ApprovalRequest, ApprovalState, AuthMethod, ExecCommand, Identity, Operation,
        Protocol, ReviewRequirement, SessionId, SshOperation, Target,
    };

    #[test]
    fn the_notice_shows_the_operation_as_recorded_not_the_real_one() {
        let exec = |line: &str| Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line)));
        let record = ApprovalRecord {
            id: ApprovalId("req-1".into()),
            request: ApprovalRequest {
                requester: Identity::new("agent", "https://idp", AuthMethod::Test),
                session: SessionId("s".into()),
                target: Target::new("web", Protocol::Ssh),
                operation: exec("notify alice@example.com"),
                rule_id: "r".into(),
                reason: "why".into(),
                requirement: ReviewRequirement {
                    approver_groups: vec!["ops".into()],
                    approvals_required: 1,
                    timeout_ms: 1000,
                    grant_window_ms: None,
                },
                index: 0,
                shown: Some(exec("notify [email]")),
            },
            operation_hash: "00".into(),
            state: ApprovalState::Pending,
            votes: Vec::new(),
            opened_at: gatehouse_core::now(),
            closed_at: None,
        };
        let text = ApprovalNotice::Opened(record).text();
        assert!(text.contains("exec notify [email]"), "{text}");
        assert!(!text.contains("alice@"), "{text}");
    }
}

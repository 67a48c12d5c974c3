//! The proxy's configuration: clusters (targets), the credential the gateway holds for each, the
//! pinned CA, limits and timeouts.
//!
//! Deserialises from the binary's TOML with unknown fields refused. As in `gatehouse-http`,
//! secrets are not read from env vars here: the binary resolves `env:`/`file:` references and
//! hands the resolved value in `secret`; certificate, key and kubeconfig *files* are read by
//! [`crate::K8sProxy::new`] at startup. No `Debug` output prints a secret.
//!
//! ```toml
//! default_target = "dev"
//!
//! [[targets]]
//! name = "dev"
//! server = "https://10.0.0.1:6443"
//! ca_file = "/etc/gatehouse/dev-ca.pem"
//! credential = { kind = "bearer", secret = "…resolved by the binary…" }
//! tags = ["env:dev"]
//!
//! [[targets]]
//! name = "prod"
//! credential = { kind = "kubeconfig", path = "/etc/gatehouse/prod.kubeconfig", context = "prod" }
//! impersonate = true
//!
//! [[targets]]
//! name = "lab"
//! server = "https://lab.internal:6443"
//! ca_file = "/etc/gatehouse/lab-ca.pem"
//! credential = { kind = "client_cert", cert_file = "/etc/gatehouse/lab.crt", key_file = "/etc/gatehouse/lab.key" }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::K8sProxyError;

/// The whole proxy configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sProxyConfig {
    /// The clusters behind the gateway. Each is reachable at `/k8s/<name>/…`.
    pub targets: Vec<K8sTargetConfig>,
    /// The target that paths without a `/k8s/<name>` prefix go to (default: the only target,
    /// when there is exactly one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_target: Option<String>,
    /// How long a reviewed request (not exec/attach) is held waiting for approval before the
    /// gateway answers `429` + `Retry-After`; client-go retries such answers by itself.
    #[serde(default = "default_review_hold_ms")]
    pub review_hold_ms: u64,
    /// The `Retry-After` value (seconds) of a pending approval.
    #[serde(default = "default_retry_after_s")]
    pub retry_after_s: u64,
    /// Size limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// With no new upstream bytes for this long, a tty exec session's stream maskers emit their
    /// held-back tail (so prompts and echo appear). Logs and exec without a tty never release
    /// held bytes on a timer: they wait for the bytes that decide them, or the stream's end.
    #[serde(default = "default_idle_flush_ms")]
    pub idle_flush_ms: u64,
    /// At most this many bytes of each masked request/response body go into the recording.
    #[serde(default = "default_record_body_cap")]
    pub record_body_cap: usize,
}

fn default_review_hold_ms() -> u64 {
    10_000
}
fn default_retry_after_s() -> u64 {
    1
}
fn default_idle_flush_ms() -> u64 {
    50
}
fn default_record_body_cap() -> usize {
    64 * 1024
}

/// One cluster behind the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sTargetConfig {
    /// Target name, as policy and audit see it, and the `/k8s/<name>` path segment.
    pub name: String,
    /// Tags for policy matching.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The API server URL, `https://host:port[/prefix]` (`http://` only for tests). Optional
    /// with a kubeconfig credential (its cluster's `server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// PEM file of the CA that signs the API server's certificate: pinned, the system roots are
    /// never used. Optional with a kubeconfig that carries the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The credential the gateway uses upstream.
    pub credential: UpstreamCredential,
    /// Send `Impersonate-User`/`Impersonate-Group` naming the caller's identity (the gateway's
    /// own credential must be allowed to impersonate). The caller's own `Impersonate-*` headers
    /// are always stripped.
    #[serde(default)]
    pub impersonate: bool,
}

/// The credential the gateway holds for a cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum UpstreamCredential {
    /// `Authorization: Bearer <secret>` (a service-account token).
    Bearer {
        /// The token (resolved by the binary).
        secret: String,
    },
    /// A TLS client certificate.
    ClientCert {
        /// PEM certificate chain.
        cert_file: PathBuf,
        /// PEM private key.
        key_file: PathBuf,
    },
    /// A kubeconfig file: server, CA and user credential of one context.
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Context name (default: the file's `current-context`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        context: Option<String>,
    },
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamCredential::Bearer { secret } => {
                write!(f, "Bearer(<{} bytes redacted>)", secret.len())
            }
            UpstreamCredential::ClientCert {
                cert_file,
                key_file,
            } => write!(
                f,
                "ClientCert({}, {})",
                cert_file.display(),
                key_file.display()
            ),
            UpstreamCredential::Kubeconfig { path, context } => {
                write!(f, "Kubeconfig({}, {context:?})", path.display())
            }
        }
    }
}

/// A target's credential and connection details, files read.
#[derive(Clone)]
pub(crate) struct ResolvedTarget {
    pub server: String,
    pub ca_pem: Option<Vec<u8>>,
    pub bearer: Option<String>,
    /// (certificate chain PEM, private key PEM).
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl ResolvedTarget {
    /// Every form in which held material could leak: the token, and the key's PEM body lines.
    fn watched_forms(&self) -> Vec<String> {
        let mut forms = Vec::new();
        if let Some(t) = &self.bearer {
            forms.push(t.clone());
        }
        if let Some((_, key)) = &self.client_cert {
            let text = String::from_utf8_lossy(key);
            let body: String = text
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::trim)
                .collect();
            forms.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.starts_with("-----") && l.len() >= 32)
                    .map(str::to_string),
            );
            if !body.is_empty() {
                forms.push(body);
            }
        }
        forms
    }
}

impl K8sProxyConfig {
    /// A configuration with these targets and every other setting at its default.
    pub fn with_targets(targets: Vec<K8sTargetConfig>) -> Self {
        Self {
            targets,
            default_target: None,
            review_hold_ms: default_review_hold_ms(),
            retry_after_s: default_retry_after_s(),
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            idle_flush_ms: default_idle_flush_ms(),
            record_body_cap: default_record_body_cap(),
        }
    }

    /// Every secret this proxy holds, in every form it travels: register them all with the
    /// pipeline's egress guard. Files that cannot be read are skipped here ([`Self::validate`]
    /// reports them).
    pub fn held_secrets(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter_map(|t| t.resolve().ok())
            .flat_map(|r| r.watched_forms())
            .collect()
    }

    /// Checks what serde cannot: names unique and usable in a path, the default target exists,
    /// credentials and CA files readable, URLs well formed.
    pub fn validate(&self) -> Result<(), K8sProxyError> {
        let mut names = std::collections::BTreeSet::new();
        for t in &self.targets {
            if !names.insert(t.name.as_str()) {
                return Err(K8sProxyError::Config(format!(
                    "target name {:?} is used twice",
                    t.name
                )));
            }
            if t.name.is_empty()
                || !t
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(K8sProxyError::Config(format!(
                    "target name {:?}: use letters, digits, '-', '_' and '.'",
                    t.name
                )));
            }
            t.resolve()?;
        }
        if let Some(d) = &self.default_target
            && !names.contains(d.as_str())
        {
            return Err(K8sProxyError::Config(format!(
                "default_target {d:?} is not a target"
            )));
        }
        Ok(())
    }

    /// The target paths without a `/k8s/<name>` prefix go to.
    pub fn default_target_name(&self) -> Option<&str> {
        match (&self.default_target, self.targets.as_slice()) {
            (Some(d), _) => Some(d.as_str()),
            (None, [only]) => Some(only.name.as_str()),
            _ => None,
        }
    }
}

impl K8sTargetConfig {
    /// Reads credential, CA and kubeconfig files.
    pub(crate) fn resolve(&self) -> Result<ResolvedTarget, K8sProxyError> {
        let cfg_err = |m: String| K8sProxyError::Config(format!("target {:?}: {m}", self.name));
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| cfg_err(format!("{}: {e}", p.display())));
        let mut resolved = match &self.credential {
            UpstreamCredential::Bearer { secret } => {
                if secret.is_empty() {
                    return Err(cfg_err("bearer secret is empty".into()));
                }
                ResolvedTarget {
                    server: String::new(),
                    ca_pem: None,
                    bearer: Some(secret.clone()),
                    client_cert: None,
                }
            }
            UpstreamCredential::ClientCert {
                cert_file,
                key_file,
            } => ResolvedTarget {
                server: String::new(),
                ca_pem: None,
                bearer: None,
                client_cert: Some((read(cert_file)?, read(key_file)?)),
            },
            UpstreamCredential::Kubeconfig { path, context } => {
                let text = read(path)?;
                crate::kubeconfig::resolve(&text, path, context.as_deref()).map_err(cfg_err)?
            }
        };
        if let Some(server) = &self.server {
            resolved.server = server.clone();
        }
        if let Some(ca) = &self.ca_file {
            resolved.ca_pem = Some(read(ca)?);
        }
        if resolved.server.is_empty() {
            return Err(cfg_err(
                "no server URL (set `server` or use a kubeconfig)".into(),
            ));
        }
        let url = crate::upstream::UpstreamUrl::parse(&resolved.server).map_err(cfg_err)?;
        if url.tls && resolved.ca_pem.is_none() {
            return Err(cfg_err(
                "the API server's CA must be pinned (`ca_file`, or the kubeconfig's certificate-authority)".into(),
            ));
        }
        Ok(resolved)
    }
}

/// Decodes a kubeconfig `*-data` field.
pub(crate) fn b64(field: &str, data: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| format!("kubeconfig {field}: {e}"))
}

/// Size limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request head, bytes.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Largest request body, bytes (`413` above it).
    #[serde(default = "default_max_request_body")]
    pub max_request_body: u64,
    /// Largest JSON response the gateway buffers to mask, and largest watch event, bytes
    /// (`502` / the stream is cut above it).
    #[serde(default = "default_max_response_body")]
    pub max_response_body: u64,
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_request_body() -> u64 {
    3 * 1024 * 1024
}
fn default_max_response_body() -> u64 {
    256 * 1024 * 1024
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
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
    /// Connecting (TCP + TLS) to the API server.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// From sending a request to the API server's response head.
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
    fn parses_and_redacts() {
        let cfg: K8sProxyConfig = serde_json::from_value(serde_json::json!({
            "targets": [{
                "name": "dev", "server": "http://127.0.0.1:1",
                "credential": {"kind": "bearer", "secret": "tok-SECRET-123"},
                "impersonate": true
            }]
        }))
        .unwrap();
        assert_eq!(cfg.review_hold_ms, 10_000);
        assert_eq!(cfg.default_target_name(), Some("dev"));
        assert!(!format!("{cfg:?}").contains("tok-SECRET"));
        cfg.validate().unwrap();
        assert_eq!(cfg.held_secrets(), vec!["tok-SECRET-123".to_string()]);
        assert!(
            serde_json::from_value::<K8sProxyConfig>(serde_json::json!({"targets": [], "x": 1}))
                .is_err()
        );
    }

    #[test]
    fn https_needs_a_pinned_ca() {
        let cfg = K8sProxyConfig::with_targets(vec![K8sTargetConfig {
            name: "dev".into(),
            tags: vec![],
            server: Some("https://127.0.0.1:6443".into()),
            ca_file: None,
            credential: UpstreamCredential::Bearer { secret: "t".into() },
            impersonate: false,
        }]);
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("pinned"), "{e}");
        let mut two = cfg.clone();
        two.targets[0].server = Some("http://127.0.0.1:1".into());
        two.targets.push(two.targets[0].clone());
        assert!(two.validate().is_err());
        let mut bad_name = cfg;
        bad_name.targets[0].name = "a/b".into();
        assert!(bad_name.validate().is_err());
    }
}

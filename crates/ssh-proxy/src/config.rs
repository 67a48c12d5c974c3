//! What an SSH listener serves: its host key, the targets with the credentials the gateway holds,
//! and the knobs tests and operators need (rate limits, rejection time, idle flush).
//!
//! Upstream credentials live here and nowhere else: they never travel with the
//! [`gatehouse_core::Target`] into policy, approvals or the audit log. The binary resolves secret
//! references (env vars, files) before it builds this struct.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A secret the gateway holds (an upstream password or private key). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret text, for the one place that must use it (upstream login, egress guard).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// The whole SSH listener configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshProxyConfig {
    /// The gateway's host key (OpenSSH private key file). Generated (ed25519, mode 0600) on first
    /// run if absent; its fingerprint is what agents pin.
    pub host_key_path: PathBuf,
    /// The hosts behind the gateway.
    #[serde(default)]
    pub targets: Vec<SshTargetConfig>,
    /// Environment variables a client may set (`env` requests). A trailing `*` matches a prefix
    /// (`LC_*`). Everything else is refused: `LD_PRELOAD` and friends change what runs.
    #[serde(default = "default_env_allow")]
    pub env_allow: Vec<String>,
    /// Failed logins per source address before further attempts are refused outright.
    #[serde(default)]
    pub login_rate_limit: LoginRateLimit,
    /// How long a rejected authentication takes (constant, against timing probes). Tests lower it.
    #[serde(default = "default_auth_rejection_ms")]
    pub auth_rejection_time_ms: u64,
    /// In a channel with a pty: how long output may sit in the stream masker's held-back tail
    /// before it is flushed, so a shell prompt and echo appear without waiting for more output.
    /// Without a pty, held bytes are never released on a timer: they wait for the bytes that
    /// decide them (a line end) or the end of the stream.
    #[serde(default = "default_idle_flush_ms")]
    pub idle_flush_ms: u64,
    /// End the connection when the caller's identity expires (default: yes).
    #[serde(default = "default_true")]
    pub end_session_on_identity_expiry: bool,
    /// Limit for connecting and logging in to a target.
    #[serde(default = "default_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    /// SSH channel window granted to each side, in bytes. russh's client never grows a window
    /// on its own, so this is the in-flight limit per channel in each direction.
    #[serde(default = "default_window")]
    pub window_size: u32,
    /// Largest SSH packet payload.
    #[serde(default = "default_packet")]
    pub maximum_packet_size: u32,
    /// Idle connections are closed after this many seconds (0: never).
    #[serde(default = "default_inactivity_secs")]
    pub inactivity_timeout_secs: u64,
    /// Text sent before login (`SSH_MSG_USERAUTH_BANNER`; OpenSSH prints it on stderr). None
    /// by default: a client's stderr carries nothing from the gateway unless something is
    /// refused.
    #[serde(default)]
    pub banner: Option<String>,
}

fn default_env_allow() -> Vec<String> {
    vec!["LANG".into(), "LC_*".into(), "TERM".into()]
}
fn default_auth_rejection_ms() -> u64 {
    1000
}
fn default_idle_flush_ms() -> u64 {
    15
}
fn default_true() -> bool {
    true
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_window() -> u32 {
    2 * 1024 * 1024
}
fn default_packet() -> u32 {
    32 * 1024
}
fn default_inactivity_secs() -> u64 {
    3600
}

impl SshProxyConfig {
    /// A configuration with defaults for everything but the host key path.
    pub fn new(host_key_path: impl Into<PathBuf>) -> Self {
        Self {
            host_key_path: host_key_path.into(),
            targets: Vec::new(),
            env_allow: default_env_allow(),
            login_rate_limit: LoginRateLimit::default(),
            auth_rejection_time_ms: default_auth_rejection_ms(),
            idle_flush_ms: default_idle_flush_ms(),
            end_session_on_identity_expiry: true,
            upstream_connect_timeout_ms: default_connect_timeout_ms(),
            window_size: default_window(),
            maximum_packet_size: default_packet(),
            inactivity_timeout_secs: default_inactivity_secs(),
            banner: None,
        }
    }

    /// Adds a target (builder style).
    pub fn with_target(mut self, target: SshTargetConfig) -> Self {
        self.targets.push(target);
        self
    }

    /// The target called `name`.
    pub fn target(&self, name: &str) -> Option<&SshTargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Whether a client may set environment variable `name`.
    pub fn env_allowed(&self, name: &str) -> bool {
        self.env_allow
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            })
    }

    /// Every secret the gateway holds for SSH targets, for the egress guard: passwords, private
    /// key files as text, each base64 line of those files, and the raw private key bytes (the
    /// guard adds their base64, hex and URL-encoded forms). Unreadable key files are skipped here;
    /// they fail at login instead.
    pub fn held_secrets(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for target in &self.targets {
            let pem = match &target.credential {
                UpstreamCredential::Password { password } => {
                    out.push(password.expose().as_bytes().to_vec());
                    continue;
                }
                UpstreamCredential::PrivateKey { openssh } => openssh.expose().to_string(),
                UpstreamCredential::PrivateKeyFile { path } => {
                    match std::fs::read_to_string(path) {
                        Ok(text) => text,
                        Err(_) => continue,
                    }
                }
            };
            push_key_secrets(&pem, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    pub(crate) fn auth_rejection_time(&self) -> Duration {
        Duration::from_millis(self.auth_rejection_time_ms)
    }

    pub(crate) fn idle_flush(&self) -> Duration {
        Duration::from_millis(self.idle_flush_ms.max(1))
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms.max(1))
    }
}

fn push_key_secrets(pem: &str, out: &mut Vec<Vec<u8>>) {
    let trimmed = pem.trim();
    if trimmed.is_empty() {
        return;
    }
    out.push(trimmed.as_bytes().to_vec());
    for line in trimmed.lines() {
        let line = line.trim();
        // The armour lines are public knowledge; the base64 body lines are key material.
        if line.len() >= 16 && !line.starts_with("-----") {
            out.push(line.as_bytes().to_vec());
        }
    }
    if let Ok(key) = russh::keys::PrivateKey::from_openssh(trimmed)
        && let Some(pair) = key.key_data().ed25519()
    {
        out.push(pair.private.to_bytes().to_vec());
    }
}

/// Failed-login limit per source address (all tests come from 127.0.0.1, so it is configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRateLimit {
    /// Failures allowed within the window; 0 disables the limit.
    pub max_failures: u32,
    /// Sliding window, in seconds.
    pub window_secs: u64,
}

impl Default for LoginRateLimit {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window_secs: 60,
        }
    }
}

/// One host behind the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshTargetConfig {
    /// Name agents log in to (`ssh NAME@gateway` or `ssh login@NAME@gateway`).
    pub name: String,
    /// `host:port` of the target's sshd.
    pub address: String,
    /// The account the gateway logs in as.
    pub login: String,
    /// Other accounts a caller may ask for with `login@NAME` (same credential).
    #[serde(default)]
    pub extra_logins: Vec<String>,
    /// The credential the gateway holds for the target.
    pub credential: UpstreamCredential,
    /// How the target's host key is verified. Never trusted on first use.
    pub host_key: UpstreamHostKey,
    /// Tags for policy matching (`prod`, `env:staging`).
    #[serde(default)]
    pub tags: BTreeSet<String>,
}

impl SshTargetConfig {
    /// The policy-facing description of this target (no credential).
    pub fn target(&self) -> gatehouse_core::Target {
        let mut t = gatehouse_core::Target::new(&self.name, gatehouse_core::Protocol::Ssh);
        t.tags = self.tags.clone();
        t
    }

    /// Whether a caller may log in to the target as `login`.
    pub fn allows_login(&self, login: &str) -> bool {
        self.login == login || self.extra_logins.iter().any(|l| l == login)
    }
}

/// The credential the gateway presents to a target.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum UpstreamCredential {
    /// An OpenSSH private key file (unencrypted).
    PrivateKeyFile {
        /// Path to the key.
        path: PathBuf,
    },
    /// An OpenSSH private key given inline (already resolved from a secret reference).
    PrivateKey {
        /// The key text (`-----BEGIN OPENSSH PRIVATE KEY-----…`).
        openssh: Secret,
    },
    /// A password.
    Password {
        /// The password.
        password: Secret,
    },
}

/// How the gateway verifies a target's host key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum UpstreamHostKey {
    /// A pinned `SHA256:…` fingerprint (as `ssh-keygen -lf` prints it).
    Fingerprint {
        /// The fingerprint, e.g. `SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU`.
        sha256: String,
    },
    /// A pinned public key (`ssh-ed25519 AAAA…`).
    PublicKey {
        /// The key in OpenSSH format.
        openssh: String,
    },
    /// A known_hosts file (plain or hashed entries).
    KnownHosts {
        /// The file.
        path: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_from_toml_and_refuses_unknown_fields() {
        let text = r#"
            host_key_path = "/var/lib/gatehouse/ssh_host_ed25519"
            env_allow = ["LANG", "LC_*"]
            auth_rejection_time_ms = 50
            login_rate_limit = { max_failures = 3, window_secs = 30 }

            [[targets]]
            name = "web-1"
            address = "10.0.0.5:22"
            login = "deploy"
            credential = { kind = "password", password = "hunter2-upstream" }
            host_key = { kind = "fingerprint", sha256 = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU" }
            tags = ["prod"]
        "#;
        let config: SshProxyConfig = toml::from_str(text).unwrap();
        assert_eq!(config.targets[0].login, "deploy");
        assert!(config.env_allowed("LC_ALL"));
        assert!(!config.env_allowed("LD_PRELOAD"));
        assert_eq!(config.idle_flush_ms, 15);
        assert!(config.end_session_on_identity_expiry);
        assert_eq!(config.held_secrets(), vec![b"hunter2-upstream".to_vec()]);
        // Debug never shows the password.
        assert!(!format!("{config:?}").contains("hunter2-upstream"));

        let typo = text.replace("env_allow", "env_alow");
        assert!(toml::from_str::<SshProxyConfig>(&typo).is_err());
        let bad_cred = text.replace(
            "kind = \"password\", password",
            "kind = \"password\", pasword",
        );
        assert!(toml::from_str::<SshProxyConfig>(&bad_cred).is_err());
    }
}

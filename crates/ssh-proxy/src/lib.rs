//! Gatehouse's SSH bastion: agents run exec, shell and pty sessions on hosts through the gateway,
//! which holds the host credentials, decides each command, masks output and records the session.
//!
//! ```text
//! agent ──ssh TARGET@gateway (token as password / keyboard-interactive, or a registered key)──▶
//!   SshProxy: russh server · FailedLoginLimiter · Authenticator → Identity
//!   → upstream: russh client, host key pinned (fingerprint, public key or known_hosts), gateway's
//!     own credential (private key or password) — never the caller's
//!   per session channel:
//!     pty-req / env (allow-list) / window-change / signal / stdin / EOF forwarded
//!     exec (with its ExecFacts) / shell / subsystem → gatehouse_core::Gate (hooks, Policy,
//!       record, approval) → allowed | denied or approval denied (stderr line, exit 126) |
//!       approval timed out (124) | approvals or audit unavailable (75, EX_TEMPFAIL) | review
//!       (stderr line, then wait until decided or the channel closes: abandoned)
//!     port forwarding / agent forwarding → Gate as a whole
//!     remote, agent, X11, Unix-socket and tun forwarding, unknown channel types → refused
//!       whatever the policy, recorded with the decision (vendor/russh adds the hook for the last)
//!     stdout, stderr → StreamMasker (idle flush) → EgressGuard → client and recording
//!     the target's exit status before its EOF (the EOF waits for it, at most 5 s), so a
//!       client that closes on EOF (OpenSSH's ControlMaster) still gets it
//!   Recorder: SessionStart, each Operation + Decision, approvals, results (exit status, findings),
//!     recordings (exec output; terminals as asciicast frames with input and resizes), SessionEnd
//! ```
//!
//! The binary builds an [`SshProxyConfig`], resolves target secrets, hands the layers over as a
//! [`gatehouse_core::Pipeline`], and calls [`SshProxy::serve`] with a bound listener.
//!
//! Flow control: each channel is pumped by its own tasks, and every write waits for the peer's
//! SSH window, so a slow reader stalls its writer instead of filling memory. russh grants window
//! on receipt rather than on consumption; the bound then comes from russh's per-channel message
//! buffers, which, when full, pause reading that whole connection (other channels of the same
//! connection wait too) until the slow side catches up.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod channel;
pub mod config;
mod error;
pub mod hostkey;
pub mod login;
mod session;
mod upstream;

use std::future::Future;
use std::sync::Arc;

use gatehouse_core::{Gate, Pipeline};
use russh::keys::PrivateKey;

pub use config::{
    LoginRateLimit, Secret, SshProxyConfig, SshTargetConfig, UpstreamCredential, UpstreamHostKey,
};
pub use error::SshProxyError;
pub use login::{FailedLoginLimiter, LoginName};

/// Exit status a refused command reports (the shell's "found but not executable"): denied by
/// policy, by a hook or by the gateway's own checks, or by an approver.
pub const EXIT_DENIED: u32 = 126;
/// Exit status when nobody decided a reviewed command before its approval request timed out
/// (`timeout(1)`'s status): the command did not run.
pub const EXIT_APPROVAL_TIMED_OUT: u32 = 124;
/// Exit status when the approvals layer or the audit log cannot take the command now
/// (`EX_TEMPFAIL`): the command did not run; retry later. Never a permission error.
pub const EXIT_UNAVAILABLE: u32 = 75;
/// Exit status when the gateway itself cannot run the command (target unreachable, host key
/// mismatch, audit log unavailable): the same status OpenSSH's client uses for its own errors.
pub const EXIT_GATEWAY_ERROR: u32 = 255;

/// An SSH listener's shared state.
pub(crate) struct ProxyInner {
    pub(crate) config: SshProxyConfig,
    pub(crate) pipeline: Pipeline,
    /// The operation gate over the same layers: every decision and record goes through it.
    pub(crate) gate: Gate,
    pub(crate) server_config: Arc<russh::server::Config>,
    pub(crate) limiter: FailedLoginLimiter,
    host_fingerprint: String,
    host_public_key: String,
}

/// The SSH bastion: accepts agents and runs each connection through the pipeline.
#[derive(Clone)]
pub struct SshProxy {
    inner: Arc<ProxyInner>,
}

impl std::fmt::Debug for SshProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshProxy")
            .field("host_key", &self.inner.host_fingerprint)
            .field(
                "targets",
                &self
                    .inner
                    .config
                    .targets
                    .iter()
                    .map(|t| &t.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl SshProxy {
    /// Builds the proxy: loads (or generates) the host key and checks the targets. Fails on a
    /// bad host key file, duplicate target names or unparseable addresses and pins.
    pub fn new(config: SshProxyConfig, pipeline: Pipeline) -> Result<Self, SshProxyError> {
        let mut names = std::collections::BTreeSet::new();
        for t in &config.targets {
            if !names.insert(t.name.as_str()) {
                return Err(SshProxyError::Config(format!(
                    "target '{}' is defined twice",
                    t.name
                )));
            }
            if t.name.is_empty() || t.name.contains('@') {
                return Err(SshProxyError::Config(format!(
                    "target name {:?} must be non-empty and contain no '@'",
                    t.name
                )));
            }
            upstream::split_address(&t.address)?;
            if let UpstreamHostKey::Fingerprint { sha256 } = &t.host_key
                && !sha256.trim().starts_with("SHA256:")
            {
                return Err(SshProxyError::Config(format!(
                    "target '{}': host key fingerprint must look like SHA256:…",
                    t.name
                )));
            }
            if let UpstreamHostKey::PublicKey { openssh } = &t.host_key {
                russh::keys::PublicKey::from_openssh(openssh.trim()).map_err(|e| {
                    SshProxyError::Config(format!(
                        "target '{}': pinned public key unreadable: {e}",
                        t.name
                    ))
                })?;
            }
        }
        let key = hostkey::load_or_generate(&config.host_key_path)?;
        Ok(Self::with_host_key(config, pipeline, key))
    }

    fn with_host_key(config: SshProxyConfig, pipeline: Pipeline, key: PrivateKey) -> Self {
        let host_fingerprint = hostkey::fingerprint(key.public_key());
        let host_public_key = key.public_key().to_openssh().unwrap_or_default();
        let server_config = russh::server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-Gatehouse".into()),
            methods: russh::MethodSet::from(
                &[
                    russh::MethodKind::PublicKey,
                    russh::MethodKind::Password,
                    russh::MethodKind::KeyboardInteractive,
                ][..],
            ),
            auth_rejection_time: config.auth_rejection_time(),
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            keys: vec![key],
            window_size: config.window_size,
            maximum_packet_size: config.maximum_packet_size,
            inactivity_timeout: match config.inactivity_timeout_secs {
                0 => None,
                s => Some(std::time::Duration::from_secs(s)),
            },
            nodelay: true,
            ..Default::default()
        };
        let limiter = FailedLoginLimiter::new(config.login_rate_limit);
        Self {
            inner: Arc::new(ProxyInner {
                config,
                gate: Gate::new(pipeline.clone()),
                pipeline,
                server_config: Arc::new(server_config),
                limiter,
                host_fingerprint,
                host_public_key,
            }),
        }
    }

    /// `SHA256:…` fingerprint of the gateway's host key (print it; agents pin it).
    pub fn host_key_fingerprint(&self) -> &str {
        &self.inner.host_fingerprint
    }

    /// The gateway's host public key in OpenSSH format (`ssh-ed25519 AAAA…`), for known_hosts.
    pub fn host_public_key(&self) -> &str {
        &self.inner.host_public_key
    }

    /// Serves agents from `listener` until `shutdown` resolves; then stops accepting and
    /// disconnects open sessions (their `SessionEnd` is recorded). Each connection runs on its own
    /// task; a failing session never affects the others.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(x) => x,
                        Err(e) if is_transient_accept_error(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    let _ = stream.set_nodelay(true);
                    let inner = self.inner.clone();
                    let stop = stop_rx.clone();
                    tasks.spawn(session::run_connection(inner, stream, peer, stop));
                    // Reap finished connections so the set stays small.
                    while tasks.try_join_next().is_some() {}
                }
            }
        }
        let _ = stop_tx.send(true);
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

fn is_transient_accept_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23)
}

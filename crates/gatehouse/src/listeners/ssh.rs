//! The SSH listener: `[[listeners.ssh]]` + the `ssh` targets → a `gatehouse-ssh` bastion. Agents
//! log in as `TARGET` (or `login@TARGET`) with a gateway key or JWT as the password, or a public
//! key registered to a service account; the gateway logs in to the host with the credential it
//! holds, after checking the host key against the pinned one.

use std::net::SocketAddr;
use std::path::Path;

use gatehouse_ssh::{
    Secret, SshProxy, SshProxyConfig, SshTargetConfig, UpstreamCredential, UpstreamHostKey,
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use toml::Spanned;

use crate::commands::CommandError;
use crate::config::{LoadedConfig, SshListenerSection, TargetSection};
use crate::gateway::Gateway;

/// The default host key file when a listener names none.
pub fn default_host_key(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("ssh_host_ed25519_key")
}

/// The proxy configuration for every `ssh` target (secrets resolved), listener knobs applied.
pub fn proxy_config(
    loaded: &LoadedConfig,
    listener: Option<&SshListenerSection>,
) -> Result<SshProxyConfig, CommandError> {
    let host_key = listener
        .and_then(|l| l.host_key.as_ref())
        .map(|p| loaded.resolve_path(p))
        .unwrap_or_else(|| default_host_key(&loaded.data_dir()));
    let mut config = SshProxyConfig::new(host_key);
    for t in loaded
        .config
        .targets
        .iter()
        .filter(|t| t.get_ref().protocol == "ssh")
    {
        config.targets.push(ssh_target(loaded, t)?);
    }
    if let Some(l) = listener {
        if let Some(v) = &l.env_allow {
            config.env_allow = v.clone();
        }
        if let Some(v) = l.login_rate_limit {
            config.login_rate_limit = v;
        }
        if let Some(v) = l.auth_rejection_time_ms {
            config.auth_rejection_time_ms = v;
        }
        if let Some(v) = l.end_session_on_identity_expiry {
            config.end_session_on_identity_expiry = v;
        }
        if let Some(v) = l.inactivity_timeout_secs {
            config.inactivity_timeout_secs = v;
        }
        if let Some(v) = &l.banner {
            config.banner = Some(v.clone());
        }
    }
    Ok(config)
}

fn ssh_target(
    loaded: &LoadedConfig,
    t: &Spanned<TargetSection>,
) -> Result<SshTargetConfig, CommandError> {
    let section = t.get_ref();
    let credential = match (&section.private_key, &section.password) {
        (Some(key), _) => UpstreamCredential::PrivateKey {
            // The key file's trailing newline is part of the OpenSSH armour.
            openssh: Secret::new(format!("{}\n", loaded.resolve_secret(key)?.expose())),
        },
        (None, Some(password)) => UpstreamCredential::Password {
            password: Secret::new(loaded.resolve_secret(password)?.expose()),
        },
        (None, None) => {
            return Err(loaded
                .error_at(
                    t.span().start,
                    format!(
                        "ssh target `{}` needs `private_key` or `password`",
                        section.name
                    ),
                )
                .into());
        }
    };
    let host_key = match &section.host_key {
        Some(UpstreamHostKey::KnownHosts { path }) => UpstreamHostKey::KnownHosts {
            path: loaded.resolve_path(path),
        },
        Some(other) => other.clone(),
        None => {
            return Err(loaded
                .error_at(
                    t.span().start,
                    format!("ssh target `{}` needs `host_key`", section.name),
                )
                .into());
        }
    };
    Ok(SshTargetConfig {
        name: section.name.clone(),
        address: section.address.clone().unwrap_or_default(),
        login: section.user.clone().unwrap_or_default(),
        extra_logins: Vec::new(),
        credential,
        host_key,
        tags: section.tags.iter().cloned().collect(),
    })
}

/// A bound SSH listener.
#[derive(Debug, Clone)]
pub struct SshBound {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `SHA256:…` of its host key (what agents pin).
    pub fingerprint: String,
    /// Its host public key, OpenSSH format (for known_hosts).
    pub public_key: String,
}

/// Binds one SSH listener and serves it until shutdown.
pub async fn start(
    loaded: &LoadedConfig,
    section: &Spanned<SshListenerSection>,
    gateway: &Gateway,
    sessions: TaskTracker,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SshBound, CommandError> {
    let l = section.get_ref();
    let config = proxy_config(loaded, Some(l))?;
    let proxy = SshProxy::new(config, gateway.pipeline.clone())
        .map_err(|e| CommandError::Failed(format!("ssh listener {}: {e}", l.listen)))?;
    let fingerprint = proxy.host_key_fingerprint().to_string();
    let public_key = proxy.host_public_key().to_string();
    let listener = tokio::net::TcpListener::bind(l.listen)
        .await
        .map_err(|e| CommandError::Failed(format!("ssh listener {}: {e}", l.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    sessions.spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = proxy.serve(listener, stop).await {
            eprintln!("gatehouse: ssh listener {addr} failed: {e}");
        }
    });
    Ok(SshBound {
        addr,
        fingerprint,
        public_key,
    })
}

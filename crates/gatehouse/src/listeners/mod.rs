//! One module per protocol listener. Each turns its section of the config into a running listener
//! of its protocol crate, fed the shared pipeline; sessions are tracked so shutdown can drain them.

pub mod admin;
pub mod http;
pub mod k8s;
pub mod pg;
pub mod ssh;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::commands::CommandError;
use crate::config::LoadedConfig;
use crate::gateway::Gateway;

/// What is listening where, and the sessions to drain at shutdown.
#[derive(Debug, Clone)]
pub struct Bound {
    /// The admin API address.
    pub admin: Option<SocketAddr>,
    /// PostgreSQL listener addresses.
    pub postgres: Vec<SocketAddr>,
    /// HTTP listener addresses.
    pub http: Vec<SocketAddr>,
    /// SSH listeners and their host keys.
    pub ssh: Vec<ssh::SshBound>,
    /// Kubernetes API listener addresses.
    pub kubernetes: Vec<SocketAddr>,
    /// Running sessions.
    pub sessions: TaskTracker,
}

impl Bound {
    /// `protocol address` for each listener.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = self.admin {
            out.push(format!("admin {a}"));
        }
        for a in &self.postgres {
            out.push(format!("postgres {a}"));
        }
        for a in &self.http {
            out.push(format!("http {a}"));
        }
        for s in &self.ssh {
            out.push(format!("ssh {} (host key {})", s.addr, s.fingerprint));
        }
        for a in &self.kubernetes {
            out.push(format!("kubernetes {a}"));
        }
        out
    }

    /// Waits for sessions to end, at most `grace`; returns how many were still running.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.sessions.close();
        let _ = tokio::time::timeout(grace, self.sessions.wait()).await;
        self.sessions.len()
    }
}

/// Binds every configured listener and starts serving.
pub async fn start(
    loaded: &LoadedConfig,
    gateway: &Gateway,
    shutdown: watch::Receiver<bool>,
) -> Result<Bound, CommandError> {
    let sessions = TaskTracker::new();
    let mut bound = Bound {
        admin: None,
        postgres: Vec::new(),
        http: Vec::new(),
        ssh: Vec::new(),
        kubernetes: Vec::new(),
        sessions: sessions.clone(),
    };
    if let Some(admin) = &loaded.config.admin {
        let listener = tokio::net::TcpListener::bind(admin.listen)
            .await
            .map_err(|e| CommandError::Failed(format!("admin listener {}: {e}", admin.listen)))?;
        let tls = match &admin.tls {
            Some(files) => Some(tls::server_config(loaded, files, &[b"http/1.1"])?),
            None => {
                if !admin.listen.ip().is_loopback() {
                    return Err(CommandError::Failed(format!(
                        "admin listener {} without TLS: plain HTTP is only allowed on loopback",
                        admin.listen
                    )));
                }
                None
            }
        };
        bound.admin = Some(
            listener
                .local_addr()
                .map_err(|e| CommandError::Failed(e.to_string()))?,
        );
        let state = Arc::new(admin::AdminState {
            authenticator: gateway.pipeline.authenticator.clone(),
            approvals: gateway.pipeline.approvals.clone(),
            exchange: gateway.exchange.clone(),
            metrics: gateway.metrics.clone(),
            egress: gateway.pipeline.egress.clone(),
            audit_dir: gateway.audit_root.join("audit"),
            operator_groups: admin.operator_groups.clone(),
        });
        tokio::spawn(admin::serve(listener, tls, state, shutdown.clone()));
    }
    for section in &loaded.config.listeners.postgres {
        let addr = pg::start(loaded, section, gateway, sessions.clone(), shutdown.clone()).await?;
        bound.postgres.push(addr);
    }
    for section in &loaded.config.listeners.http {
        let addr =
            http::start(loaded, section, gateway, sessions.clone(), shutdown.clone()).await?;
        bound.http.push(addr);
    }
    for section in &loaded.config.listeners.ssh {
        let b = ssh::start(loaded, section, gateway, sessions.clone(), shutdown.clone()).await?;
        bound.ssh.push(b);
    }
    for section in &loaded.config.listeners.kubernetes {
        let addr = k8s::start(loaded, section, gateway, sessions.clone(), shutdown.clone()).await?;
        bound.kubernetes.push(addr);
    }
    Ok(bound)
}

/// Every secret the gateway holds for its targets, in every form the protocol crates send it
/// upstream: the egress guard blocks them in responses, output and records.
pub fn held_secrets(loaded: &LoadedConfig) -> Result<Vec<Vec<u8>>, CommandError> {
    let mut out = Vec::new();
    for t in &loaded.config.targets {
        let t = t.get_ref();
        if t.protocol == "postgres"
            && let Some(secret) = &t.password
        {
            out.push(loaded.resolve_secret(secret)?.expose().as_bytes().to_vec());
        }
    }
    let http = http::proxy_config(loaded, None)?;
    out.extend(http.held_secrets().into_iter().map(String::into_bytes));
    let ssh = ssh::proxy_config(loaded, None)?;
    out.extend(ssh.held_secrets());
    let k8s = k8s::proxy_config(loaded, None)?;
    out.extend(k8s.held_secrets().into_iter().map(String::into_bytes));
    out.sort();
    out.dedup();
    Ok(out)
}

/// A credential's secret value (env var or file), for protocol crates that take it resolved.
fn credential_secret(
    loaded: &LoadedConfig,
    c: &toml::Spanned<crate::config::CredentialSection>,
) -> Result<String, CommandError> {
    let Some(secret) = c.get_ref().secret() else {
        return Err(loaded
            .error_at(
                c.span().start,
                format!("credential kind `{}` holds no secret", c.get_ref().kind()),
            )
            .into());
    };
    Ok(secret
        .resolve(loaded.config.gateway.allow_inline_secrets, |p| {
            loaded.resolve_path(p)
        })
        .map_err(|m| CommandError::from(loaded.error_at(c.span().start, m)))?
        .expose()
        .to_string())
}

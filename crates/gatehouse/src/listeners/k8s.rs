//! The Kubernetes API listener: `[[listeners.kubernetes]]` + the `kubernetes` targets → a
//! `gatehouse-k8s` proxy. kubectl's kubeconfig points its `server` at this listener (with
//! `/k8s/<target>` to pick a cluster) and carries the agent's JWT or gateway key as its token;
//! the gateway talks to the API server with the credential it holds.

use std::net::SocketAddr;

use gatehouse_k8s::{K8sProxy, K8sProxyConfig, K8sTargetConfig, UpstreamCredential};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use toml::Spanned;

use crate::commands::CommandError;
use crate::config::{CredentialSection, K8sListenerSection, LoadedConfig, TargetSection};
use crate::gateway::Gateway;

/// The proxy configuration for every `kubernetes` target (secrets resolved, paths made absolute),
/// listener knobs applied.
pub fn proxy_config(
    loaded: &LoadedConfig,
    listener: Option<&Spanned<K8sListenerSection>>,
) -> Result<K8sProxyConfig, CommandError> {
    let mut targets = Vec::new();
    for t in loaded
        .config
        .targets
        .iter()
        .filter(|t| t.get_ref().protocol == "kubernetes")
    {
        targets.push(k8s_target(loaded, t)?);
    }
    let mut config = K8sProxyConfig::with_targets(targets);
    let mut at = 0;
    if let Some(section) = listener {
        at = section.span().start;
        let l = section.get_ref();
        config.default_target = l.default_target.clone();
        if let Some(v) = l.review_hold_ms {
            config.review_hold_ms = v;
        }
        if let Some(v) = l.retry_after_s {
            config.retry_after_s = v;
        }
        if let Some(v) = l.record_body_cap {
            config.record_body_cap = v;
        }
        if let Some(v) = l.idle_flush_ms {
            config.idle_flush_ms = v;
        }
        if let Some(v) = &l.limits {
            config.limits = v.clone();
        }
        if let Some(v) = &l.timeouts {
            config.timeouts = v.clone();
        }
        if config.targets.is_empty() {
            return Err(loaded
                .error_at(
                    at,
                    "kubernetes listener without a `kubernetes` target: add a [[targets]] with protocol = \"kubernetes\"",
                )
                .into());
        }
    }
    config
        .validate()
        .map_err(|e| CommandError::from(loaded.error_at(at, e.to_string())))?;
    Ok(config)
}

fn k8s_target(
    loaded: &LoadedConfig,
    t: &Spanned<TargetSection>,
) -> Result<K8sTargetConfig, CommandError> {
    let section = t.get_ref();
    let Some(c) = &section.credential else {
        return Err(loaded
            .error_at(
                t.span().start,
                format!("kubernetes target `{}` needs `credential`", section.name),
            )
            .into());
    };
    let credential = match c.get_ref() {
        CredentialSection::Bearer { .. } => UpstreamCredential::Bearer {
            secret: super::credential_secret(loaded, c)?,
        },
        CredentialSection::ClientCert {
            cert_file,
            key_file,
        } => UpstreamCredential::ClientCert {
            cert_file: loaded.resolve_path(cert_file),
            key_file: loaded.resolve_path(key_file),
        },
        CredentialSection::Kubeconfig { path, context } => UpstreamCredential::Kubeconfig {
            path: loaded.resolve_path(path),
            context: context.clone(),
        },
        other => {
            return Err(loaded
                .error_at(
                    c.span().start,
                    format!(
                        "kubernetes target `{}`: credential kind `{}` is not for kubernetes targets",
                        section.name,
                        other.kind()
                    ),
                )
                .into());
        }
    };
    Ok(K8sTargetConfig {
        name: section.name.clone(),
        tags: section.tags.clone(),
        server: section.server.clone(),
        ca_file: section.ca_file.as_ref().map(|p| loaded.resolve_path(p)),
        credential,
        impersonate: section.impersonate.unwrap_or(false),
    })
}

/// Binds one Kubernetes API listener and serves it until shutdown (open requests finish first).
pub async fn start(
    loaded: &LoadedConfig,
    section: &Spanned<K8sListenerSection>,
    gateway: &Gateway,
    sessions: TaskTracker,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, CommandError> {
    let l = section.get_ref();
    let config = proxy_config(loaded, Some(section))?;
    let tls = match &l.tls {
        Some(files) => Some(std::sync::Arc::unwrap_or_clone(super::tls::server_config(
            loaded,
            files,
            &[b"h2", b"http/1.1"],
        )?)),
        None => {
            if !l.listen.ip().is_loopback() {
                return Err(loaded
                    .error_at(
                        section.span().start,
                        format!(
                            "kubernetes listener {} without TLS: plain HTTP is only allowed on loopback (callers send tokens)",
                            l.listen
                        ),
                    )
                    .into());
            }
            None
        }
    };
    let proxy = K8sProxy::new(config, gateway.pipeline.clone())
        .map_err(|e| CommandError::Failed(format!("kubernetes listener {}: {e}", l.listen)))?;
    let listener = tokio::net::TcpListener::bind(l.listen)
        .await
        .map_err(|e| CommandError::Failed(format!("kubernetes listener {}: {e}", l.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    sessions.spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = proxy.serve(listener, tls, stop).await {
            eprintln!("gatehouse: kubernetes listener {addr} failed: {e}");
        }
    });
    Ok(addr)
}

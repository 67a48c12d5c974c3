//! The HTTP listener: `[[listeners.http]]` + the `http` targets → a `gatehouse-http` proxy that
//! routes by path prefix or `Host`, injects the target's credential and masks JSON responses.

use std::net::SocketAddr;

use gatehouse_http::{HttpProxy, HttpProxyConfig, HttpTargetConfig, InjectedCredential};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use toml::Spanned;

use crate::commands::CommandError;
use crate::config::{CredentialSection, HttpListenerSection, LoadedConfig, TargetSection};
use crate::gateway::Gateway;

/// The proxy configuration for every `http` target (secrets resolved), listener knobs applied.
pub fn proxy_config(
    loaded: &LoadedConfig,
    listener: Option<&HttpListenerSection>,
) -> Result<HttpProxyConfig, CommandError> {
    let mut targets = Vec::new();
    for t in loaded
        .config
        .targets
        .iter()
        .filter(|t| t.get_ref().protocol == "http")
    {
        targets.push(http_target(loaded, t)?);
    }
    let mut config = HttpProxyConfig::with_targets(targets);
    if let Some(l) = listener {
        if let Some(v) = l.review_hold_ms {
            config.review_hold_ms = v;
        }
        if let Some(v) = l.retry_after_s {
            config.retry_after_s = v;
        }
        if let Some(v) = l.record_body_cap {
            config.record_body_cap = v;
        }
        if let Some(v) = l.encoded_separators {
            config.encoded_separators = v;
        }
        if let Some(v) = l.other_content {
            config.other_content = v;
        }
        if let Some(v) = &l.limits {
            config.limits = v.clone();
        }
        if let Some(v) = &l.timeouts {
            config.timeouts = v.clone();
        }
    }
    config
        .validate()
        .map_err(|e| CommandError::Failed(format!("{}: {e}", loaded.path.display())))?;
    Ok(config)
}

fn http_target(
    loaded: &LoadedConfig,
    t: &Spanned<TargetSection>,
) -> Result<HttpTargetConfig, CommandError> {
    let section = t.get_ref();
    let credential = match &section.credential {
        Some(c) => {
            let secret = super::credential_secret(loaded, c)?;
            Some(match c.get_ref() {
                CredentialSection::Bearer { .. } => InjectedCredential::Bearer { secret },
                CredentialSection::Basic { username, .. } => InjectedCredential::Basic {
                    username: username.clone(),
                    secret,
                },
                CredentialSection::Header { name, .. } => InjectedCredential::Header {
                    name: name.clone(),
                    secret,
                },
                CredentialSection::Query { param, .. } => InjectedCredential::Query {
                    param: param.clone(),
                    secret,
                },
                other => {
                    return Err(loaded
                        .error_at(
                            c.span().start,
                            format!(
                                "http target `{}`: credential kind `{}` is not for http targets",
                                section.name,
                                other.kind()
                            ),
                        )
                        .into());
                }
            })
        }
        None => None,
    };
    Ok(HttpTargetConfig {
        name: section.name.clone(),
        tags: section.tags.clone(),
        host: section.host.clone(),
        path_prefix: section.path_prefix.clone(),
        upstream: section.upstream.clone().unwrap_or_default(),
        ca_file: section.ca_file.as_ref().map(|p| loaded.resolve_path(p)),
        credential,
    })
}

/// The listener's serving threads: `threads` (1-256), by default one per CPU.
pub fn threads(
    loaded: &LoadedConfig,
    section: &Spanned<HttpListenerSection>,
) -> Result<usize, CommandError> {
    let l = section.get_ref();
    match l.threads {
        Some(n) if (1..=256).contains(&n) => Ok(n),
        Some(n) => Err(loaded
            .error_at(
                section.span().start,
                format!(
                    "http listener {}: threads = {n}: must be 1 to 256",
                    l.listen
                ),
            )
            .into()),
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    }
}

/// Binds one HTTP listener and serves it until shutdown (open requests finish first).
pub async fn start(
    loaded: &LoadedConfig,
    section: &Spanned<HttpListenerSection>,
    gateway: &Gateway,
    sessions: TaskTracker,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, CommandError> {
    let l = section.get_ref();
    let config = proxy_config(loaded, Some(l))?;
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
                            "http listener {} without TLS: plain HTTP is only allowed on loopback (callers send tokens)",
                            l.listen
                        ),
                    )
                    .into());
            }
            None
        }
    };
    let threads = threads(loaded, section)?;
    let proxy = HttpProxy::new(config, gateway.pipeline.clone())
        .map_err(|e| CommandError::Failed(format!("http listener {}: {e}", l.listen)))?;
    let listener = tokio::net::TcpListener::bind(l.listen)
        .await
        .map_err(|e| CommandError::Failed(format!("http listener {}: {e}", l.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    sessions.spawn(async move {
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        if let Err(e) = proxy.serve_threaded(listener, threads, tls, stop).await {
            eprintln!("gatehouse: http listener {addr} failed: {e}");
        }
    });
    Ok(addr)
}

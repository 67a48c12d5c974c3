//! The PostgreSQL listener: `[[listeners.postgres]]` + the `postgres` targets → a `gatehouse-pg`
//! proxy, one tracked task per session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use gatehouse_core::{Protocol, Target};
use gatehouse_pg::{
    Limits, NonTextMasking, PgProxy, PgProxyConfig, PgTarget, Secret, UpstreamAddress,
    UpstreamConfig, UpstreamTls,
};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use toml::Spanned;

use crate::commands::CommandError;
use crate::config::{LoadedConfig, PgListenerSection, TargetSection};
use crate::gateway::Gateway;

/// Builds the upstream side of a postgres target.
pub fn pg_target(
    loaded: &LoadedConfig,
    t: &Spanned<TargetSection>,
) -> Result<PgTarget, CommandError> {
    let section = t.get_ref();
    let at = |msg: String| CommandError::from(loaded.error_at(t.span().start, msg));
    let address = section.address.as_deref().unwrap_or_default();
    let (host, port) = address.rsplit_once(':').ok_or_else(|| {
        at(format!(
            "target `{}`: address must be host:port or /socket/dir:port",
            section.name
        ))
    })?;
    let port: u16 = port.parse().map_err(|_| {
        at(format!(
            "target `{}`: invalid port in `{}`",
            section.name, address
        ))
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let address = if host.starts_with('/') {
        UpstreamAddress::Unix {
            socket_dir: host.into(),
            port,
        }
    } else {
        UpstreamAddress::Tcp {
            host: host.to_string(),
            port,
        }
    };
    let tls_mode = section.tls.as_deref().unwrap_or(if host.starts_with('/') {
        "disable"
    } else {
        "verify-full"
    });
    let tls = if tls_mode == "disable" {
        UpstreamTls::Disable
    } else {
        let ca = section.ca_file.as_ref().map(|p| loaded.resolve_path(p));
        let config = crate::listeners::tls::client_config(ca.as_deref())?;
        let server_name =
            rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
                at(format!(
                    "target `{}`: `{host}` is not a valid TLS server name",
                    section.name
                ))
            })?;
        UpstreamTls::Require {
            config,
            server_name,
        }
    };
    let password = match &section.password {
        Some(s) => Some(Secret::new(loaded.resolve_secret(s)?.expose())),
        None => None,
    };
    let mut target = Target::new(section.name.clone(), Protocol::Postgres);
    target.tags = section.tags.iter().cloned().collect();
    Ok(PgTarget {
        target,
        upstream: UpstreamConfig {
            address,
            user: section.user.clone().unwrap_or_default(),
            database: section.database.clone().unwrap_or_default(),
            password,
            tls,
            connect_timeout: Duration::from_secs(10),
        },
    })
}

/// For a target marked `read_only`: one line per way its upstream role can write (from the
/// upstream's catalog), or one saying it could not be checked. Empty when the role cannot write.
pub async fn read_only_findings(t: &PgTarget) -> Vec<String> {
    let name = &t.target.name;
    let role = &t.upstream.user;
    let checked = tokio::time::timeout(
        Duration::from_secs(15),
        gatehouse_pg::backstop::write_capabilities(&t.upstream),
    )
    .await;
    match checked {
        Ok(Ok(found)) => found
            .into_iter()
            .map(|what| {
                format!(
                    "target `{name}` is read_only but its upstream role `{role}` can write: {what}"
                )
            })
            .collect(),
        Ok(Err(e)) => vec![format!(
            "target `{name}` is read_only but its upstream role `{role}` could not be checked: {e}"
        )],
        Err(_) => vec![format!(
            "target `{name}` is read_only but its upstream role `{role}` could not be checked: timed out"
        )],
    }
}

/// Binds one PostgreSQL listener and serves it until shutdown.
pub async fn start(
    loaded: &LoadedConfig,
    section: &Spanned<PgListenerSection>,
    gateway: &Gateway,
    sessions: TaskTracker,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, CommandError> {
    let l = section.get_ref();
    let mut targets = HashMap::new();
    for t in loaded
        .config
        .targets
        .iter()
        .filter(|t| t.get_ref().protocol == "postgres")
    {
        let pg = pg_target(loaded, t)?;
        if t.get_ref().read_only {
            // Checked against the catalog at start; the gateway serves either way (the policy
            // still decides), but the operator learns the backstop is missing.
            let check = pg.clone();
            tokio::spawn(async move {
                for w in read_only_findings(&check).await {
                    tracing::warn!("{w}");
                }
            });
        }
        targets.insert(pg.target.name.clone(), pg);
    }
    let mut config = PgProxyConfig::new(targets.into_values());
    if let Some(files) = &l.tls {
        config.tls = Some(crate::listeners::tls::server_config(
            loaded,
            files,
            &[b"postgresql"],
        )?);
    }
    config.allow_plaintext_password = l.allow_plaintext_password;
    let mut limits = Limits::default();
    if let Some(max) = l.max_message_bytes {
        limits.max_client_message = max;
    }
    if let Some(max) = l.max_statements_per_query {
        limits.max_statements_per_query = max.max(1);
    }
    limits.idle_timeout = l.idle_timeout_secs.map(Duration::from_secs);
    if let Some(end) = l.end_at_token_expiry {
        limits.end_at_token_expiry = end;
    }
    if let Some(max) = l.max_sessions_per_identity {
        limits.max_sessions_per_identity = (max > 0).then_some(max);
    }
    if let Some(max) = l.max_sessions_per_target {
        limits.max_sessions_per_target = (max > 0).then_some(max);
    }
    config.limits = limits;
    if l.non_text_masking.as_deref() == Some("refuse") {
        config.non_text_masking = NonTextMasking::Refuse;
    }
    let proxy = std::sync::Arc::new(PgProxy::new(config, gateway.pipeline.clone()));
    let listener = tokio::net::TcpListener::bind(l.listen)
        .await
        .map_err(|e| CommandError::Failed(format!("postgres listener {}: {e}", l.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let tracker = sessions.clone();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("gatehouse: postgres accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = proxy.clone();
            tracker.spawn(async move { proxy.handle(stream, peer.to_string()).await });
        }
    });
    Ok(addr)
}

//! Config → pipeline: builds each layer from its section and checks what can be checked without
//! starting anything (policy file, masking profiles, TLS files, secrets).

use gatehouse_masking::MaskingEngine;

use crate::commands::CommandError;
use crate::config::{CredentialSection, LoadedConfig};

/// Checks everything a `serve` would load; returns a one-line summary.
pub fn check(loaded: &LoadedConfig) -> Result<String, CommandError> {
    let c = &loaded.config;
    MaskingEngine::new(&c.masking)
        .map_err(|e| CommandError::Failed(format!("{}: [masking]: {e}", loaded.path.display())))?;
    let policy_path = loaded.resolve_path(&c.policy.file);
    if !policy_path.exists() {
        return Err(CommandError::Failed(format!(
            "{}: policy file {} does not exist",
            loaded.path.display(),
            policy_path.display()
        )));
    }
    let policy = gatehouse_policy::CompiledPolicy::from_file(&policy_path)
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let _ = policy.rule_count();
    for note in policy.warnings() {
        eprintln!("warning: {note}");
    }
    // Files targets name (CAs, client certificates, kubeconfigs, known_hosts) are readable, then
    // every target as its protocol crate will take it: secrets resolved, addresses parsed, the
    // per-listener knobs applied (`serve` would stop on the same errors).
    for t in &c.targets {
        let section = t.get_ref();
        let files = [
            ("ca_file", section.ca_file.as_deref()),
            (
                "host_key known_hosts",
                match &section.host_key {
                    Some(gatehouse_ssh::UpstreamHostKey::KnownHosts { path }) => {
                        Some(path.as_path())
                    }
                    _ => None,
                },
            ),
        ];
        let credential_files = match section.credential.as_ref().map(|c| c.get_ref()) {
            Some(CredentialSection::ClientCert {
                cert_file,
                key_file,
            }) => vec![
                ("credential cert_file", Some(cert_file.as_path())),
                ("credential key_file", Some(key_file.as_path())),
            ],
            Some(CredentialSection::Kubeconfig { path, .. }) => {
                vec![("credential kubeconfig", Some(path.as_path()))]
            }
            _ => Vec::new(),
        };
        for (what, path) in files.into_iter().chain(credential_files) {
            let Some(path) = path else { continue };
            let resolved = loaded.resolve_path(path);
            if let Err(e) = std::fs::File::open(&resolved) {
                return Err(loaded
                    .error_at(
                        t.span().start,
                        format!(
                            "target `{}`: {what} {}: {e}",
                            section.name,
                            resolved.display()
                        ),
                    )
                    .into());
            }
        }
    }
    for t in c
        .targets
        .iter()
        .filter(|t| t.get_ref().protocol == "postgres")
    {
        crate::listeners::pg::pg_target(loaded, t)
            .map_err(|e| locate(loaded, t.span().start, e))?;
    }
    crate::listeners::held_secrets(loaded)?;
    for l in &c.listeners.http {
        crate::listeners::http::proxy_config(loaded, Some(l.get_ref()))?;
    }
    for l in &c.listeners.ssh {
        crate::listeners::ssh::proxy_config(loaded, Some(l.get_ref()))?;
    }
    for l in &c.listeners.kubernetes {
        crate::listeners::k8s::proxy_config(loaded, Some(l))?;
    }
    // Listener certificates parse; plain HTTP only on loopback.
    let listener_tls = c
        .listeners
        .postgres
        .iter()
        .map(|l| {
            (
                l.span().start,
                "postgres",
                l.get_ref().listen,
                l.get_ref().tls.as_ref(),
            )
        })
        .chain(c.listeners.http.iter().map(|l| {
            (
                l.span().start,
                "http",
                l.get_ref().listen,
                l.get_ref().tls.as_ref(),
            )
        }))
        .chain(c.listeners.kubernetes.iter().map(|l| {
            (
                l.span().start,
                "kubernetes",
                l.get_ref().listen,
                l.get_ref().tls.as_ref(),
            )
        }));
    for (at, protocol, listen, tls) in listener_tls {
        match tls {
            Some(files) => {
                crate::listeners::tls::server_config(loaded, files, &[])
                    .map_err(|e| loaded.error_at(at, e.to_string()))?;
            }
            None if protocol != "postgres" && !listen.ip().is_loopback() => {
                return Err(loaded
                    .error_at(
                        at,
                        format!(
                            "{protocol} listener {listen} without TLS: plain HTTP is only allowed on loopback (callers send tokens)"
                        ),
                    )
                    .into());
            }
            None => {}
        }
    }
    for l in &c.listeners.http {
        crate::listeners::http::threads(loaded, l)?;
    }
    if let Some(admin) = &c.admin
        && let Some(files) = &admin.tls
    {
        crate::listeners::tls::server_config(loaded, files, &[]).map_err(|e| {
            CommandError::Failed(format!("{}: [admin]: {e}", loaded.path.display()))
        })?;
    }
    let count = |p: &str| {
        c.targets
            .iter()
            .filter(|t| t.get_ref().protocol == p)
            .count()
    };
    let listeners = [
        ("postgres", c.listeners.postgres.len()),
        ("http", c.listeners.http.len()),
        ("ssh", c.listeners.ssh.len()),
        ("kubernetes", c.listeners.kubernetes.len()),
    ];
    let listeners: Vec<String> = listeners
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| format!("{n} {p}"))
        .collect();
    let targets: Vec<String> = ["postgres", "http", "ssh", "kubernetes"]
        .iter()
        .filter(|p| count(p) > 0)
        .map(|p| format!("{} {p}", count(p)))
        .collect();
    Ok(format!(
        "{} target(s) ({}), listener(s): {}, {} masking profile(s)",
        c.targets.len(),
        if targets.is_empty() {
            "none".to_string()
        } else {
            targets.join(", ")
        },
        if listeners.is_empty() {
            "none".to_string()
        } else {
            listeners.join(", ")
        },
        c.masking.profiles.len()
    ))
}

/// An error about one `[[targets]]`/listener table, located at `at` unless it already names the
/// config file.
fn locate(loaded: &LoadedConfig, at: usize, e: CommandError) -> CommandError {
    match e {
        CommandError::Failed(m) if !m.contains(&loaded.path.display().to_string()) => {
            loaded.error_at(at, m).into()
        }
        other => other,
    }
}

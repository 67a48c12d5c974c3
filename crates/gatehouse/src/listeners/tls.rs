//! TLS configs from PEM files (aws-lc-rs provider).

use std::sync::Arc;

use crate::commands::CommandError;
use crate::config::{LoadedConfig, TlsFiles};

/// A rustls server config from certificate-chain and key files, with the given ALPN protocols.
pub fn server_config(
    loaded: &LoadedConfig,
    files: &TlsFiles,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, CommandError> {
    let cert_path = loaded.resolve_path(&files.cert);
    let key_path = loaded.resolve_path(&files.key);
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| CommandError::Failed(format!("TLS file {}: {e}", p.display())))
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            CommandError::Failed(format!("TLS certificate {}: {e}", cert_path.display()))
        })?;
    if certs.is_empty() {
        return Err(CommandError::Failed(format!(
            "TLS certificate {}: no certificate found",
            cert_path.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| CommandError::Failed(format!("TLS key {}: {e}", key_path.display())))?
        .ok_or_else(|| {
            CommandError::Failed(format!(
                "TLS key {}: no private key found",
                key_path.display()
            ))
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CommandError::Failed(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            CommandError::Failed(format!("TLS certificate/key {}: {e}", cert_path.display()))
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A rustls client config trusting `ca_file` (PEM), or the bundled web PKI roots.
pub fn client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, CommandError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| CommandError::Failed(format!("CA file {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    CommandError::Failed(format!("CA file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    CommandError::Failed(format!("CA file {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(CommandError::Failed(format!(
                    "CA file {}: no certificate found",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CommandError::Failed(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

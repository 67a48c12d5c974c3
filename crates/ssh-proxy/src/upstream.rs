//! The gateway's client side: connect to a target, verify its host key against the pin (never
//! trust on first use), log in with the credential the gateway holds.

use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};

use crate::SshProxyError;
use crate::config::{SshProxyConfig, SshTargetConfig, UpstreamCredential, UpstreamHostKey};
use crate::hostkey::fingerprint;

/// A logged-in connection to a target.
pub(crate) type UpstreamHandle = client::Handle<UpstreamHandler>;

/// What the host key check concluded (kept so the error can say what was expected and seen).
#[derive(Debug, Default)]
struct HostKeyVerdict {
    refused: Option<String>,
}

/// russh client handler: only host key verification.
pub(crate) struct UpstreamHandler {
    target: String,
    host: String,
    port: u16,
    expect: UpstreamHostKey,
    verdict: Arc<Mutex<HostKeyVerdict>>,
}

impl UpstreamHandler {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let presented = fingerprint(key);
        match &self.expect {
            UpstreamHostKey::Fingerprint { sha256 } => {
                if sha256.trim() == presented {
                    Ok(())
                } else {
                    Err(format!(
                        "expected {}, target presented {presented}",
                        sha256.trim()
                    ))
                }
            }
            UpstreamHostKey::PublicKey { openssh } => match PublicKey::from_openssh(openssh.trim())
            {
                Ok(pinned) if pinned.key_data() == key.key_data() => Ok(()),
                Ok(pinned) => Err(format!(
                    "expected {}, target presented {presented}",
                    fingerprint(&pinned)
                )),
                Err(e) => Err(format!("pinned public key is unreadable: {e}")),
            },
            UpstreamHostKey::KnownHosts { path } => {
                match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!(
                        "{}:{} is not in {} (presented {presented})",
                        self.host,
                        self.port,
                        path.display()
                    )),
                    Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                        "key differs from {} line {line} (presented {presented})",
                        path.display()
                    )),
                    Err(e) => Err(format!("cannot read {}: {e}", path.display())),
                }
            }
        }
    }
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let result = match server_public_key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key),
            russh::keys::PublicKeyOrCertificate::Certificate(_) => {
                Err("host certificates are not accepted; pin the host key".to_string())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(reason) => {
                tracing::warn!(target = %self.target, %reason, "upstream host key refused");
                if let Ok(mut v) = self.verdict.lock() {
                    v.refused = Some(reason);
                }
                Ok(false)
            }
        }
    }
}

/// Splits `host:port` (`[v6]:port` too); port 22 when absent.
pub(crate) fn split_address(address: &str) -> Result<(String, u16), SshProxyError> {
    let bad = || SshProxyError::Config(format!("target address {address:?} is not host:port"));
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => 22,
            None => return Err(bad()),
        };
        return Ok((host.to_string(), port));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => {
            Ok((host.to_string(), port.parse().map_err(|_| bad())?))
        }
        None if !address.is_empty() => Ok((address.to_string(), 22)),
        _ => Err(bad()),
    }
}

/// Loads the private key a target credential names (if it is a key).
pub(crate) fn load_key(credential: &UpstreamCredential) -> Result<Option<PrivateKey>, String> {
    match credential {
        UpstreamCredential::Password { .. } => Ok(None),
        UpstreamCredential::PrivateKey { openssh } => {
            PrivateKey::from_openssh(openssh.expose().trim())
                .map(Some)
                .map_err(|_| {
                    "the configured private key is not an unencrypted OpenSSH key".to_string()
                })
        }
        UpstreamCredential::PrivateKeyFile { path } => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read private key file {}: {e}", path.display()))?;
            PrivateKey::from_openssh(text.trim())
                .map(Some)
                .map_err(|_| {
                    format!(
                        "{} is not an unencrypted OpenSSH private key",
                        path.display()
                    )
                })
        }
    }
}

/// The gateway chooses the cipher on its upstream leg: AES-GCM first, because aws-lc's
/// hardware AES is cheaper per byte than russh's ChaCha20-Poly1305, and the gateway pays for two
/// legs.
const UPSTREAM_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Connects to `target`, verifies its host key and logs in as `login`.
pub(crate) async fn connect(
    config: &SshProxyConfig,
    target: &SshTargetConfig,
    login: &str,
) -> Result<UpstreamHandle, SshProxyError> {
    let upstream_err = |message: String| SshProxyError::Upstream {
        target: target.name.clone(),
        message,
    };
    let (host, port) = split_address(&target.address)?;
    let key = load_key(&target.credential).map_err(upstream_err)?;
    let verdict = Arc::new(Mutex::new(HostKeyVerdict::default()));
    let handler = UpstreamHandler {
        target: target.name.clone(),
        host: host.clone(),
        port,
        expect: target.host_key.clone(),
        verdict: verdict.clone(),
    };
    let client_config = Arc::new(client::Config {
        window_size: config.window_size,
        maximum_packet_size: config.maximum_packet_size,
        nodelay: true,
        inactivity_timeout: None,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(UPSTREAM_CIPHERS),
            ..Default::default()
        },
        ..Default::default()
    });
    let work = async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| upstream_err(format!("cannot connect to {}: {e}", target.address)))?;
        let _ = stream.set_nodelay(true);
        let mut handle = match client::connect_stream(client_config, stream, handler).await {
            Ok(h) => h,
            Err(e) => {
                let refused = verdict.lock().ok().and_then(|mut v| v.refused.take());
                return Err(match refused {
                    Some(detail) => SshProxyError::HostKeyMismatch {
                        target: target.name.clone(),
                        detail,
                    },
                    None => upstream_err(format!("ssh handshake failed: {e}")),
                });
            }
        };
        let result = match (&target.credential, key) {
            (UpstreamCredential::Password { password }, _) => handle
                .authenticate_password(login, password.expose())
                .await
                .map_err(|e| upstream_err(format!("login failed: {e}")))?,
            (_, Some(key)) => {
                let hash = if key.algorithm().is_rsa() {
                    handle
                        .best_supported_rsa_hash()
                        .await
                        .ok()
                        .flatten()
                        .flatten()
                        .or(Some(HashAlg::Sha256))
                } else {
                    None
                };
                handle
                    .authenticate_publickey(login, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                    .await
                    .map_err(|e| upstream_err(format!("login failed: {e}")))?
            }
            (_, None) => return Err(upstream_err("no usable credential".into())),
        };
        if !result.success() {
            return Err(upstream_err(format!(
                "the target refused the gateway's credential for login '{login}'"
            )));
        }
        Ok(handle)
    };
    match tokio::time::timeout(config.connect_timeout(), work).await {
        Ok(r) => r,
        Err(_) => Err(upstream_err(format!(
            "no login within {:?}",
            config.connect_timeout()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            split_address("127.0.0.1:2222").unwrap(),
            ("127.0.0.1".into(), 2222)
        );
        assert_eq!(split_address("web").unwrap(), ("web".into(), 22));
        assert_eq!(split_address("[::1]:22").unwrap(), ("::1".into(), 22));
        assert!(split_address("web:x").is_err());
        assert!(split_address("").is_err());
        assert!(split_address(":22").is_err());
    }
}

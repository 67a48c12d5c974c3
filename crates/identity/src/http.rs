//! A minimal HTTP GET client for discovery documents and key sets: HTTPS with rustls on aws-lc-rs
//! (webpki roots or a configured CA), plain HTTP only to loopback and only when configured, one
//! connection per fetch (fetches are rare), no redirects, bounded body, bounded time.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::IdentityError;

/// Largest discovery document or key set accepted.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// Fetches small JSON documents from an identity provider.
#[derive(Clone)]
pub(crate) struct HttpFetcher {
    tls: tokio_rustls::TlsConnector,
    allow_loopback_http: bool,
    timeout: Duration,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("allow_loopback_http", &self.allow_loopback_http)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn fetch_error(url: &str, reason: impl std::fmt::Display) -> IdentityError {
    IdentityError::Fetch {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether a plain-HTTP URL is allowed: only to loopback, and only when configured. The check
/// on the resolved addresses happens again at connect time.
pub(crate) fn check_url(url: &str, allow_loopback_http: bool) -> Result<(), IdentityError> {
    let uri: http::Uri = url.parse().map_err(|e| fetch_error(url, e))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_loopback_http && is_loopback_host(uri.host().unwrap_or("")) => Ok(()),
        Some("http") => Err(IdentityError::Config(format!(
            "{url}: plain HTTP is allowed only to a loopback address, with allow_insecure_loopback_http"
        ))),
        _ => Err(IdentityError::Config(format!("{url}: not an https URL"))),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl HttpFetcher {
    /// A fetcher trusting `ca_file` (PEM) if given, the webpki roots otherwise.
    pub(crate) fn new(
        ca_file: Option<&Path>,
        allow_loopback_http: bool,
        timeout: Duration,
    ) -> Result<Self, IdentityError> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| IdentityError::Config(format!("{}: {e}", path.display())))?;
                for cert in certs {
                    let cert = cert
                        .map_err(|e| IdentityError::Config(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| IdentityError::Config(format!("{}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(IdentityError::Config(format!(
                        "{}: no certificate found",
                        path.display()
                    )));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Config(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            allow_loopback_http,
            timeout,
        })
    }

    /// GETs `url` and returns the body of a 200 response.
    pub(crate) async fn get(&self, url: &str) -> Result<Vec<u8>, IdentityError> {
        match tokio::time::timeout(self.timeout, self.get_unbounded(url)).await {
            Ok(result) => result,
            Err(_) => Err(fetch_error(
                url,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }

    async fn get_unbounded(&self, url: &str) -> Result<Vec<u8>, IdentityError> {
        check_url(url, self.allow_loopback_http)?;
        let uri: http::Uri = url.parse().map_err(|e| fetch_error(url, e))?;
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .ok_or_else(|| fetch_error(url, "no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| fetch_error(url, e))?
            .collect();
        if !https && !addrs.iter().all(|a| a.ip().is_loopback()) {
            return Err(fetch_error(url, "plain HTTP host resolves off loopback"));
        }
        let mut last_error = None;
        let mut stream = None;
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(tcp) = stream else {
            return Err(fetch_error(
                url,
                last_error.map_or("host did not resolve".to_string(), |e| e.to_string()),
            ));
        };
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "gatehouse-identity")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fetch_error(url, e))?;
        if https {
            let name = ServerName::try_from(host).map_err(|e| fetch_error(url, e))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| fetch_error(url, format!("TLS: {e}")))?;
            send(url, tls, request).await
        } else {
            send(url, tcp, request).await
        }
    }
}

async fn send<S>(
    url: &str,
    io: S,
    request: http::Request<Empty<Bytes>>,
) -> Result<Vec<u8>, IdentityError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| fetch_error(url, e))?;
    let driver = tokio::spawn(async move {
        // The connection ends with the response; its error (if any) surfaces on the request.
        let _ = connection.await;
    });
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fetch_error(url, e))?;
        if response.status() != http::StatusCode::OK {
            return Err(fetch_error(
                url,
                format!("HTTP status {}", response.status()),
            ));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| fetch_error(url, format!("body: {e}")))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_and_only_when_allowed() {
        assert!(check_url("https://idp.example.com/jwks", false).is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks", true).is_ok());
        assert!(check_url("http://[::1]:8080/jwks", true).is_ok());
        assert!(check_url("http://localhost/jwks", true).is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks", false).is_err());
        assert!(check_url("http://idp.example.com/jwks", true).is_err());
        assert!(check_url("http://10.0.0.1/jwks", true).is_err());
        assert!(check_url("ftp://idp.example.com/jwks", true).is_err());
        assert!(check_url("not a url", true).is_err());
    }
}

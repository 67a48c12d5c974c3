//! The upstream side: the API server URL, a TCP + rustls connector (pinned CA, optional client
//! certificate), and one pooled HTTP/1.1 client per cluster.
//!
//! Duplicated from `gatehouse-http`'s upstream module (the layering rule keeps protocol crates
//! independent; the shared part is about a hundred lines).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::error::K8sProxyError;

/// Error type of bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type the upstream client sends.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;
/// A pooled client for one cluster.
pub(crate) type UpstreamClient = Client<UpstreamConnector, UpstreamBody>;

/// `http(s)://host[:port][/base]`, checked once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Base path without a trailing slash (`""` for none).
    pub base_path: String,
}

impl UpstreamUrl {
    pub(crate) fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("upstream {url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("upstream {url:?} must be http:// or https://")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("upstream {url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(format!("upstream {url:?} must not have a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(UpstreamUrl {
            tls,
            host,
            port,
            base_path,
        })
    }

    /// `host:port` as the `Host` header and the URI authority carry it.
    pub(crate) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// The rustls client configuration for a cluster: its pinned CA only (never the system roots),
/// and the client certificate when that is the credential. aws-lc-rs is the only provider.
pub(crate) fn tls_client_config(
    ca_pem: &[u8],
    client_cert: Option<&(Vec<u8>, Vec<u8>)>,
) -> Result<Arc<rustls::ClientConfig>, K8sProxyError> {
    let cfg = |m: String| K8sProxyError::Config(m);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert = cert.map_err(|e| cfg(format!("CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| cfg(format!("CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(cfg("no CA certificate found".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert_pem, key_pem)) => {
            let chain = rustls_pemfile::certs(&mut &cert_pem[..])
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cfg(format!("client certificate: {e}")))?;
            let key = rustls_pemfile::private_key(&mut &key_pem[..])
                .map_err(|e| cfg(format!("client key: {e}")))?
                .ok_or_else(|| cfg("client key: no private key found".into()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| cfg(format!("client certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to the one upstream of a target (the URI passed by the client is ignored beyond
/// its host and port, which are always the target's).
#[derive(Clone)]
pub(crate) struct UpstreamConnector {
    url: Arc<UpstreamUrl>,
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    pub(crate) fn new(
        url: UpstreamUrl,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            url: Arc::new(url),
            tls: tls.map(tokio_rustls::TlsConnector::from),
            connect_timeout,
        }
    }

    /// Opens one connection (TCP, then TLS for https).
    pub(crate) async fn connect(&self) -> io::Result<UpstreamStream> {
        let url = self.url.clone();
        let connect = async {
            let tcp = TcpStream::connect((url.host.as_str(), url.port)).await?;
            tcp.set_nodelay(true)?;
            match &self.tls {
                None => Ok(UpstreamStream::Plain(tcp)),
                Some(tls) => {
                    let name = ServerName::try_from(url.host.clone())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let stream = tls.connect(name, tcp).await?;
                    Ok(UpstreamStream::Tls(Box::new(stream)))
                }
            }
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "upstream connect timed out",
            )),
        }
    }
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = TokioIo<UpstreamStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// A plain or TLS connection to an upstream.
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A pooled HTTP/1.1 client for one cluster.
pub(crate) fn client(connector: UpstreamConnector, pool_idle: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

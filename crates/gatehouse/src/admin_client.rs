//! A small client for the admin API, used by `gatehouse approvals` and `gatehouse login`:
//! one HTTP/1.1 request over TLS (verified against `--ca` or the web PKI) or plain HTTP on loopback.

use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::commands::CommandError;

fn failed(msg: impl Into<String>) -> CommandError {
    CommandError::Failed(msg.into())
}

/// Where and how to reach the admin API.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminTarget {
    /// Admin API base URL.
    #[arg(
        long,
        env = "GATEHOUSE_ADMIN_URL",
        default_value = "https://localhost:8443",
        global = true
    )]
    pub admin_url: String,
    /// CA certificate (PEM) that signed the admin API's certificate.
    #[arg(long, env = "GATEHOUSE_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
}

/// Sends one request; returns (status, parsed JSON body).
pub async fn request(
    target: &AdminTarget,
    method: http::Method,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> Result<(http::StatusCode, serde_json::Value), CommandError> {
    let uri: http::Uri = format!("{}{path}", target.admin_url.trim_end_matches('/'))
        .parse()
        .map_err(|e| failed(format!("admin URL `{}`: {e}", target.admin_url)))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(failed(format!(
                "admin URL `{}` must start with https:// or http://",
                target.admin_url
            )));
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| failed("admin URL has no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    .map_err(|_| failed(format!("connecting to {host}:{port}: timed out")))?
    .map_err(|e| failed(format!("connecting to {host}:{port}: {e}")))?;
    let body_bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(http::header::HOST, format!("{host}:{port}"))
        .header(
            http::header::USER_AGENT,
            concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
        );
    if !token.is_empty() {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if !body_bytes.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body_bytes)))
        .map_err(|e| failed(e.to_string()))?;
    let response = if https {
        let config = crate::listeners::tls::client_config(target.ca.as_deref().map(Path::new))?;
        let name =
            rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                .map_err(|e| failed(format!("TLS name {host}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("TLS with {host}:{port}: {e}")))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(format!("reading the response: {e}")))?
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(
        |_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes).trim().to_string() }),
    );
    Ok((status, json))
}

async fn send<T>(
    io: TokioIo<T>,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, CommandError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| failed(format!("HTTP handshake: {e}")))?;
    tokio::spawn(conn);
    tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| failed("admin API did not answer within 30 s"))?
        .map_err(|e| failed(format!("admin API request: {e}")))
}

/// Turns a non-2xx answer into an error carrying the API's message.
pub fn check(status: http::StatusCode, json: &serde_json::Value) -> Result<(), CommandError> {
    if status.is_success() {
        return Ok(());
    }
    let msg = json
        .get("error")
        .and_then(|e| e.as_str())
        .unwrap_or("request failed");
    Err(failed(format!("admin API: {status}: {msg}")))
}

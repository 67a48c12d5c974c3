//! The gateway's own PostgreSQL client handshake: connect, optional verified TLS, startup, and
//! password authentication with the credential only the gateway holds.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::PgProxyError;
use crate::config::{UpstreamAddress, UpstreamConfig, UpstreamTls};
use crate::frame::{BodyReader, Frame, decode_frame, encode_frame};
use crate::scram::{ChannelBinding, ScramClient, md5_response, tls_server_end_point};
use crate::wire::ErrorFields;

/// A duplex byte stream (TCP, Unix socket, TLS over either).
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A boxed duplex stream.
pub type BoxStream = Box<dyn AsyncStream>;

/// Reads whole frames from a stream through the length-checking framer.
pub(crate) struct FrameReader<R> {
    pub(crate) inner: R,
    pub(crate) buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, buf: BytesMut, max: usize) -> Self {
        Self { inner, buf, max }
    }

    /// The next frame; `Ok(None)` at a clean end of stream between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, self.max).map_err(ReadError::Frame)? {
                return Ok(Some(f));
            }
            if self.buf.capacity() - self.buf.len() < 8192 {
                self.buf.reserve(16384);
            }
            let n = self
                .inner
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads past the message at the head of the buffer (one whose declared length the framer
    /// refused as too large) without keeping it. Returns its tag; `Ok(None)` if the head is not
    /// a complete header.
    pub(crate) async fn discard_head(&mut self) -> Result<Option<u8>, ReadError> {
        let Some(head) = self.buf.get(..5) else {
            return Ok(None);
        };
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut left = len.saturating_add(1);
        loop {
            let take = left.min(self.buf.len());
            let _ = self.buf.split_to(take);
            left -= take;
            if left == 0 {
                return Ok(Some(tag));
            }
            self.buf.clear();
            self.buf.reserve(64 * 1024);
            let n = self
                .inner
                .read_buf(&mut self.buf)
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Resolves when the peer has gone (end of stream, a read error, or a Terminate message
    /// among what it sent), buffering whatever it sends meanwhile for [`FrameReader::next`]
    /// (nothing is consumed: every byte is processed later, in order); past `max_buffered`
    /// bytes it stops reading (and so stops watching). The buffer must start at a message
    /// boundary (it does between frames).
    pub(crate) async fn gone(&mut self, max_buffered: usize) {
        let mut scanned = 0;
        loop {
            if self.terminate_buffered(&mut scanned) {
                return;
            }
            if self.buf.len() >= max_buffered {
                return std::future::pending().await;
            }
            if self.buf.capacity() - self.buf.len() < 8192 {
                self.buf.reserve(16384);
            }
            match self.inner.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Whether a Terminate message starts at a message boundary at or after `*from` (itself a
    /// boundary) in the buffer; `*from` advances past the whole messages looked at. A message
    /// with an impossible length stops the scan (the framer refuses it when it gets there).
    fn terminate_buffered(&self, from: &mut usize) -> bool {
        loop {
            let Some(head) = self.buf.get(*from..from.saturating_add(5)) else {
                return false;
            };
            if head[0] == b'X' {
                return true;
            }
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len < 4 {
                return false;
            }
            let next = from.saturating_add(1).saturating_add(len);
            if next > self.buf.len() {
                return false;
            }
            *from = next;
        }
    }

    /// Whether a complete frame is already buffered (lets callers batch writes).
    pub(crate) fn has_buffered_frame(&self) -> bool {
        let Some(len) = self.buf.get(1..5) else {
            return false;
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.buf.len() > len
    }
}

/// A read failure: bad framing or I/O.
#[derive(Debug)]
pub(crate) enum ReadError {
    Frame(crate::frame::FrameError),
    Io(std::io::Error),
}

/// An authenticated upstream connection, ready for queries.
pub(crate) struct UpstreamConn {
    pub(crate) stream: BoxStream,
    /// Bytes read past ReadyForQuery (normally none).
    pub(crate) leftover: BytesMut,
    /// ParameterStatus pairs reported at startup.
    pub(crate) parameters: Vec<(String, String)>,
    /// BackendKeyData: process id and secret.
    pub(crate) key: Option<(i32, Bytes)>,
}

/// Connects and logs in. `extra` are startup parameters passed through from the client
/// (application_name, client_encoding, …); user and database always come from `cfg`.
pub(crate) async fn connect(
    cfg: &UpstreamConfig,
    extra: &[(String, String)],
) -> Result<UpstreamConn, PgProxyError> {
    tokio::time::timeout(cfg.connect_timeout, connect_inner(cfg, extra))
        .await
        .map_err(|_| PgProxyError::UpstreamConnect("timed out".into()))?
}

/// Opens the raw transport (no TLS).
pub(crate) async fn open_transport(address: &UpstreamAddress) -> Result<BoxStream, PgProxyError> {
    match address {
        UpstreamAddress::Tcp { host, port } => {
            let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| PgProxyError::UpstreamConnect(format!("{host}:{port}: {e}")))?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        UpstreamAddress::Unix { socket_dir, port } => {
            let path = socket_dir.join(format!(".s.PGSQL.{port}"));
            let s = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| PgProxyError::UpstreamConnect(format!("{}: {e}", path.display())))?;
            Ok(Box::new(s))
        }
    }
}

async fn connect_inner(
    cfg: &UpstreamConfig,
    extra: &[(String, String)],
) -> Result<UpstreamConn, PgProxyError> {
    let mut stream = open_transport(&cfg.address).await?;
    let mut binding = ChannelBinding::None;
    if let UpstreamTls::Require {
        config,
        server_name,
    } = &cfg.tls
    {
        let mut req = BytesMut::new();
        req.extend_from_slice(&8u32.to_be_bytes());
        req.extend_from_slice(&80_877_103u32.to_be_bytes());
        stream
            .write_all(&req)
            .await
            .map_err(PgProxyError::upstream_io)?;
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(PgProxyError::upstream_io)?;
        if answer[0] != b'S' {
            return Err(PgProxyError::UpstreamConnect(
                "server does not offer TLS, which this target requires".into(),
            ));
        }
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tls = connector
            .connect(server_name.clone(), stream)
            .await
            .map_err(|e| PgProxyError::UpstreamConnect(format!("TLS: {e}")))?;
        let cert_hash = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| tls_server_end_point(c.as_ref()));
        binding = match cert_hash {
            Some(h) => ChannelBinding::TlsServerEndPoint(h),
            None => ChannelBinding::SupportedNotUsed,
        };
        stream = Box::new(tls);
    }

    let mut params = vec![
        ("user".to_string(), cfg.user.clone()),
        ("database".to_string(), cfg.database.clone()),
    ];
    params.extend(extra.iter().cloned());
    let mut body = BytesMut::new();
    body.extend_from_slice(&0x0003_0000u32.to_be_bytes());
    for (k, v) in &params {
        body.extend_from_slice(k.as_bytes());
        body.extend_from_slice(&[0]);
        body.extend_from_slice(v.as_bytes());
        body.extend_from_slice(&[0]);
    }
    body.extend_from_slice(&[0]);
    let mut startup = BytesMut::new();
    startup.extend_from_slice(
        &u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    startup.extend_from_slice(&body);
    stream
        .write_all(&startup)
        .await
        .map_err(PgProxyError::upstream_io)?;

    let mut reader = FrameReader::new(stream, BytesMut::with_capacity(8192), 1 << 20);
    let mut scram: Option<ScramClient> = None;
    let mut parameters = Vec::new();
    let mut key = None;
    loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(PgProxyError::UpstreamConnect(
                    "server closed the connection during login".into(),
                ));
            }
            Err(ReadError::Io(e)) => return Err(PgProxyError::upstream_io(e)),
            Err(ReadError::Frame(e)) => return Err(PgProxyError::UpstreamProtocol(e.to_string())),
        };
        match frame.tag {
            b'R' => {
                let mut r = BodyReader::new(frame.body, "Authentication");
                let code = r.i32().map_err(up_proto)?;
                let mut out = BytesMut::new();
                match code {
                    0 => {
                        if let Some(s) = &scram {
                            // A server that skipped SASLFinal never proved it knows the password.
                            let _ = s;
                            return Err(PgProxyError::UpstreamAuth(
                                "server ended SCRAM without its final signature".into(),
                            ));
                        }
                    }
                    3 => {
                        let pw = password(cfg)?;
                        let mut b = pw.as_bytes().to_vec();
                        b.push(0);
                        encode_frame(b'p', &b, &mut out);
                    }
                    5 => {
                        let salt = r.bytes(4).map_err(up_proto)?;
                        let salt = [salt[0], salt[1], salt[2], salt[3]];
                        let resp = md5_response(&cfg.user, password(cfg)?, salt);
                        let mut b = resp.into_bytes();
                        b.push(0);
                        encode_frame(b'p', &b, &mut out);
                    }
                    10 => {
                        let mut mechanisms = Vec::new();
                        loop {
                            let m = r.cstr().map_err(up_proto)?;
                            if m.is_empty() {
                                break;
                            }
                            mechanisms.push(String::from_utf8_lossy(&m).into_owned());
                        }
                        let plus_offered = mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
                        let b = match (&binding, plus_offered) {
                            (ChannelBinding::TlsServerEndPoint(h), true) => {
                                ChannelBinding::TlsServerEndPoint(h.clone())
                            }
                            (ChannelBinding::None, _) => ChannelBinding::None,
                            _ => ChannelBinding::SupportedNotUsed,
                        };
                        if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") && !plus_offered {
                            return Err(PgProxyError::UpstreamAuth(format!(
                                "no supported SASL mechanism among {mechanisms:?}"
                            )));
                        }
                        let client = ScramClient::new(password(cfg)?, b);
                        let first = client.client_first();
                        let mut body = BytesMut::new();
                        body.extend_from_slice(client.mechanism().as_bytes());
                        body.extend_from_slice(&[0]);
                        body.extend_from_slice(
                            &u32::try_from(first.len()).unwrap_or(u32::MAX).to_be_bytes(),
                        );
                        body.extend_from_slice(&first);
                        encode_frame(b'p', &body, &mut out);
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram.as_mut().ok_or_else(|| {
                            PgProxyError::UpstreamProtocol("SASLContinue without SASL".into())
                        })?;
                        let fin = client
                            .client_final(&r.rest())
                            .map_err(|e| PgProxyError::UpstreamAuth(e.to_string()))?;
                        encode_frame(b'p', &fin, &mut out);
                    }
                    12 => {
                        let client = scram.take().ok_or_else(|| {
                            PgProxyError::UpstreamProtocol("SASLFinal without SASL".into())
                        })?;
                        client
                            .verify_server_final(&r.rest())
                            .map_err(|e| PgProxyError::UpstreamAuth(e.to_string()))?;
                    }
                    other => {
                        return Err(PgProxyError::UpstreamAuth(format!(
                            "unsupported authentication request {other}"
                        )));
                    }
                }
                if !out.is_empty() {
                    reader
                        .inner
                        .write_all(&out)
                        .await
                        .map_err(PgProxyError::upstream_io)?;
                }
            }
            b'E' => {
                let e = ErrorFields::parse(frame.body).map_err(up_proto)?;
                return Err(PgProxyError::UpstreamAuth(format!(
                    "{} ({})",
                    e.get(b'M').unwrap_or("error"),
                    e.code().unwrap_or("?????")
                )));
            }
            b'S' => {
                parameters.push(crate::wire::parse_parameter_status(frame.body).map_err(up_proto)?);
            }
            b'K' => {
                let mut r = BodyReader::new(frame.body, "BackendKeyData");
                let pid = r.i32().map_err(up_proto)?;
                key = Some((pid, r.rest()));
            }
            b'Z' => {
                return Ok(UpstreamConn {
                    stream: reader.inner,
                    leftover: reader.buf,
                    parameters,
                    key,
                });
            }
            b'N' | b'v' => {}
            other => {
                return Err(PgProxyError::UpstreamProtocol(format!(
                    "unexpected message {:?} during login",
                    char::from(other)
                )));
            }
        }
    }
}

fn password(cfg: &UpstreamConfig) -> Result<&str, PgProxyError> {
    cfg.password.as_ref().map(|s| s.expose()).ok_or_else(|| {
        PgProxyError::UpstreamAuth("server asks for a password; none is configured".into())
    })
}

fn up_proto(e: crate::frame::FrameError) -> PgProxyError {
    PgProxyError::UpstreamProtocol(e.to_string())
}

/// Sends a CancelRequest for `pid`/`secret` to the upstream server (plain transport, as libpq
/// does when the server accepts it).
pub(crate) async fn send_cancel(
    address: &UpstreamAddress,
    pid: i32,
    secret: &[u8],
) -> Result<(), PgProxyError> {
    let mut stream = open_transport(address).await?;
    let mut pkt = BytesMut::new();
    pkt.extend_from_slice(
        &u32::try_from(12 + secret.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    pkt.extend_from_slice(&80_877_102u32.to_be_bytes());
    pkt.extend_from_slice(&pid.to_be_bytes());
    pkt.extend_from_slice(secret);
    stream
        .write_all(&pkt)
        .await
        .map_err(PgProxyError::upstream_io)?;
    // The server closes the connection after a cancel; wait for that so the cancel is delivered.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut sink)).await;
    Ok(())
}

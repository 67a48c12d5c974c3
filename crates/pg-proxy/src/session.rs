//! One client connection from accept to close: startup (TLS, password → Authenticator), upstream
//! login, then the relay with its per-statement decisions (frontend half) and per-row masking
//! (backend half).
//!
//! The two halves run concurrently and share an ordered queue of what the upstream server is
//! expected to answer ([`Expect`]), so every response is matched to the statement (and masking
//! plan) it belongs to even when the client pipelines.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gatehouse_core::{
    ChunkVerdict, Classified, Credential, Decision, EgressSite, EgressStream, Event, EventBody,
    FieldDesc, Finding, Gate, GateContext, HoldMode, Identity, Operation, OperationResult, Outcome,
    RecordingFrame, RecordingKind, RecordingSink, Review, SessionId, SqlOperation, SqlProtocol,
    SqlSessionSettings, Verdict, tighten,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::PgProxyError;
use crate::ProxyInner;
use crate::cancel::CancelTarget;
use crate::config::{NonTextMasking, PgTarget};
use crate::frame::{Frame, StartupPacket, decode_startup, encode_frame};
use crate::hooks::SessionContext;
use crate::prepared::{
    Bound, Change, LocalNames, NameOp, Names, PendingChange, Prepared, Resolved, Space,
};
use crate::rowmask::{RowOutcome, RowScratch, ShapePlan};
use crate::statements::{SessionEffect, StatementInfo, StatementKind};
use crate::upstream::{BoxStream, FrameReader, ReadError, UpstreamConn};
use crate::wire::{self, ColumnDesc, ErrorFields};

/// Startup parameters passed through to the upstream server; everything else (notably
/// `options`, which can set any GUC, and `replication`) stays at the gateway.
const PASSTHROUGH_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
];

type ClientWriter = Arc<tokio::sync::Mutex<WriteHalf<BoxStream>>>;

/// Handles one accepted connection to the end. Never panics on client input; errors end only
/// this session.
pub(crate) async fn run(proxy: Arc<ProxyInner>, stream: BoxStream, client_addr: String) {
    let session = SessionId::generate();
    let limit = proxy.config.limits.startup_timeout;
    let started =
        tokio::time::timeout(limit, startup(&proxy, stream, &client_addr, &session)).await;
    let ready = match started {
        Ok(Ok(Some(ready))) => ready,
        Ok(Ok(None)) => return,
        Ok(Err((Some(mut stream), err))) => {
            let _ = send_fatal(&proxy, &mut stream, &err).await;
            return;
        }
        Ok(Err((None, _))) => return,
        Err(_) => return,
    };
    relay(proxy, ready, client_addr, session).await;
}

/// What the startup phase hands the relay.
struct Ready {
    client: BoxStream,
    client_buf: BytesMut,
    upstream: UpstreamConn,
    identity: Identity,
    target: PgTarget,
    application_name: Option<String>,
    /// This session's place in the per-identity and per-target counts (released at its end).
    slot: crate::slots::SessionSlot,
}

type StartupResult = Result<Option<Ready>, (Option<BoxStream>, PgProxyError)>;

async fn read_startup_packet(
    stream: &mut BoxStream,
    buf: &mut BytesMut,
) -> Result<Option<StartupPacket>, PgProxyError> {
    loop {
        if let Some(p) = decode_startup(buf)? {
            return Ok(Some(p));
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(PgProxyError::client_io)?;
        if n == 0 {
            return Ok(None);
        }
    }
}

async fn startup(
    proxy: &Arc<ProxyInner>,
    mut stream: BoxStream,
    client_addr: &str,
    session: &SessionId,
) -> StartupResult {
    let mut buf = BytesMut::with_capacity(1024);
    let mut tls = false;
    let (minor, parameters) = loop {
        let packet = match read_startup_packet(&mut stream, &mut buf).await {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) => return Err((Some(stream), e)),
        };
        match packet {
            StartupPacket::SslRequest => {
                if !buf.is_empty() {
                    // Bytes after SSLRequest would be read as if they came through TLS.
                    return Err((
                        Some(stream),
                        PgProxyError::ClientProtocol(
                            "data received before the TLS handshake".into(),
                        ),
                    ));
                }
                match (&proxy.config.tls, tls) {
                    (Some(cfg), false) => {
                        if stream.write_all(b"S").await.is_err() {
                            return Ok(None);
                        }
                        let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
                        match acceptor.accept(stream).await {
                            Ok(s) => {
                                stream = Box::new(s);
                                tls = true;
                            }
                            // TLS garbage: rustls has answered with an alert; nothing to say in SQL.
                            Err(_) => return Ok(None),
                        }
                    }
                    _ => {
                        if stream.write_all(b"N").await.is_err() {
                            return Ok(None);
                        }
                    }
                }
            }
            StartupPacket::GssEncRequest => {
                if stream.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            StartupPacket::CancelRequest { pid, secret } => {
                if let Some(t) = proxy.cancels.lookup(pid, &secret) {
                    t.notify.notify_waiters();
                    let _ = crate::upstream::send_cancel(
                        &t.address,
                        t.upstream_pid,
                        &t.upstream_secret,
                    )
                    .await;
                }
                return Ok(None);
            }
            StartupPacket::Startup {
                minor, parameters, ..
            } => break (minor, parameters),
        }
    };

    let mut out = BytesMut::new();
    let unsupported: Vec<String> = parameters
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        let npv = pgwire::messages::startup::NegotiateProtocolVersion::new(0, unsupported);
        if let Err(e) = wire::put(&npv, &mut out) {
            return Err((Some(stream), e));
        }
    }
    let param = |name: &str| {
        parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if param("replication").is_some_and(|v| {
        !v.eq_ignore_ascii_case("false") && v != "0" && !v.eq_ignore_ascii_case("off")
    }) {
        return Err((
            Some(stream),
            PgProxyError::Refused("replication connections are not served by the gateway".into()),
        ));
    }
    if let Some(e) = param("client_encoding").and_then(|v| unsupported_encoding(&v)) {
        return Err((Some(stream), PgProxyError::UnsupportedEncoding(e)));
    }
    let Some(database) = param("database").filter(|d| !d.is_empty()) else {
        return Err((
            Some(stream),
            PgProxyError::UnknownTarget(
                "no target named: set the database to the name of a gateway target".into(),
            ),
        ));
    };
    let Some(target) = proxy.config.targets.get(&database).cloned() else {
        return Err((
            Some(stream),
            PgProxyError::UnknownTarget(format!("target \"{database}\" does not exist")),
        ));
    };
    if !tls && !proxy.config.allow_plaintext_password {
        return Err((
            Some(stream),
            PgProxyError::Refused("this gateway requires TLS (sslmode=require)".into()),
        ));
    }

    // Ask for the token as a cleartext password (inside TLS, or on an allowed loopback listener).
    let _ = wire::put(
        &pgwire::messages::startup::Authentication::CleartextPassword,
        &mut out,
    );
    if stream.write_all(&out).await.is_err() {
        return Ok(None);
    }
    let mut reader = FrameReader::new(stream, buf, 16 * 1024);
    let frame = match reader.next().await {
        Ok(Some(f)) => f,
        // psql's flow: connect, learn a password is needed, disconnect, prompt, reconnect.
        // Not a failed login.
        Ok(None) | Err(ReadError::Io(_)) => return Ok(None),
        Err(ReadError::Frame(e)) => return Err((Some(reader.inner), e.into())),
    };
    let stream_back = |r: FrameReader<BoxStream>| r.inner;
    if frame.tag != b'p' {
        return Err((
            Some(stream_back(reader)),
            PgProxyError::ClientProtocol(format!(
                "expected a password message, got {:?}",
                char::from(frame.tag)
            )),
        ));
    }
    let password = match crate::frame::BodyReader::new(frame.body, "PasswordMessage").cstring() {
        Ok(p) => p,
        Err(e) => return Err((Some(stream_back(reader)), e.into())),
    };
    let credential = Credential::Password(password);
    let identity = match proxy.pipeline.authenticator.authenticate(&credential).await {
        Ok(id) => id,
        Err(e) => {
            let event = Event::now(
                session.clone(),
                None,
                Some(target.target.clone()),
                EventBody::LoginFailed {
                    client_addr: client_addr.to_string(),
                    reason: e.kind,
                },
            );
            let _ = proxy.pipeline.recorder.record(event).await;
            return Err((Some(stream_back(reader)), PgProxyError::Auth(e)));
        }
    };
    drop(credential);
    if identity.is_expired_at(gatehouse_core::now()) {
        return Err((Some(stream_back(reader)), PgProxyError::TokenExpired));
    }
    let ctx = SessionContext {
        session: session.clone(),
        identity: identity.clone(),
        target: target.target.clone(),
        client_addr: client_addr.to_string(),
    };
    if let Err(e) = proxy.hooks.on_startup(&ctx).await {
        return Err((Some(stream_back(reader)), e));
    }
    // Counted before the upstream connection is opened: one identity must not be able to take
    // every connection the server has.
    let limits = &proxy.config.limits;
    let slot = match proxy.sessions.acquire(
        &format!("{}\u{0}{}", identity.issuer, identity.subject),
        &target.target.name,
        limits.max_sessions_per_identity,
        limits.max_sessions_per_target,
    ) {
        Ok(s) => s,
        Err(e) => {
            let event = Event::now(
                session.clone(),
                Some(identity.clone()),
                Some(target.target.clone()),
                EventBody::Error {
                    side: e.side(),
                    message: format!("session refused: {e}"),
                },
            );
            if let Err(r) = proxy.pipeline.recorder.record(event).await {
                return Err((Some(stream_back(reader)), r.into()));
            }
            return Err((Some(stream_back(reader)), e));
        }
    };
    let extra: Vec<(String, String)> = parameters
        .iter()
        .filter(|(k, _)| PASSTHROUGH_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p)))
        .cloned()
        .collect();
    let upstream = match crate::upstream::connect(&target.upstream, &extra).await {
        Ok(u) => u,
        Err(e) => {
            let event = Event::now(
                session.clone(),
                Some(identity.clone()),
                Some(target.target.clone()),
                EventBody::Error {
                    side: e.side(),
                    message: proxy.scrub(&e.to_string()),
                },
            );
            let _ = proxy.pipeline.recorder.record(event).await;
            return Err((Some(stream_back(reader)), e));
        }
    };
    let client_buf = std::mem::take(&mut reader.buf);
    Ok(Some(Ready {
        client: reader.inner,
        client_buf,
        upstream,
        identity,
        target,
        application_name: param("application_name"),
        slot,
    }))
}

/// Writes a FATAL for `err` (text passed through the egress guard).
async fn send_fatal(
    proxy: &ProxyInner,
    stream: &mut BoxStream,
    err: &PgProxyError,
) -> std::io::Result<()> {
    let msg = match err {
        PgProxyError::Auth(a) => format!("password authentication failed: {}", a.kind),
        other => other.to_string(),
    };
    let fields = ErrorFields::new("FATAL", err.sqlstate(), proxy.scrub(&msg));
    let mut out = BytesMut::new();
    if fields.encode(b'E', &mut out).is_ok() {
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
    let _ = stream.shutdown().await;
    Ok(())
}

/// Why the upstream statement failed when the gateway refused it.
#[derive(Debug, Clone)]
struct DenyInfo {
    code: &'static str,
    message: String,
    detail: Option<String>,
}

/// What the upstream server owes, in order.
#[derive(Debug)]
enum Expect {
    /// A simple Query (or a refused FunctionCall): results per statement, then ReadyForQuery.
    Query {
        statements: VecDeque<Arc<StmtCtx>>,
        /// Name changes its statements make if the server completes them (by operation index).
        changes: VecDeque<(u64, PendingChange)>,
        /// A statement in it may change the lexer settings (a ParameterStatus is expected).
        may_change: bool,
    },
    /// FunctionCallResponse, then ReadyForQuery.
    FunctionCall {
        statement: Arc<StmtCtx>,
    },
    Parse {
        name: String,
        statement: Arc<StmtCtx>,
        change: Option<PendingChange>,
    },
    Bind {
        portal: String,
        statement: String,
        result_formats: Vec<i16>,
        change: Option<PendingChange>,
        /// What the portal's rows are masked as, when not its statement's own text (a portal
        /// of `EXECUTE name` returns the rows of the statement `name` runs).
        ctx: Option<Arc<StmtCtx>>,
    },
    DescribeStatement {
        name: String,
        swallow: bool,
        saw_parameters: bool,
    },
    DescribePortal {
        name: String,
        swallow: bool,
        /// The statement the portal's rows belong to, when the gateway did not bind it (a
        /// cursor declared in SQL): set on the portal as its context.
        ctx: Option<Arc<StmtCtx>>,
    },
    Execute {
        portal: String,
        /// A name change made by the SQL it runs (`PREPARE`, `DEALLOCATE`).
        change: Option<PendingChange>,
    },
    Close {
        change: Option<PendingChange>,
    },
    Sync {
        /// An Execute since the previous Sync may change the lexer settings.
        may_change: bool,
    },
}

impl Expect {
    fn is_extended(&self) -> bool {
        !matches!(
            self,
            Expect::Query { .. } | Expect::FunctionCall { .. } | Expect::Sync { .. }
        )
    }

    /// Ends a sync group: the server answers it with ReadyForQuery.
    fn is_synced(&self) -> bool {
        !self.is_extended()
    }

    fn may_change(&self) -> bool {
        match self {
            Expect::Query { may_change, .. } | Expect::Sync { may_change } => *may_change,
            _ => false,
        }
    }
}

/// A decided statement, as the backend half needs it.
#[derive(Debug)]
struct StmtCtx {
    index: u64,
    text: String,
    profile: Option<String>,
    lineage: Option<crate::statements::ColumnLineage>,
    tables: Vec<String>,
    /// What it reads is unknown (unparseable, `DO`, `CALL`, opaque code).
    opaque: bool,
    /// Functions it calls.
    functions: Vec<String>,
    /// A binary `COPY … TO STDOUT`: its columns, described before it ran.
    copy_columns: Option<Arc<Vec<ColumnDesc>>>,
    started: Instant,
}

/// State shared by the two halves.
struct Shared {
    expect: Mutex<VecDeque<Expect>>,
    denials: Mutex<HashMap<u64, DenyInfo>>,
    settings: Mutex<SqlSessionSettings>,
    /// Random per session: marks the gateway's substituted statements so their errors can be
    /// recognised and rewritten; never shown to the client.
    nonce: String,
    operations: AtomicU64,
    /// Result summaries that could not be recorded (named in SessionEnd). The operations
    /// themselves were recorded before they ran; a recorder that is down refuses the next one.
    results_lost: AtomicU64,
    /// Cancelled when either half ends. A token, not a `Notify`: a half that is busy when the
    /// other ends still sees it at its next wait.
    done: CancellationToken,
    /// Prepared-statement and portal names as the server accepted them.
    names: Arc<Names>,
    /// Woken when the backend half has answered a sync group (ReadyForQuery).
    progress: Notify,
    /// Sync groups sent and answered, for catalog opacity ([`crate::opacity`]).
    ready: crate::opacity::ReadyTracker,
    /// CopyDone and CopyFail messages the client half has forwarded.
    copy_ends: AtomicU64,
}

/// How long a statement waits for the server's answer to an earlier group that may have
/// changed stored code, before it is decided without it (see [`Frontend::evaluate`]).
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the gateway cannot serve a session in `client_encoding`, if it cannot.
fn unsupported_encoding(client_encoding: &str) -> Option<String> {
    if client_encoding.eq_ignore_ascii_case("auto")
        || crate::encoding::Codec::for_name(client_encoding).is_some()
    {
        return None;
    }
    Some(format!(
        "client_encoding \"{client_encoding}\" is not supported by the gateway: it cannot decode \
         statements in it exactly; use UTF8 (or one of LATIN1-4, LATIN6-10, ISO_8859_5-8, \
         WIN866, WIN874, WIN1250-1258, KOI8R, KOI8U, EUC_JP, EUC_KR, EUC_CN, SJIS, BIG5, GBK, UHC, \
         GB18030)"
    ))
}

impl Shared {
    /// How text is encoded in this session now.
    fn codec(&self) -> crate::encoding::Codec {
        crate::encoding::Codec::for_name(&lock(&self.settings).client_encoding)
            .unwrap_or(crate::encoding::Codec::Utf8)
    }

    fn push(&self, e: Expect) {
        if e.is_synced() {
            self.ready.sent();
        }
        lock(&self.expect).push_back(e);
    }

    /// Whether the sync group being answered was marked as possibly changing the lexer
    /// settings.
    fn setting_change_expected(&self) -> bool {
        let q = lock(&self.expect);
        for e in q.iter() {
            if e.may_change() {
                return true;
            }
            if e.is_synced() {
                return false;
            }
        }
        false
    }

    fn marker(&self, index: u64) -> String {
        format!("gatehouse-denied:{}:{index}", self.nonce)
    }

    /// The operation index named by a substituted statement's error text, if any.
    fn denied_index(&self, message: &str) -> Option<u64> {
        let prefix = format!("gatehouse-denied:{}:", self.nonce);
        let at = message.find(&prefix)? + prefix.len();
        let digits: String = message[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }
}

async fn relay(proxy: Arc<ProxyInner>, ready: Ready, client_addr: String, session: SessionId) {
    let Ready {
        client,
        client_buf,
        upstream,
        identity,
        target,
        application_name,
        slot: _slot,
    } = ready;
    let ctx = SessionContext {
        session: session.clone(),
        identity: identity.clone(),
        target: target.target.clone(),
        client_addr: client_addr.clone(),
    };
    let (client_read, client_write) = tokio::io::split(client);
    let client_writer: ClientWriter = Arc::new(tokio::sync::Mutex::new(client_write));

    // Control event first: nothing runs unrecorded.
    let start = Event::now(
        session.clone(),
        Some(identity.clone()),
        Some(target.target.clone()),
        EventBody::SessionStart {
            client_addr: client_addr.clone(),
            details: serde_json::json!({
                "application_name": application_name,
                "upstream_user": target.upstream.user,
                "upstream_database": target.upstream.database,
            }),
        },
    );
    let sink = match proxy.pipeline.recorder.record(start).await {
        Ok(_) => {
            proxy
                .pipeline
                .recorder
                .open_recording(&session, RecordingKind::Sql)
                .await
        }
        Err(e) => Err(e),
    };
    let sink = match sink {
        Ok(s) => s,
        Err(e) => {
            let mut w = client_writer.lock().await;
            let err = PgProxyError::Recorder(e);
            let fields = ErrorFields::new("FATAL", err.sqlstate(), err.to_string());
            let mut out = BytesMut::new();
            if fields.encode(b'E', &mut out).is_ok() {
                let _ = w.write_all(&out).await;
            }
            let _ = w.shutdown().await;
            return;
        }
    };

    let UpstreamConn {
        stream: up_stream,
        leftover,
        parameters,
        key,
    } = upstream;
    let notify = Arc::new(Notify::new());
    let gateway_key = key.map(|(pid, secret)| {
        proxy.cancels.register(CancelTarget {
            address: target.upstream.address.clone(),
            upstream_pid: pid,
            upstream_secret: secret,
            notify: notify.clone(),
        })
    });

    let mut settings = SqlSessionSettings::default();
    let mut hello = BytesMut::new();
    let _ = wire::put(&pgwire::messages::startup::Authentication::Ok, &mut hello);
    for (k, v) in &parameters {
        track_setting(&mut settings, k, v);
        let _ = wire::put(
            &pgwire::messages::startup::ParameterStatus::new(k.clone(), v.clone()),
            &mut hello,
        );
    }
    let (pid, secret) = gateway_key.unwrap_or((0, [0; 4]));
    let mut key_body = Vec::with_capacity(8);
    key_body.extend_from_slice(&pid.to_be_bytes());
    key_body.extend_from_slice(&secret);
    encode_frame(b'K', &key_body, &mut hello);
    wire::encode_ready(b'I', &mut hello);

    let mut egress = proxy.pipeline.egress.stream(EgressSite::Client);
    // The server's default client encoding is the database's: refused like a client's choice
    // when the gateway cannot decode it exactly.
    let hello_ok = match unsupported_encoding(&settings.client_encoding) {
        Some(e) => {
            let fields = ErrorFields::new("FATAL", "0A000", e.clone());
            let mut out = BytesMut::new();
            if fields.encode(b'E', &mut out).is_ok() {
                let _ = client_writer.lock().await.write_all(&out).await;
            }
            Err(e)
        }
        None if egress.check(&hello).is_ok()
            && client_writer.lock().await.write_all(&hello).await.is_ok() =>
        {
            Ok(())
        }
        None => Err("egress guard blocked the startup parameters".to_string()),
    };

    let shared = Arc::new(Shared {
        expect: Mutex::new(VecDeque::new()),
        denials: Mutex::new(HashMap::new()),
        settings: Mutex::new(settings),
        nonce: format!("{:016x}", rand::random::<u64>()),
        operations: AtomicU64::new(0),
        results_lost: AtomicU64::new(0),
        done: CancellationToken::new(),
        names: Arc::new(Names::default()),
        progress: Notify::new(),
        ready: crate::opacity::ReadyTracker::default(),
        copy_ends: AtomicU64::new(0),
    });
    // Result summaries are recorded in order by their own task, so no statement's results wait
    // for the audit log's fsync; the operation itself was recorded (awaited) before it ran.
    let (results, results_rx) = tokio::sync::mpsc::channel(RESULT_QUEUE);
    let results_task = tokio::spawn(record_results(proxy.clone(), shared.clone(), results_rx));

    let (up_read, up_write) = tokio::io::split(up_stream);
    let backend = Backend {
        proxy: proxy.clone(),
        ctx: ctx.clone(),
        shared: shared.clone(),
        reader: FrameReader::new(up_read, leftover, proxy.config.limits.max_upstream_message),
        client: client_writer.clone(),
        egress,
        sink,
        statements: HashMap::new(),
        portals: HashMap::new(),
        running: None,
        copy_ends_seen: 0,
        copy: None,
        cycle: Vec::new(),
        cycle_overflow: false,
        out: BytesMut::with_capacity(16 * 1024),
        scratch: RowScratch::default(),
        notice_plan: None,
        withheld_cache: None,
        plan_cache: HashMap::new(),
        plan_generation: 0,
        masked_columns: HashMap::new(),
        results,
        recording: Vec::new(),
    };

    let mut frontend = Frontend {
        proxy: proxy.clone(),
        ctx: ctx.clone(),
        shared: shared.clone(),
        reader: FrameReader::new(
            client_read,
            client_buf,
            proxy.config.limits.max_client_message,
        ),
        upstream: up_write,
        client: client_writer.clone(),
        cancel: notify,
        statements: HashMap::new(),
        portals: HashMap::new(),
        out: BytesMut::with_capacity(4096),
        local: LocalNames::default(),
        group: 0,
        unsynced_exec: false,
        group_may_change: false,
        refused_in_group: None,
        copy_columns: HashMap::new(),
        opacity: crate::opacity::SessionOpacity::default(),
    };
    // Both halves run in this one task, as a relay's two copy directions do: a statement's
    // round trip then wakes one task, not two that may sit on different workers.
    let front = async {
        let reason = match hello_ok {
            Ok(()) => frontend.run().await,
            Err(e) => e,
        };
        // Cancel first: the backend then takes the upstream's EOF that follows the shutdown as
        // this half's ending, so the session keeps the frontend's reason (e.g. "idle timeout").
        shared.done.cancel();
        let _ = frontend.upstream.shutdown().await;
        reason
    };
    let back = async {
        let run = backend.run();
        tokio::pin!(run);
        // Once the session is ending, a backend stuck writing to a client that reads nothing
        // gets ten seconds, then is dropped.
        let grace = async {
            shared.done.cancelled().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        tokio::select! {
            biased;
            r = &mut run => r,
            _ = grace => (None, None),
        }
    };
    // Biased: no random start per poll (the halves are polled in turn either way).
    let (reason, (backend_reason, sink)) = tokio::join!(biased; front, back);
    let mut reason = backend_reason.unwrap_or(reason);
    // The backend half (and with it the results queue's sender) is gone: drain the queue so
    // every result summary precedes SessionEnd.
    let _ = tokio::time::timeout(Duration::from_secs(10), results_task).await;
    let lost = shared.results_lost.load(Ordering::Relaxed);
    if lost > 0 {
        reason = format!("{reason}; {lost} result summaries not recorded");
    }
    if let Some(k) = gateway_key {
        proxy.cancels.remove(k);
    }
    let recording = match sink {
        Some(s) => s.seal().await.ok(),
        None => None,
    };
    proxy.hooks.on_end(&ctx, &reason);
    let end = Event::now(
        session,
        Some(identity),
        Some(target.target),
        EventBody::SessionEnd {
            reason,
            recording,
            operations: shared.operations.load(Ordering::Relaxed),
        },
    );
    let _ = proxy.pipeline.recorder.record(end).await;
    let mut w = client_writer.lock().await;
    let _ = w.shutdown().await;
}

/// Result summaries queued per session before the backend half waits for room.
const RESULT_QUEUE: usize = 1024;
/// Most result summaries recorded together.
const RESULT_BATCH: usize = 256;
/// Longest a result summary waits for others to share its group commit.
const RESULT_LINGER: Duration = Duration::from_millis(5);

/// Records queued result summaries in order, several per group commit. A failure is logged and
/// counted (SessionEnd names the count).
async fn record_results(
    proxy: Arc<ProxyInner>,
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<Event>,
) {
    let mut batch = Vec::with_capacity(RESULT_BATCH);
    while rx.recv_many(&mut batch, RESULT_BATCH).await > 0 {
        // Linger a little so that one write (one group commit) covers the results of several
        // statements; the queue is not watched meanwhile, so the statements that follow do not
        // wake this task one by one.
        if batch.len() < RESULT_BATCH {
            tokio::select! {
                _ = tokio::time::sleep(RESULT_LINGER) => {}
                // The session is ending: no more results worth waiting for.
                _ = shared.done.cancelled() => {}
            }
            while batch.len() < RESULT_BATCH {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }
        // In the order they were queued.
        let outcomes = proxy
            .pipeline
            .recorder
            .record_all(std::mem::take(&mut batch))
            .await;
        for e in outcomes.into_iter().filter_map(Result::err) {
            tracing::warn!(error = %e, "result summary not recorded");
            shared.results_lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn track_setting(settings: &mut SqlSessionSettings, name: &str, value: &str) {
    if name.eq_ignore_ascii_case("standard_conforming_strings") {
        settings.standard_conforming_strings = value.eq_ignore_ascii_case("on");
    } else if name.eq_ignore_ascii_case("client_encoding") {
        settings.client_encoding = value.to_string();
    }
}

/// Frontend-side knowledge of a prepared statement.
#[derive(Debug, Clone)]
struct FeStatement {
    described: bool,
}

/// The client → upstream half.
struct Frontend {
    proxy: Arc<ProxyInner>,
    ctx: SessionContext,
    shared: Arc<Shared>,
    reader: FrameReader<ReadHalf<BoxStream>>,
    upstream: WriteHalf<BoxStream>,
    client: ClientWriter,
    cancel: Arc<Notify>,
    statements: HashMap<String, FeStatement>,
    /// Portal → whether its row shape will be known to the backend half.
    portals: HashMap<String, bool>,
    out: BytesMut,
    /// What the client sent per name, by sync group (see [`crate::prepared`]).
    local: LocalNames,
    /// The current sync group: bumped by Sync, Query and FunctionCall.
    group: u64,
    /// A Bind or Execute was sent since the last Sync: the server may be running code whose
    /// setting changes cannot be reported before that Sync.
    unsynced_exec: bool,
    /// An Execute since the last Sync may change the lexer settings.
    group_may_change: bool,
    /// The index of a message of this sync group the gateway refused with a substitute certain
    /// to fail upstream: the server skips everything after it up to Sync, so the group's later
    /// Binds and Executes are neither decided nor held (nothing of them would run).
    refused_in_group: Option<u64>,
    /// Binary `COPY … TO STDOUT` statements by operation index: their columns (see
    /// [`Frontend::describe_binary_copy`]).
    copy_columns: HashMap<u64, Arc<Vec<ColumnDesc>>>,
    /// What the catalog makes opaque, cached for this session.
    opacity: crate::opacity::SessionOpacity,
}

/// A statement's verdict after policy, hooks, recording and (for reviews) approvals.
enum Verdicted {
    Allowed(Decision),
    Review(Decision),
    Denied(DenyInfo),
}

impl Frontend {
    /// Runs until the client leaves or the session must end; returns the reason.
    async fn run(&mut self) -> String {
        let idle = self.proxy.config.limits.idle_timeout;
        let expiry_sleep = expiry_sleep(self.expiry());
        tokio::pin!(expiry_sleep);
        // One idle timer for the session, pushed back before each read (extending a timer's
        // deadline is an atomic update, not a timer-wheel insert and removal per message), and
        // one registration on the end-of-session token: per message, the loop costs a poll.
        let idle_sleep = tokio::time::sleep(idle.unwrap_or(Duration::MAX / 4));
        tokio::pin!(idle_sleep);
        let shared = self.shared.clone();
        let done = shared.done.cancelled();
        tokio::pin!(done);
        loop {
            if let Some(d) = idle {
                idle_sleep.as_mut().reset(tokio::time::Instant::now() + d);
            }
            // Biased: the session's end, its token's expiry and the idle limit are checked
            // before each read, so a client that never stops sending cannot outrun them.
            let frame = tokio::select! {
                biased;
                _ = &mut done => return "upstream closed".into(),
                _ = &mut expiry_sleep => {
                    self.fatal(&PgProxyError::TokenExpired).await;
                    return "token expired".into();
                }
                _ = &mut idle_sleep, if idle.is_some() => {
                    Err(ReadError::Io(std::io::ErrorKind::TimedOut.into()))
                }
                f = self.reader.next() => f,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => return "client closed".into(),
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                    self.fatal(&PgProxyError::IdleTimeout).await;
                    return "idle timeout".into();
                }
                Err(ReadError::Io(_)) => return "client connection lost".into(),
                // A statement message over the limit (but within what PostgreSQL itself
                // would accept, 1 GB) is read past and refused; anything else ends the session.
                Err(ReadError::Frame(crate::frame::FrameError::TooLarge { len, max }))
                    if len < (1 << 30)
                        && self
                            .reader
                            .buf
                            .first()
                            .is_some_and(|t| matches!(t, b'Q' | b'P' | b'B' | b'd')) =>
                {
                    let discarded = match idle {
                        Some(d) => tokio::time::timeout(d, self.reader.discard_head())
                            .await
                            .unwrap_or(Ok(None)),
                        None => self.reader.discard_head().await,
                    };
                    match discarded {
                        Ok(Some(tag)) => {
                            if let Err(err) = self.refuse_oversized(tag, len, max) {
                                self.fatal(&err).await;
                                return format!("{:?} error: {err}", err.side());
                            }
                            if !self.reader.has_buffered_frame()
                                && let Err(e) = self.flush().await
                            {
                                return format!("upstream write failed: {e}");
                            }
                            continue;
                        }
                        _ => return "client connection lost".into(),
                    }
                }
                Err(ReadError::Frame(e)) => {
                    let err: PgProxyError = e.into();
                    self.fatal(&err).await;
                    return format!("client protocol error: {err}");
                }
            };
            let terminate = frame.tag == b'X';
            if let Err(err) = self.handle(frame).await {
                self.fatal(&err).await;
                return format!("{:?} error: {err}", err.side());
            }
            if (self.out.len() > 64 * 1024 || !self.reader.has_buffered_frame())
                && let Err(e) = self.flush().await
            {
                return format!("upstream write failed: {e}");
            }
            if terminate {
                return "client closed".into();
            }
        }
    }

    /// When the session ends because its token expires, if it does.
    fn expiry(&self) -> Option<tokio::time::Instant> {
        self.ctx
            .identity
            .expires_at
            .filter(|_| self.proxy.config.limits.end_at_token_expiry)
            .map(|exp| {
                let left = exp - gatehouse_core::now();
                let secs = left.as_seconds_f64().max(0.0);
                tokio::time::Instant::now() + Duration::from_secs_f64(secs)
            })
    }

    /// Answers a message over the size limit that was read past: the server is sent a message
    /// certain to fail in its place (a failing Query, Parse or Bind, or CopyFail), so the client
    /// gets an ErrorResponse (54000) in protocol order and the session stays usable.
    fn refuse_oversized(&mut self, tag: u8, len: usize, max: usize) -> Result<(), PgProxyError> {
        let index = self.next_index();
        let deny = DenyInfo {
            code: "54000",
            message: format!(
                "message of {len} bytes exceeds the gateway's limit of {max} bytes; it was not run"
            ),
            detail: None,
        };
        let marker = self.shared.marker(index);
        self.record_denial(index, deny);
        let ctx = self.stmt_ctx(index, "-- oversized message", None, None);
        match tag {
            b'Q' => {
                self.end_group();
                self.shared.push(Expect::Query {
                    statements: VecDeque::from([ctx]),
                    changes: VecDeque::new(),
                    may_change: false,
                });
                self.end_group();
                wire::encode_query(&deny_sql(&marker), &mut self.out)
            }
            b'P' => {
                self.refused_in_group = Some(index);
                self.shared.push(Expect::Parse {
                    name: String::new(),
                    statement: ctx,
                    change: None,
                });
                wire::encode_parse("", &deny_sql(&marker), &[], &mut self.out)
            }
            b'B' => {
                self.refused_in_group = Some(index);
                self.shared.push(Expect::Bind {
                    portal: String::new(),
                    statement: marker.clone(),
                    result_formats: Vec::new(),
                    change: None,
                    ctx: None,
                });
                wire::encode_bare_bind("", &marker, &mut self.out)
            }
            _ => {
                // CopyData: fail the COPY; the server answers with an ErrorResponse naming the
                // marker, then ReadyForQuery.
                let mut body = marker.into_bytes();
                body.push(0);
                encode_frame(b'f', &body, &mut self.out);
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.upstream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn fatal(&mut self, err: &PgProxyError) {
        let fields = ErrorFields::new("FATAL", err.sqlstate(), self.proxy.scrub(&err.to_string()));
        let mut buf = BytesMut::new();
        if fields
            .encode_in(b'E', &mut buf, self.shared.codec())
            .is_ok()
        {
            let mut w = self.client.lock().await;
            let _ = w.write_all(&buf).await;
        }
    }

    async fn notice(&mut self, message: String) {
        let fields = ErrorFields::new("NOTICE", "00000", self.proxy.scrub(&message));
        let mut buf = BytesMut::new();
        if fields
            .encode_in(b'N', &mut buf, self.shared.codec())
            .is_ok()
            && self
                .proxy
                .pipeline
                .egress
                .check(EgressSite::Client, &buf)
                .is_ok()
        {
            let mut w = self.client.lock().await;
            let _ = w.write_all(&buf).await;
            let _ = w.flush().await;
        }
    }

    fn next_index(&self) -> u64 {
        self.shared.operations.fetch_add(1, Ordering::Relaxed)
    }

    fn settings(&self) -> SqlSessionSettings {
        lock(&self.shared.settings).clone()
    }

    /// A statement's text as the server reads it: decoded from the client encoding into UTF-8
    /// (PostgreSQL converts before it reads a token), with the settings to read that text under
    /// (UTF-8 from then on) and the session's codec. `false` when the bytes are not valid in the
    /// client encoding (the text is then a lossy rendering, for the record only).
    fn decode_statement(
        &self,
        raw: &[u8],
    ) -> (String, SqlSessionSettings, crate::encoding::Codec, bool) {
        let mut settings = self.settings();
        let codec = self.shared.codec();
        match codec.decode(raw) {
            Some(text) => {
                settings.client_encoding = "UTF8".into();
                (text.into_owned(), settings, codec, true)
            }
            None => (codec.decode_lossy(raw).into_owned(), settings, codec, false),
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        match frame.tag {
            b'Q' => self.on_query(frame.body).await,
            b'P' => self.on_parse(frame).await,
            b'B' => self.on_bind(frame).await,
            b'D' => {
                let (kind, name) = wire::parse_target(frame.body.clone(), "Describe")?;
                if kind == b'S' {
                    if let Some(s) = self.statements.get_mut(&name) {
                        s.described = true;
                    }
                    self.shared.push(Expect::DescribeStatement {
                        name,
                        swallow: false,
                        saw_parameters: false,
                    });
                } else {
                    self.portals.insert(name.clone(), true);
                    self.shared.push(Expect::DescribePortal {
                        name,
                        swallow: false,
                        ctx: None,
                    });
                }
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'E' => self.on_execute(frame).await,
            b'C' => {
                let (kind, name) = wire::parse_target(frame.body.clone(), "Close")?;
                let space = if kind == b'S' {
                    self.statements.remove(&name);
                    Space::Statement
                } else {
                    self.portals.remove(&name);
                    Space::Portal
                };
                let change = self.send_change(Change::Remove(space, name));
                self.shared.push(Expect::Close {
                    change: Some(change),
                });
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'S' => {
                self.shared.push(Expect::Sync {
                    may_change: self.group_may_change,
                });
                self.end_group();
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'c' | b'f' => {
                self.shared.copy_ends.fetch_add(1, Ordering::SeqCst);
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'H' | b'd' | b'X' => {
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'F' => self.on_function_call(frame).await,
            other => Err(PgProxyError::ClientProtocol(format!(
                "unexpected message type {:?}",
                char::from(other)
            ))),
        }
    }

    /// The gate's context for this session.
    fn gate_ctx(&self) -> GateContext<'_> {
        GateContext {
            session: &self.ctx.session,
            identity: &self.ctx.identity,
            target: &self.ctx.target,
        }
    }

    /// The gate's decision (policy and [`gatehouse_core::GateHooks`]), tightened by the
    /// gateway's own checks, then recorded; a review is returned for the caller to hold (at once
    /// for simple queries, at Bind for prepared statements).
    async fn evaluate(
        &mut self,
        index: u64,
        op: &SqlOperation,
        info: Option<&StatementInfo>,
    ) -> Verdicted {
        let function_call = op.protocol == SqlProtocol::FunctionCall;
        let opaque = if function_call {
            Vec::new()
        } else {
            // A client may send its next statement as soon as it reads an error, before the
            // ReadyForQuery that ends the group has passed the gateway: wait for that answer
            // rather than decide as if the earlier statement were still running. (If the
            // session ends meanwhile, the statement is decided as unsettled: fail closed.)
            // Bounded: should the count of groups the server answers ever be wrong (a Sync it
            // ignored that the gateway could not tell apart), the statement is decided without
            // the answer after a while, as unsettled.
            if let Some(group) = self.opacity.unsettled_group() {
                let _ = tokio::time::timeout(
                    ANSWER_WAIT,
                    self.wait_for(move |sh| sh.ready.answered_or_unsent(group)),
                )
                .await;
            }
            let catalog = self.proxy.catalogs.get(&self.ctx.target.name);
            self.opacity.reasons(catalog, &self.shared.ready, op).await
        };
        let classified = Classified::new(Operation::Sql(op.clone()))
            .with_facts(gatehouse_sql::SqlFacts::of(op))
            .with_opaque(opaque);
        let gate = self.proxy.gate.clone();
        let mut decision = gate.decide(&self.gate_ctx(), &classified);
        if function_call && !self.proxy.config.allow_function_call {
            decision = tighten(
                &decision,
                Decision::deny(
                    "function-call",
                    "the fast-path FunctionCall interface is not served (its results escape column masking)",
                ),
            );
        }
        if let Some(d) = self.masked_copy_check(info, &decision).await {
            decision = tighten(&decision, d);
        }
        if let Some(d) = self.statistics_check(info, &decision).await {
            decision = tighten(&decision, d);
        }
        if let Some(d) = self.describe_binary_copy(index, op, &decision).await {
            decision = tighten(&decision, d);
        }
        // The audit log keeps the statement with its literals and parameters masked.
        let shown = Operation::Sql(
            self.proxy
                .recorded_operation(op, decision.masking_profile.as_deref()),
        );
        if let Err(outcome) = gate.record(&self.gate_ctx(), index, shown, &decision).await {
            return Verdicted::Denied(outcome_deny(&outcome));
        }
        match decision.verdict {
            Verdict::Review => Verdicted::Review(decision),
            _ => match Gate::settle(decision) {
                Outcome::Allowed { decision, .. } => Verdicted::Allowed(decision),
                other => Verdicted::Denied(outcome_deny(&other)),
            },
        }
    }

    /// Refuses, unless configured otherwise, statements that copy a masked column somewhere the
    /// masking boundary does not reach (`CREATE TABLE AS`, `INSERT … SELECT`, `COPY … TO`,
    /// `CREATE VIEW/FUNCTION`).
    /// Planner statistics (`pg_stats` and the like) hold sample values of every column —
    /// masked ones included — that no lineage traces to their table: reading them, directly or
    /// through a view, is refused while the masking profile masks any column of the database
    /// (or the columns cannot be listed).
    async fn statistics_check(
        &mut self,
        info: Option<&StatementInfo>,
        decision: &Decision,
    ) -> Option<Decision> {
        let info = info?;
        if info.tables.is_empty() || decision.verdict == Verdict::Deny {
            return None;
        }
        let target = self.ctx.target.name.clone();
        let tables = self
            .proxy
            .with_view_reads(&target, &info.tables)
            .await
            .unwrap_or_else(|| info.tables.clone());
        let reads_statistics = tables.iter().any(|t| {
            let name = t.rsplit('.').next().unwrap_or(t).trim_matches('"');
            STATISTICS_RELATIONS.contains(&name.to_ascii_lowercase().as_str())
        });
        if !reads_statistics {
            return None;
        }
        let every = self.proxy.all_columns(&target).await;
        let listed = !every.iter().any(|c| c == "?.*");
        let fields = source_fields(&every);
        let plan = self
            .proxy
            .pipeline
            .masker
            .plan(&fields, decision.masking_profile.as_deref());
        if listed && !(0..fields.len()).any(|i| plan.masks_derived(i)) {
            return None;
        }
        Some(Decision::deny(
            "masked-statistics",
            "planner statistics hold sample values of the database's columns, masked ones \
             included: they are not served while the masking profile masks any column",
        ))
    }

    async fn masked_copy_check(
        &mut self,
        info: Option<&StatementInfo>,
        decision: &Decision,
    ) -> Option<Decision> {
        let info = info?;
        if self.proxy.config.allow_masked_column_copies || decision.verdict == Verdict::Deny {
            return None;
        }
        if !info.copies_data {
            // A trigger running a built-in trigger function that copies no column is not a
            // copy (see `statements::creates_non_copying_trigger`), unless a function of that
            // name defined elsewhere may be what an unqualified call runs.
            if info.kind == StatementKind::Ddl
                && !info.tables.is_empty()
                && crate::statements::names_non_copying_trigger(&info.functions)
                && self
                    .proxy
                    .user_functions(&self.ctx.target.name, &info.functions)
                    .await
                && self
                    .proxy
                    .masks_any_column(&self.ctx.target.name, decision.masking_profile.as_deref())
                    .await
            {
                return Some(Decision::deny(
                    "masked-column-copy",
                    "the statement runs a trigger function defined outside pg_catalog, which \
                     could copy masked columns out of the masking boundary",
                ));
            }
            return None;
        }
        // A stored value computed by a function that runs queries of its own (a user's
        // function, `query_to_xml`) may come from any table, not only those the text names.
        if crate::statements::stores_values(&info.functions)
            && (info
                .functions
                .iter()
                .any(|f| SQL_TEXT_FUNCTIONS.contains(&f.rsplit('.').next().unwrap_or(f)))
                || self
                    .proxy
                    .user_functions(&self.ctx.target.name, &info.functions)
                    .await)
            && self
                .proxy
                .masks_any_column(&self.ctx.target.name, decision.masking_profile.as_deref())
                .await
        {
            return Some(Decision::deny(
                "masked-column-copy",
                "the statement stores a value computed by a function that runs queries of its \
                 own, which may read masked columns, where no column rule covers it",
            ));
        }
        let names: Vec<String> = match &info.reads {
            Some(reads) => reads.clone(),
            None => info.tables.iter().map(|t| format!("{t}.*")).collect(),
        };
        let sources = self
            .proxy
            .expand_sources(&self.ctx.target.name, &names, &info.tables)
            .await;
        let fields = source_fields(&sources);
        let plan = self
            .proxy
            .pipeline
            .masker
            .plan(&fields, decision.masking_profile.as_deref());
        if let Some(masked) = (0..fields.len()).find(|&i| plan.masks_derived(i)) {
            let column = sources.get(masked).cloned().unwrap_or_default();
            return Some(Decision::deny(
                "masked-column-copy",
                format!(
                    "the statement would copy masked column {column} out of the masking boundary"
                ),
            ));
        }
        // Other sessions' statements carry literals of masked columns; COPY rows and a table
        // filled from them are not masked per column as a result column of theirs is (see
        // `ShapePlan::mask_as_statement_text`).
        let text = sources
            .iter()
            .find(|s| crate::rowmask::is_statement_text_source(s))?;
        if !self
            .proxy
            .masks_any_column(&self.ctx.target.name, decision.masking_profile.as_deref())
            .await
        {
            return None;
        }
        Some(Decision::deny(
            "masked-column-copy",
            format!(
                "the statement would copy statement text ({text}), which can hold values of \
                 masked columns, out of the masking boundary"
            ),
        ))
    }

    /// A binary `COPY … TO STDOUT` is masked per column, and its output says nothing about
    /// types: its query is described (never run) on the catalog connection first. When that
    /// fails (a temporary table of this session, for one), the statement is refused.
    async fn describe_binary_copy(
        &mut self,
        index: u64,
        op: &SqlOperation,
        decision: &Decision,
    ) -> Option<Decision> {
        if decision.verdict == Verdict::Deny {
            return None;
        }
        let settings = lock(&self.shared.settings).clone();
        let (query, binary) = gatehouse_sql::copy_out_query(&op.text, &settings)?;
        if !binary {
            return None;
        }
        match self.proxy.describe(&self.ctx.target.name, &query).await {
            Ok(columns) => {
                if self.copy_columns.len() >= 64 {
                    self.copy_columns.clear();
                }
                self.copy_columns.insert(index, Arc::new(columns));
                None
            }
            Err(e) => Some(Decision::deny(
                "binary-copy",
                format!(
                    "binary COPY output is masked per column and the gateway could not learn \
                     this COPY's column types ({e}); use text format"
                ),
            )),
        }
    }

    /// Holds a recorded review at the gate until approvers decide, the request times out, or
    /// the client goes away (a cancel request, a Terminate message, the client closing its
    /// connection, or the session ending: the server connection closing or the token
    /// expiring): the request is then abandoned and nothing of the statement has gone
    /// upstream, so a later approval runs nothing. After a hold ended by the token's expiry
    /// the session loop ends the session before it reads anything else.
    async fn review(&mut self, index: u64, op: SqlOperation, decision: &Decision) -> Verdicted {
        let shown = Operation::Sql(
            self.proxy
                .recorded_operation(&op, decision.masking_profile.as_deref()),
        );
        let operation = Operation::Sql(op);
        let gate = self.proxy.gate.clone();
        let review = Review {
            index,
            operation: &operation,
            shown: &shown,
            decision,
            mode: HoldMode::UntilDecided,
        };
        let opened = {
            let ctx = GateContext {
                session: &self.ctx.session,
                identity: &self.ctx.identity,
                target: &self.ctx.target,
            };
            gate.open(&ctx, &review).await
        };
        let opened = match opened {
            Ok(opened) => opened,
            Err(outcome) => return Verdicted::Denied(outcome_deny(&outcome)),
        };
        if opened.waits() {
            // The id is what the agent hands its approvers.
            self.notice(format!(
                "waiting for approval {} (rule \"{}\": {})",
                opened.id(),
                decision.rule_id,
                decision.reason
            ))
            .await;
        }
        let watch_limit = self
            .proxy
            .config
            .limits
            .max_client_message
            .saturating_add(1 << 16);
        let cancel = self.cancel.clone();
        let shared = self.shared.clone();
        let expired = expiry_sleep(self.expiry());
        let reader = &mut self.reader;
        let gone = async move {
            tokio::select! {
                _ = cancel.notified() => {}
                _ = shared.done.cancelled() => {}
                () = expired => {}
                () = reader.gone(watch_limit) => {}
            }
        };
        let ctx = GateContext {
            session: &self.ctx.session,
            identity: &self.ctx.identity,
            target: &self.ctx.target,
        };
        match gate.hold(&ctx, review, opened, gone).await {
            Outcome::Allowed { decision, .. } => Verdicted::Allowed(decision),
            other => Verdicted::Denied(outcome_deny(&other)),
        }
    }

    fn stmt_ctx(
        &self,
        index: u64,
        text: &str,
        decision: Option<&Decision>,
        info: Option<&StatementInfo>,
    ) -> Arc<StmtCtx> {
        Arc::new(StmtCtx {
            index,
            text: cap_text(text),
            profile: decision.and_then(|d| d.masking_profile.clone()),
            lineage: info.and_then(|i| i.lineage.clone()),
            tables: info.map(|i| i.tables.clone()).unwrap_or_default(),
            opaque: info.is_none_or(|i| i.opaque),
            functions: info.map(|i| i.functions.clone()).unwrap_or_default(),
            copy_columns: self.copy_columns.get(&index).cloned(),
            started: Instant::now(),
        })
    }

    fn record_denial(&self, index: u64, deny: DenyInfo) {
        lock(&self.shared.denials).insert(index, deny);
    }

    fn send_change(&mut self, change: Change) -> PendingChange {
        self.local.note(&change, self.group);
        self.shared.names.send(change)
    }

    /// Starts a new sync group (after Sync, and around each Query and FunctionCall).
    fn end_group(&mut self) {
        self.group += 1;
        self.unsynced_exec = false;
        self.group_may_change = false;
        self.refused_in_group = None;
    }

    /// Writes everything held for the upstream, then waits until `ready` holds, checking again
    /// whenever the backend half answers a sync group or settles a name.
    async fn wait_for(&mut self, ready: impl Fn(&Shared) -> bool) -> Result<(), PgProxyError> {
        self.flush().await.map_err(PgProxyError::upstream_io)?;
        let shared = self.shared.clone();
        loop {
            let progressed = shared.progress.notified();
            let settled = shared.names.settled.notified();
            tokio::pin!(progressed);
            tokio::pin!(settled);
            progressed.as_mut().enable();
            settled.as_mut().enable();
            if ready(&shared) {
                return Ok(());
            }
            tokio::select! {
                _ = progressed => {}
                _ = settled => {}
                _ = shared.done.cancelled() => {
                    return Err(PgProxyError::UpstreamProtocol(
                        "the session ended while waiting for the server".into(),
                    ));
                }
            }
        }
    }

    /// Holds a text until the settings it is read under are known exactly (see
    /// [`crate::settings`]); a refusal when they cannot be known before it runs.
    async fn lexer_gate(&mut self, text: &[u8]) -> Result<Option<DenyInfo>, PgProxyError> {
        let depends = crate::settings::depends_on_lexer(text);
        if depends && self.unsynced_exec {
            return Ok(Some(DenyInfo {
                code: "0A000",
                message: "statement refused: its text has backslashes or non-ASCII characters and \
                          follows a Bind/Execute whose setting changes cannot be known before Sync; \
                          send Sync first"
                    .into(),
                detail: None,
            }));
        }
        let blocked = move |sh: &Shared| {
            lock(&sh.expect)
                .iter()
                .any(|e| e.is_synced() && (depends || e.may_change()))
        };
        if blocked(&self.shared) {
            self.wait_for(move |sh| !blocked(sh)).await?;
        }
        Ok(None)
    }

    /// What the statement `name` runs, as the server will see it at this point of the stream.
    async fn resolve_statement(
        &mut self,
        name: &str,
    ) -> Result<Option<Arc<Prepared>>, PgProxyError> {
        loop {
            match self.local.statement(&self.shared.names, name, self.group) {
                Resolved::Known(v) => return Ok(v),
                Resolved::Wait => {
                    let n = name.to_string();
                    self.wait_for(move |sh| !sh.names.in_flight(Space::Statement, &n))
                        .await?;
                }
            }
        }
    }

    /// What the portal `name` runs, as the server will see it at this point of the stream.
    async fn resolve_portal(&mut self, name: &str) -> Result<Option<Arc<Bound>>, PgProxyError> {
        loop {
            match self.local.portal(&self.shared.names, name, self.group) {
                Resolved::Known(v) => return Ok(v),
                Resolved::Wait => {
                    let n = name.to_string();
                    self.wait_for(move |sh| !sh.names.in_flight(Space::Portal, &n))
                        .await?;
                }
            }
        }
    }

    /// Records `op` as refused by the gateway itself (rule `rule`), and returns the refusal.
    async fn refuse_recorded(
        &mut self,
        index: u64,
        op: &SqlOperation,
        rule: &str,
        code: &'static str,
        reason: String,
    ) -> Verdicted {
        let decision = Decision::deny(rule, reason.clone());
        let shown = Operation::Sql(self.proxy.recorded_operation(op, None));
        let gate = self.proxy.gate.clone();
        if let Err(outcome) = gate.record(&self.gate_ctx(), index, shown, &decision).await {
            return Verdicted::Denied(outcome_deny(&outcome));
        }
        Verdicted::Denied(DenyInfo {
            code,
            message: format!("statement refused by the gateway (rule \"{rule}\"): {reason}"),
            detail: None,
        })
    }

    /// A statement as the server holds it after `PREPARE … AS inner`.
    fn sql_prepared(&self, inner: &str, index: u64, settings: &SqlSessionSettings) -> Prepared {
        let info = self
            .proxy
            .analyzer
            .analyze(inner, settings)
            .ok()
            .and_then(|v| v.into_iter().next());
        Prepared {
            text: inner.to_string(),
            info,
            review: None,
            index,
            name_op: None,
            sql_prepared: true,
        }
    }

    /// Whether `EXECUTE` arguments only carry values (no relation, no function that may run
    /// code): then the execution is decided by the prepared statement with these values.
    fn plain_args(&self, args: &str, settings: &SqlSessionSettings) -> bool {
        match self
            .proxy
            .analyzer
            .analyze(&format!("SELECT {args}"), settings)
        {
            Ok(v) => {
                v.len() == 1
                    && v.iter().all(|i| {
                        i.kind == StatementKind::Read
                            && i.tables.is_empty()
                            && i.effect == SessionEffect::None
                            && !i.copies_data
                    })
            }
            Err(_) => false,
        }
    }

    /// Decides one execution of the prepared statement `p`: the policy sees the statement it
    /// runs with exactly the values bound to it (`EXECUTE` arguments as written, then protocol
    /// parameters), and a review holds this execution alone. When the statement as written does
    /// more (arguments that are not plain values, `EXPLAIN`/`CREATE TABLE AS` around it), it is
    /// decided too, and the stricter verdict stands.
    #[allow(clippy::too_many_arguments)]
    async fn decide_execution(
        &mut self,
        index: u64,
        written: &SqlOperation,
        written_info: Option<&StatementInfo>,
        p: &Prepared,
        args: Option<String>,
        bound: &[Option<String>],
        nested: bool,
    ) -> Verdicted {
        let plain = args
            .as_deref()
            .is_none_or(|a| self.plain_args(a, &written.settings));
        if nested || !plain {
            // What the statement as written touches includes what the prepared statement reads
            // (`CREATE TABLE t AS EXECUTE p` copies p's columns out of the masking boundary).
            let merged = written_info.map(|w| {
                let mut m = w.clone();
                if let Some(inner) = &p.info {
                    for t in &inner.tables {
                        if !m.tables.contains(t) {
                            m.tables.push(t.clone());
                        }
                    }
                    m.reads = None;
                }
                m
            });
            let wi = self.next_index();
            match self.evaluate(wi, written, merged.as_ref()).await {
                Verdicted::Allowed(_) => {}
                Verdicted::Review(d) => {
                    let r = self.review(wi, written.clone(), &d).await;
                    if !matches!(r, Verdicted::Allowed(_)) {
                        return r;
                    }
                }
                denied => return denied,
            }
        }
        let mut parameters = Vec::with_capacity(bound.len() + 1);
        if let Some(a) = args {
            parameters.push(Some(a));
        }
        parameters.extend(bound.iter().cloned());
        let op = SqlOperation {
            text: p.text.clone(),
            parameters,
            protocol: written.protocol,
            settings: written.settings.clone(),
        };
        match self.evaluate(index, &op, p.info.as_ref()).await {
            Verdicted::Review(d) => self.review(index, op, &d).await,
            other => other,
        }
    }

    /// Decides a `PREPARE`/`EXECUTE`/`DEALLOCATE`/`DISCARD ALL` about to run; returns the
    /// verdict, the name change it makes if it completes, and the statement whose output it
    /// returns (for masking).
    async fn decide_name_op(
        &mut self,
        index: u64,
        op: &SqlOperation,
        info: Option<&StatementInfo>,
        name_op: &NameOp,
        bound: &[Option<String>],
    ) -> Result<(Verdicted, Option<Change>, Option<StatementInfo>), PgProxyError> {
        let out = match name_op {
            NameOp::Prepare { name, statement } => match self.evaluate(index, op, info).await {
                Verdicted::Allowed(d) | Verdicted::Review(d) => {
                    // PREPARE runs nothing: a review applies to each execution instead.
                    let inner = op.text.get(statement.clone()).unwrap_or("");
                    let prepared = self.sql_prepared(inner, index, &op.settings);
                    (
                        Verdicted::Allowed(d),
                        Some(Change::DefineStatement(name.clone(), Arc::new(prepared))),
                        info.cloned(),
                    )
                }
                denied => (denied, None, info.cloned()),
            },
            NameOp::Execute { name, args, nested } => match self.resolve_statement(name).await? {
                None => {
                    let v = self
                        .refuse_recorded(
                            index,
                            op,
                            "unknown-prepared-statement",
                            "26000",
                            format!(
                                "EXECUTE of \"{name}\": the gateway did not see this statement \
                                 prepared"
                            ),
                        )
                        .await;
                    (v, None, info.cloned())
                }
                Some(p) => {
                    let args = args
                        .clone()
                        .and_then(|r| op.text.get(r))
                        .map(str::to_string);
                    let v = self
                        .decide_execution(index, op, info, &p, args, bound, *nested)
                        .await;
                    let shown = if *nested {
                        info.cloned()
                    } else {
                        p.info.clone()
                    };
                    (v, None, shown)
                }
            },
            NameOp::Deallocate { name } => {
                let change = Change::Remove(Space::Statement, name.clone());
                (
                    self.evaluate(index, op, info).await,
                    Some(change),
                    info.cloned(),
                )
            }
            NameOp::DeallocateAll => (
                self.evaluate(index, op, info).await,
                Some(Change::RemoveAllStatements),
                info.cloned(),
            ),
        };
        let (verdict, change, shown) = out;
        let verdict = match verdict {
            Verdicted::Review(d) => self.review(index, op.clone(), &d).await,
            other => other,
        };
        Ok((verdict, change, shown))
    }

    /// Refuses a whole Query message (one recorded operation) with `deny`.
    fn refuse_query(&mut self, index: u64, text: &str, deny: DenyInfo) -> Result<(), PgProxyError> {
        let ctx = self.stmt_ctx(index, text, None, None);
        self.record_denial(index, deny);
        self.shared.push(Expect::Query {
            statements: VecDeque::from([ctx]),
            changes: VecDeque::new(),
            may_change: false,
        });
        let sql = deny_sql(&self.shared.marker(index));
        wire::encode_query(&sql, &mut self.out)
    }

    async fn on_query(&mut self, body: Bytes) -> Result<(), PgProxyError> {
        let raw = wire::parse_query(body.clone())?;
        // A Query is a sync group of its own.
        self.end_group();
        let result = self.query_group(body, raw).await;
        self.end_group();
        result
    }

    async fn query_group(&mut self, body: Bytes, raw: Bytes) -> Result<(), PgProxyError> {
        let gate = self.lexer_gate(&raw).await?;
        let (text, settings, codec, valid) = self.decode_statement(&raw);
        let whole = SqlOperation {
            text: cap_text(&text),
            parameters: Vec::new(),
            protocol: SqlProtocol::Simple,
            settings: settings.clone(),
        };
        if let Some(deny) = gate {
            let index = self.next_index();
            let v = self
                .refuse_recorded(index, &whole, "settings-unknown", deny.code, deny.message)
                .await;
            return self.refuse_query(index, &text, verdict_deny(v));
        }
        let analyzed = if valid {
            self.proxy.analyzer.analyze(&text, &settings)
        } else {
            Err(crate::statements::AnalyzeError::Encoding)
        };
        let statements = match analyzed {
            Ok(s) => s,
            Err(e) => {
                // Unparseable text is decided as one operation; the policy sees it, and the
                // gateway refuses it unless the policy explicitly allows the unknown.
                let index = self.next_index();
                let op = SqlOperation {
                    text: text.clone(),
                    parameters: Vec::new(),
                    protocol: SqlProtocol::Simple,
                    settings,
                };
                let verdict = self.evaluate(index, &op, None).await;
                let deny = match verdict {
                    Verdicted::Denied(d) => d,
                    _ => DenyInfo {
                        code: "42601",
                        message: format!("statement refused: the gateway cannot parse it ({e})"),
                        detail: None,
                    },
                };
                return self.refuse_query(index, &text, deny);
            }
        };
        let max = self.proxy.config.limits.max_statements_per_query;
        if statements.len() > max {
            let index = self.next_index();
            let v = self
                .refuse_recorded(
                    index,
                    &whole,
                    "statement-limit",
                    "54000",
                    format!(
                        "the query string holds {} statements; the gateway serves at most {max} \
                         in one message",
                        statements.len()
                    ),
                )
                .await;
            return self.refuse_query(index, &text, verdict_deny(v));
        }
        let mut ctxs = VecDeque::new();
        let mut changes = VecDeque::new();
        let mut may_change = false;
        let mut cut: Option<(usize, u64)> = None;
        for info in &statements {
            let Some(stmt_text) = text.get(info.span.clone()) else {
                continue;
            };
            let index = self.next_index();
            let op = SqlOperation {
                text: stmt_text.to_string(),
                parameters: Vec::new(),
                protocol: SqlProtocol::Simple,
                settings: settings.clone(),
            };
            if info.effect != SessionEffect::None {
                may_change = true;
            }
            let mut change = None;
            let mut shown = Some(info.clone());
            let verdict = if info.effect == SessionEffect::BackslashQuote {
                self.refuse_recorded(
                    index,
                    &op,
                    "backslash-quote",
                    "0A000",
                    BACKSLASH_QUOTE.into(),
                )
                .await
            } else {
                match crate::prepared::name_op(stmt_text, settings.standard_conforming_strings) {
                    Err(()) => {
                        self.refuse_recorded(
                            index,
                            &op,
                            "unreadable-prepared-statement",
                            "42601",
                            "the gateway cannot read this PREPARE/EXECUTE/DEALLOCATE".into(),
                        )
                        .await
                    }
                    Ok(Some(name_op)) => {
                        let (v, c, s) = self
                            .decide_name_op(index, &op, Some(info), &name_op, &[])
                            .await?;
                        change = c;
                        shown = s;
                        v
                    }
                    Ok(None) => {
                        let mut verdict = self.evaluate(index, &op, Some(info)).await;
                        if let Verdicted::Review(decision) = &verdict {
                            let decision = decision.clone();
                            verdict = self.review(index, op, &decision).await;
                        }
                        verdict
                    }
                }
            };
            if info.kind == StatementKind::Ddl {
                self.proxy.catalog_invalidate(&self.ctx.target.name);
            }
            match verdict {
                Verdicted::Allowed(d) => {
                    ctxs.push_back(self.stmt_ctx(index, stmt_text, Some(&d), shown.as_ref()));
                    if let Some(c) = change {
                        // Statements after this one in the same message see the change.
                        let pending = self.send_change(c);
                        changes.push_back((index, pending));
                    }
                }
                Verdicted::Review(_) | Verdicted::Denied(_) => {
                    let deny = verdict_deny(verdict);
                    ctxs.push_back(self.stmt_ctx(index, stmt_text, None, Some(info)));
                    self.record_denial(index, deny);
                    cut = Some((info.span.start, index));
                    break;
                }
            }
        }
        self.shared.push(Expect::Query {
            statements: ctxs,
            changes,
            may_change,
        });
        match cut {
            None => {
                // Every statement allowed: the message goes on exactly as received.
                encode_frame(b'Q', &body, &mut self.out);
                Ok(())
            }
            Some((start, index)) => {
                // Statements before the refused one run as sent; the refused one is replaced by a
                // statement certain to fail, so PostgreSQL's transaction state (aborted block,
                // skipped remainder) is exactly what the client is told.
                let prefix = text.get(..start).unwrap_or("");
                let sql = format!("{prefix}{}", deny_sql(&self.shared.marker(index)));
                let mut body = codec.encode(&sql).into_owned();
                body.push(0);
                encode_frame(b'Q', &body, &mut self.out);
                Ok(())
            }
        }
    }

    async fn on_parse(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let parse = wire::parse_parse(frame.body.clone())?;
        let gate = self.lexer_gate(&parse.query).await?;
        let (text, settings, _, valid) = self.decode_statement(&parse.query);
        let index = self.next_index();
        let op = SqlOperation {
            text: text.clone(),
            parameters: Vec::new(),
            protocol: SqlProtocol::Extended,
            settings: settings.clone(),
        };
        let analyzed = if valid {
            self.proxy.analyzer.analyze(&text, &settings)
        } else {
            Err(crate::statements::AnalyzeError::Encoding)
        };
        let info = analyzed.as_ref().ok().and_then(|v| v.first().cloned());
        if info.as_ref().is_some_and(|i| i.kind == StatementKind::Ddl) {
            self.proxy.catalog_invalidate(&self.ctx.target.name);
        }
        let mut name_op = None;
        let verdict = if let Some(deny) = gate {
            self.refuse_recorded(index, &op, "settings-unknown", deny.code, deny.message)
                .await
        } else {
            match &analyzed {
                // Decided exactly as in a simple Query: the policy sees it, and the gateway
                // refuses it unless the policy refuses it first.
                Err(e) => match self.evaluate(index, &op, None).await {
                    Verdicted::Denied(d) => Verdicted::Denied(d),
                    _ => Verdicted::Denied(DenyInfo {
                        code: "42601",
                        message: format!("statement refused: the gateway cannot parse it ({e})"),
                        detail: None,
                    }),
                },
                // The server refuses several commands in one Parse; so does the gateway.
                Ok(v) if v.len() > 1 => {
                    self.refuse_recorded(
                        index,
                        &op,
                        "one-statement-per-parse",
                        "42601",
                        "cannot insert multiple commands into a prepared statement".into(),
                    )
                    .await
                }
                Ok(_) if info.as_ref().map(|i| i.effect) == Some(SessionEffect::BackslashQuote) => {
                    self.refuse_recorded(
                        index,
                        &op,
                        "backslash-quote",
                        "0A000",
                        BACKSLASH_QUOTE.into(),
                    )
                    .await
                }
                Ok(_) => {
                    match crate::prepared::name_op(&text, settings.standard_conforming_strings) {
                        Err(()) => {
                            self.refuse_recorded(
                                index,
                                &op,
                                "unreadable-prepared-statement",
                                "42601",
                                "the gateway cannot read this PREPARE/EXECUTE/DEALLOCATE".into(),
                            )
                            .await
                        }
                        // Decided when executed, with what the names hold then.
                        Ok(Some(n)) => {
                            name_op = Some(n);
                            Verdicted::Allowed(Decision::allow(
                                "decided-at-execute",
                                "PREPARE/EXECUTE/DEALLOCATE are decided when executed",
                            ))
                        }
                        Ok(None) => self.evaluate(index, &op, info.as_ref()).await,
                    }
                }
            }
        };
        let (decision, review, deny) = match verdict {
            Verdicted::Allowed(d) => (Some(d), None, None),
            Verdicted::Review(d) => (Some(d.clone()), Some(d), None),
            Verdicted::Denied(deny) => (None, None, Some(deny)),
        };
        let ctx = self.stmt_ctx(index, &text, decision.as_ref(), info.as_ref());
        let prepared = Prepared {
            text,
            info,
            review,
            index,
            name_op,
            sql_prepared: false,
        };
        let change = self.send_change(Change::DefineStatement(
            parse.name.clone(),
            Arc::new(prepared),
        ));
        self.statements
            .insert(parse.name.clone(), FeStatement { described: false });
        self.shared.push(Expect::Parse {
            name: parse.name.clone(),
            statement: ctx,
            change: Some(change),
        });
        match deny {
            None => {
                frame.encode_into(&mut self.out);
                Ok(())
            }
            Some(deny) => {
                self.record_denial(index, deny);
                self.refused_in_group = Some(index);
                let sql = deny_sql(&self.shared.marker(index));
                wire::encode_parse(&parse.name, &sql, &[], &mut self.out)
            }
        }
    }

    async fn on_bind(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let bind = wire::parse_bind(frame.body.clone())?;
        // Binding plans the statement, and planning may run functions.
        self.unsynced_exec = true;
        let described = self
            .statements
            .get(&bind.statement)
            .is_some_and(|s| s.described);
        self.portals.insert(bind.portal.clone(), described);
        if let Some(refused) = self.refused_in_group {
            // The server skips this Bind (an earlier message of the group failed): nothing is
            // decided or held for it, and what goes upstream in its place fails as well.
            self.shared.push(Expect::Bind {
                portal: bind.portal.clone(),
                statement: bind.statement.clone(),
                result_formats: bind.result_formats.clone(),
                change: None,
                ctx: None,
            });
            return wire::encode_bare_bind(
                &bind.portal,
                &self.shared.marker(refused),
                &mut self.out,
            );
        }
        let stmt = self.resolve_statement(&bind.statement).await?;
        if let Some(p) = &stmt
            && p.info
                .as_ref()
                .is_none_or(|i| i.opaque || i.kind == StatementKind::Ddl)
        {
            let catalog = self.proxy.catalogs.get(&self.ctx.target.name);
            self.opacity.note_running(catalog, &self.shared.ready);
        }
        let parameters = bind.params_as_text();
        // A portal of `EXECUTE name` returns the rows of what `name` runs: mask them as that
        // statement's (its lineage, the profile the policy gives it). The Execute is refused if
        // `name` runs something else by then.
        let mut runs = None;
        let mut shown = None;
        if let Some(NameOp::Execute {
            name,
            nested: false,
            ..
        }) = stmt.as_ref().and_then(|p| p.name_op.clone())
            && let Some(target) = self.resolve_statement(&name).await?
        {
            let op = Operation::Sql(SqlOperation {
                text: target.text.clone(),
                parameters: parameters.clone(),
                protocol: SqlProtocol::Extended,
                settings: self.settings(),
            });
            let decision =
                self.proxy
                    .pipeline
                    .policy
                    .decide(&self.ctx.identity, &self.ctx.target, &op);
            let index = stmt.as_ref().map_or(0, |p| p.index);
            shown = Some(self.stmt_ctx(index, &target.text, Some(&decision), target.info.as_ref()));
            runs = Some(target);
        }
        let recheck = match &stmt {
            Some(p) if p.name_op.is_none() && !p.sql_prepared && p.review.is_none() => {
                let op = SqlOperation {
                    text: p.text.clone(),
                    parameters: parameters.clone(),
                    protocol: SqlProtocol::Extended,
                    settings: self.settings(),
                };
                let catalog = self.proxy.catalogs.get(&self.ctx.target.name);
                self.opacity
                    .newly_opaque(catalog, &self.shared.ready, &op)
                    .await
                    .then_some(op)
            }
            _ => None,
        };
        let refusal = match &stmt {
            None => {
                let index = self.next_index();
                Some((
                    index,
                    DenyInfo {
                        code: "26000",
                        message: format!(
                            "prepared statement \"{}\" is not known to the gateway",
                            bind.statement
                        ),
                        detail: None,
                    },
                ))
            }
            // Decided at Execute, with what the names hold then.
            Some(p) if p.name_op.is_some() => None,
            Some(p) if p.sql_prepared => {
                let index = self.next_index();
                let written = SqlOperation {
                    text: p.text.clone(),
                    parameters: parameters.clone(),
                    protocol: SqlProtocol::Extended,
                    settings: self.settings(),
                };
                match self
                    .decide_execution(
                        index,
                        &written,
                        p.info.as_ref(),
                        p,
                        None,
                        &parameters,
                        false,
                    )
                    .await
                {
                    Verdicted::Allowed(decision) => {
                        // Its rows are masked as the statement it runs (no protocol Parse of
                        // the name exists for the backend half to take them from).
                        shown =
                            Some(self.stmt_ctx(index, &p.text, Some(&decision), p.info.as_ref()));
                        None
                    }
                    other => Some((index, verdict_deny(other))),
                }
            }
            Some(p) => match &p.review {
                // Approvals bind to the exact text and parameters of this execution: each is an
                // operation of its own (its index, recorded with its parameters), and its rows
                // are counted under that index.
                Some(decision) => {
                    let op = SqlOperation {
                        text: p.text.clone(),
                        parameters: parameters.clone(),
                        protocol: SqlProtocol::Extended,
                        settings: self.settings(),
                    };
                    let index = self.next_index();
                    let recorded = Operation::Sql(
                        self.proxy
                            .recorded_operation(&op, decision.masking_profile.as_deref()),
                    );
                    let gate = self.proxy.gate.clone();
                    let verdict = match gate
                        .record(&self.gate_ctx(), index, recorded, decision)
                        .await
                    {
                        Ok(()) => self.review(index, op, decision).await,
                        Err(outcome) => Verdicted::Denied(outcome_deny(&outcome)),
                    };
                    self.execution_ctx(index, p, verdict, &mut shown)
                }
                // Stored code may have changed since the Parse was decided: a statement the
                // catalog makes opaque now is decided again, as an operation of its own.
                None => match recheck {
                    Some(op) => {
                        let index = self.next_index();
                        let verdict = match self.evaluate(index, &op, p.info.as_ref()).await {
                            Verdicted::Review(decision) => self.review(index, op, &decision).await,
                            other => other,
                        };
                        self.execution_ctx(index, p, verdict, &mut shown)
                    }
                    None => None,
                },
            },
        };
        let change = match (&stmt, &refusal) {
            (Some(p), None) => Some(self.send_change(Change::DefinePortal(
                bind.portal.clone(),
                Arc::new(Bound {
                    statement: p.clone(),
                    parameters,
                    runs,
                }),
            ))),
            _ => None,
        };
        self.shared.push(Expect::Bind {
            portal: bind.portal.clone(),
            statement: bind.statement.clone(),
            result_formats: bind.result_formats.clone(),
            change,
            ctx: shown,
        });
        if let Some((index, deny)) = refusal {
            self.record_denial(index, deny);
            self.refused_in_group = Some(index);
            // A Bind of a statement that cannot exist fails upstream and skips to Sync.
            return wire::encode_bare_bind(&bind.portal, &self.shared.marker(index), &mut self.out);
        }
        frame.encode_into(&mut self.out);
        Ok(())
    }

    /// For an execution decided at Bind as operation `index`: its refusal, or (allowed) the
    /// context its portal's rows are masked and counted in, set in `shown`.
    fn execution_ctx(
        &mut self,
        index: u64,
        p: &Prepared,
        verdict: Verdicted,
        shown: &mut Option<Arc<StmtCtx>>,
    ) -> Option<(u64, DenyInfo)> {
        match verdict {
            Verdicted::Allowed(decision) => {
                if let Some(columns) = self.copy_columns.get(&p.index).cloned() {
                    self.copy_columns.entry(index).or_insert(columns);
                }
                *shown = Some(self.stmt_ctx(index, &p.text, Some(&decision), p.info.as_ref()));
                None
            }
            other => Some((index, verdict_deny(other))),
        }
    }

    /// Sends, in place of a refused Execute, an Execute of a portal that cannot exist: it fails
    /// upstream (its error names the marker) and the server skips to Sync.
    fn refuse_execute(&mut self, index: u64) -> Result<(), PgProxyError> {
        self.refused_in_group = Some(index);
        let marker = self.shared.marker(index);
        let mut body = Vec::with_capacity(marker.len() + 5);
        body.extend_from_slice(marker.as_bytes());
        body.push(0);
        body.extend_from_slice(&0i32.to_be_bytes());
        self.shared.push(Expect::Execute {
            portal: marker,
            change: None,
        });
        encode_frame(b'E', &body, &mut self.out);
        Ok(())
    }

    async fn on_execute(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let (portal, max_rows) = wire::parse_execute(frame.body.clone())?;
        self.unsynced_exec = true;
        if let Some(refused) = self.refused_in_group {
            // Skipped by the server after the group's earlier failure: not decided, not held.
            return self.refuse_execute(refused);
        }
        let bound = self.resolve_portal(&portal).await?;
        let mut change = None;
        if let Some(b) = &bound {
            let p = &b.statement;
            if p.name_op.is_some()
                || p.info
                    .as_ref()
                    .is_none_or(|i| i.effect != SessionEffect::None)
            {
                self.group_may_change = true;
            }
            if let Some(name_op) = &p.name_op {
                let index = self.next_index();
                let changed = match (name_op, &b.runs) {
                    (NameOp::Execute { name, .. }, Some(runs)) => !self
                        .resolve_statement(name)
                        .await?
                        .is_some_and(|now| Arc::ptr_eq(&now, runs)),
                    _ => false,
                };
                if changed {
                    self.record_denial(
                        index,
                        DenyInfo {
                            code: "26000",
                            message: "the prepared statement this portal executes changed after \
                                      Bind; bind it again"
                                .into(),
                            detail: None,
                        },
                    );
                    return self.refuse_execute(index);
                }
                let op = SqlOperation {
                    text: p.text.clone(),
                    parameters: b.parameters.clone(),
                    protocol: SqlProtocol::Extended,
                    settings: self.settings(),
                };
                let (verdict, c, _) = self
                    .decide_name_op(index, &op, p.info.as_ref(), name_op, &b.parameters)
                    .await?;
                if !matches!(verdict, Verdicted::Allowed(_)) {
                    self.record_denial(index, verdict_deny(verdict));
                    return self.refuse_execute(index);
                }
                change = c.map(|c| self.send_change(c));
            }
        }
        let mut cursor = None;
        if bound.is_none() && !portal.is_empty() {
            // A portal the gateway did not bind: a cursor declared in SQL (`DECLARE c CURSOR
            // FOR …`). Its execution is decided as the FETCH it is, and its rows are masked as a
            // FETCH's (their origin untraced: masked whole where any column of the database is).
            let index = self.next_index();
            let count = if max_rows > 0 {
                max_rows.to_string()
            } else {
                "ALL".to_string()
            };
            let text = format!(
                "FETCH FORWARD {count} FROM \"{}\"",
                portal.replace('"', "\"\"")
            );
            let settings = self.settings();
            let info = self
                .proxy
                .analyzer
                .analyze(&text, &settings)
                .ok()
                .and_then(|v| v.first().cloned());
            let op = SqlOperation {
                text: text.clone(),
                parameters: Vec::new(),
                protocol: SqlProtocol::Extended,
                settings,
            };
            let verdict = match self.evaluate(index, &op, info.as_ref()).await {
                Verdicted::Review(d) => self.review(index, op, &d).await,
                other => other,
            };
            match verdict {
                Verdicted::Allowed(d) => {
                    cursor = Some(self.stmt_ctx(index, &text, Some(&d), info.as_ref()));
                }
                other => {
                    self.record_denial(index, verdict_deny(other));
                    return self.refuse_execute(index);
                }
            }
        }
        if cursor.is_some() || !self.portals.get(&portal).copied().unwrap_or(false) {
            // The client never asked for the row shape (or its answer came before the
            // gateway knew what the portal runs): ask ourselves and keep the answer, so every
            // row is masked with a plan.
            wire::encode_describe(b'P', &portal, &mut self.out)?;
            self.shared.push(Expect::DescribePortal {
                name: portal.clone(),
                swallow: true,
                ctx: cursor,
            });
            self.portals.insert(portal.clone(), true);
        }
        self.shared.push(Expect::Execute { portal, change });
        frame.encode_into(&mut self.out);
        Ok(())
    }

    async fn on_function_call(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let mut r = crate::frame::BodyReader::new(frame.body.clone(), "FunctionCall");
        let oid = r.u32()?;
        let index = self.next_index();
        let op = SqlOperation {
            text: format!("-- FunctionCall oid={oid}"),
            parameters: Vec::new(),
            protocol: SqlProtocol::FunctionCall,
            settings: self.settings(),
        };
        let mut verdict = self.evaluate(index, &op, None).await;
        if let Verdicted::Review(d) = &verdict {
            let d = d.clone();
            verdict = self.review(index, op.clone(), &d).await;
        }
        let ctx = self.stmt_ctx(index, &op.text, None, None);
        match verdict {
            Verdicted::Allowed(_) => {
                self.shared.push(Expect::FunctionCall { statement: ctx });
                self.end_group();
                frame.encode_into(&mut self.out);
                Ok(())
            }
            other => {
                self.record_denial(index, verdict_deny(other));
                self.shared.push(Expect::Query {
                    statements: VecDeque::from([ctx]),
                    changes: VecDeque::new(),
                    may_change: false,
                });
                self.end_group();
                wire::encode_query(&deny_sql(&self.shared.marker(index)), &mut self.out)
            }
        }
    }
}

/// Why a statement that changes `backslash_quote` is refused.
const BACKSLASH_QUOTE: &str = "backslash_quote cannot be changed through the gateway: the server \
     never reports it, so the gateway could not read later statements as the server does";

/// Resolves at `at` (never without one): the token's expiry.
async fn expiry_sleep(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The refusal carried by a verdict; a `Review` still unresolved at this point is refused.
fn verdict_deny(v: Verdicted) -> DenyInfo {
    match v {
        Verdicted::Denied(d) => d,
        Verdicted::Review(d) | Verdicted::Allowed(d) => DenyInfo {
            code: "42501",
            message: format!(
                "permission denied by policy rule \"{}\": approval could not be obtained",
                d.rule_id
            ),
            detail: None,
        },
    }
}

/// How PostgreSQL is told each gate outcome that does not run the statement (the table in
/// `docs/DESIGN.md`): a refusal is a permission error, a timeout or a cancel is 57014, and an
/// unavailable layer is never a permission error (retry later).
fn outcome_deny(outcome: &Outcome) -> DenyInfo {
    let rule = |d: &Decision| Some(format!("rule \"{}\": {}", d.rule_id, d.reason));
    match outcome {
        Outcome::Denied { decision } => deny_info(decision),
        Outcome::ApprovalDenied {
            decision,
            approval,
            by,
            justification,
        } => DenyInfo {
            code: "42501",
            message: format!("approval {approval} denied by {by}: {justification}"),
            detail: rule(decision),
        },
        Outcome::ApprovalTimedOut { decision, approval } => DenyInfo {
            code: "57014",
            message: format!("canceling statement: approval {approval} timed out"),
            detail: rule(decision),
        },
        Outcome::Abandoned { approval, .. } => DenyInfo {
            code: "57014",
            message: format!(
                "canceling statement due to user request (approval {approval} abandoned)"
            ),
            detail: None,
        },
        Outcome::ApprovalsUnavailable {
            decision,
            reason,
            capacity: true,
        } => DenyInfo {
            code: "53400",
            message: format!("statement refused: {reason}"),
            detail: rule(decision),
        },
        Outcome::ApprovalsUnavailable {
            decision, reason, ..
        } => DenyInfo {
            code: "58000",
            message: format!("statement refused: approvals unavailable ({reason})"),
            detail: rule(decision),
        },
        Outcome::AuditUnavailable { reason } => DenyInfo {
            code: "58030",
            message: format!("statement refused: audit recorder unavailable ({reason})"),
            detail: None,
        },
        // Not reached in `HoldMode::UntilDecided`; an outcome that does not say "run" refuses.
        other => DenyInfo {
            code: "58000",
            message: format!(
                "statement refused: the approval could not be completed ({})",
                other.name()
            ),
            detail: None,
        },
    }
}

fn deny_info(decision: &Decision) -> DenyInfo {
    DenyInfo {
        code: "42501",
        message: format!(
            "permission denied by policy rule \"{}\": {}",
            decision.rule_id, decision.reason
        ),
        detail: None,
    }
}

/// A statement certain to fail at parse analysis (so also at Parse in the extended protocol),
/// with no side effect, whose error text carries the marker.
fn deny_sql(marker: &str) -> String {
    format!("SELECT CAST('{marker}' AS integer)")
}

fn cap_text(s: &str) -> String {
    const MAX: usize = 4096;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &s[..end], s.len())
}

/// Backend-side knowledge of a prepared statement.
struct BeStatement {
    ctx: Arc<StmtCtx>,
    columns: Option<Vec<ColumnDesc>>,
}

/// Backend-side knowledge of a portal.
struct BePortal {
    ctx: Option<Arc<StmtCtx>>,
    columns: Option<Vec<ColumnDesc>>,
    plan: Option<Arc<ShapePlan>>,
}

/// The statement whose results are streaming.
struct Running {
    ctx: Arc<StmtCtx>,
    plan: Option<Arc<ShapePlan>>,
    rows: u64,
    bytes_out: u64,
    findings: Vec<Finding>,
    recorded: Vec<serde_json::Value>,
}

const MAX_FINDINGS_PER_STATEMENT: usize = 1000;
/// Statements remembered per query or Sync for the settings they may change.
const MAX_CYCLE_STATEMENTS: usize = 64;

/// The upstream → client half.
struct Backend {
    proxy: Arc<ProxyInner>,
    ctx: SessionContext,
    shared: Arc<Shared>,
    reader: FrameReader<ReadHalf<BoxStream>>,
    client: ClientWriter,
    egress: Box<dyn EgressStream>,
    sink: Box<dyn RecordingSink>,
    statements: HashMap<String, BeStatement>,
    portals: HashMap<String, BePortal>,
    running: Option<Running>,
    /// The COPY OUT in progress.
    /// `Shared::copy_ends` as it will be once the latest copy-in has ended.
    copy_ends_seen: u64,
    copy: Option<CopyOut>,
    /// Statements finished since the last ReadyForQuery (settings they changed are reported
    /// just before it), at most [`MAX_CYCLE_STATEMENTS`]; `cycle_overflow` when there were more.
    cycle: Vec<Arc<StmtCtx>>,
    cycle_overflow: bool,
    out: BytesMut,
    scratch: RowScratch,
    notice_plan: Option<Arc<ShapePlan>>,
    /// The last answer of [`Backend::withholds`]: (operation index, answer).
    withheld_cache: Option<(u64, bool)>,
    plan_cache: HashMap<PlanKey, Arc<ShapePlan>>,
    /// The catalog generation the cached plans were made under.
    plan_generation: u64,
    /// Per masking profile: the database's columns it masks (see [`Backend::masked_columns`]).
    masked_columns: HashMap<Option<String>, (ColumnList, ColumnList)>,
    /// Result summaries to the audit log (see [`record_results`]).
    results: tokio::sync::mpsc::Sender<Event>,
    /// Recording frames (already through the egress guard) not yet handed to the sink: they go
    /// in batches, so the recording writer wakes once per batch rather than once per statement.
    recording: Vec<RecordingFrame>,
}

/// Qualified column names (`schema.table.column`), shared.
type ColumnList = Arc<Vec<String>>;

/// What a result's masking plan depends on besides the RowDescription: the profile, the
/// statement's lineage, and whether its expressions' origin is untraced.
type PlanKey = (
    Bytes,
    Option<String>,
    Option<crate::statements::ColumnLineage>,
    bool,
);

/// Recording frames held before they are handed to the sink.
const RECORDING_BATCH: usize = 64;
/// Longest a held recording frame waits for its batch.
const RECORDING_LINGER: Duration = Duration::from_millis(50);

impl Backend {
    async fn run(mut self) -> (Option<String>, Option<Box<dyn RecordingSink>>) {
        let mut linger = tokio::time::interval(RECORDING_LINGER);
        linger.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        let done = shared.done.cancelled();
        tokio::pin!(done);
        let reason = loop {
            let frame = tokio::select! {
                biased;
                _ = &mut done => break None,
                f = self.reader.next() => f,
                _ = linger.tick() => {
                    self.flush_recording().await;
                    continue;
                }
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                // The frontend ended and shut the upstream down: its reason stands.
                Ok(None) | Err(ReadError::Io(_)) if self.shared.done.is_cancelled() => break None,
                Ok(None) => break Some("upstream closed".to_string()),
                Err(ReadError::Io(e)) => break Some(format!("upstream connection lost: {e}")),
                Err(ReadError::Frame(e)) => {
                    let err = PgProxyError::UpstreamProtocol(e.to_string());
                    self.fatal(&err).await;
                    break Some(err.to_string());
                }
            };
            if let Err(err) = self.handle(frame).await {
                let _ = self.flush().await;
                self.fatal(&err).await;
                break Some(format!("{:?} error: {err}", err.side()));
            }
            if (self.out.len() > 64 * 1024 || !self.reader.has_buffered_frame())
                && let Err(err) = self.flush().await
            {
                {
                    if matches!(err, PgProxyError::EgressBlocked) {
                        self.fatal(&err).await;
                    }
                    break Some(err.to_string());
                }
            }
        };
        self.flush_recording().await;
        self.shared.done.cancel();
        (reason, Some(self.sink))
    }

    /// Hands the held recording frames to the sink.
    async fn flush_recording(&mut self) {
        for frame in std::mem::take(&mut self.recording) {
            let _ = self.sink.write(frame).await;
        }
    }

    async fn flush(&mut self) -> Result<(), PgProxyError> {
        if self.out.is_empty() {
            return Ok(());
        }
        if let Err(blocked) = self.egress.check(&self.out) {
            self.out.clear();
            let _ = self
                .proxy
                .pipeline
                .recorder
                .record(Event::now(
                    self.ctx.session.clone(),
                    Some(self.ctx.identity.clone()),
                    Some(self.ctx.target.clone()),
                    EventBody::EgressBlocked {
                        site: "client".into(),
                        hits: blocked.hits,
                    },
                ))
                .await;
            return Err(PgProxyError::EgressBlocked);
        }
        let mut w = self.client.lock().await;
        w.write_all(&self.out)
            .await
            .map_err(PgProxyError::client_io)?;
        drop(w);
        self.out.clear();
        Ok(())
    }

    async fn fatal(&mut self, err: &PgProxyError) {
        let fields = ErrorFields::new("FATAL", err.sqlstate(), self.proxy.scrub(&err.to_string()));
        let mut buf = BytesMut::new();
        if fields
            .encode_in(b'E', &mut buf, self.shared.codec())
            .is_ok()
        {
            let mut w = self.client.lock().await;
            let _ = w.write_all(&buf).await;
        }
    }

    fn front_is_extended(&self) -> bool {
        lock(&self.shared.expect)
            .front()
            .is_some_and(Expect::is_extended)
    }

    fn pop(&self) -> Option<Expect> {
        lock(&self.shared.expect).pop_front()
    }

    /// The server entered copy-in mode, in which it ignores Sync. A Sync the client sent
    /// after the COPY's Execute and before ending the copy (drivers send Bind, Execute and Sync
    /// together, then the data, CopyDone and another Sync) gets no ReadyForQuery: it is not a
    /// group the server will answer. Known only when no CopyDone or CopyFail has been
    /// forwarded since the previous copy began (otherwise the queued Syncs may belong after
    /// it, and stay counted: opacity then waits on them only up to its bound).
    fn on_copy_in_started(&mut self) {
        let ends = self.shared.copy_ends.load(Ordering::SeqCst);
        let pending = ends == self.copy_ends_seen;
        self.copy_ends_seen = ends + 1;
        if !pending {
            return;
        }
        let mut q = lock(&self.shared.expect);
        if !matches!(q.front(), Some(Expect::Execute { .. })) {
            return;
        }
        let before = q.len();
        let mut first = true;
        q.retain(|e| {
            if first {
                first = false;
                return true;
            }
            !matches!(e, Expect::Sync { .. })
        });
        for _ in q.len()..before {
            self.shared.ready.ignored();
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        match frame.tag {
            b'D' => self.on_data_row(frame).await,
            b'T' => self.on_row_description(frame).await,
            b'C' | b'I' => {
                let status = if frame.tag == b'C' {
                    wire_tag(&frame.body)
                } else {
                    "EMPTY".to_string()
                };
                self.finish_statement(status).await?;
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b's' => {
                // PortalSuspended: the Execute is done for now; its statement continues later.
                if let Some(r) = self.running.take() {
                    self.record_rows(&r).await;
                }
                self.pop();
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'E' => self.on_error(frame).await,
            b'N' => {
                let codec = self.shared.codec();
                let raw = ErrorFields::parse_in(frame.body, codec)
                    .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
                let masked = self.mask_error_fields(raw).await;
                masked.encode_in(b'N', &mut self.out, codec)
            }
            b'Z' => {
                if let Some(r) = self.running.take() {
                    self.record_rows(&r).await;
                }
                self.cycle.clear();
                self.cycle_overflow = false;
                // Pop through the Sync/Query this answers (drops anything an error skipped; their
                // name changes settle as refused).
                loop {
                    match self.pop() {
                        Some(
                            Expect::Sync { .. }
                            | Expect::Query { .. }
                            | Expect::FunctionCall { .. },
                        )
                        | None => break,
                        Some(_) => {}
                    }
                }
                // Outside a transaction block no protocol portal survives.
                if frame.body.first() == Some(&b'I') {
                    self.shared.names.forget_portals();
                }
                self.shared.ready.answered(frame.body.first().copied());
                self.shared.progress.notify_waiters();
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'1' => {
                if let Some(Expect::Parse {
                    name,
                    statement,
                    change,
                }) = self.pop()
                {
                    if let Some(c) = change {
                        c.confirm();
                    }
                    self.statements.insert(
                        name,
                        BeStatement {
                            ctx: statement,
                            columns: None,
                        },
                    );
                }
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'2' => {
                if let Some(Expect::Bind {
                    portal,
                    statement,
                    result_formats,
                    change,
                    ctx,
                }) = self.pop()
                {
                    if let Some(c) = change {
                        c.confirm();
                    }
                    let st = self.statements.get(&statement);
                    let columns = st.and_then(|s| s.columns.clone()).map(|cols| {
                        cols.into_iter()
                            .enumerate()
                            .map(|(i, mut c)| {
                                c.format = wire::format_for(&result_formats, i);
                                c
                            })
                            .collect()
                    });
                    self.portals.insert(
                        portal,
                        BePortal {
                            ctx: ctx.or_else(|| st.map(|s| s.ctx.clone())),
                            columns,
                            plan: None,
                        },
                    );
                }
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b't' => {
                let swallow = {
                    let mut q = lock(&self.shared.expect);
                    match q.front_mut() {
                        Some(Expect::DescribeStatement {
                            swallow,
                            saw_parameters,
                            ..
                        }) => {
                            *saw_parameters = true;
                            *swallow
                        }
                        _ => false,
                    }
                };
                if !swallow {
                    frame.encode_into(&mut self.out);
                }
                Ok(())
            }
            b'n' => {
                let swallow = match self.pop() {
                    Some(Expect::DescribeStatement { name, swallow, .. }) => {
                        if let Some(s) = self.statements.get_mut(&name) {
                            s.columns = Some(Vec::new());
                        }
                        swallow
                    }
                    Some(Expect::DescribePortal { name, swallow, ctx }) => {
                        if let Some(ctx) = ctx {
                            self.portals.insert(
                                name,
                                BePortal {
                                    ctx: Some(ctx),
                                    columns: Some(Vec::new()),
                                    plan: None,
                                },
                            );
                        } else if let Some(p) = self.portals.get_mut(&name) {
                            p.columns = Some(Vec::new());
                        }
                        swallow
                    }
                    _ => false,
                };
                if !swallow {
                    frame.encode_into(&mut self.out);
                }
                Ok(())
            }
            b'3' => {
                if let Some(Expect::Close { change: Some(c) }) = self.pop() {
                    c.confirm();
                }
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'S' => self.on_parameter_status(frame).await,
            b'H' => self.on_copy_out_response(frame).await,
            b'd' => self.on_copy_data(frame),
            b'c' => {
                if let Some(copy) = self.copy.take()
                    && let Some(b) = copy.binary
                    && !b.trailer_seen
                {
                    return Err(PgProxyError::UpstreamProtocol(
                        "binary COPY ended without its trailer".into(),
                    ));
                }
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'V' => self.on_function_result(frame).await,
            b'A' => self.on_notification(frame).await,
            b'G' | b'W' => {
                self.on_copy_in_started();
                frame.encode_into(&mut self.out);
                Ok(())
            }
            b'K' | b'v' => Ok(()),
            other => Err(PgProxyError::UpstreamProtocol(format!(
                "unexpected message type {:?}",
                char::from(other)
            ))),
        }
    }

    /// A FunctionCallResponse (only when FunctionCall is allowed). The fastpath interface is
    /// how clients read large objects (`lo_open`/`loread`), which may hold anything written
    /// from a masked column, transformed past the detectors: while the profile masks any
    /// column of the database (or the columns cannot be listed), every result is withheld
    /// (NULL). Otherwise the value, whatever its format, runs through the content detectors
    /// as raw bytes.
    async fn on_function_result(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let before = self.out.len();
        self.mask_function_result(frame).await?;
        if self.proxy.pipeline.hooks.wants_chunks() {
            let index = self.running_ctx().map_or(0, |c| c.index);
            self.chunk_hook(index, before)?;
        }
        Ok(())
    }

    async fn mask_function_result(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let mut r = crate::frame::BodyReader::new(frame.body.clone(), "FunctionCallResponse");
        let value = r
            .value()
            .and_then(|v| r.finish().map(|()| v))
            .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        let Some(value) = value else {
            frame.encode_into(&mut self.out);
            return Ok(());
        };
        let profile = self.running_ctx().and_then(|c| c.profile.clone());
        match self.masked_columns(profile.as_deref()).await {
            Some(m) if m.is_empty() => {}
            _ => {
                encode_frame(b'V', &(-1i32).to_be_bytes(), &mut self.out);
                return Ok(());
            }
        }
        let column = ColumnDesc {
            name: "function_result".into(),
            table_oid: 0,
            attnum: 0,
            type_oid: 25,
            format: 0,
        };
        let plan = ShapePlan::new(
            self.proxy.pipeline.masker.as_ref(),
            &[column],
            Vec::new(),
            profile.as_deref(),
            NonTextMasking::Null,
            |_| {},
        );
        let mut findings = Vec::new();
        match plan.mask_value(0, &value, &mut findings) {
            None => frame.encode_into(&mut self.out),
            Some(masked) => {
                let len = i32::try_from(masked.len()).map_err(|_| {
                    PgProxyError::UpstreamProtocol("function result too large".into())
                })?;
                let mut body = Vec::with_capacity(masked.len() + 4);
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(&masked);
                encode_frame(b'V', &body, &mut self.out);
            }
        }
        self.add_findings(findings);
        Ok(())
    }

    /// CopyOutResponse: a COPY TO STDOUT starts. Text and CSV rows are masked as text, one
    /// CopyData per row as the server sends them; binary rows are masked per column (types from
    /// the Describe done before the statement ran), with tuple and field lengths rewritten.
    async fn on_copy_out_response(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let mut r = crate::frame::BodyReader::new(frame.body.clone(), "CopyOutResponse");
        let format = r
            .u8()
            .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        let ncols = r
            .i16()
            .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        let ctx = self.running_ctx();
        let profile = ctx.as_ref().and_then(|c| c.profile.clone());
        let copy = if format == 1 {
            let Some(columns) = ctx.as_ref().and_then(|c| c.copy_columns.clone()) else {
                return Err(binary_copy_refused(
                    "the gateway did not learn the column types of this COPY",
                ));
            };
            if usize::try_from(ncols).ok() != Some(columns.len()) {
                return Err(binary_copy_refused(
                    "the COPY's columns differ from the ones the gateway described",
                ));
            }
            let columns: Vec<ColumnDesc> = columns
                .iter()
                .map(|c| ColumnDesc {
                    format: 1,
                    ..c.clone()
                })
                .collect();
            let mut key = BytesMut::from(&b"copy-binary"[..]);
            for c in &columns {
                key.extend_from_slice(&c.table_oid.to_be_bytes());
                key.extend_from_slice(&c.attnum.to_be_bytes());
                key.extend_from_slice(&c.type_oid.to_be_bytes());
            }
            let plan = self.plan_for(&key.freeze(), &columns, ctx.as_deref()).await;
            CopyOut {
                plan,
                binary: Some(BinaryCopy::default()),
            }
        } else {
            CopyOut {
                plan: Arc::new(
                    ShapePlan::new(
                        self.proxy.pipeline.masker.as_ref(),
                        &[ColumnDesc {
                            name: "copy".into(),
                            table_oid: 0,
                            attnum: 0,
                            type_oid: 25,
                            format: 0,
                        }],
                        Vec::new(),
                        profile.as_deref(),
                        NonTextMasking::Null,
                        |_| {},
                    )
                    .in_encoding(self.shared.codec()),
                ),
                binary: None,
            }
        };
        self.copy = Some(copy);
        frame.encode_into(&mut self.out);
        Ok(())
    }

    /// One CopyData of a COPY OUT: one CopyData goes out for it, masked.
    fn on_copy_data(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let Some(mut copy) = self.copy.take() else {
            return Err(PgProxyError::UpstreamProtocol(
                "CopyData outside COPY OUT".into(),
            ));
        };
        let mut findings = Vec::new();
        let before = self.out.len();
        let result = match copy.binary.as_mut() {
            None => {
                match copy.plan.mask_value(0, &frame.body, &mut findings) {
                    None => frame.encode_into(&mut self.out),
                    Some(masked) => encode_frame(b'd', &masked, &mut self.out),
                }
                Ok(())
            }
            Some(state) => {
                let mut body = BytesMut::with_capacity(frame.body.len());
                let detectors = self.text_plan();
                let r = mask_binary_copy(
                    &copy.plan,
                    &detectors,
                    state,
                    &frame.body,
                    &mut body,
                    &mut self.scratch,
                    &mut findings,
                );
                if r.is_ok() {
                    encode_frame(b'd', &body, &mut self.out);
                }
                r
            }
        };
        self.add_findings(findings);
        self.copy = Some(copy);
        result?;
        if self.proxy.pipeline.hooks.wants_chunks() {
            let index = self.running_ctx().map_or(0, |c| c.index);
            self.chunk_hook(index, before)?;
        }
        Ok(())
    }

    /// Shows the message just written to `out` from `before` on (after masking: exactly what
    /// the client will receive) to [`gatehouse_core::GateHooks::on_chunk`], when a hook wants
    /// chunks. A `Stop` withdraws it and ends the response with an error naming the hook.
    fn chunk_hook(&mut self, index: u64, before: usize) -> Result<(), PgProxyError> {
        let hooks = &self.proxy.pipeline.hooks;
        if !hooks.wants_chunks() {
            return Ok(());
        }
        let ctx = GateContext {
            session: &self.ctx.session,
            identity: &self.ctx.identity,
            target: &self.ctx.target,
        };
        let chunk = self.out.get(before..).unwrap_or_default();
        if hooks.on_chunk(&ctx, index, chunk) == ChunkVerdict::Stop {
            self.out.truncate(before);
            return Err(PgProxyError::HookStopped(format!(
                "the result of statement {index} was stopped by a gateway hook \
                 (GateHooks::on_chunk)"
            )));
        }
        Ok(())
    }

    /// ParameterStatus: settings whose values the server validates into a fixed form pass as
    /// they are; free-text ones (`application_name`, `search_path`, anything unlisted) are set
    /// by statements (`set_config`) that may have read any column, so they pass the detectors,
    /// and are withheld when that statement read a masked column or is opaque.
    async fn on_parameter_status(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let (k, v) = wire::parse_parameter_status(frame.body.clone())
            .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        if crate::settings::changes_lexer(&lock(&self.shared.settings), &k, &v)
            && !self.shared.setting_change_expected()
        {
            // Something the gateway did not see coming changed how SQL is read: the
            // statements it decided since may have been read otherwise. Fail closed.
            return Err(PgProxyError::UpstreamProtocol(format!(
                "the server reported an unexpected change of {k}; the session is ended"
            )));
        }
        if k.eq_ignore_ascii_case("client_encoding")
            && let Some(e) = unsupported_encoding(&v)
        {
            return Err(PgProxyError::UnsupportedEncoding(e));
        }
        if k.eq_ignore_ascii_case("client_encoding") {
            // Plans decode and encode values in the session's encoding.
            self.plan_cache.clear();
        }
        track_setting(&mut lock(&self.shared.settings), &k, &v);
        if FIXED_FORM_PARAMETERS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&k))
        {
            frame.encode_into(&mut self.out);
            return Ok(());
        }
        // The server reports changed settings at the end of the query or Sync: any statement
        // since the last ReadyForQuery may have set it.
        let mut ctxs: Vec<Arc<StmtCtx>> = self.cycle.clone();
        ctxs.extend(self.running_ctx());
        let mut withhold = self.cycle_overflow;
        for ctx in &ctxs {
            if withhold {
                break;
            }
            withhold = self.withholds(Some(ctx.as_ref()), false).await;
        }
        let value = if withhold {
            WITHHELD_VALUE.to_string()
        } else {
            let mut findings = Vec::new();
            let masked = self.text_plan().mask_value(0, v.as_bytes(), &mut findings);
            self.add_findings(findings);
            match masked {
                Some(m) => String::from_utf8_lossy(&m).into_owned(),
                None => v,
            }
        };
        let key = match self
            .text_plan()
            .mask_value(0, k.as_bytes(), &mut Vec::new())
        {
            Some(m) => String::from_utf8_lossy(&m).into_owned(),
            None => k,
        };
        wire::put(
            &pgwire::messages::startup::ParameterStatus::new(key, value),
            &mut self.out,
        )
    }

    /// NotificationResponse: the channel name passes the detectors; the payload is withheld
    /// (any session may build it from any row with `pg_notify`, beyond what the gateway can
    /// trace), keeping only whether there was one.
    async fn on_notification(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let mut r = crate::frame::BodyReader::new(frame.body, "NotificationResponse");
        let parsed = (|| {
            let pid = r.u32()?;
            let channel = r.cstring()?;
            let payload = r.cstring()?;
            r.finish()?;
            Ok::<_, crate::frame::FrameError>((pid, channel, payload))
        })();
        let (pid, channel, payload) =
            parsed.map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        let mut findings = Vec::new();
        let channel = match self
            .text_plan()
            .mask_value(0, channel.as_bytes(), &mut findings)
        {
            Some(m) => String::from_utf8_lossy(&m).into_owned(),
            None => channel,
        };
        // Any session may have sent the payload, with anything in it: withheld while the profile
        // masks any column of the database, else through the content detectors.
        let profile = self.running_ctx().and_then(|c| c.profile.clone());
        let payload = if payload.is_empty() {
            payload
        } else {
            match self.masked_columns(profile.as_deref()).await {
                Some(m) if m.is_empty() => {
                    match self
                        .text_plan()
                        .mask_value(0, payload.as_bytes(), &mut findings)
                    {
                        Some(m) => String::from_utf8_lossy(&m).into_owned(),
                        None => payload,
                    }
                }
                _ => WITHHELD_VALUE.to_string(),
            }
        };
        self.add_findings(findings);
        let mut body = Vec::with_capacity(channel.len() + payload.len() + 6);
        body.extend_from_slice(&pid.to_be_bytes());
        for s in [channel.as_str(), payload.as_str()] {
            body.extend_from_slice(s.replace('\0', "").as_bytes());
            body.push(0);
        }
        encode_frame(b'A', &body, &mut self.out);
        Ok(())
    }

    fn add_findings(&mut self, f: Vec<Finding>) {
        if let Some(r) = self.running.as_mut() {
            let room = MAX_FINDINGS_PER_STATEMENT.saturating_sub(r.findings.len());
            r.findings.extend(f.into_iter().take(room));
        }
    }

    /// The statement context results currently belong to.
    fn running_ctx(&self) -> Option<Arc<StmtCtx>> {
        if let Some(r) = &self.running {
            return Some(r.ctx.clone());
        }
        let q = lock(&self.shared.expect);
        match q.front() {
            Some(Expect::Query { statements, .. }) => statements.front().cloned(),
            Some(Expect::FunctionCall { statement }) => Some(statement.clone()),
            Some(Expect::Execute { portal, .. }) => {
                self.portals.get(portal).and_then(|p| p.ctx.clone())
            }
            _ => None,
        }
    }

    fn ensure_running(&mut self) {
        if self.running.is_none()
            && let Some(ctx) = self.running_ctx()
        {
            {
                let plan = {
                    let q = lock(&self.shared.expect);
                    match q.front() {
                        Some(Expect::Execute { portal, .. }) => {
                            self.portals.get(portal).and_then(|p| p.plan.clone())
                        }
                        _ => None,
                    }
                };
                self.running = Some(Running {
                    ctx,
                    plan,
                    rows: 0,
                    bytes_out: 0,
                    findings: Vec::new(),
                    recorded: Vec::new(),
                });
            }
        }
    }

    async fn plan_for(
        &mut self,
        rowdesc_body: &Bytes,
        columns: &[ColumnDesc],
        ctx: Option<&StmtCtx>,
    ) -> Arc<ShapePlan> {
        let profile = ctx.and_then(|c| c.profile.clone());
        let lineage = ctx.and_then(|c| c.lineage.clone());
        let untraced = match ctx {
            None => true,
            Some(c) => c.opaque || c.lineage.is_none() || self.runs_own_queries(c).await,
        };
        let key = (
            rowdesc_body.clone(),
            profile.clone(),
            lineage.clone(),
            untraced,
        );
        // A replaced view keeps its RowDescription: no cached plan outlives a catalog change.
        let generation = self.proxy.catalog_generation(&self.ctx.target.name);
        if generation != self.plan_generation {
            self.plan_cache.clear();
            self.plan_generation = generation;
        }
        if let Some(p) = self.plan_cache.get(&key) {
            return p.clone();
        }
        let mut sources = self
            .proxy
            .resolve_sources(&self.ctx.target.name, columns)
            .await;
        // An expression whose origin the statement's text does not show (a prepared statement
        // run by name, a cursor, a function running a query of its own) may derive from any
        // column: it is masked whole when any column of the database is.
        let mut withhold = Vec::new();
        if untraced && columns.iter().any(|c| !c.is_catalog_column()) {
            let masked = self.masked_columns(profile.as_deref()).await;
            for (i, col) in columns.iter().enumerate() {
                if col.is_catalog_column() {
                    continue;
                }
                match (&masked, sources.get_mut(i)) {
                    (Some(m), Some(s)) => s.extend(m.iter().cloned()),
                    // The columns could not be listed: nothing says this value is safe.
                    _ => withhold.push(i),
                }
            }
        }
        // Expression columns (no table OID) and whole-row references take their sources from
        // SQL lineage: `lower(email)`,
        // concatenations, CTE outputs, `row_to_json(t)`… Direct columns are exact from the catalog.
        if let Some(lineage) = &lineage {
            let tables = ctx.map(|c| c.tables.clone()).unwrap_or_default();
            for (i, col) in columns.iter().enumerate() {
                if col.is_catalog_column() {
                    continue;
                }
                let names: Vec<String> = match lineage {
                    crate::statements::ColumnLineage::Positional(cols) => {
                        cols.get(i).cloned().unwrap_or_default()
                    }
                    crate::statements::ColumnLineage::Union(all) => all.clone(),
                };
                // `count(col)`, `col IS NULL`: the column's nullness only, unless the column
                // is a view's expression.
                let (nullness, mut names): (Vec<String>, Vec<String>) = names
                    .into_iter()
                    .partition(|n| n.starts_with(crate::statements::NULLNESS_PREFIX));
                if !nullness.is_empty() {
                    let stripped: Vec<String> = nullness
                        .iter()
                        .filter_map(|n| n.strip_prefix(crate::statements::NULLNESS_PREFIX))
                        .map(str::to_string)
                        .collect();
                    names.extend(
                        self.proxy
                            .nullness_sources(&self.ctx.target.name, &stripped, &tables)
                            .await,
                    );
                }
                let expanded = self
                    .proxy
                    .expand_sources(&self.ctx.target.name, &names, &tables)
                    .await;
                if let Some(s) = sources.get_mut(i) {
                    for e in expanded {
                        if !s.contains(&e) {
                            s.push(e);
                        }
                    }
                }
            }
        }
        // Large-object pages hold whatever a statement wrote into them, masked data included
        // (readable by superusers only): withheld while any column is masked.
        const LO_PAGES: &str = "pg_catalog.pg_largeobject.";
        if sources.iter().flatten().any(|s| s.starts_with(LO_PAGES)) {
            let masked = self.masked_columns(profile.as_deref()).await;
            if !masked.is_some_and(|m| m.is_empty()) {
                for (i, s) in sources.iter().enumerate() {
                    if s.iter().any(|n| n.starts_with(LO_PAGES)) {
                        withhold.push(i);
                    }
                }
            }
        }
        // Statements of other sessions (`pg_stat_activity.query`, …) carry their literals,
        // values of masked columns among them: while any column is masked, such a column is
        // shown with its constants masked, and anything computed from one (an expression, a
        // view's column, a whole row) is withheld.
        let mut statement_text = Vec::new();
        if sources
            .iter()
            .flatten()
            .any(|s| crate::rowmask::is_statement_text_source(s))
        {
            let masked = self.masked_columns(profile.as_deref()).await;
            if !masked.is_some_and(|m| m.is_empty()) {
                for (i, (col, s)) in columns.iter().zip(&sources).enumerate() {
                    if !s
                        .iter()
                        .any(|n| crate::rowmask::is_statement_text_source(n))
                    {
                        continue;
                    }
                    // A column's own name comes first among its catalog sources.
                    let direct = col.is_catalog_column()
                        && s.first()
                            .is_some_and(|n| crate::rowmask::is_statement_text_source(n));
                    if direct {
                        statement_text.push(i);
                    } else {
                        withhold.push(i);
                    }
                }
            }
        }
        let binary_types: Vec<u32> = columns
            .iter()
            .filter(|c| c.format != 0)
            .map(|c| c.type_oid)
            .collect();
        let types = self
            .proxy
            .type_forms(&self.ctx.target.name, &binary_types)
            .await;
        let hooks = self.proxy.hooks.clone();
        let session = self.ctx.clone();
        let mut plan = ShapePlan::build(
            self.proxy.pipeline.masker.as_ref(),
            columns,
            sources,
            profile.as_deref(),
            self.proxy.config.non_text_masking,
            Arc::new(types),
            |fields: &mut [FieldDesc]| hooks.on_row_description(&session, fields),
        )
        .in_encoding(self.shared.codec());
        for i in withhold {
            plan.withhold(i);
        }
        for i in statement_text {
            plan.mask_as_statement_text(i);
        }
        // View columns computed by an expression of the view are masked whole, like the
        // client's own expressions.
        for i in self
            .proxy
            .view_expressions(&self.ctx.target.name, columns)
            .await
        {
            plan.mark_derived(i);
        }
        let plan = Arc::new(plan);
        if self.plan_cache.len() > 256 {
            self.plan_cache.clear();
        }
        self.plan_cache.insert(key, plan.clone());
        plan
    }

    /// The columns of the database that `profile` masks (computed once per profile and
    /// session); `None` when the columns cannot be listed.
    async fn masked_columns(&mut self, profile: Option<&str>) -> Option<Arc<Vec<String>>> {
        let key = profile.map(str::to_string);
        let every = self.proxy.all_columns(&self.ctx.target.name).await;
        if every.iter().any(|c| c == "?.*") {
            return None;
        }
        // Kept while the catalog's listing is the same (a DDL statement renews it).
        if let Some((listing, m)) = self.masked_columns.get(&key)
            && Arc::ptr_eq(listing, &every)
        {
            return Some(m.clone());
        }
        let fields = source_fields(&every);
        let plan = self.proxy.pipeline.masker.plan(&fields, profile);
        let masked: Arc<Vec<String>> = Arc::new(
            every
                .iter()
                .enumerate()
                .filter(|(i, _)| plan.masks_derived(*i))
                .map(|(_, s)| s.clone())
                .collect(),
        );
        if self.masked_columns.len() > 16 {
            self.masked_columns.clear();
        }
        self.masked_columns.insert(key, (every, masked.clone()));
        Some(masked)
    }

    /// Whether the statement calls a function that runs a query of its own: one of the
    /// built-ins that take SQL text, or any function defined outside `pg_catalog`.
    async fn runs_own_queries(&mut self, ctx: &StmtCtx) -> bool {
        if ctx.functions.is_empty() {
            return false;
        }
        if ctx.functions.iter().any(|f| {
            let name = f.rsplit('.').next().unwrap_or(f);
            SQL_TEXT_FUNCTIONS.contains(&name)
        }) {
            return true;
        }
        self.proxy
            .user_functions(&self.ctx.target.name, &ctx.functions)
            .await
    }

    async fn on_row_description(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let columns = wire::parse_row_description(frame.body.clone())
            .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        enum Owner {
            Statement(String, bool),
            Portal(String, bool, Option<Arc<StmtCtx>>),
            Results,
        }
        let owner = {
            let q = lock(&self.shared.expect);
            match q.front() {
                Some(Expect::DescribeStatement { name, swallow, .. }) => {
                    Owner::Statement(name.clone(), *swallow)
                }
                Some(Expect::DescribePortal { name, swallow, ctx }) => {
                    Owner::Portal(name.clone(), *swallow, ctx.clone())
                }
                _ => Owner::Results,
            }
        };
        match owner {
            Owner::Statement(name, swallow) => {
                self.pop();
                if let Some(s) = self.statements.get_mut(&name) {
                    s.columns = Some(columns);
                }
                if !swallow {
                    frame.encode_into(&mut self.out);
                }
            }
            Owner::Portal(name, swallow, given) => {
                self.pop();
                let ctx = given.or_else(|| self.portals.get(&name).and_then(|p| p.ctx.clone()));
                let plan = self.plan_for(&frame.body, &columns, ctx.as_deref()).await;
                let entry = self.portals.entry(name).or_insert(BePortal {
                    ctx: None,
                    columns: None,
                    plan: None,
                });
                entry.ctx = ctx;
                entry.columns = Some(columns);
                entry.plan = Some(plan);
                if !swallow {
                    frame.encode_into(&mut self.out);
                }
            }
            Owner::Results => {
                self.ensure_running();
                let ctx = self.running.as_ref().map(|r| r.ctx.clone());
                let plan = self.plan_for(&frame.body, &columns, ctx.as_deref()).await;
                if let Some(r) = self.running.as_mut() {
                    r.plan = Some(plan);
                }
                frame.encode_into(&mut self.out);
            }
        }
        Ok(())
    }

    async fn on_data_row(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        self.ensure_running();
        // Extended protocol: the plan comes from the portal being executed; a portal bound from
        // a described statement gets its plan on first use.
        if self.running.as_ref().is_some_and(|r| r.plan.is_none()) {
            let portal = {
                let q = lock(&self.shared.expect);
                match q.front() {
                    Some(Expect::Execute { portal, .. }) => Some(portal.clone()),
                    _ => None,
                }
            };
            let mut plan = None;
            if let Some(name) = portal {
                let known = self
                    .portals
                    .get(&name)
                    .map(|p| (p.plan.clone(), p.columns.clone(), p.ctx.clone()));
                plan = match known {
                    Some((Some(p), _, _)) => Some(p),
                    Some((None, Some(columns), ctx)) => {
                        let key = row_description_key(&columns);
                        let p = self.plan_for(&key, &columns, ctx.as_deref()).await;
                        if let Some(entry) = self.portals.get_mut(&name) {
                            entry.plan = Some(p.clone());
                        }
                        Some(p)
                    }
                    _ => None,
                };
            }
            if let Some(r) = self.running.as_mut() {
                r.plan = plan;
            }
        }
        let Some(running) = self.running.as_mut() else {
            return Err(PgProxyError::UpstreamProtocol(
                "DataRow outside a result".into(),
            ));
        };
        let Some(plan) = running.plan.clone() else {
            // Never forward a row the gateway could not plan masking for.
            return Err(PgProxyError::UpstreamProtocol(
                "DataRow without a known row description".into(),
            ));
        };
        let before = self.out.len();
        let mut findings = Vec::new();
        let outcome = plan
            .mask_row(&frame.body, &mut self.out, &mut self.scratch, &mut findings)
            .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        let column_name = |col: usize| {
            plan.column_names()
                .get(col)
                .map(String::as_str)
                .unwrap_or("?")
                .to_string()
        };
        if let RowOutcome::Refused(col) = outcome {
            return Err(PgProxyError::Refused(format!(
                "column \"{}\" must be masked but is not text; the statement is refused",
                column_name(col)
            )));
        }
        if let RowOutcome::Undecodable(col, oid) = outcome {
            return Err(PgProxyError::Unmaskable(format!(
                "column \"{}\" is an expression of type OID {oid}, whose binary format the \
                 gateway cannot check for masked data; request it in text format",
                column_name(col)
            )));
        }
        running.rows += 1;
        running.bytes_out += (self.out.len() - before) as u64;
        let index = running.ctx.index;
        self.chunk_hook(index, before)?;
        let Some(running) = self.running.as_mut() else {
            return Err(PgProxyError::UpstreamProtocol(
                "DataRow outside a result".into(),
            ));
        };
        let room = MAX_FINDINGS_PER_STATEMENT.saturating_sub(running.findings.len());
        running.findings.extend(findings.into_iter().take(room));
        let record = running.recorded.len() < self.proxy.config.limits.recording_rows_per_statement;
        let observe = self.proxy.hooks.wants_data_rows();
        if (record || observe)
            && let Some(sent) = self.out.get(before + 5..)
            && let Ok(values) = wire::parse_data_row(&Bytes::copy_from_slice(sent))
        {
            if observe {
                let view: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
                self.proxy.hooks.on_data_row(&self.ctx, &view);
            }
            if record {
                running.recorded.push(serde_json::Value::Array(
                    values
                        .iter()
                        .map(|v| match v {
                            Some(b) => {
                                serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
                            }
                            None => serde_json::Value::Null,
                        })
                        .collect(),
                ));
            }
        }
        Ok(())
    }

    async fn record_rows(&mut self, r: &Running) {
        if r.recorded.is_empty() {
            return;
        }
        let frame = RecordingFrame::Entry {
            label: "rows".into(),
            body: serde_json::json!({
                "index": r.ctx.index,
                "columns": r.plan.as_ref().map(|p| p.column_names().to_vec()).unwrap_or_default(),
                "rows": r.recorded,
            }),
        };
        self.write_recording(frame).await;
    }

    /// Writes a recording frame after the egress guard has seen it; a blocked frame is dropped
    /// and the block recorded.
    async fn write_recording(&mut self, frame: RecordingFrame) {
        let egress = &*self.proxy.pipeline.egress;
        let checked = match &frame {
            // Entries are checked string by string, without serialising them here too (the
            // recording sink serialises and checks them once more).
            RecordingFrame::Entry { label, body } => egress
                .check(EgressSite::Recording, label.as_bytes())
                .and_then(|()| gatehouse_core::json_check(egress, EgressSite::Recording, body)),
            other => egress.check(
                EgressSite::Recording,
                &serde_json::to_vec(other).unwrap_or_default(),
            ),
        };
        if let Err(blocked) = checked {
            let _ = self
                .proxy
                .pipeline
                .recorder
                .record(Event::now(
                    self.ctx.session.clone(),
                    Some(self.ctx.identity.clone()),
                    Some(self.ctx.target.clone()),
                    EventBody::EgressBlocked {
                        site: "recording".into(),
                        hits: blocked.hits,
                    },
                ))
                .await;
            return;
        }
        self.recording.push(frame);
        if self.recording.len() >= RECORDING_BATCH {
            self.flush_recording().await;
        }
    }

    async fn finish_statement(&mut self, status: String) -> Result<(), PgProxyError> {
        self.ensure_running();
        let running = self.running.take();
        // Advance the expectation this completion belongs to.
        {
            let mut q = lock(&self.shared.expect);
            match q.front_mut() {
                Some(Expect::Query {
                    statements,
                    changes,
                    ..
                }) => {
                    if let Some(done) = statements.pop_front() {
                        confirm_change(changes, done.index, &status);
                    }
                }
                Some(Expect::Execute { .. }) => {
                    if let Some(Expect::Execute {
                        change: Some(c), ..
                    }) = q.pop_front()
                        && c.change().is_some_and(|c| c.confirmed_by_tag(&status))
                    {
                        c.confirm();
                    }
                }
                _ => {}
            }
        }
        if let Some(r) = running {
            if self.cycle.len() < MAX_CYCLE_STATEMENTS {
                self.cycle.push(r.ctx.clone());
            } else {
                self.cycle_overflow = true;
            }
            self.record_rows(&r).await;
            // A command tag ends with its row count (`DELETE 15`, `INSERT 0 1`); an error's
            // status is its SQLSTATE (`42501`), which is no count: the rows sent before it are.
            let rows = status
                .rsplit_once(' ')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .or(Some(r.rows));
            self.write_recording(RecordingFrame::Entry {
                label: "statement".into(),
                body: serde_json::json!({
                    "index": r.ctx.index,
                    "text": self.proxy.scrub(
                        &self.proxy.recorded_text(&r.ctx.text, r.ctx.profile.as_deref())
                    ),
                    "status": status,
                }),
            })
            .await;
            let result = OperationResult {
                index: r.ctx.index,
                status,
                rows,
                bytes_out: r.bytes_out,
                duration_us: u64::try_from(r.ctx.started.elapsed().as_micros()).unwrap_or(u64::MAX),
                findings: r.findings,
            };
            // The operation was recorded (and decided) before it ran; its result summary is
            // queued, not awaited: results reach the client without waiting for an fsync.
            let event = Event::now(
                self.ctx.session.clone(),
                Some(self.ctx.identity.clone()),
                Some(self.ctx.target.clone()),
                EventBody::OperationResult(result),
            );
            if self.results.send(event).await.is_err() {
                self.shared.results_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn on_error(&mut self, frame: Frame) -> Result<(), PgProxyError> {
        let codec = self.shared.codec();
        let raw = ErrorFields::parse_in(frame.body, codec)
            .map_err(|e| PgProxyError::UpstreamProtocol(e.to_string()))?;
        let denied = raw
            .get(b'M')
            .and_then(|m| self.shared.denied_index(m))
            .and_then(|i| lock(&self.shared.denials).remove(&i));
        let fields = match denied {
            Some(deny) => {
                let mut fields = ErrorFields::new("ERROR", deny.code, deny.message);
                if let Some(d) = deny.detail {
                    fields = fields.with(b'D', d);
                }
                fields
            }
            None => self.mask_error_fields(raw).await,
        };
        let status = fields.code().unwrap_or("XX000").to_string();
        let fatal = matches!(fields.get(b'S'), Some("FATAL" | "PANIC"));
        if self.front_is_extended() {
            self.ensure_running();
            if let Some(r) = self.running.take() {
                self.running = Some(r);
                self.finish_statement(status).await?;
            }
            // The server skips everything up to the next Sync.
            let mut q = lock(&self.shared.expect);
            while q.front().is_some_and(Expect::is_extended) {
                q.pop_front();
            }
        } else {
            self.finish_statement(status).await?;
            // The rest of a simple query string is skipped by the server.
            let mut q = lock(&self.shared.expect);
            if let Some(Expect::Query { statements, .. }) = q.front_mut() {
                statements.clear();
            }
        }
        fields.encode_in(b'E', &mut self.out, codec)?;
        if fatal {
            self.flush().await?;
        }
        Ok(())
    }

    /// Masks every field of an error or notice that can carry data. The fixed fields (severity,
    /// SQLSTATE, the server's source file, line and routine, the position in the client's own
    /// text) pass as they are. When the statement the message belongs to read a masked column,
    /// or what it read is unknown, the fields that can carry data are withheld (a value cast to
    /// the wrong type, an internal query built from rows, `RAISE … USING TABLE = …` put values
    /// there that no detector would recognise); otherwise they pass the detectors.
    async fn mask_error_fields(&mut self, mut fields: ErrorFields) -> ErrorFields {
        let ctx = self.message_ctx();
        if self.withholds(ctx.as_deref(), true).await {
            if let Some(kept) = self.identifiers_only(ctx.as_deref(), &fields).await {
                return kept;
            }
            let severity = fields.get(b'S').unwrap_or("ERROR").to_string();
            let code = fields.code().unwrap_or("XX000").to_string();
            fields
                .fields
                .retain(|(c, _)| is_fixed_error_field(*c) && *c != b'M');
            let mut out = ErrorFields::new(&severity, &code, WITHHELD_MESSAGE);
            out.fields.extend(
                fields
                    .fields
                    .into_iter()
                    .filter(|(c, _)| !matches!(c, b'S' | b'V' | b'C')),
            );
            return out;
        }
        let mut findings = Vec::new();
        let plan = self.text_plan();
        for (code, value) in fields.fields.iter_mut() {
            if is_fixed_error_field(*code) {
                continue;
            }
            if let Some(masked) = plan.mask_value(0, value.as_bytes(), &mut findings) {
                *value = String::from_utf8_lossy(&masked).into_owned();
            }
        }
        self.add_findings(findings);
        fields
    }

    /// For an error that would be withheld only because its statement names a table with a
    /// masked column (it is not opaque, its reads are traced, it calls no function that runs
    /// queries of its own): when its message is one of PostgreSQL's integrity-constraint
    /// messages whose only variable parts are quoted names, and each is a name the catalog holds
    /// (a schema, relation, column or constraint), the error with that message, its fixed fields
    /// and its schema/table/column/constraint name fields that are such names; every other field
    /// (the detail with the key or the failing row, hints, context, internal queries) is
    /// withheld. `None`: withhold as usual.
    async fn identifiers_only(
        &mut self,
        ctx: Option<&StmtCtx>,
        fields: &ErrorFields,
    ) -> Option<ErrorFields> {
        let ctx = ctx?;
        if ctx.opaque || ctx.lineage.is_none() {
            return None;
        }
        let names = constraint_message_names(fields.code()?, fields.get(b'M')?)?;
        if self.runs_own_queries(ctx).await {
            return None;
        }
        let catalog = self.proxy.catalogs.get(&self.ctx.target.name)?;
        for name in &names {
            if !catalog.is_identifier(name).await.unwrap_or(false) {
                return None;
            }
        }
        let mut out = ErrorFields { fields: Vec::new() };
        for (code, value) in &fields.fields {
            let keep = if is_fixed_error_field(*code) || *code == b'M' {
                true
            } else if matches!(code, b's' | b't' | b'c' | b'n') {
                catalog.is_identifier(value).await.unwrap_or(false)
            } else {
                false
            };
            if keep {
                out.fields.push((*code, value.clone()));
            }
        }
        out.fields.push((b'D', WITHHELD_DETAIL.to_string()));
        // The names pass the detectors like any server text.
        let mut findings = Vec::new();
        let plan = self.text_plan();
        for (code, value) in out.fields.iter_mut() {
            if is_fixed_error_field(*code) {
                continue;
            }
            if let Some(masked) = plan.mask_value(0, value.as_bytes(), &mut findings) {
                *value = String::from_utf8_lossy(&masked).into_owned();
            }
        }
        self.add_findings(findings);
        Some(out)
    }

    /// A one-column text plan (detectors only) for server text outside result rows.
    fn text_plan(&mut self) -> Arc<ShapePlan> {
        if let Some(p) = &self.notice_plan {
            return p.clone();
        }
        let cols = [ColumnDesc {
            name: "message".to_string(),
            table_oid: 0,
            attnum: 0,
            type_oid: 25,
            format: 0,
        }];
        // Server text reaches this plan already decoded into UTF-8 (errors and notices are
        // decoded from the session's encoding and encoded back around it).
        let plan = Arc::new(ShapePlan::new(
            self.proxy.pipeline.masker.as_ref(),
            &cols,
            Vec::new(),
            None,
            NonTextMasking::Null,
            |_| {},
        ));
        self.notice_plan = Some(plan.clone());
        plan
    }

    /// The statement a server message (error, notice) belongs to, if known.
    fn message_ctx(&self) -> Option<Arc<StmtCtx>> {
        if let Some(ctx) = self.running_ctx() {
            return Some(ctx);
        }
        let q = lock(&self.shared.expect);
        match q.front() {
            Some(Expect::Parse { statement, .. }) => Some(statement.clone()),
            Some(Expect::Bind { statement, .. })
            | Some(Expect::DescribeStatement {
                name: statement, ..
            }) => self.statements.get(statement).map(|s| s.ctx.clone()),
            Some(Expect::DescribePortal { name, .. }) => {
                self.portals.get(name).and_then(|p| p.ctx.clone())
            }
            _ => None,
        }
    }

    /// Whether server text about `ctx` is withheld: the statement is unknown, or a table it names
    /// has a column the masking profile masks (its filters and casts read those columns as much
    /// as its output does), or — while any column of the database is masked — it is opaque, it
    /// calls a function that runs a query of its own, or (`strict`, for errors and notices) its
    /// reads are not traced from its text (`EXECUTE`, `FETCH`: the error of a prepared cast
    /// carries the value).
    async fn withholds(&mut self, ctx: Option<&StmtCtx>, strict: bool) -> bool {
        let Some(ctx) = ctx else {
            return true;
        };
        // When the profile masks no column of the database, the content detectors (which see
        // every message) are all the masking there is: nothing to withhold. A listing that fails
        // counts as masked columns.
        if matches!(self.masked_columns(ctx.profile.as_deref()).await, Some(m) if m.is_empty()) {
            return false;
        }
        // Code the gateway cannot see into may read any column.
        if ctx.opaque || (strict && ctx.lineage.is_none()) || self.runs_own_queries(ctx).await {
            return true;
        }
        if ctx.tables.is_empty() {
            return false;
        }
        if let Some((index, answer)) = self.withheld_cache
            && index == ctx.index
        {
            return answer;
        }
        let mut sources = Vec::new();
        // A view's filters and casts read what its query reads, whatever it outputs.
        let (tables, mut unlisted) = match self
            .proxy
            .with_view_reads(&self.ctx.target.name, &ctx.tables)
            .await
        {
            Some(t) => (t, false),
            None => (ctx.tables.clone(), true),
        };
        for table in &tables {
            let names = [format!("{table}.*")];
            let found = self
                .proxy
                .expand_sources(&self.ctx.target.name, &names, &ctx.tables)
                .await;
            // A relation the catalog cannot list (a temporary table, a CTE name, a failed
            // lookup) may hold anything.
            unlisted |= !found.iter().any(|s| !s.ends_with(".*"));
            sources.extend(found);
        }
        let fields: Vec<FieldDesc> = sources
            .iter()
            .map(|s| FieldDesc {
                name: String::new(),
                sources: vec![s.clone()],
                kind: gatehouse_core::FieldKind::Text,
            })
            .collect();
        let plan = self
            .proxy
            .pipeline
            .masker
            .plan(&fields, ctx.profile.as_deref());
        let answer = unlisted || (0..fields.len()).any(|i| plan.masks_derived(i));
        self.withheld_cache = Some((ctx.index, answer));
        answer
    }
}

/// One text field per catalog source (`schema.table.column`), named by its column: what the
/// masking plan is asked about a set of columns.
fn source_fields(sources: &[String]) -> Vec<FieldDesc> {
    sources
        .iter()
        .map(|s| FieldDesc {
            name: s.rsplit('.').next().unwrap_or(s).to_string(),
            sources: vec![s.clone()],
            kind: gatehouse_core::FieldKind::Text,
        })
        .collect()
}

/// Catalog relations holding planner statistics: sample values of columns.
const STATISTICS_RELATIONS: &[&str] = &[
    "pg_statistic",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    // (Not `pg_statistic_ext`: it holds the definitions psql's `\d` lists, no values.)
    "pg_statistic_ext_data",
];

/// Built-in functions that run a query given as text, or return what a session stored
/// (`current_setting`): their output's origin is not in the statement's text.
const SQL_TEXT_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "current_setting",
    "dblink",
    "dblink_exec",
    // Statements other sessions ran (the functions behind `pg_stat_activity` and the like).
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
    "pg_stat_statements",
    "pg_prepared_statement",
    "pg_cursor",
];

/// What a notification payload or a free-text setting shows in place of a withheld value.
const WITHHELD_VALUE: &str = "[withheld by the gateway]";

/// ParameterStatus settings the server only accepts in a fixed form (no free text).
const FIXED_FORM_PARAMETERS: &[&str] = &[
    "server_version",
    "server_encoding",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "standard_conforming_strings",
    "is_superuser",
    "session_authorization",
    "default_transaction_read_only",
    "in_hot_standby",
    "scram_iterations",
];

fn binary_copy_refused(why: &str) -> PgProxyError {
    PgProxyError::Unmaskable(format!(
        "binary COPY output cannot be masked: {why}; use text format"
    ))
}

/// The described types come from the catalog connection, which may resolve a name otherwise
/// than the session (a temporary table, a changed `search_path`): what goes out is checked
/// against them. Every value of a fixed-size type has that size, and no content detector finds
/// anything in the raw bytes of a value the typed walk passed unchanged; else the COPY fails
/// rather than pass what the walk may have misread.
fn check_binary_tuple(
    plan: &ShapePlan,
    detectors: &ShapePlan,
    original: &Bytes,
    sent: &Bytes,
) -> Result<(), PgProxyError> {
    let bad = |e: crate::frame::FrameError| {
        PgProxyError::UpstreamProtocol(format!("binary COPY data: {e}"))
    };
    let before = wire::parse_data_row(original).map_err(bad)?;
    let values = wire::parse_data_row(sent).map_err(bad)?;
    let mut findings = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else { continue };
        if before.get(i).and_then(Option::as_ref) != Some(v) {
            // Rewritten by the masker: its output is the profile's.
            continue;
        }
        if let Some(size) = plan.type_oid(i).and_then(fixed_binary_size)
            && v.len() != size
        {
            return Err(binary_copy_refused(&format!(
                "column {} does not have the size of the type the gateway described",
                i + 1
            )));
        }
        if detectors.mask_value(0, v, &mut findings).is_some() {
            return Err(binary_copy_refused(&format!(
                "column {} still holds data the masking profile hides (its type may differ from \
                 the one the gateway described)",
                i + 1
            )));
        }
    }
    Ok(())
}

/// The size of a fixed-size built-in type's binary value.
fn fixed_binary_size(oid: u32) -> Option<usize> {
    Some(match oid {
        16 | 18 => 1, // bool, "char"
        21 => 2,      // int2
        23 | 26 | 28 | 29 | 700 | 1082 | 24 | 2202..=2206 | 3734 | 3769 | 4089 | 4096 | 4191 => 4, // int4, oid, xid, cid, float4, date, reg*
        829 => 6,                                                     // macaddr
        27 => 6,                                                      // tid
        20 | 701 | 790 | 1083 | 1114 | 1184 | 3220 | 5069 | 774 => 8, // int8, float8, money, time, timestamp(tz), pg_lsn, xid8, macaddr8
        1266 => 12,                                                   // timetz
        1186 | 2950 | 600 => 16,                                      // interval, uuid, point
        628 | 718 => 24,                                              // line, circle
        601 | 603 => 32,                                              // lseg, box
        _ => return None,
    })
}

/// A COPY OUT in progress.
struct CopyOut {
    /// Text formats: one text column (the whole row through the detectors). Binary: the COPY's
    /// columns, as for a DataRow.
    plan: Arc<ShapePlan>,
    /// Binary format state; `None` for text and CSV.
    binary: Option<BinaryCopy>,
}

#[derive(Debug, Default)]
struct BinaryCopy {
    header_seen: bool,
    trailer_seen: bool,
}

/// The signature that starts binary COPY data.
const BINARY_COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Masks one CopyData of binary COPY output into `out`: the header (first message) as the server
/// sent it, each tuple — a tuple has a DataRow's layout — through the plan with fresh lengths,
/// the trailer as it is. A tuple split across messages, data after the trailer or a tuple the
/// plan refuses fails the COPY (the session ends: the output cannot be cut short cleanly).
fn mask_binary_copy(
    plan: &ShapePlan,
    detectors: &ShapePlan,
    state: &mut BinaryCopy,
    body: &Bytes,
    out: &mut BytesMut,
    scratch: &mut RowScratch,
    findings: &mut Vec<Finding>,
) -> Result<(), PgProxyError> {
    let bad = |what: &str| PgProxyError::UpstreamProtocol(format!("binary COPY data: {what}"));
    let mut pos = 0usize;
    let be32 = |at: usize| -> Option<i32> {
        body.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_be_bytes)
    };
    if !state.header_seen {
        if !body.starts_with(BINARY_COPY_SIGNATURE) {
            return Err(bad("no signature"));
        }
        pos = BINARY_COPY_SIGNATURE.len() + 4;
        let ext = be32(pos).ok_or_else(|| bad("short header"))?;
        let ext = usize::try_from(ext).map_err(|_| bad("header extension length"))?;
        pos = pos
            .checked_add(4 + ext)
            .filter(|p| *p <= body.len())
            .ok_or_else(|| bad("short header"))?;
        out.extend_from_slice(&body[..pos]);
        state.header_seen = true;
    }
    let mut row = BytesMut::new();
    while pos < body.len() {
        if state.trailer_seen {
            return Err(bad("data after the trailer"));
        }
        let count = body
            .get(pos..pos + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("short tuple"))?;
        if count == -1 {
            out.extend_from_slice(&body[pos..pos + 2]);
            pos += 2;
            state.trailer_seen = true;
            continue;
        }
        let n = usize::try_from(count).map_err(|_| bad("negative field count"))?;
        let start = pos;
        pos += 2;
        for _ in 0..n {
            let len = be32(pos).ok_or_else(|| bad("tuple split across messages"))?;
            pos += 4;
            if len >= 0 {
                pos = usize::try_from(len)
                    .ok()
                    .and_then(|l| pos.checked_add(l))
                    .filter(|p| *p <= body.len())
                    .ok_or_else(|| bad("tuple split across messages"))?;
            }
        }
        let tuple = body.slice(start..pos);
        row.clear();
        match plan.mask_row(&tuple, &mut row, scratch, findings) {
            Ok(RowOutcome::Unchanged) => {
                check_binary_tuple(plan, detectors, &tuple, &tuple)?;
                out.extend_from_slice(&tuple);
            }
            Ok(RowOutcome::Masked) => {
                let masked = Bytes::copy_from_slice(row.get(5..).unwrap_or_default());
                check_binary_tuple(plan, detectors, &tuple, &masked)?;
                out.extend_from_slice(&masked);
            }
            Ok(RowOutcome::Refused(i)) => {
                return Err(binary_copy_refused(&format!(
                    "column {} holds a masked value that cannot be replaced",
                    i + 1
                )));
            }
            Ok(RowOutcome::Undecodable(i, oid)) => {
                return Err(binary_copy_refused(&format!(
                    "column {} is of type OID {oid}, whose binary format the gateway cannot check",
                    i + 1
                )));
            }
            Err(e) => return Err(bad(&e.to_string())),
        }
    }
    Ok(())
}

/// What an error or notice says in place of text the gateway withholds.
const WITHHELD_MESSAGE: &str = "the gateway withholds this message's text: the statement reads \
    masked columns or runs code the gateway cannot see into (the SQLSTATE is PostgreSQL's)";

/// What replaces the detail of a constraint error whose message is kept (see
/// `identifiers_only`).
const WITHHELD_DETAIL: &str = "the gateway withholds this error's detail and the fields that may \
    carry values: the statement reads masked columns";

/// PostgreSQL's integrity-constraint messages (English) whose variable parts are all quoted
/// names, by SQLSTATE, with each quoted part written as `""`.
const CONSTRAINT_MESSAGES: &[(&str, &str)] = &[
    (
        "23505",
        "duplicate key value violates unique constraint \"\"",
    ),
    (
        "23502",
        "null value in column \"\" of relation \"\" violates not-null constraint",
    ),
    (
        "23514",
        "new row for relation \"\" violates check constraint \"\"",
    ),
    (
        "23514",
        "check constraint \"\" of relation \"\" is violated by some row",
    ),
    (
        "23503",
        "insert or update on table \"\" violates foreign key constraint \"\"",
    ),
    (
        "23503",
        "update or delete on table \"\" violates foreign key constraint \"\" on table \"\"",
    ),
    (
        "23P01",
        "conflicting key value violates exclusion constraint \"\"",
    ),
];

/// The quoted names of `message` when it is one of [`CONSTRAINT_MESSAGES`] for `code`.
fn constraint_message_names(code: &str, message: &str) -> Option<Vec<String>> {
    let mut shape = String::with_capacity(message.len());
    let mut names = Vec::new();
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        shape.push_str(rest.get(..=open)?);
        let after = rest.get(open + 1..)?;
        let close = after.find('"')?;
        names.push(after.get(..close)?.to_string());
        shape.push('"');
        rest = after.get(close + 1..)?;
    }
    shape.push_str(rest);
    CONSTRAINT_MESSAGES
        .iter()
        .any(|(c, m)| *c == code && *m == shape)
        .then_some(names)
}

/// Error and notice fields that carry no data: severity (localised and not), SQLSTATE, the
/// server's source file, line and routine, and positions in the client's own statement text.
/// Everything else (message, detail, hint, context, internal query, schema, table, column,
/// datatype, constraint, and codes added later) can carry values.
fn is_fixed_error_field(code: u8) -> bool {
    matches!(code, b'S' | b'V' | b'C' | b'F' | b'L' | b'R' | b'P')
}

/// A cache key standing for a row shape known from a statement Describe plus Bind formats.
fn row_description_key(columns: &[ColumnDesc]) -> Bytes {
    let mut b = Vec::new();
    for c in columns {
        b.extend_from_slice(c.name.as_bytes());
        b.push(0);
        b.extend_from_slice(&c.table_oid.to_be_bytes());
        b.extend_from_slice(&c.attnum.to_be_bytes());
        b.extend_from_slice(&c.type_oid.to_be_bytes());
        b.extend_from_slice(&c.format.to_be_bytes());
    }
    Bytes::from(b)
}

fn wire_tag(body: &Bytes) -> String {
    let end = memchr::memchr(0, body).unwrap_or(body.len());
    String::from_utf8_lossy(body.get(..end).unwrap_or_default()).into_owned()
}

/// Confirms the name change of the statement with operation index `index`, if the server's
/// command tag says it was made.
fn confirm_change(changes: &mut VecDeque<(u64, PendingChange)>, index: u64, tag: &str) {
    while changes.front().is_some_and(|(i, _)| *i < index) {
        changes.pop_front();
    }
    if changes.front().is_some_and(|(i, _)| *i == index)
        && let Some((_, c)) = changes.pop_front()
        && c.change().is_some_and(|c| c.confirmed_by_tag(tag))
    {
        c.confirm();
    }
}

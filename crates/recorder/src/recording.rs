//! Session recordings: the bulk path. A [`SessionRecording`] takes masked frames without waiting
//! per chunk (a bounded queue; callers wait only when it is full, and fail after a bounded wait),
//! writes its own file (locally or to object storage), and seals it with the SHA-256 of the bytes
//! as stored, which goes into the session-end audit event.
//!
//! File format (JSON lines): a header, then one line per frame; `t` is microseconds since the
//! recording opened, byte payloads are base64.
//!
//! ```text
//! {"recording_version":1,"session":"…","kind":{"terminal":{"cols":80,"rows":24}},"started":"2026-…Z"}
//! {"t":1520,"frame":"output","data":"aGVsbG8K"}
//! {"t":1700,"frame":"resize","cols":120,"rows":40}
//! {"t":2100,"frame":"entry","label":"rows","body":{…}}
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use gatehouse_core::{
    BoxFuture, EgressGuard, EgressSite, RecordError, RecordingFrame, RecordingKind, RecordingSeal,
    RecordingSink, SessionId,
};
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::RecorderError;

/// Where recordings are written.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RecordingStore {
    /// A local directory: `<dir>/<session>/<recording id>.jsonl`.
    Local(PathBuf),
    /// Object storage: `<prefix>/<session>/<recording id>.jsonl`.
    Object {
        /// The bucket.
        store: Arc<dyn ObjectStore>,
        /// Key prefix, e.g. `recordings`.
        prefix: String,
    },
}

/// Limits of a recording sink.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Frames buffered before writers wait.
    pub buffer_frames: usize,
    /// How long a writer waits for room before the recording fails with `BacklogFull` (zero:
    /// never wait).
    pub backpressure_timeout: Duration,
    /// Bytes gathered before a write to the store.
    pub write_chunk: usize,
    /// Longest a frame waits in memory for others to share its write (a write to a local file
    /// is a hop to tokio's blocking pool, so frames that trickle in one at a time are written
    /// together). Frames are not durable before the seal in any case; this bounds how far the
    /// file lags behind the session. Zero: write whenever the queue runs empty.
    pub write_linger: Duration,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        Self {
            buffer_frames: 1024,
            backpressure_timeout: Duration::from_secs(10),
            write_chunk: 256 << 10,
            write_linger: Duration::from_millis(100),
        }
    }
}

/// The first line of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingHeader {
    /// Format version (1).
    pub recording_version: u32,
    /// Session id.
    pub session: SessionId,
    /// What was recorded.
    pub kind: RecordingKind,
    /// RFC 3339 start time.
    pub started: String,
}

/// Whether a session id is safe as a path component.
pub fn valid_session_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

type Queued = (u64, RecordingFrame);

/// A per-session recording sink.
pub struct SessionRecording {
    tx: mpsc::Sender<Queued>,
    started: Instant,
    backpressure_timeout: Duration,
    task: tokio::task::JoinHandle<Result<RecordingSeal, RecordError>>,
}

impl std::fmt::Debug for SessionRecording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecording").finish_non_exhaustive()
    }
}

enum Output {
    Local(tokio::fs::File),
    Object(Box<object_store::buffered::BufWriter>),
}

impl Output {
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Unpin + Send) {
        match self {
            Output::Local(f) => f,
            Output::Object(w) => w.as_mut(),
        }
    }
}

impl SessionRecording {
    /// Opens a new recording for `session`.
    pub async fn open(
        store: &RecordingStore,
        session: &SessionId,
        kind: RecordingKind,
        config: &RecordingConfig,
        egress: Option<Arc<dyn EgressGuard + Send + Sync>>,
    ) -> Result<Self, RecordError> {
        if !valid_session_id(&session.0) {
            return Err(RecordError::Store(format!(
                "session id {:?} is not usable as a name",
                session.0
            )));
        }
        let id = uuid::Uuid::now_v7();
        let rel = format!("{}/{id}.jsonl", session.0);
        let (output, location) = match store {
            RecordingStore::Local(dir) => {
                let dir = dir.join(&session.0);
                tokio::fs::create_dir_all(&dir)
                    .await
                    .map_err(|e| RecordError::Store(format!("create {}: {e}", dir.display())))?;
                let path = dir.join(format!("{id}.jsonl"));
                let f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .await
                    .map_err(|e| RecordError::Store(format!("create {}: {e}", path.display())))?;
                (Output::Local(f), rel)
            }
            RecordingStore::Object { store, prefix } => {
                let key = format!("{}/{rel}", prefix.trim_end_matches('/'));
                let w = object_store::buffered::BufWriter::new(
                    store.clone(),
                    ObjectPath::from(key.as_str()),
                );
                (Output::Object(Box::new(w)), key)
            }
        };
        let header = RecordingHeader {
            recording_version: 1,
            session: session.clone(),
            kind,
            started: gatehouse_core::now().format(&Rfc3339).unwrap_or_default(),
        };
        let mut header_line = serde_json::to_vec(&header)
            .map_err(|e| RecordError::Store(format!("recording header: {e}")))?;
        header_line.push(b'\n');
        let (tx, rx) = mpsc::channel(config.buffer_frames.max(1));
        let task = tokio::spawn(write_task(
            rx,
            output,
            location,
            header_line,
            config.write_chunk,
            config.write_linger,
            egress,
        ));
        Ok(Self {
            tx,
            started: Instant::now(),
            backpressure_timeout: config.backpressure_timeout,
            task,
        })
    }
}

fn stopped() -> RecordError {
    RecordError::Store("the recording writer stopped (see the seal for the cause)".into())
}

impl RecordingSink for SessionRecording {
    fn write(&mut self, frame: RecordingFrame) -> BoxFuture<'_, Result<(), RecordError>> {
        let at = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match self.tx.try_send((at, frame)) {
            Ok(()) => Box::pin(std::future::ready(Ok(()))),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Box::pin(std::future::ready(Err(stopped())))
            }
            Err(mpsc::error::TrySendError::Full(_)) if self.backpressure_timeout.is_zero() => {
                Box::pin(std::future::ready(Err(RecordError::BacklogFull)))
            }
            Err(mpsc::error::TrySendError::Full(item)) => {
                let timeout = self.backpressure_timeout;
                let tx = self.tx.clone();
                Box::pin(async move {
                    match tokio::time::timeout(timeout, tx.send(item)).await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(stopped()),
                        Err(_) => Err(RecordError::BacklogFull),
                    }
                })
            }
        }
    }

    fn seal(self: Box<Self>) -> BoxFuture<'static, Result<RecordingSeal, RecordError>> {
        let SessionRecording { tx, task, .. } = *self;
        drop(tx);
        Box::pin(async move {
            task.await
                .map_err(|e| RecordError::Store(format!("recording task: {e}")))?
        })
    }
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Appends the stored line of one frame.
pub fn encode_frame(out: &mut Vec<u8>, t: u64, frame: &RecordingFrame) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = match frame {
        RecordingFrame::Output { data } => writeln!(
            out,
            "{{\"t\":{t},\"frame\":\"output\",\"data\":\"{}\"}}",
            b64(data)
        ),
        RecordingFrame::ErrorOutput { data } => {
            writeln!(
                out,
                "{{\"t\":{t},\"frame\":\"error_output\",\"data\":\"{}\"}}",
                b64(data)
            )
        }
        RecordingFrame::Input { data } => writeln!(
            out,
            "{{\"t\":{t},\"frame\":\"input\",\"data\":\"{}\"}}",
            b64(data)
        ),
        RecordingFrame::Resize { cols, rows } => {
            writeln!(
                out,
                "{{\"t\":{t},\"frame\":\"resize\",\"cols\":{cols},\"rows\":{rows}}}"
            )
        }
        RecordingFrame::Entry { label, body } => {
            let label = serde_json::to_string(label).unwrap_or_else(|_| "\"\"".into());
            let body = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
            writeln!(
                out,
                "{{\"t\":{t},\"frame\":\"entry\",\"label\":{label},\"body\":{body}}}"
            )
        }
        other => {
            let text = serde_json::to_string(other).unwrap_or_else(|_| "{}".into());
            writeln!(out, "{{\"t\":{t},\"frame\":\"other\",\"body\":{text}}}")
        }
    };
}

/// The bytes of a frame the egress guard checks: a byte payload as it is (its stored form is
/// base64, which would hide a secret from the scan); any other frame as its stored line, whose
/// JSON is exactly what a reader of the recording sees.
fn checked_bytes<'a>(frame: &'a RecordingFrame, line: &'a [u8]) -> &'a [u8] {
    match frame {
        RecordingFrame::Output { data }
        | RecordingFrame::ErrorOutput { data }
        | RecordingFrame::Input { data } => data,
        _ => line,
    }
}

async fn write_task(
    mut rx: mpsc::Receiver<Queued>,
    mut output: Output,
    location: String,
    header: Vec<u8>,
    chunk: usize,
    linger: Duration,
    egress: Option<Arc<dyn EgressGuard + Send + Sync>>,
) -> Result<RecordingSeal, RecordError> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut frames = 0u64;
    let mut buf = header;
    let mut batch = Vec::with_capacity(256);
    let mut guard = egress.as_ref().map(|g| g.stream(EgressSite::Recording));
    let result: Result<(), RecordError> =
        async {
            // When the bytes in `buf` must be written at the latest.
            let mut due: Option<tokio::time::Instant> = None;
            loop {
                let n = match due {
                    // `recv_many` is cancel-safe: a timeout loses no frame.
                    Some(at) => tokio::time::timeout_at(at, rx.recv_many(&mut batch, 256))
                        .await
                        .ok(),
                    None => Some(rx.recv_many(&mut batch, 256).await),
                };
                for (t, frame) in batch.drain(..) {
                    let start = buf.len();
                    encode_frame(&mut buf, t, &frame);
                    if let Some(g) = guard.as_mut() {
                        let line = buf.get(start..).unwrap_or_default();
                        if g.check(checked_bytes(&frame, line)).is_err() {
                            buf.truncate(start);
                            return Err(RecordError::EgressBlocked);
                        }
                    }
                    frames += 1;
                }
                // `None`: the linger ran out; `Some(0)`: every sender is gone.
                let closed = n == Some(0);
                let write = !buf.is_empty()
                    && (buf.len() >= chunk
                        || n.is_none()
                        || closed
                        || (linger.is_zero() && rx.is_empty()));
                if !write && !buf.is_empty() && due.is_none() {
                    due = Some(tokio::time::Instant::now() + linger);
                }
                if write {
                    due = None;
                    output.writer().write_all(&buf).await.map_err(|e| {
                        RecordError::Store(format!("write recording {location}: {e}"))
                    })?;
                    hasher.update(&buf);
                    bytes += buf.len() as u64;
                    buf.clear();
                }
                if closed {
                    break;
                }
            }
            let w = output.writer();
            w.flush()
                .await
                .map_err(|e| RecordError::Store(format!("flush recording {location}: {e}")))?;
            match &mut output {
                Output::Local(f) => f
                    .sync_all()
                    .await
                    .map_err(|e| RecordError::Store(format!("sync recording {location}: {e}")))?,
                Output::Object(w) => w
                    .shutdown()
                    .await
                    .map_err(|e| RecordError::Store(format!("upload recording {location}: {e}")))?,
            }
            Ok(())
        }
        .await;
    if let Err(e) = result {
        // A partial object upload is abandoned; a partial local file stays, unsealed.
        if let Output::Object(w) = &mut output {
            let _ = w.abort().await;
        }
        rx.close();
        return Err(e);
    }
    Ok(RecordingSeal {
        location,
        sha256: hex::encode(hasher.finalize()),
        bytes,
        frames,
    })
}

/// A frame read back with its time offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedFrame {
    /// Microseconds since the recording opened.
    pub at_us: u64,
    /// The frame.
    pub frame: RecordingFrame,
}

/// A recording read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// Its header.
    pub header: RecordingHeader,
    /// Its frames, in stored order.
    pub frames: Vec<TimedFrame>,
}

#[derive(Deserialize)]
struct RawFrame {
    t: u64,
    frame: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    cols: Option<u16>,
    #[serde(default)]
    rows: Option<u16>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
}

/// Checks a recording's bytes against its seal.
pub fn check_seal(bytes: &[u8], seal: &RecordingSeal) -> bool {
    bytes.len() as u64 == seal.bytes && hex::encode(Sha256::digest(bytes)) == seal.sha256
}

/// Parses a recording. Never panics on hostile bytes.
pub fn parse_recording(bytes: &[u8]) -> Result<Recording, RecorderError> {
    let bad = |line: usize, what: String| RecorderError::Recording(format!("line {line}: {what}"));
    let mut lines = bytes.split(|b| *b == b'\n').enumerate();
    let header: RecordingHeader = match lines.next() {
        Some((_, l)) => serde_json::from_slice(l).map_err(|e| bad(1, format!("header: {e}")))?,
        None => return Err(RecorderError::Recording("empty recording".into())),
    };
    let mut frames = Vec::new();
    for (i, line) in lines {
        if line.is_empty() {
            continue;
        }
        let raw: RawFrame = serde_json::from_slice(line).map_err(|e| bad(i + 1, e.to_string()))?;
        let data = || -> Result<Vec<u8>, RecorderError> {
            let d = raw
                .data
                .as_deref()
                .ok_or_else(|| bad(i + 1, "missing data".into()))?;
            base64::engine::general_purpose::STANDARD
                .decode(d)
                .map_err(|e| bad(i + 1, e.to_string()))
        };
        let frame = match raw.frame.as_str() {
            "output" => RecordingFrame::Output { data: data()? },
            "error_output" => RecordingFrame::ErrorOutput { data: data()? },
            "input" => RecordingFrame::Input { data: data()? },
            "resize" => RecordingFrame::Resize {
                cols: raw.cols.ok_or_else(|| bad(i + 1, "missing cols".into()))?,
                rows: raw.rows.ok_or_else(|| bad(i + 1, "missing rows".into()))?,
            },
            "entry" => RecordingFrame::Entry {
                label: raw.label.clone().unwrap_or_default(),
                body: raw.body.clone().unwrap_or(serde_json::Value::Null),
            },
            other => return Err(bad(i + 1, format!("unknown frame {other:?}"))),
        };
        frames.push(TimedFrame {
            at_us: raw.t,
            frame,
        });
    }
    Ok(Recording { header, frames })
}

/// Reads a recording's bytes from where its seal says it lives.
pub async fn read_recording_bytes(
    store: &RecordingStore,
    location: &str,
) -> Result<Vec<u8>, RecorderError> {
    if location.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(RecorderError::Recording(format!(
            "bad location {location:?}"
        )));
    }
    match store {
        RecordingStore::Local(dir) => {
            let path = dir.join(location);
            tokio::fs::read(&path)
                .await
                .map_err(|e| RecorderError::io(format!("read {}", path.display()), e))
        }
        RecordingStore::Object { store, .. } => {
            use object_store::ObjectStoreExt as _;
            Ok(store
                .get(&ObjectPath::from(location))
                .await?
                .bytes()
                .await?
                .to_vec())
        }
    }
}

//! The audit log writer: the current segment sits behind one lock. A writer thread
//! group-commits every control event waiting in its queue with a single write (and, at `fsync`
//! durability, a single `fdatasync`), then answers every waiting caller; it also runs the
//! checkpoint and rotation timers. At `os-write` durability a caller that finds the lock free
//! writes its own event in place (no thread hand-off: the record is in the OS when `append`
//! returns, exactly as through the thread); a caller that finds it busy queues for the thread.
//! At `os-write` an upkeep thread runs the background syncs (and the rotations that wait on
//! them), so neither the writer thread nor an append queued for it waits behind such a sync.
//!
//! Promises:
//! - `append` resolves `Ok` only once the record reached the configured durability level;
//! - on any store failure the batch is cut back to where it began (no partial record remains) and
//!   every caller of the batch gets an error; if even the cut fails, or an fsync fails, the log
//!   refuses everything from then on (fail closed);
//! - on open, a torn final line left by a crash is cut and the cut is recorded; a previous run
//!   that ended without a seal is recorded the same way (with nothing cut);
//! - a checkpoint is signed every N records or T of activity, written into the chain and
//!   published to witnesses (every one, in order); segments rotate by size or age and each links
//!   to the previous one;
//! - [`AuditLog::close`] writes a final checkpoint, then a signed **seal**, and returns once the
//!   seal has been pushed to the witnesses (bounded wait); a later run continues a sealed chain
//!   with a signed checkpoint right after the seal, so records appended after a seal by someone
//!   without the key are detected.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gatehouse_core::{Event, EventReceipt, RecordError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Semaphore, oneshot, watch};

use crate::RecorderError;
use crate::checkpoint::{Checkpoint, CheckpointSigner, RetentionCut};
use crate::format::{self, GENESIS, RecordKind, encode_line, hex32, parse_line};
use crate::storage::{SegmentFile, SegmentStore, SegmentSync, segment_name};

/// How far a record must get before `append` resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Durability {
    /// Handed to the operating system (`write`): survives a gateway crash, not a power loss.
    OsWrite,
    /// On disk (`fdatasync`), group-committed: survives a power loss.
    Fsync,
}

/// Settings of one audit log.
#[derive(Debug, Clone)]
pub struct AuditLogConfig {
    /// This gateway instance's log id (see [`format::valid_log_id`]).
    pub log_id: String,
    /// When `append` resolves.
    pub durability: Durability,
    /// Rotate after a segment reaches this many bytes.
    pub segment_max_bytes: u64,
    /// Rotate a non-empty segment after this long.
    pub segment_max_age: Duration,
    /// Sign a checkpoint after this many records.
    pub checkpoint_every_records: u64,
    /// Sign a checkpoint when records are pending and this much time has passed since the last.
    pub checkpoint_interval: Duration,
    /// Most events in one group commit.
    pub max_batch: usize,
    /// Most events queued or in flight; further callers wait for room.
    pub queue_capacity: usize,
    /// Most closed segments waiting to be shipped to object storage before `append` fails with
    /// [`RecordError::BacklogFull`].
    pub ship_backlog: usize,
    /// At `os-write` durability, let an append that finds the writer idle write itself instead
    /// of waking the writer thread (default true; false always queues, as `fsync` does).
    pub inline_os_write: bool,
}

impl AuditLogConfig {
    /// Defaults: fsync durability, 64 MiB / 1 h segments, a checkpoint every 10 000 records or 1 s.
    pub fn new(log_id: impl Into<String>) -> Self {
        Self {
            log_id: log_id.into(),
            durability: Durability::Fsync,
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(3600),
            checkpoint_every_records: 10_000,
            checkpoint_interval: Duration::from_secs(1),
            max_batch: 4096,
            queue_capacity: 65_536,
            ship_backlog: 64,
            inline_os_write: true,
        }
    }
}

/// The body of a recovery-cut record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryCut {
    /// Segment whose tail was cut.
    pub segment: String,
    /// Offset the segment was cut to.
    pub offset: u64,
    /// How many torn bytes were removed.
    pub torn_bytes: u64,
    /// Hex SHA-256 of the removed bytes (the bytes themselves are not kept).
    pub torn_sha256: String,
}

/// The body of a `foreign_data` record: the running writer found its current segment changed
/// behind its back before a write, and did not chain onto what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignData {
    /// The segment.
    pub segment: String,
    /// Bytes the gateway had written to it.
    pub written_bytes: u64,
    /// Its length when the gateway noticed.
    pub found_bytes: u64,
    /// Bytes found after `written_bytes` (someone else's), cut from the segment; 0 when the
    /// segment was found shorter (then the gateway's own records were removed, and the chain
    /// continues in a new segment).
    pub foreign_bytes: u64,
    /// Hex SHA-256 of those bytes.
    pub foreign_sha256: String,
    /// Complete lines among them.
    pub foreign_lines: u64,
    /// The sequences the first and last of those lines claim, when they parse as records.
    pub claimed_sequences: Option<(u64, u64)>,
    /// The file (in the log's directory) the bytes were kept in, if the store keeps them.
    pub kept_as: Option<String>,
}

/// Things that happen beside the log: witnesses and shipping.
#[derive(Debug, Clone, Default)]
pub struct LogHooks {
    /// Every checkpoint and the seal are pushed to each witness, in order (pushes never delay
    /// `append`; [`AuditLog::close`] waits for the seal's push).
    pub witnesses: Vec<Arc<dyn crate::witness::Witness>>,
    /// Closed segments are copied here, asynchronously.
    pub shipper: Option<crate::objstore::SegmentShipper>,
}

type Reply<T> = oneshot::Sender<Result<T, RecordError>>;

enum Command {
    Append {
        payload: Vec<u8>,
        reply: Reply<EventReceipt>,
    },
    Checkpoint {
        reply: Reply<Option<Checkpoint>>,
    },
    Retain {
        older_than: time::OffsetDateTime,
        reply: Reply<Option<RetentionCut>>,
    },
    Rotate {
        reply: Reply<()>,
    },
    Close {
        reply: Reply<()>,
    },
    /// From an inline append: unsynced bytes have piled up or a rotation waits on them; the
    /// writer thread wakes the upkeep thread, which syncs them outside the lock (see
    /// [`BACKGROUND_SYNC_BYTES`]).
    Maintain,
}

/// At `os-write` durability, once this many appended bytes are unsynced, the upkeep thread
/// fdatasyncs them in the background, outside the writer's lock, while appends go on. Dirty
/// data stays bounded, so closing a segment (which syncs it) never makes an append wait for a
/// large fdatasync: with 64 MiB segments that wait was ~100 ms on every rotation, for every
/// request in flight.
const BACKGROUND_SYNC_BYTES: u64 = 4 << 20;

/// A hash-chained audit log (one writer thread and one upkeep thread per log).
pub struct AuditLog {
    log_id: String,
    /// Appends may write in the caller (see [`AuditLog::append_payload`]).
    inline: bool,
    writer: Arc<Mutex<Writer>>,
    tx: Mutex<Option<Sender<Command>>>,
    room: Arc<Semaphore>,
    latest: watch::Receiver<Option<Checkpoint>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The task pushing checkpoints to witnesses (none without witnesses).
    pusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How long [`AuditLog::close`] waits for the witnesses to take the last checkpoints and the seal.
const WITNESS_DRAIN: Duration = Duration::from_secs(20);

fn now_text() -> String {
    gatehouse_core::now()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The payload members of an event record: the event's JSON object without its braces.
pub fn event_payload(event: &Event) -> Result<Vec<u8>, RecordError> {
    let mut v = serde_json::to_vec(event)
        .map_err(|e| RecordError::Store(format!("serialise event: {e}")))?;
    if v.len() < 2 || v.first() != Some(&b'{') || v.last() != Some(&b'}') {
        return Err(RecordError::Store(
            "event did not serialise to an object".into(),
        ));
    }
    v.pop();
    v.remove(0);
    Ok(v)
}

/// The payload members of a `checkpoint`, `seal`, `recovery_cut`, `retention_cut` or
/// `foreign_data` record. For checkpoints and seals this is the canonical encoding the verifier
/// requires, byte for byte.
pub(crate) fn kind_payload<T: Serialize>(time: &str, body: &T) -> Vec<u8> {
    // Serialising our own plain structs cannot fail; an empty body would still hash and verify.
    let body = serde_json::to_string(body).unwrap_or_else(|_| "null".into());
    format!("\"time\":\"{time}\",\"body\":{body}").into_bytes()
}

impl AuditLog {
    /// Opens (or creates) the log in `store`: recovers a torn tail, then starts the writer.
    pub async fn open(
        store: Arc<dyn SegmentStore>,
        config: AuditLogConfig,
        signer: CheckpointSigner,
        hooks: LogHooks,
    ) -> Result<Self, RecorderError> {
        if !format::valid_log_id(&config.log_id) {
            return Err(RecorderError::Config(format!(
                "log id {:?} must be 1-64 of [A-Za-z0-9._-], not starting with '.'",
                config.log_id
            )));
        }
        if config.max_batch == 0
            || config.queue_capacity == 0
            || config.checkpoint_every_records == 0
        {
            return Err(RecorderError::Config(
                "batch, queue and checkpoint sizes must be positive".into(),
            ));
        }
        let (latest_tx, latest) = watch::channel(None);
        let backlog = Arc::new(AtomicUsize::new(0));
        let ship_tx = hooks
            .shipper
            .as_ref()
            .map(|s| s.start(store.clone(), backlog.clone()));
        let (witness_tx, pusher) = if hooks.witnesses.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (
                Some(tx),
                Some(crate::witness::spawn_pusher(hooks.witnesses.clone(), rx)),
            )
        };
        let log_id = config.log_id.clone();
        let writer = tokio::task::spawn_blocking(move || {
            Writer::recover(
                store, config, signer, latest_tx, witness_tx, backlog, ship_tx,
            )
        })
        .await
        .map_err(|e| RecorderError::Config(format!("recovery task failed: {e}")))??;
        let room = Arc::new(Semaphore::new(writer.config.queue_capacity));
        let inline =
            writer.config.durability == Durability::OsWrite && writer.config.inline_os_write;
        let writer = Arc::new(Mutex::new(writer));
        let (tx, rx) = std::sync::mpsc::channel();
        let upkeep = Upkeep::start(writer.clone(), &log_id)?;
        let shared = writer.clone();
        let thread = std::thread::Builder::new()
            .name(format!("audit-{log_id}"))
            .spawn(move || run(&shared, rx, upkeep))
            .map_err(|e| RecorderError::io("spawn audit writer", e))?;
        Ok(Self {
            log_id,
            inline,
            writer,
            tx: Mutex::new(Some(tx)),
            room,
            latest,
            thread: Mutex::new(Some(thread)),
            pusher: Mutex::new(pusher),
        })
    }

    /// This log's id.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The latest checkpoint written.
    pub fn latest_checkpoint(&self) -> Option<Checkpoint> {
        self.latest.borrow().clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, RecordError> {
        let _permit = self.room.acquire().await.map_err(|_| RecordError::Closed)?;
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.tx.lock().map_err(|_| RecordError::Closed)?;
            let tx = guard.as_ref().ok_or(RecordError::Closed)?;
            tx.send(make(reply)).map_err(|_| RecordError::Closed)?;
        }
        rx.await.map_err(|_| RecordError::Closed)?
    }

    /// Appends an event.
    pub async fn append(&self, event: &Event) -> Result<EventReceipt, RecordError> {
        let payload = event_payload(event)?;
        self.append_payload(payload).await
    }

    /// Appends an event given as payload members (see [`event_payload`]).
    ///
    /// At `os-write` durability an uncontended append is written by the caller itself (one
    /// `write` under the writer's lock, no thread hand-off); when the writer is busy the event
    /// joins the writer thread's next group commit. At `fsync` durability every append goes
    /// through the writer thread, whose group commit shares one `fdatasync` among the events
    /// waiting.
    pub async fn append_payload(&self, payload: Vec<u8>) -> Result<EventReceipt, RecordError> {
        if let Some(written) = self.try_inline(std::slice::from_ref(&payload)) {
            return written.and_then(|mut r| r.pop().ok_or(RecordError::Closed));
        }
        self.call(|reply| Command::Append { payload, reply }).await
    }

    /// At `os-write` durability with the writer free: writes `payloads` in the caller with one
    /// `write`, all or nothing. `None`: the writer thread must take them.
    fn try_inline(&self, payloads: &[Vec<u8>]) -> Option<Result<Vec<EventReceipt>, RecordError>> {
        if !self.inline {
            return None;
        }
        // The lock is held for one write at a time (never across a sync at this level): a
        // caller that finds it taken queues for the writer thread, which is never held up by
        // the disk either (the upkeep thread syncs).
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            Err(std::sync::TryLockError::Poisoned(_)) => return Some(Err(RecordError::Closed)),
        };
        let receipts = if w.closed {
            Err(RecordError::Closed)
        } else {
            w.commit_batch(payloads.iter().map(Vec::as_slice))
        };
        let handover = w.after_inline_append();
        drop(w);
        if handover
            && let Ok(tx) = self.tx.lock()
            && let Some(tx) = tx.as_ref()
        {
            // The writer thread gone means the log is closing: it syncs at close.
            let _ = tx.send(Command::Maintain);
        }
        Some(receipts)
    }

    /// Appends several events given as payload members, in order. At `os-write` durability, when
    /// the writer is free, they are written by the caller with one `write`, all or nothing;
    /// otherwise each joins the writer thread's group commits. Answers one result per payload.
    pub async fn append_payloads(
        &self,
        payloads: Vec<Vec<u8>>,
    ) -> Vec<Result<EventReceipt, RecordError>> {
        if payloads.is_empty() {
            return Vec::new();
        }
        if let Some(written) = self.try_inline(&payloads) {
            return match written {
                Ok(r) => r.into_iter().map(Ok).collect(),
                Err(e) => payloads.iter().map(|_| Err(e.clone())).collect(),
            };
        }
        // join_all polls in order, so the payloads reach the writer's queue in order.
        futures::future::join_all(
            payloads
                .into_iter()
                .map(|payload| self.call(|reply| Command::Append { payload, reply })),
        )
        .await
    }

    /// Signs a checkpoint now if records are pending; returns the latest checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, RecordError> {
        self.call(|reply| Command::Checkpoint { reply }).await
    }

    /// Closes the current segment and starts a new one.
    pub async fn rotate(&self) -> Result<(), RecordError> {
        self.call(|reply| Command::Rotate { reply }).await
    }

    /// Drops closed segments whose last record is older than `older_than`, after writing a
    /// signed retention cut that names where the retained chain starts.
    pub async fn retain(
        &self,
        older_than: time::OffsetDateTime,
    ) -> Result<Option<RetentionCut>, RecordError> {
        self.call(|reply| Command::Retain { older_than, reply })
            .await
    }

    /// Writes a final checkpoint and a signed seal, syncs, stops the writer, and waits (at most
    /// 20 s) until the witnesses have taken every checkpoint and the seal. Later calls fail with
    /// `Closed`. Dropping the log without `close` writes a final checkpoint but no seal.
    pub async fn close(&self) -> Result<(), RecordError> {
        let result = self.call(|reply| Command::Close { reply }).await;
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // Dropping the queue's sender lets the pusher finish what is queued, the seal last.
        if let Ok(mut w) = self.writer.lock() {
            w.witness.take();
        }
        let pusher = self.pusher.lock().ok().and_then(|mut p| p.take());
        if let Some(pusher) = pusher
            && tokio::time::timeout(WITNESS_DRAIN, pusher).await.is_err()
        {
            tracing::error!(
                log = %self.log_id,
                "audit log closed, but the witnesses did not take the seal within {WITNESS_DRAIN:?}"
            );
        }
        result
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("log_id", &self.log_id)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Dropping the sender lets the writer finish its queue, checkpoint and exit on its own.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
    }
}

struct Writer {
    store: Arc<dyn SegmentStore>,
    config: AuditLogConfig,
    signer: CheckpointSigner,
    file: Box<dyn SegmentFile>,
    segment: String,
    len: u64,
    opened: Instant,
    next_sequence: u64,
    head: [u8; 32],
    since_checkpoint: u64,
    last_checkpoint: Instant,
    poisoned: Option<String>,
    latest: watch::Sender<Option<Checkpoint>>,
    /// Every checkpoint goes to the witness pusher (none without witnesses).
    witness: Option<tokio::sync::mpsc::UnboundedSender<Checkpoint>>,
    backlog: Arc<AtomicUsize>,
    ship: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    buf: Vec<u8>,
    /// Set once the log is closed: no further record is accepted.
    closed: bool,
    /// Bytes appended since the segment was last synced (always 0 at `fsync` durability).
    unsynced: u64,
    /// An inline append asked for upkeep the writer thread has not looked at yet.
    maintenance_asked: bool,
    /// The upkeep thread holds a sync handle and has not finished its sync: no rotation until
    /// it has (the rotation's own sync would wait behind that writeback, under the lock).
    sync_in_flight: bool,
    /// The segment file hands out sync handles (see [`SegmentFile::sync_handle`]); without
    /// them every sync runs under the lock, on the writer thread.
    file_syncs_apart: bool,
}

fn damaged(segment: &str, line: u64, detail: impl Into<String>) -> RecorderError {
    RecorderError::Damaged {
        segment: segment.to_owned(),
        line,
        detail: detail.into(),
    }
}

/// The last complete line's (sequence, hash, kind), if any, and the offset just past it.
type ScannedSegment = (Option<(u64, [u8; 32], RecordKind)>, usize);

/// The last complete line's (sequence, hash, kind) after checking every complete line of the
/// segment. `before` is the kind of the previous segment's last record, if known.
fn scan_segment(
    name: &str,
    log: &str,
    bytes: &[u8],
    before: Option<RecordKind>,
) -> Result<ScannedSegment, RecorderError> {
    let mut pos = 0usize;
    let mut last: Option<(u64, [u8; 32], RecordKind)> = None;
    let mut line_no = 0u64;
    while let Some(nl) = bytes.get(pos..).and_then(|r| memchr::memchr(b'\n', r)) {
        line_no += 1;
        let line = bytes.get(pos..pos + nl).unwrap_or_default();
        let p = parse_line(line).map_err(|e| damaged(name, line_no, e.to_string()))?;
        if p.log != log {
            return Err(damaged(name, line_no, format!("record of log {:?}", p.log)));
        }
        if p.computed_hash != p.stored_hash {
            return Err(damaged(name, line_no, "hash mismatch"));
        }
        if let Some((seq, hash, _)) = last
            && (p.sequence != seq + 1 || p.prev != hash)
        {
            return Err(damaged(name, line_no, "broken chain"));
        }
        // Each run continues a sealed chain with a signed checkpoint first.
        let prev_kind = last.map(|(_, _, k)| k).or(before);
        if prev_kind == Some(RecordKind::Seal) && p.kind != RecordKind::Checkpoint {
            return Err(damaged(
                name,
                line_no,
                "a record follows the seal without a signed checkpoint (appended by someone else)",
            ));
        }
        last = Some((p.sequence, p.stored_hash, p.kind));
        pos += nl + 1;
    }
    Ok((last, pos))
}

/// The upkeep thread of a log: runs [`maintain`] (background syncs, due rotations) when the
/// writer thread wakes it, so that neither the writer thread nor an append queued for it ever
/// waits for a background sync.
struct Upkeep {
    wake: SyncSender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Upkeep {
    fn start(shared: Arc<Mutex<Writer>>, log_id: &str) -> Result<Self, RecorderError> {
        // One pending wake is enough: each pass looks at the writer's state afresh.
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name(format!("audit-{log_id}-sync"))
            .spawn(move || {
                while woken.recv().is_ok() {
                    if !maintain(&shared) {
                        return;
                    }
                }
            })
            .map_err(|e| RecorderError::io("spawn audit upkeep", e))?;
        Ok(Self { wake, thread })
    }

    fn wake(&self) {
        // Full: a wake is already pending. Gone: the lock is poisoned, the log is closing.
        let _ = self.wake.try_send(());
    }

    /// Lets the upkeep thread finish its pass (a sync, a due rotation) and waits for it to stop.
    fn finish(self) {
        drop(self.wake);
        let _ = self.thread.join();
    }
}

/// The writer thread: waits for commands or the next timer, then takes the writer's lock and
/// group-commits every append queued meanwhile. A poisoned lock (a panic while writing) stops the
/// thread: every queued caller then gets `Closed`, and so does every later one.
fn run(shared: &Mutex<Writer>, rx: Receiver<Command>, upkeep: Upkeep) {
    let mut appends: Vec<(Vec<u8>, Reply<EventReceipt>)> = Vec::new();
    loop {
        let Ok(deadline) = shared.lock().map(|w| w.deadline()) else {
            return;
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                let Ok(mut w) = shared.lock() else { return };
                w.on_timer();
                after_round(w, &upkeep);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                upkeep.finish();
                if let Ok(mut w) = shared.lock() {
                    // Dropped without `close`: a final checkpoint, no seal.
                    let _ = w.shutdown(false);
                }
                return;
            }
        };
        let Ok(mut w) = shared.lock() else { return };
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append { payload, reply } => appends.push((payload, reply)),
                Command::Close { reply } => {
                    w.commit(&mut appends);
                    drop(w);
                    // A sync or rotation under way completes first; the final sync is then short.
                    upkeep.finish();
                    let Ok(mut w) = shared.lock() else { return };
                    let _ = reply.send(w.shutdown(true));
                    // Later commands find the channel gone and get `Closed`.
                    return;
                }
                Command::Maintain => {}
                other => {
                    w.commit(&mut appends);
                    w.control(other);
                }
            }
            if appends.len() >= w.config.max_batch {
                break;
            }
            next = rx.try_recv().ok();
        }
        w.commit(&mut appends);
        after_round(w, &upkeep);
    }
}

/// One pass of the upkeep thread: a background sync outside the lock when unsynced bytes have
/// piled up or a rotation waits on them, then the rotation if due (its own sync is then short).
/// `false`: the lock is poisoned, the thread stops.
fn maintain(shared: &Mutex<Writer>) -> bool {
    let Ok(mut w) = shared.lock() else {
        return false;
    };
    // What piles up during one background sync is synced by the next, so the sync left to the
    // rotation under the lock is small; three passes at most.
    for _ in 0..3 {
        let Some((handle, segment)) = w.take_background_sync() else {
            break;
        };
        drop(w);
        let synced = handle.sync_data();
        w = match shared.lock() {
            Ok(w) => w,
            Err(_) => return false,
        };
        w.sync_in_flight = false;
        if let Err(e) = synced {
            // As for any failed fsync: the page cache can no longer be trusted.
            w.poison(format!("fdatasync {segment} in the background: {e}"));
            break;
        }
    }
    rotate_if_due(w);
    true
}

/// After a round of the writer thread (with its lock): hands a background sync to the upkeep
/// thread when one is wanted (the rotation then follows there, after it), leaves the rotation
/// to the upkeep thread's pass when one is under way, and otherwise rotates here if due (its
/// sync is short: nothing, or little, is unsynced).
fn after_round(mut w: MutexGuard<'_, Writer>, upkeep: &Upkeep) {
    w.maintenance_asked = false;
    if w.sync_in_flight {
        return;
    }
    if w.unsynced > 0 && w.sync_wanted() && w.file_syncs_apart {
        drop(w);
        upkeep.wake();
        return;
    }
    rotate_if_due(w);
}

/// Rotates the segment if due, then releases the lock; at `os-write` the new segment's
/// directory entry is synced after that.
fn rotate_if_due(mut w: MutexGuard<'_, Writer>) {
    let defer = w.config.durability == Durability::OsWrite;
    let (_, dir_sync) = w.rotate(false, defer);
    let store = dir_sync.then(|| w.store.clone());
    drop(w);
    if let Some(store) = store
        && let Err(e) = store.sync_dir()
    {
        tracing::warn!(error = %e, "audit log: syncing the directory after a rotation failed");
    }
}

impl Writer {
    fn recover(
        store: Arc<dyn SegmentStore>,
        config: AuditLogConfig,
        signer: CheckpointSigner,
        latest: watch::Sender<Option<Checkpoint>>,
        witness: Option<tokio::sync::mpsc::UnboundedSender<Checkpoint>>,
        backlog: Arc<AtomicUsize>,
        ship: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    ) -> Result<Self, RecorderError> {
        let io = |what: &str, e| RecorderError::io(what.to_owned(), e);
        let names = store.list().map_err(|e| io("list segments", e))?;
        let mut next_sequence = 1;
        let mut head = GENESIS;
        let mut torn: Option<RecoveryCut> = None;
        let mut last_kind: Option<RecordKind> = None;
        let segment = match names.last() {
            None => {
                let name = segment_name(1);
                store
                    .open_append(&name)
                    .map_err(|e| io("create segment", e))?;
                store.sync_dir().map_err(|e| io("sync log directory", e))?;
                name
            }
            Some(last) => {
                let bytes = store.read(last).map_err(|e| io("read segment", e))?;
                // Whether the previous segment ends with a seal (then this one must start with
                // a signed checkpoint).
                let before = match names.iter().rev().nth(1) {
                    Some(prev_name) => {
                        let prev = store.read(prev_name).map_err(|e| io("read segment", e))?;
                        last_record_kind(&prev)
                    }
                    None => None,
                };
                let (tail, good) = scan_segment(last, &config.log_id, &bytes, before)?;
                match tail {
                    Some((seq, hash, kind)) => {
                        next_sequence = seq + 1;
                        head = hash;
                        last_kind = Some(kind);
                    }
                    None => {
                        // An empty last segment: continue from the one before it.
                        if let Some(prev_name) = names.iter().rev().nth(1) {
                            let prev = store.read(prev_name).map_err(|e| io("read segment", e))?;
                            let (tail, good_prev) =
                                scan_segment(prev_name, &config.log_id, &prev, None)?;
                            if good_prev != prev.len() {
                                return Err(damaged(
                                    prev_name,
                                    0,
                                    "a closed segment ends with a partial line",
                                ));
                            }
                            let (seq, hash, kind) =
                                tail.ok_or_else(|| damaged(prev_name, 0, "empty closed segment"))?;
                            next_sequence = seq + 1;
                            head = hash;
                            last_kind = Some(kind);
                        } else if *last != segment_name(1) {
                            return Err(damaged(
                                last,
                                0,
                                "the only segment is empty but does not start the log",
                            ));
                        }
                    }
                }
                if good < bytes.len() {
                    let removed = bytes.get(good..).unwrap_or_default();
                    torn = Some(RecoveryCut {
                        segment: last.clone(),
                        offset: good as u64,
                        torn_bytes: removed.len() as u64,
                        torn_sha256: hex::encode(Sha256::digest(removed)),
                    });
                }
                last.clone()
            }
        };
        let mut file = store
            .open_append(&segment)
            .map_err(|e| io("open segment", e))?;
        if let Some(cut) = &torn {
            file.truncate(cut.offset)
                .map_err(|e| io("cut torn tail", e))?;
            file.sync_data().map_err(|e| io("sync cut", e))?;
            tracing::warn!(segment = %cut.segment, bytes = cut.torn_bytes, "audit log: cut a torn final record");
        }
        let len = file.size().map_err(|e| io("segment length", e))?;
        if torn.is_none() && next_sequence > 1 && last_kind != Some(RecordKind::Seal) {
            // The previous run ended between two writes without a seal (killed, crashed, or
            // dropped without `close`): nothing torn to cut, but the chain says so.
            tracing::warn!(segment = %segment, "audit log: the previous run ended without a seal");
            torn = Some(RecoveryCut {
                segment: segment.clone(),
                offset: len,
                torn_bytes: 0,
                torn_sha256: hex::encode(Sha256::digest(b"")),
            });
        }
        let mut w = Writer {
            store,
            config,
            signer,
            file,
            segment,
            len,
            opened: Instant::now(),
            next_sequence,
            head,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            poisoned: None,
            latest,
            witness,
            backlog,
            ship,
            buf: Vec::with_capacity(1 << 20),
            closed: false,
            // A previous run at `os-write` may have left the tail unsynced.
            unsynced: len,
            maintenance_asked: false,
            sync_in_flight: false,
            file_syncs_apart: true,
        };
        if last_kind == Some(RecordKind::Seal) {
            // A new run of a sealed log: a signed checkpoint over the seal comes first, so that
            // records appended after the seal without the key never pass for this run's.
            w.write_checkpoint().map_err(RecorderError::Record)?;
        }
        if let Some(cut) = torn {
            let mut buf = std::mem::take(&mut w.buf);
            buf.clear();
            let payload = kind_payload(&now_text(), &cut);
            let hash = encode_line(
                &mut buf,
                &w.config.log_id,
                w.next_sequence,
                RecordKind::RecoveryCut,
                &w.head,
                &payload,
            );
            w.write(&buf, true)
                .map_err(|e| RecorderError::Record(RecordError::Store(e)))?;
            w.next_sequence += 1;
            w.head = hash;
            w.since_checkpoint += 1;
            w.buf = buf;
        }
        Ok(w)
    }

    fn deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut d = far;
        if self.since_checkpoint > 0 {
            d = d.min(self.last_checkpoint + self.config.checkpoint_interval);
        }
        if self.len > 0 {
            d = d.min(self.opened + self.config.segment_max_age);
        }
        d
    }

    fn on_timer(&mut self) {
        if self.since_checkpoint > 0
            && self.last_checkpoint.elapsed() >= self.config.checkpoint_interval
        {
            let _ = self.write_checkpoint();
        }
        // A due rotation follows in `maintain`, after any background sync.
    }

    /// Stops accepting records: a final checkpoint when records are pending, then (with `seal`)
    /// the signed seal over it, then a final sync.
    fn shutdown(&mut self, seal: bool) -> Result<(), RecordError> {
        if self.closed {
            return Err(RecordError::Closed);
        }
        self.closed = true;
        let mut result = Ok(());
        if self.since_checkpoint > 0 {
            result = self.write_checkpoint().map(|_| ());
        }
        if seal && result.is_ok() && self.next_sequence > 1 {
            result = self.write_seal();
        }
        if self.poisoned.is_none()
            && let Err(e) = self.file.sync_data()
        {
            tracing::error!(error = %e, "audit log: final sync failed");
            self.poison(format!("final fdatasync {}: {e}", self.segment));
        }
        if let Some(p) = &self.poisoned {
            return Err(RecordError::Store(p.clone()));
        }
        result
    }

    /// Writes the signed seal over the current head (the final checkpoint) and publishes it.
    fn write_seal(&mut self) -> Result<(), RecordError> {
        self.guard_identity().map_err(RecordError::Store)?;
        self.guard_tail().map_err(RecordError::Store)?;
        let time = now_text();
        let seal = self.signer.seal(
            &self.config.log_id,
            self.next_sequence - 1,
            &self.head,
            time.clone(),
        );
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let payload = kind_payload(&time, &seal);
        let hash = encode_line(
            &mut buf,
            &self.config.log_id,
            self.next_sequence,
            RecordKind::Seal,
            &self.head,
            &payload,
        );
        let r = self.write(&buf, true);
        self.buf = buf;
        r.map_err(RecordError::Store)?;
        self.next_sequence += 1;
        self.head = hash;
        self.published(seal);
        Ok(())
    }

    fn control(&mut self, cmd: Command) {
        match cmd {
            Command::Checkpoint { reply } => {
                let r = if self.since_checkpoint > 0 {
                    self.write_checkpoint().map(|_| ())
                } else {
                    Ok(())
                };
                let _ = reply.send(r.map(|()| self.latest.borrow().clone()));
            }
            Command::Rotate { reply } => {
                let r = if self.maybe_rotate(true) {
                    Ok(())
                } else {
                    Err(RecordError::Store("rotation failed".into()))
                };
                let _ = reply.send(r);
            }
            Command::Retain { older_than, reply } => {
                let _ = reply.send(self.retain(older_than));
            }
            Command::Append { .. } | Command::Close { .. } | Command::Maintain => {}
        }
    }

    /// Appends `data` to the current segment; on failure cuts back to where it began.
    fn write(&mut self, data: &[u8], sync: bool) -> Result<(), String> {
        if let Some(p) = &self.poisoned {
            return Err(p.clone());
        }
        let start = self.len;
        if let Err(e) = self.file.append(data) {
            let msg = format!("write to {}: {e}", self.segment);
            if let Err(e2) = self.file.truncate(start) {
                self.poison(format!("{msg}; cutting the partial write failed too: {e2}"));
            }
            return Err(msg);
        }
        if sync && let Err(e) = self.file.sync_data() {
            // After a failed fsync the page cache can no longer be trusted: stop for good.
            let msg = format!("fdatasync {}: {e}", self.segment);
            let _ = self.file.truncate(start);
            self.poison(msg.clone());
            return Err(msg);
        }
        self.len = start + data.len() as u64;
        self.unsynced = if sync {
            0
        } else {
            self.unsynced + data.len() as u64
        };
        Ok(())
    }

    fn rotation_due(&self) -> bool {
        self.len > 0
            && (self.len >= self.config.segment_max_bytes
                || self.opened.elapsed() >= self.config.segment_max_age)
    }

    /// After an inline append: whether the writer thread should look at the segment (many
    /// unsynced bytes, or a due rotation: their syncs never run in an appending caller). Asks
    /// once until the writer thread has looked.
    fn after_inline_append(&mut self) -> bool {
        if self.maintenance_asked || self.poisoned.is_some() {
            return false;
        }
        self.maintenance_asked = self.sync_wanted();
        self.maintenance_asked
    }

    /// Enough is unsynced for a background sync, or a due rotation waits on it.
    fn sync_wanted(&self) -> bool {
        self.unsynced >= BACKGROUND_SYNC_BYTES || self.rotation_due()
    }

    /// A handle to sync the segment outside the lock, when enough is unsynced or a rotation
    /// waits on it. Everything appended before the handle's fdatasync is covered by it.
    fn take_background_sync(&mut self) -> Option<(Box<dyn SegmentSync>, String)> {
        if self.poisoned.is_some()
            || self.closed
            || self.sync_in_flight
            || self.unsynced == 0
            || !self.sync_wanted()
        {
            return None;
        }
        match self.file.sync_handle() {
            Ok(Some(h)) => {
                self.unsynced = 0;
                self.sync_in_flight = true;
                Some((h, self.segment.clone()))
            }
            // No handle: the rotation syncs under the lock, as it would anyway.
            Ok(None) => {
                self.file_syncs_apart = false;
                None
            }
            Err(_) => None,
        }
    }

    /// Before every write at `fsync` durability, and before every checkpoint, seal, retention
    /// cut and rotation at any durability: the segment's name must still lead to the file this
    /// writer holds open. Another file renamed over it (or the name removed) means what the
    /// writer appends would land in a file that is no longer in the log: the log refuses every
    /// further record (fail closed, as after a failed write it cannot cut back).
    fn guard_identity(&mut self) -> Result<(), String> {
        if let Some(p) = &self.poisoned {
            return Err(p.clone());
        }
        let msg = match self.file.displaced() {
            Ok(None) => return Ok(()),
            Ok(Some(what)) => {
                // What this writer wrote is now only in the file it holds open: keep a copy.
                let kept = match self.file.read_back() {
                    Ok(Some(bytes)) => self
                        .store
                        .keep_displaced(&self.segment, &bytes)
                        .map_err(|e| e.to_string()),
                    Ok(None) => Ok(None),
                    Err(e) => Err(format!("reading it back: {e}")),
                };
                format!(
                    "segment {} was replaced behind the gateway's back: {what}; {}",
                    self.segment,
                    match kept {
                        Ok(Some(k)) => format!("the gateway's own file was kept as {k}"),
                        Ok(None) =>
                            "the gateway's own file is only in the handle it holds open".to_owned(),
                        Err(e) => format!("keeping the gateway's own file failed: {e}"),
                    }
                )
            }
            Err(e) => format!(
                "checking that segment {} is still in place: {e}",
                self.segment
            ),
        };
        self.poison(msg.clone());
        Err(msg)
    }

    /// Before each write: the segment must be exactly as long as what this writer put in it.
    /// Anything else was done behind its back (someone with write access to the directory):
    /// the writer never chains onto it. Bytes appended are kept aside (when the store keeps
    /// them) and cut; a segment found shorter is left as found and the chain continues in a new
    /// segment. Either way a `foreign_data` record saying what was found, and a signed
    /// checkpoint over it, are written first. If any of that fails the log refuses every
    /// further record (fail closed).
    fn guard_tail(&mut self) -> Result<(), String> {
        if let Some(p) = &self.poisoned {
            return Err(p.clone());
        }
        let found = match self.file.size() {
            Ok(n) => n,
            Err(e) => {
                let msg = format!("length of {}: {e}", self.segment);
                self.poison(msg.clone());
                return Err(msg);
            }
        };
        if found == self.len {
            return Ok(());
        }
        let note = match self.set_foreign_aside(found) {
            Ok(note) => note,
            Err(e) => {
                let msg = format!(
                    "{} changed behind the gateway's back ({} bytes written, {found} found), and setting it aside failed: {e}",
                    self.segment, self.len
                );
                self.poison(msg.clone());
                return Err(msg);
            }
        };
        tracing::error!(
            segment = %note.segment,
            written_bytes = note.written_bytes,
            found_bytes = note.found_bytes,
            foreign_lines = note.foreign_lines,
            kept_as = ?note.kept_as,
            "audit log: the segment was changed by someone else; recording it and not chaining onto it"
        );
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let (seq0, head0) = (self.next_sequence, self.head);
        let payload = kind_payload(&now_text(), &note);
        self.head = encode_line(
            &mut buf,
            &self.config.log_id,
            self.next_sequence,
            RecordKind::ForeignData,
            &self.head,
            &payload,
        );
        self.next_sequence += 1;
        let cp = self.encode_checkpoint(&mut buf);
        let r = self.write(&buf, true);
        self.buf = buf;
        match r {
            Ok(()) => {
                self.published(cp);
                Ok(())
            }
            Err(e) => {
                self.next_sequence = seq0;
                self.head = head0;
                let msg = format!("recording foreign data in {}: {e}", note.segment);
                self.poison(msg.clone());
                Err(msg)
            }
        }
    }

    /// Sets aside what was found in the segment (see [`Writer::guard_tail`]) and says what it was.
    fn set_foreign_aside(&mut self, found: u64) -> Result<ForeignData, String> {
        let segment = self.segment.clone();
        if found < self.len {
            // The gateway's own records were removed: leave the segment as found (verify fails
            // at the cut) and continue the chain in a new one.
            let written = self.len;
            if !self.switch_segment(false).0 {
                return Err("could not start a new segment".into());
            }
            return Ok(ForeignData {
                segment,
                written_bytes: written,
                found_bytes: found,
                foreign_bytes: 0,
                foreign_sha256: hex::encode(Sha256::digest(b"")),
                foreign_lines: 0,
                claimed_sequences: None,
                kept_as: None,
            });
        }
        let bytes = self
            .store
            .read(&segment)
            .map_err(|e| format!("read {segment}: {e}"))?;
        let written = usize::try_from(self.len).map_err(|e| e.to_string())?;
        let foreign = bytes.get(written..).unwrap_or_default();
        let mut lines = 0u64;
        let mut claimed: Option<(u64, u64)> = None;
        for line in foreign.split_inclusive(|b| *b == b'\n') {
            let Some(line) = line.strip_suffix(b"\n") else {
                break;
            };
            lines += 1;
            if let Ok(p) = parse_line(line) {
                claimed = Some(claimed.map_or((p.sequence, p.sequence), |(a, _)| (a, p.sequence)));
            }
        }
        let kept_as = self
            .store
            .keep_foreign(&segment, self.len, foreign)
            .map_err(|e| format!("keep the foreign bytes of {segment}: {e}"))?;
        self.file
            .truncate(self.len)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| format!("cut the foreign bytes from {segment}: {e}"))?;
        Ok(ForeignData {
            segment,
            written_bytes: self.len,
            found_bytes: bytes.len() as u64,
            foreign_bytes: foreign.len() as u64,
            foreign_sha256: hex::encode(Sha256::digest(foreign)),
            foreign_lines: lines,
            claimed_sequences: claimed,
            kept_as,
        })
    }

    fn poison(&mut self, reason: String) {
        tracing::error!(%reason, "audit log disabled: every further record is refused");
        self.poisoned = Some(format!("audit log disabled after: {reason}"));
    }

    fn sync_level(&self) -> bool {
        self.config.durability == Durability::Fsync
    }

    /// Group-commits the queued appends and answers each caller.
    fn commit(&mut self, appends: &mut Vec<(Vec<u8>, Reply<EventReceipt>)>) {
        if appends.is_empty() {
            return;
        }
        let result = if self.closed {
            Err(RecordError::Closed)
        } else {
            self.commit_batch(appends.iter().map(|(p, _)| p.as_slice()))
        };
        match result {
            Ok(receipts) => {
                for ((_, reply), receipt) in appends.drain(..).zip(receipts) {
                    let _ = reply.send(Ok(receipt));
                }
            }
            Err(e) => {
                for (_, reply) in appends.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Encodes `payloads` (and a checkpoint when one is due) and writes them with one write (and
    /// one fdatasync at `fsync` durability). All or nothing: on failure the chain is left where
    /// it was and no byte of the batch remains in the segment.
    fn commit_batch<'p>(
        &mut self,
        payloads: impl ExactSizeIterator<Item = &'p [u8]>,
    ) -> Result<Vec<EventReceipt>, RecordError> {
        if let Some(p) = &self.poisoned {
            return Err(RecordError::Store(p.clone()));
        }
        if self.ship.is_some() && self.backlog.load(Ordering::Acquire) >= self.config.ship_backlog {
            return Err(RecordError::BacklogFull);
        }
        let pending = self.since_checkpoint + payloads.len() as u64;
        // By count, or by time even under a steady load that never lets the queue time out.
        let due = pending >= self.config.checkpoint_every_records
            || self.last_checkpoint.elapsed() >= self.config.checkpoint_interval;
        if due || self.sync_level() {
            self.guard_identity().map_err(RecordError::Store)?;
        }
        self.guard_tail().map_err(RecordError::Store)?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let (seq0, head0) = (self.next_sequence, self.head);
        let mut receipts = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let hash = encode_line(
                &mut buf,
                &self.config.log_id,
                self.next_sequence,
                RecordKind::Event,
                &self.head,
                payload,
            );
            receipts.push(EventReceipt {
                sequence: self.next_sequence,
                hash: hex32(&hash),
            });
            self.next_sequence += 1;
            self.head = hash;
        }
        let checkpoint = due.then(|| self.encode_checkpoint(&mut buf));
        let written = self.write(&buf, self.sync_level());
        self.buf = buf;
        match written {
            Ok(()) => {
                match checkpoint {
                    Some(cp) => self.published(cp),
                    None => self.since_checkpoint = pending,
                }
                Ok(receipts)
            }
            Err(e) => {
                self.next_sequence = seq0;
                self.head = head0;
                Err(RecordError::Store(e))
            }
        }
    }

    /// Encodes a checkpoint over the current head into `buf` and advances the chain past it.
    fn encode_checkpoint(&mut self, buf: &mut Vec<u8>) -> Checkpoint {
        let time = now_text();
        let cp = self.signer.checkpoint(
            &self.config.log_id,
            self.next_sequence - 1,
            &self.head,
            time.clone(),
        );
        let payload = kind_payload(&time, &cp);
        self.head = encode_line(
            buf,
            &self.config.log_id,
            self.next_sequence,
            RecordKind::Checkpoint,
            &self.head,
            &payload,
        );
        self.next_sequence += 1;
        cp
    }

    fn published(&mut self, cp: Checkpoint) {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        if let Some(w) = &self.witness {
            // The pusher gone means the log is closing; the checkpoint stays in the chain.
            let _ = w.send(cp.clone());
        }
        self.latest.send_replace(Some(cp));
    }

    fn write_checkpoint(&mut self) -> Result<Checkpoint, RecordError> {
        if self.next_sequence == 1 {
            return Err(RecordError::Store("nothing to checkpoint".into()));
        }
        self.guard_identity().map_err(RecordError::Store)?;
        self.guard_tail().map_err(RecordError::Store)?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let (seq0, head0) = (self.next_sequence, self.head);
        let cp = self.encode_checkpoint(&mut buf);
        let r = self.write(&buf, self.sync_level());
        self.buf = buf;
        match r {
            Ok(()) => {
                self.published(cp.clone());
                Ok(cp)
            }
            Err(e) => {
                self.next_sequence = seq0;
                self.head = head0;
                Err(RecordError::Store(e))
            }
        }
    }

    /// Rotates when the segment is full or old (or when `force`d and non-empty). Returns whether
    /// the current segment is now a fresh one (or needed no rotation).
    fn maybe_rotate(&mut self, force: bool) -> bool {
        self.rotate(force, false).0
    }

    /// Rotates when due (or forced); answers whether all went well and whether the new
    /// segment's directory entry still needs its sync: with `defer_dir_sync` (`os-write` only,
    /// where nothing of the new segment is promised durable yet) the caller syncs the directory
    /// after releasing the writer's lock, so appends go on meanwhile.
    fn rotate(&mut self, force: bool, defer_dir_sync: bool) -> (bool, bool) {
        if self.poisoned.is_some() || self.closed {
            return (false, false);
        }
        if self.len == 0 || !(self.rotation_due() || force) {
            return (true, false);
        }
        // A segment is closed only as this writer wrote it.
        if self.guard_identity().is_err() || self.guard_tail().is_err() {
            return (false, false);
        }
        self.switch_segment(defer_dir_sync)
    }

    /// Closes the current segment (synced) and opens the next; see [`Writer::rotate`].
    fn switch_segment(&mut self, defer_dir_sync: bool) -> (bool, bool) {
        // Closing a segment makes it durable whatever the level, so shipping copies final bytes.
        if let Err(e) = self.file.sync_data() {
            self.poison(format!("fdatasync {} at rotation: {e}", self.segment));
            return (false, false);
        }
        self.unsynced = 0;
        let name = segment_name(self.next_sequence);
        let file = match self.store.open_append(&name).and_then(|f| {
            if !defer_dir_sync {
                self.store.sync_dir()?;
            }
            Ok(f)
        }) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "audit log: rotation failed; staying on the current segment");
                return (false, false);
            }
        };
        let closed = std::mem::replace(&mut self.segment, name);
        self.file = file;
        self.file_syncs_apart = true;
        self.len = 0;
        self.opened = Instant::now();
        if let Some(ship) = &self.ship {
            self.backlog.fetch_add(1, Ordering::AcqRel);
            if ship.send(closed).is_err() {
                self.backlog.fetch_sub(1, Ordering::AcqRel);
            }
        }
        (true, defer_dir_sync)
    }

    fn retain(
        &mut self,
        older_than: time::OffsetDateTime,
    ) -> Result<Option<RetentionCut>, RecordError> {
        let store_err = |what: &str, e: std::io::Error| RecordError::Store(format!("{what}: {e}"));
        let names = self
            .store
            .list()
            .map_err(|e| store_err("list segments", e))?;
        let mut dropped = Vec::new();
        let mut first_retained: Option<(u64, [u8; 32])> = None;
        for name in &names {
            if *name == self.segment {
                break;
            }
            let bytes = self
                .store
                .read(name)
                .map_err(|e| store_err("read segment", e))?;
            let last_time = last_record_time(&bytes);
            if last_time.is_some_and(|t| t < older_than) {
                dropped.push(name.clone());
            } else {
                break;
            }
        }
        if dropped.is_empty() {
            return Ok(None);
        }
        self.guard_identity().map_err(RecordError::Store)?;
        self.guard_tail().map_err(RecordError::Store)?;
        // Where the retained chain starts: the first record of the first kept segment.
        if let Some(kept) = names.get(dropped.len()) {
            let bytes = if *kept == self.segment && self.len == 0 {
                Vec::new()
            } else {
                self.store
                    .read(kept)
                    .map_err(|e| store_err("read segment", e))?
            };
            if let Some(line) = bytes.split(|b| *b == b'\n').next()
                && let Ok(p) = parse_line(line)
            {
                first_retained = Some((p.sequence, p.prev));
            }
        }
        // The current segment is empty: the retained chain starts with the cut record itself.
        let (seq, prev) = first_retained.unwrap_or((self.next_sequence, self.head));
        let time = now_text();
        let cut = self.signer.retention_cut(
            &self.config.log_id,
            seq,
            &prev,
            dropped.clone(),
            time.clone(),
        );
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let payload = kind_payload(&time, &cut);
        let hash = encode_line(
            &mut buf,
            &self.config.log_id,
            self.next_sequence,
            RecordKind::RetentionCut,
            &self.head,
            &payload,
        );
        let r = self.write(&buf, true);
        self.buf = buf;
        r.map_err(RecordError::Store)?;
        self.next_sequence += 1;
        self.head = hash;
        self.since_checkpoint += 1;
        for name in &dropped {
            self.store
                .remove(name)
                .map_err(|e| store_err("remove segment", e))?;
        }
        self.store
            .sync_dir()
            .map_err(|e| store_err("sync log directory", e))?;
        Ok(Some(cut))
    }
}

/// The kind of a segment's last complete record.
fn last_record_kind(bytes: &[u8]) -> Option<RecordKind> {
    let trimmed = bytes.strip_suffix(b"\n")?;
    let start = memchr::memrchr(b'\n', trimmed).map_or(0, |p| p + 1);
    parse_line(trimmed.get(start..)?).ok().map(|p| p.kind)
}

/// The `time` member of a segment's last complete record.
fn last_record_time(bytes: &[u8]) -> Option<time::OffsetDateTime> {
    let trimmed = bytes.strip_suffix(b"\n")?;
    let start = memchr::memrchr(b'\n', trimmed).map_or(0, |p| p + 1);
    let p = parse_line(trimmed.get(start..)?).ok()?;
    let rest = p.payload.strip_prefix(b"\"time\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let text = std::str::from_utf8(rest.get(..end)?).ok()?;
    time::OffsetDateTime::parse(text, &Rfc3339).ok()
}

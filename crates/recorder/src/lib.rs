//! The Gatehouse recorder: an append-only, hash-chained, ed25519-checkpointed audit log that anyone
//! can verify offline, plus per-session recordings and their replay formats.
//!
//! - [`AuditRecorder`] implements [`gatehouse_core::Recorder`]: control events are group-committed
//!   to the local audit log at the configured [`Durability`]; recordings go to per-session sinks
//!   that never wait per chunk. Any failure is an error, and the caller fails closed.
//! - [`format`](mod@format) defines the stored line and exactly what its hash covers;
//!   [`verify`](mod@verify) checks a set of logs from their bytes alone (plus trusted keys and
//!   witness checkpoints) and names the first bad record. Both are pure: no I/O, no tokio.
//!   [`json_check`] is verify's allocation-free JSON check (equivalent to serde_json's, fuzzed
//!   differentially in `fuzz/fuzz_targets/audit_verify.rs`).
//! - [`read`] and [`replay`] turn logs and recordings into session lists, exports, asciicast v2,
//!   SQL transcripts and HTTP exchange lists.
//! - [`objstore`] ships closed segments and writes recordings to S3-compatible object storage.
//! - [`witness`] pushes every checkpoint and the seal to a directory on other storage, an
//!   object-storage bucket (one object each, kept by the bucket's retention), or a webhook
//!   (`http://`, or `https://` with a pinned CA).
//!
//! The schema is documented in `docs/audit-schema.md`.

#![forbid(unsafe_code)]

pub mod checkpoint;
pub mod error;
pub mod format;
pub mod json_check;
pub mod log;
pub mod objstore;
pub mod read;
pub mod recorder;
pub mod recording;
pub mod replay;
pub mod storage;
pub mod verify;
pub mod witness;

pub use checkpoint::{Checkpoint, CheckpointSigner, RetentionCut, TrustedKeys};
pub use error::RecorderError;
pub use log::{AuditLog, AuditLogConfig, Durability, ForeignData, LogHooks};
pub use recorder::{AuditRecorder, RecorderConfig};
pub use recording::{RecordingConfig, RecordingStore, SessionRecording};
pub use storage::{LocalSegmentStore, SegmentFile, SegmentStore};
pub use verify::{
    ForeignNote, LogData, LogStatus, LogVerdict, Problem, ProblemKind, RecoveryNote, SegmentData,
    SignedHead, VerifyOptions, VerifyReport, verify,
};
pub use witness::{FileWitness, ObjectStoreWitness, WebhookWitness, Witness};

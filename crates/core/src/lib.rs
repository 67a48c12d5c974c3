//! Gatehouse's shared vocabulary: who is asking, for what, on which target, what was decided — and
//! the layer traits every protocol crate is written against.
//!
//! This crate is to Gatehouse what `tower-service` is to tower: small, stable, no I/O, no tokio.
//! Protocol crates (`gatehouse-pg`, `gatehouse-ssh`, …) depend on it and receive the layers as
//! `Arc<dyn Trait + Send + Sync>` inside a [`Pipeline`]; layer crates (`gatehouse-identity`,
//! `gatehouse-policy`, …) implement the traits. Only the binary, tests and examples wire concrete
//! implementations together.
//!
//! Two pure canonicalisers live here because every side must agree on them byte for byte:
//! [`http_path`] (what path the policy saw is the path the upstream gets) and [`shell`] (argv parsing
//! of SSH and Kubernetes exec command lines).
//!
//! The hot, pure layers ([`Policy`], [`Masker`], [`EgressGuard`]) are synchronous; the I/O layers
//! ([`Authenticator`], [`Approvals`], [`Recorder`]) return boxed `Send` futures ([`BoxFuture`]) so
//! that they stay dyn-compatible.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod approval;
pub mod command;
pub mod decision;
pub mod error;
pub mod event;
pub mod gate;
pub mod http_path;
pub mod identity;
pub mod masking;
pub mod operation;
pub mod pipeline;
pub mod recorded;
pub mod shell;
pub mod target;
pub mod text;
pub mod traits;

pub use approval::{
    ApprovalDecision, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord, ApprovalRequest,
    ApprovalState, ApprovalTicket, ApproverVote,
};
pub use decision::{BinaryHandling, Decision, ReviewRequirement, Verdict};
pub use error::{ApprovalError, AuthError, AuthErrorKind, RecordError, Side};
pub use event::{
    Event, EventBody, EventReceipt, OperationResult, RecordingFrame, RecordingKind, RecordingSeal,
    SessionId,
};
pub use gate::{
    ChunkVerdict, Classified, Gate, GateContext, GateHooks, HoldMode, NoHooks, Opened, Outcome,
    Review, tighten,
};
pub use identity::{AuthMethod, Credential, Identity};
pub use masking::{
    EgressBlocked, EgressCounters, EgressSite, FieldDesc, FieldKind, Finding, MaskOutcome,
};
pub use operation::{
    ExecCommand, HttpOperation, KubeOperation, Operation, SqlOperation, SqlProtocol,
    SqlSessionSettings, SshOperation, printable,
};
pub use pipeline::Pipeline;
pub use recorded::RecordedText;
pub use target::{Protocol, Target};
pub use text::TextDetector;
pub use traits::{
    Approvals, Authenticator, BoxFuture, EgressGuard, EgressStream, FieldPlan, Masker, Policy,
    Recorder, RecordingSink, StreamContext, StreamMasker, json_check,
};

/// Timestamps in Gatehouse are UTC, serialised as RFC 3339.
pub type Timestamp = time::OffsetDateTime;

/// The current time, UTC.
pub fn now() -> Timestamp {
    time::OffsetDateTime::now_utc()
}

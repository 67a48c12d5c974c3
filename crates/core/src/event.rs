//! Audit events (the control path) and recording frames (the bulk path).

use serde::{Deserialize, Serialize};

use crate::{
    ApprovalDecision, ApprovalId, ApprovalOutcome, Decision, Finding, Identity, Operation, Side,
    Target, Timestamp,
};

/// A session id (UUID v7: time-ordered).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub String);

impl SessionId {
    /// A fresh, time-ordered id.
    pub fn generate() -> Self {
        SessionId(uuid::Uuid::now_v7().to_string())
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One control event, as a protocol crate hands it to the [`crate::Recorder`]. The recorder adds
/// sequence, log id, `prev` and `hash`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub time: Timestamp,
    /// The session it belongs to (failed logins get a session id too).
    pub session: SessionId,
    /// Who (absent only before authentication succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Which target (absent when the caller named none that exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// What happened.
    pub body: EventBody,
}

impl Event {
    /// An event stamped now.
    pub fn now(
        session: SessionId,
        identity: Option<Identity>,
        target: Option<Target>,
        body: EventBody,
    ) -> Self {
        Self {
            time: crate::now(),
            session,
            identity,
            target,
            body,
        }
    }
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
// Events are built once per operation and serialised straight away; boxing the large variant
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum EventBody {
    /// A session was authenticated and connected upstream.
    SessionStart {
        /// Caller's address, e.g. `127.0.0.1:51234`.
        client_addr: String,
        /// Protocol-specific details (client application name, ssh client version, …).
        #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
        details: serde_json::Value,
    },
    /// A session ended; seals the recording's hash.
    SessionEnd {
        /// Why it ended: `client closed`, `token expired`, `upstream closed`, an error.
        reason: String,
        /// The recording's seal, when there was a recording.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recording: Option<RecordingSeal>,
        /// Operations seen in the session.
        operations: u64,
    },
    /// A login attempt was refused.
    LoginFailed {
        /// Caller's address.
        client_addr: String,
        /// Why.
        reason: crate::AuthErrorKind,
    },
    /// An operation and the policy's decision (recorded before the operation proceeds).
    Operation {
        /// Index of the operation within the session.
        index: u64,
        /// The operation.
        operation: Operation,
        /// The decision.
        decision: Decision,
    },
    /// A review opened an approval request (recorded once, by the approvals layer).
    ApprovalRequested {
        /// Operation index in the session.
        index: u64,
        /// Request id.
        id: ApprovalId,
        /// Canonical operation hash.
        operation_hash: String,
        /// The operation as the approver saw it (masked as the policy masks it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        operation: Option<Operation>,
        /// The rule that asked for review.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule_id: Option<String>,
        /// The rule's reason, as approvers were shown it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// An earlier approval's grant window already covered the operation (`id` is that
        /// approval's): nobody was asked.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        granted: bool,
    },
    /// An approval let operation `index` run (recorded by the gate, before it runs).
    ApprovalUsed {
        /// Operation index in the session.
        index: u64,
        /// Request id.
        id: ApprovalId,
    },
    /// An approver decided (one vote).
    ApprovalDecided {
        /// Request id.
        id: ApprovalId,
        /// Approver subject.
        approver: String,
        /// Approve or deny.
        decision: ApprovalDecision,
        /// Justification.
        justification: String,
    },
    /// The wait ended (approved, denied, timed out).
    ApprovalResolved {
        /// Operation index in the session.
        index: u64,
        /// Request id.
        id: ApprovalId,
        /// Outcome.
        outcome: ApprovalOutcome,
    },
    /// The waiting session went away before a decision.
    ApprovalAbandoned {
        /// Request id.
        id: ApprovalId,
    },
    /// What an operation produced.
    OperationResult(OperationResult),
    /// The egress guard blocked output containing held secret material.
    EgressBlocked {
        /// Where: `client`, `recording`, `audit`, `log`.
        site: String,
        /// How many hits.
        hits: u64,
    },
    /// An error worth an auditor's attention.
    Error {
        /// Which side failed.
        side: Side,
        /// Caller-safe message.
        message: String,
    },
    /// A protocol- or component-specific event not covered above.
    Other {
        /// Stable name, e.g. `policy_reloaded`.
        name: String,
        /// Details.
        #[serde(default)]
        details: serde_json::Value,
    },
}

/// The result summary of one operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationResult {
    /// Operation index in the session.
    pub index: u64,
    /// Protocol status: SQL command tag or SQLSTATE, exit status, HTTP status.
    pub status: String,
    /// Rows / items returned, where that makes sense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes sent to the caller.
    #[serde(default)]
    pub bytes_out: u64,
    /// Wall time in microseconds.
    pub duration_us: u64,
    /// Masking findings (rule, field, offset, length — never the value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
}

/// Where the recorder appended an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReceipt {
    /// Sequence number in this gateway's log.
    pub sequence: u64,
    /// Hex SHA-256 of the stored line.
    pub hash: String,
}

/// What kind of recording a session produces (decides the replay format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordingKind {
    /// A terminal (ssh shell, kubectl exec -it): replays as asciicast v2.
    Terminal {
        /// Initial width.
        cols: u16,
        /// Initial height.
        rows: u16,
    },
    /// Non-interactive command output (ssh exec, kubectl exec).
    Exec,
    /// A SQL session: replays as a transcript.
    Sql,
    /// HTTP exchanges: replays as a list.
    Http,
}

/// One piece of masked recording data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RecordingFrame {
    /// Output to the caller (stdout, or the only stream).
    Output {
        /// Masked bytes.
        data: Vec<u8>,
    },
    /// Error output (stderr).
    ErrorOutput {
        /// Masked bytes.
        data: Vec<u8>,
    },
    /// Input from the caller.
    Input {
        /// Bytes (masked where the protocol masks input).
        data: Vec<u8>,
    },
    /// Terminal resize.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// A structured entry: a SQL statement and its masked rows, an HTTP exchange.
    Entry {
        /// Entry kind, e.g. `statement`, `rows`, `http_request`, `http_response`.
        label: String,
        /// Masked content.
        body: serde_json::Value,
    },
}

/// The seal of a finished recording, carried in `SessionEnd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingSeal {
    /// Where the recording lives (path relative to the store, or object key).
    pub location: String,
    /// Hex SHA-256 of the recording file(s) as stored.
    pub sha256: String,
    /// Bytes stored.
    pub bytes: u64,
    /// Frames written.
    pub frames: u64,
}

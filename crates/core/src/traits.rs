//! The layer traits. Protocol crates call them; layer crates implement them.
//!
//! Every trait here is dyn-compatible and used as `Arc<dyn Trait + Send + Sync>` (checked at compile
//! time at the bottom of this file). Pure, hot layers are synchronous; I/O layers return
//! [`BoxFuture`].
//!
//! **The fail-closed contract.** Whenever a layer errors or times out, the protocol crate refuses
//! the operation with a protocol-native error (SQLSTATE, SSH exit status + stderr line, HTTP status
//! + JSON, Kubernetes `Status`) — it never proceeds on a guess.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord,
    ApprovalRequest, ApprovalTicket, AuthError, Credential, Decision, EgressBlocked,
    EgressCounters, EgressSite, Event, EventReceipt, FieldDesc, Finding, Identity, MaskOutcome,
    Operation, RecordError, RecordingFrame, RecordingKind, RecordingSeal, SessionId, Target,
};

/// A boxed, `Send` future: how the I/O layers stay dyn-compatible without `async fn` in traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns the credential a caller presented into an [`Identity`], or refuses it with a reason.
///
/// Promise: an `Ok` identity was verified (signature, issuer, audience, validity window, token
/// type); an `Err` names the reason class and never echoes the token. If the identity provider
/// cannot be reached the answer is `Err(ProviderUnavailable)` — never a guess.
pub trait Authenticator: Send + Sync {
    /// Verifies `credential`.
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Identity, AuthError>>;
}

/// Decides (identity, target, operation) → allow / deny / review. Pure: no I/O on the hot path.
///
/// Promise: total (always returns a decision); anything the policy cannot understand gets the
/// configured verdict for the unknown (by default review or deny) — never allow by accident.
pub trait Policy: Send + Sync {
    /// Decides one operation.
    fn decide(&self, identity: &Identity, target: &Target, operation: &Operation) -> Decision;

    /// Decides a SQL operation of which the caller found more statements opaque than the text
    /// shows (the PostgreSQL proxy reads the catalog: a call of a function a user defined, a
    /// write to a table with triggers or rules). `opaque` holds `(statement index, reason)`,
    /// indexes counted as [`crate::SqlOperation`]'s text splits into statements. Those
    /// statements are decided as opaque items.
    ///
    /// The default, for policies that cannot decide opaque items, fails closed: any decision
    /// other than deny becomes a deny when `opaque` is not empty.
    fn decide_with_opaque(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
        opaque: &[(usize, String)],
    ) -> Decision {
        let decision = self.decide(identity, target, operation);
        match opaque.first() {
            Some((_, why)) if decision.verdict != crate::Verdict::Deny => Decision::deny(
                "opaque",
                format!("runs code the gateway cannot see into: {why}"),
            ),
            _ => decision,
        }
    }

    /// Decides an operation the shared classifiers already read ([`crate::Classified`]): a
    /// policy that understands the attached facts uses them instead of classifying again (and
    /// only when they were made from this very operation). The default ignores the facts.
    fn decide_classified(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &crate::Classified,
    ) -> Decision {
        self.decide_with_opaque(identity, target, operation.operation(), operation.opaque())
    }
}

/// Holds `Review` operations for just-in-time human approval.
///
/// Promise: an approval is bound to the canonical hash of the exact operation; a requester never
/// approves their own request; only members of the rule's approver groups decide; dropping the
/// future returned by [`Approvals::wait`] before it resolves abandons the request, and that is
/// recorded. Any error means the caller refuses the operation.
pub trait Approvals: Send + Sync {
    /// Opens a request (or finds a grant window that already covers the operation).
    fn open(
        &self,
        request: ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>>;

    /// Waits for the request to be decided, at most `max_wait` and never past the request's own
    /// timeout (then `TimedOut`). If `max_wait` ends first while the request is still within its
    /// timeout, resolves to [`ApprovalOutcome::StillPending`] and the request stays open (HTTP's
    /// 409-then-retry mode). Dropping the future abandons the request.
    fn wait<'a>(
        &'a self,
        id: &'a ApprovalId,
        max_wait: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>>;

    /// Lists requests.
    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>>;

    /// One request.
    fn get<'a>(
        &'a self,
        id: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>>;

    /// Records an approver's decision (with a required justification) and returns the updated
    /// request. Enforces separation of duties and approver groups.
    fn decide<'a>(
        &'a self,
        id: &'a ApprovalId,
        approver: &'a Identity,
        decision: ApprovalDecision,
        justification: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>>;
}

/// Options for a stream masker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamContext {
    /// Masking profile from the policy decision (`None`: the default profile).
    pub profile: Option<String>,
    /// What the stream is, for findings (`stdout`, `stderr`, `body`, …).
    pub field: Option<String>,
    /// The stream is a JSON document: use the token-level JSON masker (path rules + detectors).
    pub json: bool,
}

/// Masks sensitive data before anything else (caller, recording, logs) sees it. Pure and
/// synchronous.
pub trait Masker: Send + Sync {
    /// Resolves, once per result shape, which fields are masked whole and which get content
    /// detection.
    fn plan(&self, fields: &[FieldDesc], profile: Option<&str>) -> Box<dyn FieldPlan>;

    /// A stream masker owned by one stream (an ssh channel, an exec stream, an HTTP body).
    fn stream(&self, context: &StreamContext) -> Box<dyn StreamMasker>;

    /// Whether `profile` has rules that mask by column (or JSON path) rather than by content
    /// alone: then a value no detector recognises (a name) is still masked data, and SQL text
    /// that can carry such values (recorded statements, other sessions' statements) is recorded
    /// and shown with its literals masked. Defaults to `true` (fail closed).
    fn masks_columns(&self, profile: Option<&str>) -> bool {
        let _ = profile;
        true
    }
}

/// A per-result-shape masking plan.
pub trait FieldPlan: Send + Sync {
    /// Masks the value of field `index`. Writes into `out` only when it returns
    /// [`MaskOutcome::Masked`] (`out` is cleared first in that case); allocates nothing when nothing
    /// matches. Findings never carry the value.
    fn apply(
        &self,
        index: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome;

    /// Whether field `index` is masked whole regardless of content (lets callers refuse early,
    /// e.g. a masked non-text column).
    fn masks_whole(&self, index: usize) -> bool;

    /// Whether a value computed from field `index`'s sources by an expression (not the field
    /// returned as it is) must be masked whole: true for every field masked whole, and for a
    /// field whose rule shows its plain values through the detectors but hides anything derived
    /// from them (a free-text column, whose transformed values no detector recognises). Callers
    /// also use it to ask whether a source is protected at all. Defaults to
    /// [`FieldPlan::masks_whole`].
    fn masks_derived(&self, index: usize) -> bool {
        self.masks_whole(index)
    }

    /// Masks a value of field `index` that an expression computed from the field's sources
    /// (see [`FieldPlan::masks_derived`]): findings come from the real value, the output is a
    /// constant that reveals nothing of it. Returns [`MaskOutcome::Masked`] with the constant in
    /// `out`, or [`MaskOutcome::MustNull`] when the plan has no constant for the field.
    /// Defaults to the plan's replacement of the empty value.
    fn apply_derived(
        &self,
        index: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        let _ = self.apply(index, value, out, findings);
        let mut ignored = Vec::new();
        match self.apply(index, b"", out, &mut ignored) {
            MaskOutcome::Masked => MaskOutcome::Masked,
            _ => MaskOutcome::MustNull,
        }
    }
}

/// A masker for one stream. Output never contains a detected value.
pub trait StreamMasker: Send {
    /// Feeds a chunk; appends to `out` whatever is already safe to emit (all but a bounded tail).
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>);
    /// Emits the held-back tail, masked as it stands. Only interactive terminals call it (on a
    /// short idle timer, so prompts and echo appear): a value split across the flush can miss
    /// a detector, so non-interactive streams never flush, they `push` and `finish`.
    fn flush(&mut self, out: &mut Vec<u8>);
    /// End of stream: emits everything left.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// Findings since the last call.
    fn take_findings(&mut self) -> Vec<Finding>;
}

/// The last line of defence for invariant 2: no held secret (or its base64, hex or URL-encoded
/// form) leaves the gateway. Applied to every outbound byte and audit record.
pub trait EgressGuard: Send + Sync {
    /// Checks one complete buffer bound for `site`. `Err` means: do not send it; record the block.
    fn check(&self, site: EgressSite, data: &[u8]) -> Result<(), EgressBlocked>;
    /// A checker for a byte stream that also catches secrets split across chunks.
    fn stream(&self, site: EgressSite) -> Box<dyn EgressStream>;
    /// Counters (bytes checked, hits) per site: the basis of the signed evidence statement.
    fn counters(&self) -> EgressCounters;
}

/// Checks every string of `value` (object keys included) and every number, each on its own,
/// with `guard` for `site`; the first block is returned. A check of a JSON entry without
/// serialising it, and stricter than checking the serialised form, where escaping (`\"`,
/// `\u…`) can hide a secret but never reveal one.
pub fn json_check(
    guard: &dyn EgressGuard,
    site: EgressSite,
    value: &serde_json::Value,
) -> Result<(), EgressBlocked> {
    match value {
        serde_json::Value::String(s) => guard.check(site, s.as_bytes()),
        serde_json::Value::Number(n) => guard.check(site, n.to_string().as_bytes()),
        serde_json::Value::Array(a) => a.iter().try_for_each(|v| json_check(guard, site, v)),
        serde_json::Value::Object(m) => m.iter().try_for_each(|(k, v)| {
            guard.check(site, k.as_bytes())?;
            json_check(guard, site, v)
        }),
        serde_json::Value::Null | serde_json::Value::Bool(_) => Ok(()),
    }
}

/// Egress checking for one stream.
pub trait EgressStream: Send {
    /// Checks the next chunk (together with a tail of the previous ones).
    fn check(&mut self, chunk: &[u8]) -> Result<(), EgressBlocked>;
}

/// Records the session in the tamper-evident audit log (control events) and the session recording
/// (bulk data).
///
/// Promise: `record` resolves only when the event reached the configured durability level; an
/// `Err` means the caller refuses the operation (fail closed). Recording sinks never wait per chunk
/// but apply backpressure when their bounded buffer is full; their hash is sealed in `SessionEnd`.
pub trait Recorder: Send + Sync {
    /// Appends a control event; awaited before the operation proceeds.
    fn record(&self, event: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>>;

    /// Appends several control events, in order, answering each; what `record` promises holds
    /// for each event. For events that need not be awaited one by one (result summaries queued
    /// behind their operation), so that a recorder can store them together. The default records
    /// them one after the other.
    fn record_all(
        &self,
        events: Vec<Event>,
    ) -> BoxFuture<'_, Vec<Result<EventReceipt, RecordError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(events.len());
            for event in events {
                out.push(self.record(event).await);
            }
            out
        })
    }

    /// Opens the recording sink of a session.
    fn open_recording<'a>(
        &'a self,
        session: &'a SessionId,
        kind: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>>;
}

/// A per-session recording. Frames are masked before they get here.
pub trait RecordingSink: Send {
    /// Queues a frame (timestamped on arrival). Resolves at once while the buffer has room.
    fn write(&mut self, frame: RecordingFrame) -> BoxFuture<'_, Result<(), RecordError>>;
    /// Flushes and closes the recording; the seal goes into `SessionEnd`.
    fn seal(self: Box<Self>) -> BoxFuture<'static, Result<RecordingSeal, RecordError>>;
}

// Compile-time proof that every layer trait is dyn-compatible and shareable as
// `Arc<dyn Trait + Send + Sync>`.
const _: () = {
    fn shareable<T: ?Sized + Send + Sync>() {}
    fn sendable<T: ?Sized + Send>() {}
    #[allow(dead_code)]
    fn check() {
        shareable::<dyn Authenticator>();
        shareable::<dyn Policy>();
        shareable::<dyn Approvals>();
        shareable::<dyn Masker>();
        shareable::<dyn FieldPlan>();
        shareable::<dyn EgressGuard>();
        shareable::<dyn Recorder>();
        shareable::<dyn crate::GateHooks>();
        sendable::<dyn StreamMasker>();
        sendable::<dyn EgressStream>();
        sendable::<dyn RecordingSink>();
        shareable::<std::sync::Arc<dyn Authenticator + Send + Sync>>();
    }
};

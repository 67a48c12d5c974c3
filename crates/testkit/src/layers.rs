//! Simple in-memory implementations of every core trait, for protocol-crate tests that exercise
//! the proxy rather than a real layer. They keep the trait promises (fail closed on injected
//! faults, separation of duties, abandon on drop) but nothing more: the real layers live in their
//! own crates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_core::traits::StreamContext;
use gatehouse_core::*;

/// Accepts a fixed set of tokens.
#[derive(Debug, Default)]
pub struct StaticAuthenticator {
    tokens: Mutex<HashMap<String, Identity>>,
    unavailable: AtomicBool,
}

impl StaticAuthenticator {
    /// No tokens yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` as `identity`.
    pub fn with_token(self, token: &str, identity: Identity) -> Self {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_string(), identity);
        self
    }

    /// Makes every call fail with `ProviderUnavailable` (fault injection).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }
}

impl Authenticator for StaticAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credential: &'a Credential,
    ) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async move {
            if self.unavailable.load(Ordering::SeqCst) {
                return Err(AuthErrorKind::ProviderUnavailable.into());
            }
            let Some(token) = credential.token() else {
                return Err(AuthErrorKind::Unsupported.into());
            };
            let identity = self.tokens.lock().unwrap().get(token).cloned();
            match identity {
                Some(id) if id.is_expired_at(now()) => Err(AuthErrorKind::Expired.into()),
                Some(id) => Ok(id),
                None => Err(AuthErrorKind::UnknownCredential.into()),
            }
        })
    }
}

type DecideFn = dyn Fn(&Identity, &Target, &Operation) -> Decision + Send + Sync;

/// A policy given as a closure.
pub struct FnPolicy(Arc<DecideFn>);

impl std::fmt::Debug for FnPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnPolicy")
    }
}

impl FnPolicy {
    /// Wraps a closure.
    pub fn new(
        f: impl Fn(&Identity, &Target, &Operation) -> Decision + Send + Sync + 'static,
    ) -> Self {
        FnPolicy(Arc::new(f))
    }

    /// Allows everything.
    pub fn allow_all() -> Self {
        Self::new(|_, _, _| Decision::allow("allow-all", "test policy allows everything"))
    }
}

impl Policy for FnPolicy {
    fn decide(&self, identity: &Identity, target: &Target, operation: &Operation) -> Decision {
        (self.0)(identity, target, operation)
    }

    /// A test policy decides from the operation alone: what the caller found opaque is not
    /// its concern (use the real policy engine to test opaque items).
    fn decide_with_opaque(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
        _opaque: &[(usize, String)],
    ) -> Decision {
        (self.0)(identity, target, operation)
    }
}

/// In-memory approvals with separation of duties, N approvers, timeouts and abandon-on-drop.
///
/// Like the real broker, it records the life of each request (requested, each vote, the
/// resolution, abandonment) through its recorder, once, when one is given.
#[derive(Default)]
pub struct MemoryApprovals {
    records: Mutex<HashMap<ApprovalId, ApprovalRecord>>,
    changed: tokio::sync::Notify,
    next: AtomicU64,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
}

impl std::fmt::Debug for MemoryApprovals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryApprovals")
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl MemoryApprovals {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty, recording each request's life through `recorder`.
    pub fn with_recorder(recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        Self {
            recorder: Some(recorder),
            ..Self::default()
        }
    }

    /// Records `body` for `record`'s session; a failure fails the call (fail closed).
    async fn record(&self, record: &ApprovalRecord, body: EventBody) -> Result<(), ApprovalError> {
        let Some(recorder) = &self.recorder else {
            return Ok(());
        };
        let event = Event::now(
            record.request.session.clone(),
            Some(record.request.requester.clone()),
            Some(record.request.target.clone()),
            body,
        );
        recorder
            .record(event)
            .await
            .map(|_| ())
            .map_err(|e| ApprovalError::Audit(e.to_string()))
    }

    async fn record_resolved(&self, record: &ApprovalRecord) -> Result<(), ApprovalError> {
        match record.outcome() {
            Some(outcome) => {
                let body = EventBody::ApprovalResolved {
                    index: record.request.index,
                    id: record.id.clone(),
                    outcome,
                };
                self.record(record, body).await
            }
            None => Ok(()),
        }
    }

    /// Ids of pending requests.
    pub fn pending(&self) -> Vec<ApprovalId> {
        let records = self.records.lock().unwrap();
        let mut ids: Vec<_> = records
            .values()
            .filter(|r| r.state == ApprovalState::Pending)
            .map(|r| r.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Waits until a request is pending and returns its id (for tests that approve from another task).
    pub async fn next_pending(&self) -> ApprovalId {
        loop {
            let notified = self.changed.notified();
            if let Some(id) = self.pending().into_iter().next() {
                return id;
            }
            notified.await;
        }
    }

    fn state(&self, id: &ApprovalId) -> Option<ApprovalRecord> {
        self.records.lock().unwrap().get(id).cloned()
    }

    /// Closes a pending request; returns it if this call closed it.
    fn close(&self, id: &ApprovalId, state: ApprovalState) -> Option<ApprovalRecord> {
        let mut closed = None;
        if let Some(r) = self.records.lock().unwrap().get_mut(id)
            && r.state == ApprovalState::Pending
        {
            r.state = state;
            r.closed_at = Some(now());
            closed = Some(r.clone());
        }
        self.changed.notify_waiters();
        closed
    }
}

struct AbandonOnDrop<'a> {
    approvals: &'a MemoryApprovals,
    id: &'a ApprovalId,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(record) = self.approvals.close(self.id, ApprovalState::Abandoned)
            && let Some(recorder) = self.approvals.recorder.clone()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let event = Event::now(
                record.request.session.clone(),
                Some(record.request.requester.clone()),
                Some(record.request.target.clone()),
                EventBody::ApprovalAbandoned { id: record.id },
            );
            handle.spawn(async move {
                let _ = recorder.record(event).await;
            });
        }
    }
}

impl Approvals for MemoryApprovals {
    fn open(
        &self,
        request: ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>> {
        Box::pin(async move {
            let n = self.next.fetch_add(1, Ordering::SeqCst) + 1;
            let id = ApprovalId(format!("apr-{n}"));
            let operation_hash = format!("test-hash-{n}");
            let record = ApprovalRecord {
                id: id.clone(),
                request,
                operation_hash: operation_hash.clone(),
                state: ApprovalState::Pending,
                votes: Vec::new(),
                opened_at: now(),
                closed_at: None,
            };
            let requested = EventBody::ApprovalRequested {
                index: record.request.index,
                id: id.clone(),
                operation_hash: operation_hash.clone(),
                operation: Some(record.request.shown().clone()),
                rule_id: Some(record.request.rule_id.clone()),
                reason: Some(record.request.reason.clone()),
                granted: false,
            };
            self.record(&record, requested).await?;
            self.records.lock().unwrap().insert(id.clone(), record);
            self.changed.notify_waiters();
            Ok(ApprovalTicket {
                id,
                operation_hash,
                already_granted: false,
            })
        })
    }

    fn wait<'a>(
        &'a self,
        id: &'a ApprovalId,
        max_wait: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>> {
        Box::pin(async move {
            let record = self
                .state(id)
                .ok_or_else(|| ApprovalError::NotFound(id.0.clone()))?;
            let timeout = Duration::from_millis(record.request.requirement.timeout_ms);
            // The request's timeout runs from its opening (as in the broker), not from this
            // wait: a retried request held `max_wait` at a time still times out.
            let age = Duration::try_from(now() - record.opened_at).unwrap_or(Duration::ZERO);
            let opened = Instant::now();
            let mut guard = AbandonOnDrop {
                approvals: self,
                id,
                armed: true,
            };
            loop {
                let notified = self.changed.notified();
                let record = self
                    .state(id)
                    .ok_or_else(|| ApprovalError::NotFound(id.0.clone()))?;
                let outcome = match record.state {
                    ApprovalState::Approved => Some(ApprovalOutcome::Approved {
                        approvers: record.votes.iter().map(|v| v.approver.clone()).collect(),
                    }),
                    ApprovalState::Denied => {
                        let vote = record
                            .votes
                            .iter()
                            .find(|v| v.decision == ApprovalDecision::Deny);
                        Some(ApprovalOutcome::Denied {
                            by: vote.map(|v| v.approver.clone()).unwrap_or_default(),
                            justification: vote
                                .map(|v| v.justification.clone())
                                .unwrap_or_default(),
                        })
                    }
                    ApprovalState::TimedOut => Some(ApprovalOutcome::TimedOut),
                    _ => None,
                };
                if let Some(outcome) = outcome {
                    guard.armed = false;
                    return Ok(outcome);
                }
                let elapsed = opened.elapsed();
                if age + elapsed >= timeout {
                    guard.armed = false;
                    if let Some(closed) = self.close(id, ApprovalState::TimedOut) {
                        self.record_resolved(&closed).await?;
                    }
                    return Ok(ApprovalOutcome::TimedOut);
                }
                if elapsed >= max_wait {
                    guard.armed = false;
                    return Ok(ApprovalOutcome::StillPending);
                }
                let left = timeout
                    .saturating_sub(age + elapsed)
                    .min(max_wait.saturating_sub(elapsed));
                let _ = tokio::time::timeout(left, notified).await;
            }
        })
    }

    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>> {
        Box::pin(async move {
            let records = self.records.lock().unwrap();
            let mut out: Vec<_> = records
                .values()
                .filter(|r| filter.state.is_none_or(|s| s == r.state))
                .filter(|r| {
                    filter
                        .requester
                        .as_ref()
                        .is_none_or(|s| *s == r.request.requester.subject)
                })
                .filter(|r| {
                    filter
                        .target
                        .as_ref()
                        .is_none_or(|t| *t == r.request.target.name)
                })
                .cloned()
                .collect();
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move {
            self.state(id)
                .ok_or_else(|| ApprovalError::NotFound(id.0.clone()))
        })
    }

    fn decide<'a>(
        &'a self,
        id: &'a ApprovalId,
        approver: &'a Identity,
        decision: ApprovalDecision,
        justification: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move {
            if justification.trim().is_empty() {
                return Err(ApprovalError::JustificationRequired);
            }
            let updated = {
                let mut records = self.records.lock().unwrap();
                let r = records
                    .get_mut(id)
                    .ok_or_else(|| ApprovalError::NotFound(id.0.clone()))?;
                if r.state != ApprovalState::Pending {
                    return Err(ApprovalError::AlreadyClosed(
                        id.0.clone(),
                        format!("{:?}", r.state),
                    ));
                }
                if r.request.requester.principal() == approver.principal() {
                    return Err(ApprovalError::SelfApproval);
                }
                let groups = &r.request.requirement.approver_groups;
                if !groups.iter().any(|g| approver.in_group(g)) {
                    return Err(ApprovalError::NotAnApprover(approver.subject.clone()));
                }
                if r.votes.iter().any(|v| v.approver == approver.subject) {
                    return Err(ApprovalError::DuplicateVote(approver.subject.clone()));
                }
                r.votes.push(ApproverVote {
                    approver: approver.subject.clone(),
                    decision,
                    justification: justification.to_string(),
                    at: now(),
                });
                let approvals = r
                    .votes
                    .iter()
                    .filter(|v| v.decision == ApprovalDecision::Approve)
                    .count();
                if decision == ApprovalDecision::Deny {
                    r.state = ApprovalState::Denied;
                    r.closed_at = Some(now());
                } else if approvals >= r.request.requirement.approvals_required.max(1) as usize {
                    r.state = ApprovalState::Approved;
                    r.closed_at = Some(now());
                }
                r.clone()
            };
            let vote = updated.votes.last().cloned();
            if let Some(vote) = vote {
                let decided = EventBody::ApprovalDecided {
                    id: id.clone(),
                    approver: vote.approver,
                    decision: vote.decision,
                    justification: vote.justification,
                };
                self.record(&updated, decided).await?;
            }
            if updated.state != ApprovalState::Pending {
                self.record_resolved(&updated).await?;
            }
            self.changed.notify_waiters();
            Ok(updated)
        })
    }
}

/// A masker that masks fixed literal strings anywhere, and whole columns by name. Enough to test
/// that a protocol crate routes data through the masker; the real detectors live in
/// `gatehouse-masking`.
#[derive(Debug, Clone, Default)]
pub struct LiteralMasker {
    literals: Vec<(Vec<u8>, Vec<u8>)>,
    columns: Vec<String>,
}

impl LiteralMasker {
    /// Masks nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every occurrence of `literal` with `replacement`.
    pub fn literal(mut self, literal: &str, replacement: &str) -> Self {
        self.literals
            .push((literal.as_bytes().to_vec(), replacement.as_bytes().to_vec()));
        self
    }

    /// Masks every value of columns named `name` (or derived from a source ending in `.name`).
    pub fn column(mut self, name: &str) -> Self {
        self.columns.push(name.to_string());
        self
    }

    fn replace_all(
        &self,
        input: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
        base: u64,
    ) -> bool {
        let mut changed = false;
        let mut i = 0;
        'outer: while i < input.len() {
            for (lit, rep) in &self.literals {
                if !lit.is_empty() && input[i..].starts_with(lit) {
                    out.extend_from_slice(rep);
                    findings.push(Finding {
                        rule: "literal".into(),
                        field: None,
                        offset: base + i as u64,
                        length: lit.len() as u64,
                    });
                    i += lit.len();
                    changed = true;
                    continue 'outer;
                }
            }
            out.push(input[i]);
            i += 1;
        }
        changed
    }
}

struct LiteralPlan {
    masker: LiteralMasker,
    whole: Vec<bool>,
    kinds: Vec<FieldKind>,
}

impl FieldPlan for LiteralPlan {
    fn apply(
        &self,
        index: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        findings: &mut Vec<Finding>,
    ) -> MaskOutcome {
        if self.whole.get(index).copied().unwrap_or(false) {
            findings.push(Finding {
                rule: "column".into(),
                field: None,
                offset: 0,
                length: value.len() as u64,
            });
            if self.kinds.get(index) == Some(&FieldKind::NonText) {
                return MaskOutcome::MustNull;
            }
            out.clear();
            out.extend_from_slice(b"[masked]");
            return MaskOutcome::Masked;
        }
        let mut tmp = Vec::new();
        if self.masker.replace_all(value, &mut tmp, findings, 0) {
            out.clear();
            out.extend_from_slice(&tmp);
            MaskOutcome::Masked
        } else {
            MaskOutcome::Unchanged
        }
    }

    fn masks_whole(&self, index: usize) -> bool {
        self.whole.get(index).copied().unwrap_or(false)
    }
}

struct LiteralStream {
    masker: LiteralMasker,
    pending: Vec<u8>,
    offset: u64,
    findings: Vec<Finding>,
}

impl LiteralStream {
    fn hold_back(&self) -> usize {
        self.masker
            .literals
            .iter()
            .map(|(l, _)| l.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1)
    }
}

impl StreamMasker for LiteralStream {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(chunk);
        // Emit everything except a tail that could be the start of a literal.
        let keep = self.hold_back().min(self.pending.len());
        let boundary = self.pending.len() - keep;
        // Don't cut inside a literal occurrence that straddles the boundary.
        let mut cut = boundary;
        for start in boundary.saturating_sub(self.hold_back())..boundary {
            for (lit, _) in &self.masker.literals {
                if self.pending[start..].starts_with(lit) && start + lit.len() > boundary {
                    cut = cut.min(start);
                }
            }
        }
        let head: Vec<u8> = self.pending.drain(..cut).collect();
        self.masker
            .replace_all(&head, out, &mut self.findings, self.offset);
        self.offset += head.len() as u64;
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        let rest = std::mem::take(&mut self.pending);
        self.masker
            .replace_all(&rest, out, &mut self.findings, self.offset);
        self.offset += rest.len() as u64;
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush(out);
    }

    fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }
}

impl Masker for LiteralMasker {
    fn plan(&self, fields: &[FieldDesc], _profile: Option<&str>) -> Box<dyn FieldPlan> {
        let whole = fields
            .iter()
            .map(|f| {
                self.columns.iter().any(|c| {
                    f.name == *c
                        || f.sources
                            .iter()
                            .any(|s| s == c || s.ends_with(&format!(".{c}")))
                })
            })
            .collect();
        let kinds = fields.iter().map(|f| f.kind).collect();
        Box::new(LiteralPlan {
            masker: self.clone(),
            whole,
            kinds,
        })
    }

    fn masks_columns(&self, _profile: Option<&str>) -> bool {
        !self.columns.is_empty()
    }

    fn stream(&self, _context: &StreamContext) -> Box<dyn StreamMasker> {
        Box::new(LiteralStream {
            masker: self.clone(),
            pending: Vec::new(),
            offset: 0,
            findings: Vec::new(),
        })
    }
}

/// An egress guard over literal secrets (no encoded forms; the real one is in gatehouse-masking).
#[derive(Debug, Default)]
pub struct LiteralEgressGuard {
    secrets: Vec<Vec<u8>>,
    counters: Arc<Mutex<EgressCounters>>,
}

impl LiteralEgressGuard {
    /// Watches `secrets`.
    pub fn new(secrets: &[&str]) -> Self {
        let guard = Self {
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            counters: Arc::default(),
        };
        guard.counters.lock().unwrap().patterns = secrets.len() as u64;
        guard
    }

    fn scan(
        secrets: &[Vec<u8>],
        counters: &Mutex<EgressCounters>,
        site: EgressSite,
        data: &[u8],
    ) -> Result<(), EgressBlocked> {
        let key = format!("{site:?}").to_lowercase();
        let mut hits = 0u64;
        let mut first = None;
        for s in secrets {
            if s.is_empty() || s.len() > data.len() {
                continue;
            }
            for (i, w) in data.windows(s.len()).enumerate() {
                if w == s.as_slice() {
                    hits += 1;
                    first = Some(first.map_or(i, |f: usize| f.min(i)));
                }
            }
        }
        let mut c = counters.lock().unwrap();
        *c.bytes_checked.entry(key.clone()).or_default() += data.len() as u64;
        if hits > 0 {
            *c.hits.entry(key).or_default() += hits;
            return Err(EgressBlocked {
                site,
                hits,
                first_offset: first.unwrap_or(0) as u64,
            });
        }
        Ok(())
    }
}

struct LiteralEgressStream {
    secrets: Vec<Vec<u8>>,
    counters: Arc<Mutex<EgressCounters>>,
    site: EgressSite,
    tail: Vec<u8>,
}

impl EgressStream for LiteralEgressStream {
    fn check(&mut self, chunk: &[u8]) -> Result<(), EgressBlocked> {
        let mut window = std::mem::take(&mut self.tail);
        let tail_len = window.len();
        window.extend_from_slice(chunk);
        let result = LiteralEgressGuard::scan(&self.secrets, &self.counters, self.site, &window);
        // Don't count the tail twice.
        if let Ok(mut c) = self.counters.lock() {
            let key = format!("{:?}", self.site).to_lowercase();
            if let Some(v) = c.bytes_checked.get_mut(&key) {
                *v -= tail_len as u64;
            }
        }
        let keep = self
            .secrets
            .iter()
            .map(Vec::len)
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        let start = window.len().saturating_sub(keep);
        self.tail = window[start..].to_vec();
        result
    }
}

impl EgressGuard for LiteralEgressGuard {
    fn check(&self, site: EgressSite, data: &[u8]) -> Result<(), EgressBlocked> {
        Self::scan(&self.secrets, &self.counters, site, data)
    }

    fn stream(&self, site: EgressSite) -> Box<dyn EgressStream> {
        Box::new(LiteralEgressStream {
            secrets: self.secrets.clone(),
            counters: self.counters.clone(),
            site,
            tail: Vec::new(),
        })
    }

    fn counters(&self) -> EgressCounters {
        self.counters.lock().unwrap().clone()
    }
}

/// Records events and recordings in memory; can be told to fail (fault injection).
#[derive(Debug, Default)]
pub struct MemoryRecorder {
    events: Mutex<Vec<Event>>,
    recordings: Arc<Mutex<HashMap<SessionId, Vec<RecordingFrame>>>>,
    failing: AtomicBool,
}

impl MemoryRecorder {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on every `record` fails with `RecordError::Store` (or succeeds again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// All events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Frames recorded for `session`.
    pub fn recording(&self, session: &SessionId) -> Vec<RecordingFrame> {
        self.recordings
            .lock()
            .unwrap()
            .get(session)
            .cloned()
            .unwrap_or_default()
    }

    /// Every event and recording frame, serialised as JSON (for canary scans).
    pub fn dump(&self) -> String {
        let events = serde_json::to_string(&self.events()).unwrap_or_default();
        let recs = self.recordings.lock().unwrap();
        let mut out = events;
        for frames in recs.values() {
            for f in frames {
                match f {
                    RecordingFrame::Output { data }
                    | RecordingFrame::ErrorOutput { data }
                    | RecordingFrame::Input { data } => {
                        out.push_str(&String::from_utf8_lossy(data));
                    }
                    other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
                }
            }
        }
        out
    }
}

struct MemorySink {
    session: SessionId,
    recordings: Arc<Mutex<HashMap<SessionId, Vec<RecordingFrame>>>>,
    frames: u64,
    bytes: u64,
}

impl RecordingSink for MemorySink {
    fn write(&mut self, frame: RecordingFrame) -> BoxFuture<'_, Result<(), RecordError>> {
        Box::pin(async move {
            self.frames += 1;
            self.bytes += serde_json::to_vec(&frame)
                .map(|v| v.len() as u64)
                .unwrap_or(0);
            self.recordings
                .lock()
                .unwrap()
                .entry(self.session.clone())
                .or_default()
                .push(frame);
            Ok(())
        })
    }

    fn seal(self: Box<Self>) -> BoxFuture<'static, Result<RecordingSeal, RecordError>> {
        Box::pin(async move {
            Ok(RecordingSeal {
                location: format!("memory/{}", self.session),
                sha256: String::new(),
                bytes: self.bytes,
                frames: self.frames,
            })
        })
    }
}

impl Recorder for MemoryRecorder {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err(RecordError::Store("injected failure".into()));
            }
            let mut events = self.events.lock().unwrap();
            events.push(event);
            Ok(EventReceipt {
                sequence: events.len() as u64,
                hash: String::new(),
            })
        })
    }

    fn open_recording<'a>(
        &'a self,
        session: &'a SessionId,
        _kind: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err(RecordError::Store("injected failure".into()));
            }
            Ok(Box::new(MemorySink {
                session: session.clone(),
                recordings: self.recordings.clone(),
                frames: 0,
                bytes: 0,
            }) as Box<dyn RecordingSink>)
        })
    }
}

/// A pipeline of in-memory layers, with handles on the parts tests inspect.
#[derive(Debug, Clone)]
pub struct TestPipeline {
    /// The pipeline to hand to a protocol crate.
    pub pipeline: Pipeline,
    /// Its recorder.
    pub recorder: Arc<MemoryRecorder>,
    /// Its approvals.
    pub approvals: Arc<MemoryApprovals>,
    /// Its egress guard.
    pub egress: Arc<LiteralEgressGuard>,
}

impl TestPipeline {
    /// Builds a pipeline around the given authenticator, policy and masker; `secrets` are the held
    /// secrets the egress guard watches.
    pub fn new(
        authenticator: impl Authenticator + 'static,
        policy: impl Policy + 'static,
        masker: impl Masker + 'static,
        secrets: &[&str],
    ) -> Self {
        let recorder = Arc::new(MemoryRecorder::new());
        let approvals = Arc::new(MemoryApprovals::with_recorder(recorder.clone()));
        let egress = Arc::new(LiteralEgressGuard::new(secrets));
        let pipeline = Pipeline {
            authenticator: Arc::new(authenticator),
            policy: Arc::new(policy),
            approvals: approvals.clone(),
            masker: Arc::new(masker),
            egress: egress.clone(),
            recorder: recorder.clone(),
            hooks: gatehouse_core::Pipeline::no_hooks(),
        };
        Self {
            pipeline,
            recorder,
            approvals,
            egress,
        }
    }
}

/// A hook that tries to let everything through at both phases: what tests use to show that the
/// gate never lets a hook loosen a decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct LetEverythingThrough;

impl GateHooks for LetEverythingThrough {
    fn before_decide(&self, _: &GateContext<'_>, _: &Operation) -> Option<Decision> {
        Some(Decision::allow("hook", "the hook says yes"))
    }

    fn after_decide(&self, _: &GateContext<'_>, _: &Operation, _: &Decision) -> Option<Decision> {
        Some(Decision::allow("hook", "the hook says yes"))
    }
}

/// A hook that keeps a copy of every response chunk it is shown ([`GateHooks::on_chunk`]) and,
/// when built with [`RecordChunks::stopping_on`], stops the response at the first chunk that
/// contains the given bytes (that chunk is recorded too).
#[derive(Debug, Default)]
pub struct RecordChunks {
    chunks: Mutex<Vec<(u64, Vec<u8>)>>,
    stop_on: Option<Vec<u8>>,
    stopped: AtomicBool,
}

impl RecordChunks {
    /// Records every chunk and stops nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records every chunk and stops the response at the first one containing `needle`.
    pub fn stopping_on(needle: &str) -> Self {
        Self {
            stop_on: Some(needle.as_bytes().to_vec()),
            ..Self::default()
        }
    }

    /// The chunks seen so far, each with its operation index.
    pub fn chunks(&self) -> Vec<(u64, Vec<u8>)> {
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Everything seen so far, concatenated.
    pub fn seen(&self) -> Vec<u8> {
        self.chunks().into_iter().flat_map(|(_, c)| c).collect()
    }

    /// Whether the hook has stopped a response.
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

impl GateHooks for RecordChunks {
    fn wants_chunks(&self) -> bool {
        true
    }

    fn on_chunk(&self, _: &GateContext<'_>, index: u64, chunk: &[u8]) -> ChunkVerdict {
        self.chunks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((index, chunk.to_vec()));
        match &self.stop_on {
            Some(needle)
                if !needle.is_empty() && chunk.windows(needle.len()).any(|w| w == &needle[..]) =>
            {
                self.stopped.store(true, Ordering::SeqCst);
                ChunkVerdict::Stop
            }
            _ => ChunkVerdict::Continue,
        }
    }
}

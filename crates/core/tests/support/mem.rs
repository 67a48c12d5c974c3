//! In-memory layers and a minimal executor for the gate's tests and bench (the gate needs no
//! runtime). Shared by `tests/gate.rs` and `benches/gate.rs`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use gatehouse_core::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord,
    ApprovalRequest, ApprovalState, ApprovalTicket, Approvals, AuthError, Authenticator, BoxFuture,
    Credential, Decision, EgressBlocked, EgressCounters, EgressGuard, EgressSite, EgressStream,
    Event, EventReceipt, FieldDesc, FieldPlan, Finding, Identity, MaskOutcome, Masker, Operation,
    Policy, RecordError, Recorder, RecordingKind, RecordingSink, SessionId, StreamContext,
    StreamMasker, Target,
};

// ---- a minimal executor (the gate needs no runtime) ----

pub struct Unpark(pub std::thread::Thread);
impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

pub fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

// ---- in-memory layers ----

pub struct FixedPolicy(pub Mutex<Decision>);
impl Policy for FixedPolicy {
    fn decide(&self, _: &Identity, _: &Target, _: &Operation) -> Decision {
        self.0
            .lock()
            .map(|d| d.clone())
            .unwrap_or_else(|_| Decision::deny("x", "poisoned"))
    }
}

pub struct MemRecorder {
    pub events: Mutex<Vec<Event>>,
    pub fail: AtomicBool,
    /// Events it takes before it fails.
    pub keep: AtomicUsize,
}

impl Default for MemRecorder {
    fn default() -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            fail: AtomicBool::new(false),
            keep: AtomicUsize::new(usize::MAX),
        }
    }
}
impl Recorder for MemRecorder {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>> {
        Box::pin(async move {
            if self.fail.load(Ordering::SeqCst) {
                return Err(RecordError::Store("disk full".into()));
            }
            let mut e = self.events.lock().map_err(|_| RecordError::Closed)?;
            if e.len() >= self.keep.load(Ordering::SeqCst) {
                return Err(RecordError::Store("disk full".into()));
            }
            e.push(event);
            Ok(EventReceipt {
                sequence: e.len() as u64,
                hash: String::new(),
            })
        })
    }
    fn open_recording<'a>(
        &'a self,
        _: &'a SessionId,
        _: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>> {
        Box::pin(async { Err(RecordError::Closed) })
    }
}

impl MemRecorder {
    pub fn names(&self) -> Vec<String> {
        self.events
            .lock()
            .map(|e| {
                e.iter()
                    .map(|e| {
                        serde_json::to_value(&e.body)
                            .ok()
                            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(String::from))
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What `wait` answers next.
#[derive(Clone)]
pub enum Script {
    Outcome(ApprovalOutcome),
    Never,
}

pub struct MemApprovals {
    pub records: Mutex<BTreeMap<String, ApprovalRecord>>,
    pub open_error: Mutex<Option<ApprovalError>>,
    pub wait: Mutex<Script>,
    pub opened: AtomicUsize,
    pub abandoned: AtomicUsize,
    pub grant: AtomicBool,
}

impl MemApprovals {
    pub fn new(wait: Script) -> Self {
        Self {
            records: Mutex::new(BTreeMap::new()),
            open_error: Mutex::new(None),
            wait: Mutex::new(wait),
            opened: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
            grant: AtomicBool::new(false),
        }
    }

    pub fn set_state(&self, id: &ApprovalId, state: ApprovalState) {
        if let Ok(mut r) = self.records.lock()
            && let Some(rec) = r.get_mut(&id.0)
        {
            rec.state = state;
            rec.closed_at = Some(gatehouse_core::now());
            if state == ApprovalState::Approved {
                // As many distinct approvers as the request asks for, as the broker requires.
                for n in 0..rec.request.requirement.approvals_required.max(1) {
                    rec.votes.push(gatehouse_core::ApproverVote {
                        approver: if n == 0 {
                            "bob".into()
                        } else {
                            format!("bob{n}")
                        },
                        decision: ApprovalDecision::Approve,
                        justification: "ok".into(),
                        at: gatehouse_core::now(),
                    });
                }
            }
        }
    }
}

pub struct DropFlag<'a>(pub &'a AtomicUsize, pub bool);
impl Drop for DropFlag<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Approvals for MemApprovals {
    fn open(
        &self,
        request: ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>> {
        Box::pin(async move {
            if let Some(e) = self.open_error.lock().ok().and_then(|e| e.clone()) {
                return Err(e);
            }
            let n = self.opened.fetch_add(1, Ordering::SeqCst) + 1;
            let id = ApprovalId(format!("apr-{n}"));
            let record = ApprovalRecord {
                id: id.clone(),
                request,
                operation_hash: format!("h{n}"),
                state: ApprovalState::Pending,
                votes: vec![],
                opened_at: gatehouse_core::now(),
                closed_at: None,
            };
            if let Ok(mut r) = self.records.lock() {
                r.insert(id.0.clone(), record);
            }
            Ok(ApprovalTicket {
                id,
                operation_hash: format!("h{n}"),
                already_granted: self.grant.load(Ordering::SeqCst),
            })
        })
    }

    fn wait<'a>(
        &'a self,
        id: &'a ApprovalId,
        _max_wait: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>> {
        Box::pin(async move {
            let mut guard = DropFlag(&self.abandoned, true);
            let script = self.wait.lock().map(|s| s.clone()).unwrap_or(Script::Never);
            match script {
                Script::Never => std::future::pending().await,
                Script::Outcome(o) => {
                    guard.1 = false;
                    let state = match &o {
                        ApprovalOutcome::Approved { .. } => Some(ApprovalState::Approved),
                        ApprovalOutcome::Denied { .. } => Some(ApprovalState::Denied),
                        ApprovalOutcome::TimedOut => Some(ApprovalState::TimedOut),
                        _ => None,
                    };
                    if let Some(state) = state {
                        self.set_state(id, state);
                    }
                    Ok(o)
                }
            }
        })
    }

    fn list<'a>(
        &'a self,
        _: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>> {
        Box::pin(async move {
            Ok(self
                .records
                .lock()
                .map(|r| r.values().cloned().collect())
                .unwrap_or_default())
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move {
            self.records
                .lock()
                .ok()
                .and_then(|r| r.get(&id.0).cloned())
                .ok_or_else(|| ApprovalError::NotFound(id.0.clone()))
        })
    }

    fn decide<'a>(
        &'a self,
        id: &'a ApprovalId,
        _: &'a Identity,
        _: ApprovalDecision,
        _: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move { Err(ApprovalError::NotFound(id.0.clone())) })
    }
}

pub struct NoAuth;
impl Authenticator for NoAuth {
    fn authenticate<'a>(&'a self, _: &'a Credential) -> BoxFuture<'a, Result<Identity, AuthError>> {
        Box::pin(async { Err(gatehouse_core::AuthErrorKind::Unsupported.into()) })
    }
}

pub struct NoMask;
pub struct NoPlan;
impl FieldPlan for NoPlan {
    fn apply(&self, _: usize, _: &[u8], _: &mut Vec<u8>, _: &mut Vec<Finding>) -> MaskOutcome {
        MaskOutcome::Unchanged
    }
    fn masks_whole(&self, _: usize) -> bool {
        false
    }
}
pub struct NoStream;
impl StreamMasker for NoStream {
    fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(chunk);
    }
    fn flush(&mut self, _: &mut Vec<u8>) {}
    fn finish(&mut self, _: &mut Vec<u8>) {}
    fn take_findings(&mut self) -> Vec<Finding> {
        vec![]
    }
}
impl Masker for NoMask {
    fn plan(&self, _: &[FieldDesc], _: Option<&str>) -> Box<dyn FieldPlan> {
        Box::new(NoPlan)
    }
    fn stream(&self, _: &StreamContext) -> Box<dyn StreamMasker> {
        Box::new(NoStream)
    }
}

pub struct NoEgress;
pub struct NoEgressStream;
impl EgressStream for NoEgressStream {
    fn check(&mut self, _: &[u8]) -> Result<(), EgressBlocked> {
        Ok(())
    }
}
impl EgressGuard for NoEgress {
    fn check(&self, _: EgressSite, _: &[u8]) -> Result<(), EgressBlocked> {
        Ok(())
    }
    fn stream(&self, _: EgressSite) -> Box<dyn EgressStream> {
        Box::new(NoEgressStream)
    }
    fn counters(&self) -> EgressCounters {
        EgressCounters::default()
    }
}

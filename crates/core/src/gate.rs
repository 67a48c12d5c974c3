//! The operation gate: the one place where an operation is decided, recorded and held for
//! approval, for every protocol.
//!
//! A protocol crate turns what its client sent into a [`Classified`] operation, asks the
//! [`Gate`], and renders the [`Outcome`] in its own protocol (an SQLSTATE, an SSH exit status and
//! stderr line, an HTTP status with a JSON body, a Kubernetes `Status`). The sequence is always
//!
//! 1. [`GateHooks::before_decide`] (the operation before the policy), then the policy, then
//!    [`GateHooks::after_decide`] — a hook can only make the decision stricter (see [`tighten`]);
//! 2. the protocol's own checks, which may only tighten too ([`tighten`]);
//! 3. [`Gate::record`]: the `Operation` event is durable before anything runs;
//! 4. for a review, [`Gate::approve`]: an approval request bound to the exact operation, a wait
//!    that ends when approvers decide, the request times out, or the client goes away (a future
//!    the protocol passes in; this crate has no runtime), and an `ApprovalUsed` record when an
//!    approval lets the operation run.
//!
//! The approvals layer records the approval's own life (requested with the operation's index,
//! the operation as the approver saw it, the rule and its reason; each vote; the resolution;
//! abandonment), each once. The gate records the operation and each use of an approval.
//!
//! **One execution per approval.** An approval covers the one operation that asked for it. A
//! later identical operation asks again, unless the rule declared a grant window (the broker's
//! [`crate::ApprovalTicket::already_granted`]). In [`HoldMode::AtMost`] (HTTP, Kubernetes: the
//! client is told to retry), a retried identical request picks up its own earlier request —
//! still pending, or decided less than the request's own timeout ago and not yet used by a
//! retry — so one approval still runs the operation once. Concurrent identical retries take
//! turns, so they share one request; an approval is used only while it meets the current
//! rule ([`crate::ReviewRequirement::meets`]) and no later denial of the operation overrode it
//! (see `docs/DESIGN.md`, "The operation gate").

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use crate::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord,
    ApprovalRequest, ApprovalState, BinaryHandling, Decision, Event, EventBody, Identity,
    Operation, Pipeline, ReviewRequirement, SessionId, Target, Verdict,
};

/// Who asks, on which target, in which session: what every gate call and hook is given.
#[derive(Debug, Clone, Copy)]
pub struct GateContext<'a> {
    /// The session (also in every audit event).
    pub session: &'a SessionId,
    /// The authenticated caller.
    pub identity: &'a Identity,
    /// The target the operation runs on.
    pub target: &'a Target,
}

/// An operation together with what the shared classifiers found out about it, so that the
/// policy does not read it a second time.
///
/// Facts are typed values only their classifier can construct (`gatehouse_sql::SqlFacts`,
/// [`crate::command::ExecFacts`]), each remembering the exact input it was made from; the policy
/// uses a fact only when it was made from this very operation and classifies again otherwise.
/// So nobody can hand the policy a classification that does not belong to the operation.
/// Opaque marks found elsewhere (the PostgreSQL catalog) can only make the decision stricter.
#[derive(Clone)]
pub struct Classified {
    operation: Operation,
    opaque: Vec<(usize, String)>,
    facts: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classified")
            .field("operation", &self.operation)
            .field("opaque", &self.opaque)
            .field("facts", &self.facts.is_some())
            .finish()
    }
}

impl Classified {
    /// An operation with no facts yet: the policy classifies it itself.
    pub fn new(operation: Operation) -> Self {
        Self {
            operation,
            opaque: Vec::new(),
            facts: None,
        }
    }

    /// Adds the classifier's facts (made by the classifier from this operation).
    pub fn with_facts<T: Any + Send + Sync>(mut self, facts: Arc<T>) -> Self {
        self.facts = Some(facts);
        self
    }

    /// Marks statements the caller found opaque, as `(statement index, reason)` (see
    /// [`crate::Policy::decide_with_opaque`]). Only ever makes the decision stricter.
    pub fn with_opaque(mut self, opaque: Vec<(usize, String)>) -> Self {
        self.opaque = opaque;
        self
    }

    /// The operation.
    pub fn operation(&self) -> &Operation {
        &self.operation
    }

    /// Statements found opaque by the caller.
    pub fn opaque(&self) -> &[(usize, String)] {
        &self.opaque
    }

    /// The facts of type `T`, if the classifier attached them.
    pub fn facts<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.facts.as_deref().and_then(|f| f.downcast_ref::<T>())
    }

    /// The operation, giving up the facts.
    pub fn into_operation(self) -> Operation {
        self.operation
    }
}

/// What a hook sees of each response chunk, after masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// Send it.
    Continue,
    /// Stop the response here (the protocol ends it with an error naming the hook).
    Stop,
}

/// Phase hooks an embedder implements to observe or tighten what the gateway does, for every
/// protocol (pingora's `ProxyHttp` is the model). Every method has a default that changes
/// nothing. A hook never bypasses a layer: what it returns is combined with the policy's
/// decision by [`tighten`], so it can only make a decision stricter.
pub trait GateHooks: Send + Sync {
    /// The operation, before the policy sees it. A decision returned here is combined with the
    /// policy's (the stricter wins).
    fn before_decide(&self, _ctx: &GateContext<'_>, _operation: &Operation) -> Option<Decision> {
        None
    }

    /// After the policy decided. A decision returned here replaces the policy's only where it is
    /// stricter ([`tighten`]).
    fn after_decide(
        &self,
        _ctx: &GateContext<'_>,
        _operation: &Operation,
        _decision: &Decision,
    ) -> Option<Decision> {
        None
    }

    /// Each chunk of the response, after masking: exactly what the client will receive.
    /// Protocols call it only when [`GateHooks::wants_chunks`] is true.
    fn on_chunk(&self, _ctx: &GateContext<'_>, _index: u64, _chunk: &[u8]) -> ChunkVerdict {
        ChunkVerdict::Continue
    }

    /// Whether [`GateHooks::on_chunk`] should be called (observing chunks costs a call each).
    fn wants_chunks(&self) -> bool {
        false
    }
}

/// Hooks that change nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl GateHooks for NoHooks {}

/// `proposed`, kept only where it is stricter than `base`:
///
/// - the verdict is the stricter of the two (allow < review < deny); when `proposed` raises it,
///   its rule, reason and review requirement come with it;
/// - when both are reviews: at least as many approvers (the larger count), only approver groups
///   `base` names (the intersection; `base`'s groups if that is empty), the shorter timeout, and
///   the narrower grant window (none is narrowest);
/// - the masking profile stays `base`'s (profiles are names the gate cannot order, so a hook
///   cannot swap one in);
/// - binary data is refused if either refuses it.
pub fn tighten(base: &Decision, proposed: Decision) -> Decision {
    let binary =
        if base.binary == BinaryHandling::Refuse || proposed.binary == BinaryHandling::Refuse {
            BinaryHandling::Refuse
        } else {
            BinaryHandling::Raw
        };
    let mut out = if proposed.verdict > base.verdict {
        Decision {
            masking_profile: base.masking_profile.clone(),
            ..proposed
        }
    } else if proposed.verdict == Verdict::Review && base.verdict == Verdict::Review {
        let review = match (&base.review, proposed.review) {
            (Some(b), Some(p)) => Some(stricter_review(b, p)),
            (b, _) => b.clone(),
        };
        Decision {
            review,
            ..base.clone()
        }
    } else {
        base.clone()
    };
    out.binary = binary;
    out
}

fn stricter_review(base: &ReviewRequirement, proposed: ReviewRequirement) -> ReviewRequirement {
    let groups: Vec<String> = proposed
        .approver_groups
        .into_iter()
        .filter(|g| base.approver_groups.contains(g))
        .collect();
    ReviewRequirement {
        approver_groups: if groups.is_empty() {
            base.approver_groups.clone()
        } else {
            groups
        },
        approvals_required: base.approvals_required.max(proposed.approvals_required),
        timeout_ms: base.timeout_ms.min(proposed.timeout_ms),
        grant_window_ms: match (base.grant_window_ms, proposed.grant_window_ms) {
            (Some(b), Some(p)) => Some(b.min(p)),
            _ => None,
        },
    }
}

/// How long a review may hold the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// Until approvers decide, the request times out, or the client goes away (PostgreSQL, SSH:
    /// the session stays open meanwhile).
    UntilDecided,
    /// At most this long; then [`Outcome::Held`] and the client retries (HTTP, Kubernetes). A
    /// retried identical request picks up its own earlier request.
    AtMost(Duration),
}

/// How an operation ends at the gate: one meaning per outcome, which each protocol renders
/// natively and the same way every time (the table is in `docs/DESIGN.md`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// Run it. `approval` is the approval that let it run, if it was reviewed.
    Allowed {
        /// The decision (its masking profile and binary handling apply to the results).
        decision: Decision,
        /// The approval that covered it.
        approval: Option<ApprovalId>,
    },
    /// The policy (or a hook, or the protocol's own check) refused it.
    Denied {
        /// The decision: rule and reason.
        decision: Decision,
    },
    /// Still waiting for approvers after the hold ([`HoldMode::AtMost`]): retry later.
    Held {
        /// The review decision.
        decision: Decision,
        /// The pending request.
        approval: ApprovalId,
    },
    /// An approver denied it.
    ApprovalDenied {
        /// The review decision.
        decision: Decision,
        /// The request.
        approval: ApprovalId,
        /// Who denied.
        by: String,
        /// Their justification.
        justification: String,
    },
    /// Nobody decided before the request's timeout.
    ApprovalTimedOut {
        /// The review decision.
        decision: Decision,
        /// The request.
        approval: ApprovalId,
    },
    /// The client went away while it was held; the request is closed as abandoned and nothing
    /// runs, whatever an approver does later.
    Abandoned {
        /// The review decision.
        decision: Decision,
        /// The request.
        approval: ApprovalId,
    },
    /// The approvals layer cannot take the request now (store down, or too many operations
    /// held: `capacity`). Retry later; not a permission error.
    ApprovalsUnavailable {
        /// The review decision.
        decision: Decision,
        /// Caller-safe reason.
        reason: String,
        /// The cap on held operations was reached (rather than a failure).
        capacity: bool,
    },
    /// The audit log could not record the operation (or its approval): nothing runs
    /// unrecorded. Retry later; not a permission error.
    AuditUnavailable {
        /// Caller-safe reason.
        reason: String,
    },
}

impl Outcome {
    /// Whether the operation may run.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Outcome::Allowed { .. })
    }

    /// Whether the client should retry later (held, or a layer unavailable) rather than take
    /// the answer as final.
    pub fn retry_later(&self) -> bool {
        matches!(
            self,
            Outcome::Held { .. }
                | Outcome::ApprovalsUnavailable { .. }
                | Outcome::AuditUnavailable { .. }
        )
    }

    /// A stable name: `allowed`, `denied`, `held`, `approval_denied`, `approval_timed_out`,
    /// `abandoned`, `approvals_unavailable`, `audit_unavailable`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Allowed { .. } => "allowed",
            Outcome::Denied { .. } => "denied",
            Outcome::Held { .. } => "held",
            Outcome::ApprovalDenied { .. } => "approval_denied",
            Outcome::ApprovalTimedOut { .. } => "approval_timed_out",
            Outcome::Abandoned { .. } => "abandoned",
            Outcome::ApprovalsUnavailable { .. } => "approvals_unavailable",
            Outcome::AuditUnavailable { .. } => "audit_unavailable",
        }
    }

    /// The decision behind the outcome (none for an audit failure).
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            Outcome::Allowed { decision, .. }
            | Outcome::Denied { decision }
            | Outcome::Held { decision, .. }
            | Outcome::ApprovalDenied { decision, .. }
            | Outcome::ApprovalTimedOut { decision, .. }
            | Outcome::Abandoned { decision, .. }
            | Outcome::ApprovalsUnavailable { decision, .. } => Some(decision),
            Outcome::AuditUnavailable { .. } => None,
        }
    }

    /// The approval request involved, if any.
    pub fn approval(&self) -> Option<&ApprovalId> {
        match self {
            Outcome::Allowed { approval, .. } => approval.as_ref(),
            Outcome::Held { approval, .. }
            | Outcome::ApprovalDenied { approval, .. }
            | Outcome::ApprovalTimedOut { approval, .. }
            | Outcome::Abandoned { approval, .. } => Some(approval),
            _ => None,
        }
    }
}

/// An approval request [`Gate::open`] opened or found, to be held with [`Gate::hold`].
#[derive(Debug, Clone)]
pub struct Opened {
    id: ApprovalId,
    /// Already decided (a grant window, or a retry picking up a decided request).
    done: Option<ApprovalOutcome>,
    retry: bool,
    timeout: Duration,
}

impl Opened {
    /// The request's id (printed to the client, typed by the approver).
    pub fn id(&self) -> &ApprovalId {
        &self.id
    }

    /// Whether the client will wait for approvers (false: already decided, e.g. by a grant
    /// window).
    pub fn waits(&self) -> bool {
        self.done.is_none()
    }
}

/// Approval ids a retry has used, remembered so that one approval runs one retried request.
const USED_MEMORY: usize = 65_536;

#[derive(Default)]
struct UsedApprovals {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl UsedApprovals {
    /// Marks `id` used; false if it was already.
    fn take(&mut self, id: &ApprovalId) -> bool {
        if !self.set.insert(id.0.clone()) {
            return false;
        }
        self.order.push_back(id.0.clone());
        if self.order.len() > USED_MEMORY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }

    fn contains(&self, id: &ApprovalId) -> bool {
        self.set.contains(&id.0)
    }
}

/// The gate over a [`Pipeline`]'s policy, approvals, recorder and hooks. Cheap to share
/// (`Arc<Gate>`); one per listener is enough.
pub struct Gate {
    pipeline: Pipeline,
    used: Mutex<UsedApprovals>,
    /// One turn at a time per (principal, target, rule, operation) while a retried request
    /// looks for its earlier request and opens one if there is none (see [`Gate::open`]).
    turns: Arc<Mutex<HashMap<String, Arc<futures::lock::Mutex<()>>>>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

/// One review to hold: what [`Gate::approve`] needs.
#[derive(Debug, Clone)]
pub struct Review<'a> {
    /// Operation index in the session.
    pub index: u64,
    /// The exact operation (the approval is bound to its canonical hash).
    pub operation: &'a Operation,
    /// The operation as it is recorded and shown to approvers (masked as the policy masks it;
    /// the gate masks an HTTP, SSH or Kubernetes operation itself, see [`Gate::recorded`]).
    pub shown: &'a Operation,
    /// The review decision.
    pub decision: &'a Decision,
    /// How long the client may be held.
    pub mode: HoldMode,
}

impl Gate {
    /// A gate over `pipeline`'s layers.
    pub fn new(pipeline: Pipeline) -> Self {
        Self {
            pipeline,
            used: Mutex::new(UsedApprovals::default()),
            turns: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The layers.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The policy's decision, tightened by the hooks (never loosened).
    pub fn decide(&self, ctx: &GateContext<'_>, op: &Classified) -> Decision {
        self.decide_adjusted(ctx, op, |d| d)
    }

    /// [`Gate::decide`] with a protocol's built-in defaults applied to the policy's own decision,
    /// before any hook sees it (Kubernetes allows discovery where only the policy's `default`
    /// verdict spoke): so a hook's decision is never adjusted, and can still only tighten.
    pub fn decide_adjusted(
        &self,
        ctx: &GateContext<'_>,
        op: &Classified,
        adjust: impl FnOnce(Decision) -> Decision,
    ) -> Decision {
        let hooks = &self.pipeline.hooks;
        let early = hooks.before_decide(ctx, op.operation());
        let decision = adjust(
            self.pipeline
                .policy
                .decide_classified(ctx.identity, ctx.target, op),
        );
        let decision = match early {
            Some(d) => tighten(&decision, d),
            None => decision,
        };
        match hooks.after_decide(ctx, op.operation(), &decision) {
            Some(d) => tighten(&decision, d),
            None => decision,
        }
    }

    fn event(&self, ctx: &GateContext<'_>, body: EventBody) -> Event {
        Event::now(
            ctx.session.clone(),
            Some(ctx.identity.clone()),
            Some(ctx.target.clone()),
            body,
        )
    }

    /// The copy of `shown` that is recorded and shown to approvers: an HTTP, SSH or Kubernetes
    /// operation passes the decision's masking profile's detectors here
    /// ([`Operation::recorded_copy`]), whatever the caller passed; a SQL operation is kept as
    /// given (the PostgreSQL proxy passes its own masked copy, built with the statement's
    /// grammar). The real operation is never changed: the policy and the approval hash use it.
    pub fn recorded(&self, shown: &Operation, profile: Option<&str>) -> Operation {
        match shown {
            Operation::Sql(_) => shown.clone(),
            _ => shown.recorded_copy(&*self.pipeline.masker, profile),
        }
    }

    /// Records the operation (as `shown`, masked: see [`Gate::recorded`]) and its decision;
    /// durable before anything runs. `Err` is the [`Outcome::AuditUnavailable`] to render.
    pub async fn record(
        &self,
        ctx: &GateContext<'_>,
        index: u64,
        shown: Operation,
        decision: &Decision,
    ) -> Result<(), Outcome> {
        let operation = self.recorded(&shown, decision.masking_profile.as_deref());
        let event = self.event(
            ctx,
            EventBody::Operation {
                index,
                operation,
                decision: decision.clone(),
            },
        );
        self.pipeline
            .recorder
            .record(event)
            .await
            .map(|_| ())
            .map_err(|e| Outcome::AuditUnavailable {
                reason: e.to_string(),
            })
    }

    /// The outcome of a recorded decision that is not a review: allowed or denied.
    pub fn settle(decision: Decision) -> Outcome {
        match decision.verdict {
            Verdict::Allow => Outcome::Allowed {
                decision,
                approval: None,
            },
            _ => Outcome::Denied { decision },
        }
    }

    /// Decide, record, and for a review hold it: the whole gate for protocols with no checks of
    /// their own between the policy and the record. `gone` resolves when the client has gone.
    pub async fn run<G: Future<Output = ()>>(
        &self,
        ctx: &GateContext<'_>,
        index: u64,
        op: &Classified,
        shown: &Operation,
        mode: HoldMode,
        gone: G,
    ) -> Outcome {
        let decision = self.decide(ctx, op);
        if let Err(outcome) = self.record(ctx, index, shown.clone(), &decision).await {
            return outcome;
        }
        if decision.verdict != Verdict::Review {
            return Self::settle(decision);
        }
        let review = Review {
            index,
            operation: op.operation(),
            shown,
            decision: &decision,
            mode,
        };
        self.approve(ctx, review, gone).await
    }

    /// Holds a recorded review decision for approval: [`Gate::open`], then [`Gate::hold`]. Use
    /// the two steps to tell the client the request's id in between.
    pub async fn approve<G: Future<Output = ()>>(
        &self,
        ctx: &GateContext<'_>,
        review: Review<'_>,
        gone: G,
    ) -> Outcome {
        match self.open(ctx, &review).await {
            Ok(opened) => self.hold(ctx, review, opened, gone).await,
            Err(outcome) => outcome,
        }
    }

    /// Opens the approval request of a recorded review decision, bound to the exact operation
    /// (or, in [`HoldMode::AtMost`], picks up the client's own earlier one). `Err` is the outcome
    /// to render at once (no approvers configured, approvals unavailable).
    pub async fn open(
        &self,
        ctx: &GateContext<'_>,
        review: &Review<'_>,
    ) -> Result<Opened, Outcome> {
        let decision = review.decision.clone();
        let Some(requirement) = decision.review.clone() else {
            let rule = decision.rule_id.clone();
            return Err(Outcome::Denied {
                decision: Decision::deny(
                    rule,
                    format!(
                        "{} (review required but no approvers are configured)",
                        decision.reason
                    ),
                ),
            });
        };
        let timeout = Duration::from_millis(requirement.timeout_ms);
        let retry = matches!(review.mode, HoldMode::AtMost(_));
        // Concurrent identical retried requests take turns, so that they share one request
        // instead of each opening its own (the turn ends when this call returns).
        let _turn = if retry {
            match self.turn(ctx, review).await {
                Ok(turn) => Some(turn),
                Err(e) => return Err(unavailable(decision, &e)),
            }
        } else {
            None
        };
        let earlier = if retry {
            match self
                .earlier_request(ctx, review, &requirement, timeout)
                .await
            {
                Ok(found) => found,
                Err(e) => return Err(unavailable(decision, &e)),
            }
        } else {
            None
        };
        match earlier {
            // Decided while the client was away: its retry gets the answer, once.
            Some(record) if record.state != ApprovalState::Pending => Ok(Opened {
                id: record.id.clone(),
                done: Some(closed_outcome(&record)),
                retry,
                timeout,
            }),
            Some(record) => Ok(Opened {
                id: record.id,
                done: None,
                retry,
                timeout,
            }),
            None => {
                let request = ApprovalRequest {
                    requester: ctx.identity.clone(),
                    session: ctx.session.clone(),
                    target: ctx.target.clone(),
                    operation: review.operation.clone(),
                    rule_id: decision.rule_id.clone(),
                    reason: decision.reason.clone(),
                    requirement,
                    index: review.index,
                    shown: Some(self.recorded(review.shown, decision.masking_profile.as_deref())),
                };
                match self.pipeline.approvals.open(request).await {
                    Ok(ticket) if ticket.already_granted => Ok(Opened {
                        id: ticket.id,
                        done: Some(ApprovalOutcome::Approved { approvers: vec![] }),
                        // A grant window covers repeated executions by design.
                        retry: false,
                        timeout,
                    }),
                    Ok(ticket) => Ok(Opened {
                        id: ticket.id,
                        done: None,
                        retry,
                        timeout,
                    }),
                    Err(e) => Err(unavailable(decision, &e)),
                }
            }
        }
    }

    /// Waits on an opened request (unless it was already decided) and says how it ended. `gone`
    /// resolves when the client has gone away; the request is then abandoned (the approvals
    /// layer records that) and nothing runs.
    pub async fn hold<G: Future<Output = ()>>(
        &self,
        ctx: &GateContext<'_>,
        review: Review<'_>,
        opened: Opened,
        gone: G,
    ) -> Outcome {
        let decision = review.decision.clone();
        let Opened {
            id,
            done,
            retry,
            timeout,
        } = opened;
        if let Some(outcome) = done {
            return self
                .finish(ctx, review.index, decision, id, outcome, retry)
                .await;
        }
        let max_wait = match review.mode {
            HoldMode::AtMost(hold) => hold,
            // Never past the request's own timeout: the approvals layer says TimedOut then.
            HoldMode::UntilDecided => timeout.saturating_add(Duration::from_secs(1)),
        };
        let waited = first(self.pipeline.approvals.wait(&id, max_wait), gone).await;
        let outcome = match waited {
            // The wait future was dropped when `first` returned: the request is abandoned.
            None => {
                return Outcome::Abandoned {
                    decision,
                    approval: id,
                };
            }
            Some(Err(e)) => return unavailable(decision, &e),
            Some(Ok(ApprovalOutcome::StillPending)) if retry => {
                return Outcome::Held {
                    decision,
                    approval: id,
                };
            }
            Some(Ok(ApprovalOutcome::StillPending)) => ApprovalOutcome::TimedOut,
            Some(Ok(o)) => o,
        };
        self.finish(ctx, review.index, decision, id, outcome, retry)
            .await
    }

    /// Waits for this principal's turn on this operation (see [`Gate::open`]).
    async fn turn(
        &self,
        ctx: &GateContext<'_>,
        review: &Review<'_>,
    ) -> Result<Turn, ApprovalError> {
        let key = serde_json::to_string(&(
            ctx.identity.principal(),
            &ctx.target.name,
            &review.decision.rule_id,
            review.operation,
        ))
        .map_err(|e| ApprovalError::Store(format!("operation key: {e}")))?;
        let lock = {
            let mut turns = self.turns.lock().map_err(|_| {
                ApprovalError::Store("the gate's table of open requests is unavailable".into())
            })?;
            Arc::clone(turns.entry(key.clone()).or_default())
        };
        let guard = Arc::clone(&lock).lock_owned().await;
        Ok(Turn {
            turns: Arc::clone(&self.turns),
            key,
            lock,
            guard: Some(guard),
        })
    }

    /// The request a retried operation is answered by, among the client's own requests for the
    /// same operation under the same rule (same principal, same target):
    ///
    /// 1. the most recently decided one, decided less than `timeout` ago and not yet used by a
    ///    retry — except an approval that no longer meets the current `requirement`
    ///    ([`ReviewRequirement::meets`]) or that was decided before the approvers' latest
    ///    denial of this operation: after a denial, only a later approval runs it;
    /// 2. else the newest pending one whose requirement is at least as strict as the current
    ///    one (so its approval will meet it);
    /// 3. else none: the caller opens a new request under the current requirement.
    async fn earlier_request(
        &self,
        ctx: &GateContext<'_>,
        review: &Review<'_>,
        requirement: &ReviewRequirement,
        timeout: Duration,
    ) -> Result<Option<ApprovalRecord>, ApprovalError> {
        let filter = ApprovalFilter {
            state: None,
            requester: Some(ctx.identity.subject.clone()),
            target: Some(ctx.target.name.clone()),
        };
        let principal = ctx.identity.principal();
        let now = crate::now();
        let fresh = time::Duration::try_from(timeout).unwrap_or(time::Duration::MAX);
        let found: Vec<ApprovalRecord> = self
            .pipeline
            .approvals
            .list(&filter)
            .await?
            .into_iter()
            .filter(|r| {
                &r.request.operation == review.operation
                    && r.request.requester.principal() == principal
                    && r.request.rule_id == review.decision.rule_id
                    && r.request.target.name == ctx.target.name
            })
            .collect();
        let used = self.used.lock().map_err(|_| {
            ApprovalError::Store("the gate's record of used approvals is unavailable".into())
        })?;
        let last_denial = found
            .iter()
            .filter(|r| r.state == ApprovalState::Denied)
            .filter_map(|r| r.closed_at)
            .max();
        let decided = found
            .iter()
            .filter(|r| {
                let Some(closed) = r.closed_at else {
                    return false;
                };
                if used.contains(&r.id) || now - closed >= fresh {
                    return false;
                }
                match r.state {
                    ApprovalState::Approved => {
                        let approvals = r
                            .votes
                            .iter()
                            .filter(|v| v.decision == ApprovalDecision::Approve)
                            .count();
                        last_denial.is_none_or(|denied| closed > denied)
                            && r.request.requirement.meets(requirement, approvals)
                    }
                    ApprovalState::Denied | ApprovalState::TimedOut => true,
                    _ => false,
                }
            })
            .max_by_key(|r| r.closed_at);
        if let Some(record) = decided {
            return Ok(Some(record.clone()));
        }
        Ok(found
            .into_iter()
            .filter(|r| {
                let asked = usize::try_from(r.request.requirement.approvals_required.max(1))
                    .unwrap_or(usize::MAX);
                r.state == ApprovalState::Pending
                    && r.request.requirement.meets(requirement, asked)
                    && r.request.requirement.timeout_ms <= requirement.timeout_ms
            })
            .max_by_key(|r| r.opened_at))
    }

    /// Turns a final approval outcome into the gate's, records the use of an approval, and in
    /// retry mode marks the request used so that it answers one retry only.
    async fn finish(
        &self,
        ctx: &GateContext<'_>,
        index: u64,
        decision: Decision,
        id: ApprovalId,
        outcome: ApprovalOutcome,
        retry: bool,
    ) -> Outcome {
        if retry {
            let fresh = match self.used.lock() {
                Ok(mut used) => used.take(&id),
                Err(_) => false,
            };
            if !fresh {
                // Another retry used it between our read and now.
                return Outcome::ApprovalsUnavailable {
                    decision,
                    reason: format!("approval {id} was already used by another request"),
                    capacity: false,
                };
            }
        }
        match outcome {
            ApprovalOutcome::Approved { .. } => {
                let event = self.event(
                    ctx,
                    EventBody::ApprovalUsed {
                        index,
                        id: id.clone(),
                    },
                );
                match self.pipeline.recorder.record(event).await {
                    Ok(_) => Outcome::Allowed {
                        decision,
                        approval: Some(id),
                    },
                    Err(e) => Outcome::AuditUnavailable {
                        reason: e.to_string(),
                    },
                }
            }
            ApprovalOutcome::Denied { by, justification } => Outcome::ApprovalDenied {
                decision,
                approval: id,
                by,
                justification,
            },
            _ => Outcome::ApprovalTimedOut {
                decision,
                approval: id,
            },
        }
    }
}

/// A principal's turn on one operation; dropping it lets the next concurrent retry look.
struct Turn {
    turns: Arc<Mutex<HashMap<String, Arc<futures::lock::Mutex<()>>>>>,
    key: String,
    lock: Arc<futures::lock::Mutex<()>>,
    guard: Option<futures::lock::OwnedMutexGuard<()>>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Forget the key when nobody else holds or waits for it (the table holds one
        // reference, this turn another).
        if let Ok(mut turns) = self.turns.lock()
            && Arc::strong_count(&self.lock) <= 2
        {
            turns.remove(&self.key);
        }
    }
}

fn unavailable(decision: Decision, e: &ApprovalError) -> Outcome {
    match e {
        ApprovalError::Audit(reason) => Outcome::AuditUnavailable {
            reason: reason.clone(),
        },
        ApprovalError::TooManyPending(_) => Outcome::ApprovalsUnavailable {
            decision,
            reason: e.to_string(),
            capacity: true,
        },
        _ => Outcome::ApprovalsUnavailable {
            decision,
            reason: e.to_string(),
            capacity: false,
        },
    }
}

fn closed_outcome(record: &ApprovalRecord) -> ApprovalOutcome {
    record.outcome().unwrap_or(ApprovalOutcome::TimedOut)
}

/// Polls `work` and `gone` together: `Some` with `work`'s output, or `None` when `gone`
/// resolved first (`work` is dropped then). No runtime needed.
async fn first<W: Future, G: Future<Output = ()>>(work: W, gone: G) -> Option<W::Output> {
    let mut work = pin!(work);
    let mut gone = pin!(gone);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if gone.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

//! The approval broker: the [`Approvals`] implementation over a store, a recorder and a notifier.
//!
//! Rules it enforces (each has a test):
//! - **Bound to the exact operation**: a request carries the canonical hash of its operation
//!   ([`crate::operation_hash`]); a grant window covers only that hash.
//! - **Separation of duties**: the requester never decides their own request (same principal, or
//!   the same subject under another issuer); only members of the rule's approver groups decide;
//!   each approver votes once; `approvals_required` distinct approvers must approve (at least
//!   one, whatever the rule says); one deny closes the request; a justification is required.
//! - **Grant window**: an approval also covers a later request with the same operation hash, by the
//!   same principal, on the same target, from the same rule, while `closed_at + window` lies in the
//!   future — the window is the smaller of the approving rule's and the new rule's, never wider —
//!   and only while the approval still meets the new rule's requirement (as many approvers,
//!   approver groups the new rule names: [`gatehouse_core::ReviewRequirement::meets`]), and
//!   unless the approvers denied the same operation (same principal, target and rule) after it
//!   was approved: after a denial only a later approval runs the operation.
//! - **Timeouts**: nothing is approved after the request's own timeout; the first to notice (a
//!   waiter, or an approver trying to decide) closes it as timed out.
//! - **Abandonment**: dropping a [`Approvals::wait`] future before it resolves closes the request
//!   as abandoned, and that is recorded.
//! - **Bounded holds**: at most [`HoldLimits::per_identity`] pending requests per requester and
//!   [`HoldLimits::per_target`] per target, counted in the store (so replicas sharing a store
//!   share the count; two replicas opening at the same instant may each admit one more). Past
//!   the cap, `open` fails with [`ApprovalError::TooManyPending`] and nothing is held.
//! - **Holds end with their client**: a protocol drops its wait when the client goes away, which
//!   abandons the request; [`ApprovalBroker::abandon_held`] abandons every request this broker
//!   opened that is still pending (the gateway calls it at shutdown, before the audit log closes),
//!   so a later approval runs nothing.
//! - **Fail closed on audit**: every state change is recorded through the optional [`Recorder`]
//!   *before* it takes effect (open, vote) or before the wait reports it (resolution). If the
//!   recorder fails, the call fails and nothing was opened, counted or reported as approved.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord,
    ApprovalRequest, ApprovalState, ApprovalTicket, Approvals, ApproverVote, BoxFuture, Event,
    EventBody, Identity, Recorder, ReviewRequirement, Timestamp,
};
use tokio::sync::broadcast;

use crate::hash::operation_hash;
use crate::notify::{ApprovalNotice, ApprovalNotifier};
use crate::store::{ApprovalStore, StoredApproval, state_name};

/// Longest justification kept (bytes); longer ones are refused rather than cut.
pub const MAX_JUSTIFICATION_BYTES: usize = 4096;

/// How often a write is retried after losing a compare-and-swap race before giving up.
const MAX_WRITE_RACES: usize = 32;

/// Holds `Review` operations until enough approvers decide, the request times out, or the caller
/// goes away. Cheap to clone; clones share everything.
#[derive(Debug, Clone)]
pub struct ApprovalBroker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    store: Arc<dyn ApprovalStore>,
    recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    notifier: Option<Arc<dyn ApprovalNotifier>>,
    limits: HoldLimits,
    /// Requests this broker opened that may still be pending (abandoned at shutdown).
    held: std::sync::Mutex<std::collections::HashSet<ApprovalId>>,
}

/// Caps on concurrent holds, so that one identity cannot tie up a target (each held operation
/// keeps its client's session — and its upstream connection — open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldLimits {
    /// Most pending requests per requester (principal). Default 10.
    pub per_identity: usize,
    /// Most pending requests per target. Default 50.
    pub per_target: usize,
}

impl Default for HoldLimits {
    fn default() -> Self {
        Self {
            per_identity: 10,
            per_target: 50,
        }
    }
}

impl std::fmt::Debug for BrokerInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerInner")
            .field("store", &self.store)
            .field("recorder", &self.recorder.is_some())
            .field("notifier", &self.notifier)
            .finish()
    }
}

/// Builds an [`ApprovalBroker`].
#[derive(Debug)]
pub struct ApprovalBrokerBuilder {
    inner: BrokerInner,
}

impl ApprovalBrokerBuilder {
    /// Records every state change as an audit event; a failing recorder fails the operation.
    pub fn recorder(mut self, recorder: Arc<dyn Recorder + Send + Sync>) -> Self {
        self.inner.recorder = Some(recorder);
        self
    }

    /// Caps on concurrent holds (default [`HoldLimits::default`]).
    pub fn limits(mut self, limits: HoldLimits) -> Self {
        self.inner.limits = limits;
        self
    }

    /// Tells approvers about opened and decided requests.
    pub fn notifier(mut self, notifier: Arc<dyn ApprovalNotifier>) -> Self {
        self.inner.notifier = Some(notifier);
        self
    }

    /// The broker.
    pub fn build(self) -> ApprovalBroker {
        ApprovalBroker {
            inner: Arc::new(self.inner),
        }
    }
}

impl ApprovalBroker {
    /// A builder over `store`, with no recorder and no notifier yet.
    pub fn builder(store: Arc<dyn ApprovalStore>) -> ApprovalBrokerBuilder {
        ApprovalBrokerBuilder {
            inner: BrokerInner {
                store,
                recorder: None,
                notifier: None,
                limits: HoldLimits::default(),
                held: std::sync::Mutex::new(std::collections::HashSet::new()),
            },
        }
    }

    /// The store behind the broker.
    pub fn store(&self) -> &Arc<dyn ApprovalStore> {
        &self.inner.store
    }

    /// Closes a pending request as abandoned (what dropping a wait does), recording it.
    /// Returns whether this call closed it.
    pub async fn abandon(&self, id: &ApprovalId) -> Result<bool, ApprovalError> {
        self.inner.abandon(id).await
    }

    /// Closes every request this broker opened that is still pending as abandoned, recording
    /// each: their clients are going away with this process, and an approval given later must
    /// run nothing. Returns how many it closed. Call it at shutdown, before the audit log closes.
    pub async fn abandon_held(&self) -> Result<usize, ApprovalError> {
        let ids: Vec<ApprovalId> = self.inner.held().drain().collect();
        let mut closed = 0;
        let mut first_error = None;
        for id in ids {
            match self.inner.abandon(&id).await {
                Ok(true) => closed += 1,
                Ok(false) | Err(ApprovalError::NotFound(_)) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(closed),
        }
    }
}

fn store_err(e: crate::BrokerError) -> ApprovalError {
    e.into()
}

fn deadline_of(record: &ApprovalRecord) -> Timestamp {
    let ms = i64::try_from(record.request.requirement.timeout_ms).unwrap_or(i64::MAX);
    record
        .opened_at
        .checked_add(time::Duration::milliseconds(ms))
        .unwrap_or(Timestamp::new_utc(time::Date::MAX, time::Time::MIDNIGHT))
}

/// The wait outcome of a closed record; `None` while it is pending.
fn outcome_of(record: &ApprovalRecord) -> Option<Result<ApprovalOutcome, ApprovalError>> {
    match (record.state, record.outcome()) {
        (ApprovalState::Pending, _) => None,
        (_, Some(outcome)) => Some(Ok(outcome)),
        (other, None) => Some(Err(ApprovalError::AlreadyClosed(
            record.id.0.clone(),
            state_name(other).to_string(),
        ))),
    }
}

impl BrokerInner {
    fn held(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ApprovalId>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses a new hold past the caps, counting pending requests in the store.
    async fn check_limits(&self, request: &ApprovalRequest) -> Result<(), ApprovalError> {
        let principal = request.requester.principal();
        let mine = self
            .store
            .list(&ApprovalFilter {
                state: Some(ApprovalState::Pending),
                requester: Some(request.requester.subject.clone()),
                target: None,
            })
            .await
            .map_err(store_err)?
            .iter()
            .filter(|r| r.request.requester.principal() == principal)
            .count();
        if mine >= self.limits.per_identity {
            return Err(ApprovalError::TooManyPending(format!(
                "{principal} already has {mine} operations waiting for approval (the limit is {})",
                self.limits.per_identity
            )));
        }
        let on_target = self
            .store
            .list(&ApprovalFilter {
                state: Some(ApprovalState::Pending),
                requester: None,
                target: Some(request.target.name.clone()),
            })
            .await
            .map_err(store_err)?
            .len();
        if on_target >= self.limits.per_target {
            return Err(ApprovalError::TooManyPending(format!(
                "target {} already has {on_target} operations waiting for approval (the limit is {})",
                request.target.name, self.limits.per_target
            )));
        }
        Ok(())
    }

    async fn record(
        &self,
        record: &ApprovalRecord,
        identity: &Identity,
        body: EventBody,
    ) -> Result<(), ApprovalError> {
        let Some(recorder) = &self.recorder else {
            return Ok(());
        };
        let event = Event::now(
            record.request.session.clone(),
            Some(identity.clone()),
            Some(record.request.target.clone()),
            body,
        );
        recorder
            .record(event)
            .await
            .map(|_| ())
            .map_err(|e| ApprovalError::Audit(e.to_string()))
    }

    /// Records how `record` ended, with its operation index.
    async fn record_resolved(
        &self,
        record: &ApprovalRecord,
        outcome: ApprovalOutcome,
    ) -> Result<(), ApprovalError> {
        self.record(
            record,
            &record.request.requester,
            EventBody::ApprovalResolved {
                index: record.request.index,
                id: record.id.clone(),
                outcome,
            },
        )
        .await
    }

    fn notify(&self, notice: ApprovalNotice) {
        if let Some(n) = &self.notifier {
            n.notify(notice);
        }
    }

    async fn open(&self, request: ApprovalRequest) -> Result<ApprovalTicket, ApprovalError> {
        let hash = operation_hash(&request.operation);
        let now = gatehouse_core::now();
        if let Some(grant) = self.covering_grant(&request, &hash, now).await? {
            // The audit shows this session ran under an earlier approval, and which one.
            let probe = ApprovalRecord {
                id: grant.id.clone(),
                request,
                operation_hash: hash.clone(),
                state: ApprovalState::Approved,
                votes: Vec::new(),
                opened_at: now,
                closed_at: None,
            };
            self.record(
                &probe,
                &probe.request.requester,
                requested_event(&probe.request, &grant.id, &hash, true),
            )
            .await?;
            return Ok(ApprovalTicket {
                id: grant.id,
                operation_hash: hash,
                already_granted: true,
            });
        }
        self.check_limits(&request).await?;
        let record = ApprovalRecord {
            id: ApprovalId(uuid::Uuid::now_v7().to_string()),
            request,
            operation_hash: hash.clone(),
            state: ApprovalState::Pending,
            votes: Vec::new(),
            opened_at: now,
            closed_at: None,
        };
        self.record(
            &record,
            &record.request.requester,
            requested_event(&record.request, &record.id, &hash, false),
        )
        .await?;
        let stored = self.store.insert(record).await.map_err(store_err)?;
        self.held().insert(stored.record.id.clone());
        self.notify(ApprovalNotice::Opened(stored.record.clone()));
        Ok(ApprovalTicket {
            id: stored.record.id,
            operation_hash: hash,
            already_granted: false,
        })
    }

    async fn covering_grant(
        &self,
        request: &ApprovalRequest,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<ApprovalRecord>, ApprovalError> {
        let Some(new_window) = request.requirement.grant_window_ms else {
            return Ok(None);
        };
        let principal = request.requester.principal();
        let candidates = self
            .store
            .grants(&principal, &request.target.name, hash, now)
            .await
            .map_err(store_err)?;
        if candidates.is_empty() {
            return Ok(None);
        }
        // The approvers' latest denial of this operation ends every grant approved before it.
        let last_denial = self
            .store
            .list(&ApprovalFilter {
                state: Some(ApprovalState::Denied),
                requester: Some(request.requester.subject.clone()),
                target: Some(request.target.name.clone()),
            })
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|d| {
                d.operation_hash == hash
                    && d.request.rule_id == request.rule_id
                    && d.request.requester.principal() == principal
            })
            .filter_map(|d| d.closed_at)
            .max();
        Ok(candidates.into_iter().find(|g| {
            if let (Some(denied), Some(closed)) = (last_denial, g.closed_at)
                && closed <= denied
            {
                return false;
            }
            let Some(old_window) = g.request.requirement.grant_window_ms else {
                return false;
            };
            let window = i64::try_from(old_window.min(new_window)).unwrap_or(i64::MAX);
            // The approval must still meet the rule as it stands now (approver count and
            // groups); the window is narrowed to the smaller one below.
            let current = ReviewRequirement {
                grant_window_ms: Some(old_window),
                ..request.requirement.clone()
            };
            let approvals = g
                .votes
                .iter()
                .filter(|v| v.decision == ApprovalDecision::Approve)
                .count();
            g.state == ApprovalState::Approved
                && g.request.requirement.meets(&current, approvals)
                && g.operation_hash == hash
                && g.request.rule_id == request.rule_id
                && g.request.target.name == request.target.name
                && g.request.requester.principal() == principal
                && g.closed_at
                    .and_then(|c| c.checked_add(time::Duration::milliseconds(window)))
                    .is_some_and(|until| until > now)
        }))
    }

    async fn wait(
        self: &Arc<Self>,
        id: &ApprovalId,
        max_wait: Duration,
    ) -> Result<ApprovalOutcome, ApprovalError> {
        let mut guard = AbandonGuard {
            inner: Arc::clone(self),
            id: Some(id.clone()),
        };
        let started = Instant::now();
        // Subscribe before the first read so that no write between read and sleep is missed.
        let mut changes = self.store.subscribe();
        loop {
            let stored = match self.store.get(id).await {
                Ok(s) => s,
                Err(crate::BrokerError::NotFound(id)) => {
                    guard.disarm();
                    return Err(ApprovalError::NotFound(id));
                }
                Err(e) => return Err(store_err(e)),
            };
            if let Some(outcome) = outcome_of(&stored.record) {
                guard.disarm();
                self.held().remove(id);
                // The resolution was recorded by whoever closed the request (the deciding vote
                // or the timeout), once.
                return outcome;
            }
            let now = gatehouse_core::now();
            let deadline = deadline_of(&stored.record);
            if now >= deadline {
                let snapshot = stored.record.clone();
                if self.close_unvoted(stored, ApprovalState::TimedOut).await? {
                    self.record_resolved(&snapshot, ApprovalOutcome::TimedOut)
                        .await?;
                }
                continue;
            }
            let elapsed = started.elapsed();
            let Some(left) = max_wait.checked_sub(elapsed).filter(|d| !d.is_zero()) else {
                guard.disarm();
                return Ok(ApprovalOutcome::StillPending);
            };
            let to_deadline = Duration::try_from(deadline - now).unwrap_or(Duration::ZERO);
            let nap = left.min(to_deadline).min(self.store.poll_interval());
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = changed(&mut changes, id) => {}
            }
        }
    }

    /// Closes a pending request without a vote (timed out or abandoned). `Ok(true)` if this call
    /// closed it; `Ok(false)` if someone else changed it first (the caller re-reads).
    async fn close_unvoted(
        &self,
        stored: StoredApproval,
        state: ApprovalState,
    ) -> Result<bool, ApprovalError> {
        let mut record = stored.record;
        record.state = state;
        record.closed_at = Some(gatehouse_core::now());
        match self
            .store
            .replace(record, stored.revision)
            .await
            .map_err(store_err)?
        {
            Some(s) => {
                self.notify(ApprovalNotice::Closed(s.record));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn abandon(&self, id: &ApprovalId) -> Result<bool, ApprovalError> {
        for _ in 0..MAX_WRITE_RACES {
            let stored = self.store.get(id).await.map_err(store_err)?;
            if stored.record.state != ApprovalState::Pending {
                return Ok(false);
            }
            let record = stored.record.clone();
            if self.close_unvoted(stored, ApprovalState::Abandoned).await? {
                self.record(
                    &record,
                    &record.request.requester,
                    EventBody::ApprovalAbandoned { id: id.clone() },
                )
                .await?;
                return Ok(true);
            }
        }
        Err(ApprovalError::Store(format!(
            "approval request {id} kept changing; could not abandon it"
        )))
    }

    async fn decide(
        &self,
        id: &ApprovalId,
        approver: &Identity,
        decision: ApprovalDecision,
        justification: &str,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let justification = justification.trim();
        if justification.is_empty() || justification.len() > MAX_JUSTIFICATION_BYTES {
            return Err(ApprovalError::JustificationRequired);
        }
        let mut recorded = false;
        for _ in 0..MAX_WRITE_RACES {
            let stored = self.store.get(id).await.map_err(store_err)?;
            let record = &stored.record;
            if record.state != ApprovalState::Pending {
                return Err(ApprovalError::AlreadyClosed(
                    id.0.clone(),
                    state_name(record.state).into(),
                ));
            }
            let requester = &record.request.requester;
            if approver.principal() == requester.principal()
                || approver.subject == requester.subject
            {
                return Err(ApprovalError::SelfApproval);
            }
            let is_approver = record
                .request
                .requirement
                .approver_groups
                .iter()
                .any(|g| approver.in_group(g));
            if !is_approver {
                return Err(ApprovalError::NotAnApprover(approver.subject.clone()));
            }
            if record.votes.iter().any(|v| v.approver == approver.subject) {
                return Err(ApprovalError::DuplicateVote(approver.subject.clone()));
            }
            let now = gatehouse_core::now();
            if now >= deadline_of(record) {
                let snapshot = record.clone();
                if self.close_unvoted(stored, ApprovalState::TimedOut).await? {
                    self.record_resolved(&snapshot, ApprovalOutcome::TimedOut)
                        .await?;
                }
                return Err(ApprovalError::AlreadyClosed(
                    id.0.clone(),
                    "timed_out".into(),
                ));
            }
            let vote = ApproverVote {
                approver: approver.subject.clone(),
                decision,
                justification: justification.to_string(),
                at: now,
            };
            if !recorded {
                // Recorded before it counts: an unrecorded vote never approves anything.
                self.record(
                    record,
                    approver,
                    EventBody::ApprovalDecided {
                        id: id.clone(),
                        approver: approver.subject.clone(),
                        decision,
                        justification: vote.justification.clone(),
                    },
                )
                .await?;
                recorded = true;
            }
            let mut next = record.clone();
            next.votes.push(vote.clone());
            let approvals = next
                .votes
                .iter()
                .filter(|v| v.decision == ApprovalDecision::Approve)
                .count();
            let required = usize::try_from(next.request.requirement.approvals_required.max(1))
                .unwrap_or(usize::MAX);
            if decision == ApprovalDecision::Deny {
                next.state = ApprovalState::Denied;
                next.closed_at = Some(now);
            } else if approvals >= required {
                next.state = ApprovalState::Approved;
                next.closed_at = Some(now);
            }
            if let Some(s) = self
                .store
                .replace(next, stored.revision)
                .await
                .map_err(store_err)?
            {
                self.notify(ApprovalNotice::Decided {
                    record: s.record.clone(),
                    vote,
                });
                // This vote closed the request: its resolution is recorded here, once.
                if let Some(Ok(outcome)) = outcome_of(&s.record) {
                    self.record_resolved(&s.record, outcome).await?;
                }
                return Ok(s.record);
            }
        }
        Err(ApprovalError::Store(format!(
            "approval request {id} kept changing; vote not applied"
        )))
    }
}

/// The `ApprovalRequested` event of `request`: its index, the operation as the approver sees it,
/// the rule and its reason.
fn requested_event(
    request: &ApprovalRequest,
    id: &ApprovalId,
    hash: &str,
    granted: bool,
) -> EventBody {
    EventBody::ApprovalRequested {
        index: request.index,
        id: id.clone(),
        operation_hash: hash.to_string(),
        operation: Some(request.shown().clone()),
        rule_id: Some(request.rule_id.clone()),
        reason: Some(request.reason.clone()),
        granted,
    }
}

/// Resolves when `id` is announced (or announcements were lost, so a re-read is due).
async fn changed(changes: &mut broadcast::Receiver<ApprovalId>, id: &ApprovalId) {
    loop {
        match changes.recv().await {
            Ok(changed) if &changed == id => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Abandons the request if the wait future is dropped before it resolves.
struct AbandonGuard {
    inner: Arc<BrokerInner>,
    id: Option<ApprovalId>,
}

impl AbandonGuard {
    fn disarm(&mut self) {
        self.id = None;
    }
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let inner = Arc::clone(&self.inner);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Err(e) = inner.abandon(&id).await {
                        tracing::error!(%id, error = %e, "could not abandon approval request");
                    }
                });
            }
            Err(_) => {
                tracing::error!(%id, "wait dropped outside a runtime; request left pending until it times out");
            }
        }
    }
}

impl Approvals for ApprovalBroker {
    fn open(
        &self,
        request: ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>> {
        Box::pin(self.inner.open(request))
    }

    fn wait<'a>(
        &'a self,
        id: &'a ApprovalId,
        max_wait: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>> {
        Box::pin(self.inner.wait(id, max_wait))
    }

    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>> {
        Box::pin(async move { self.inner.store.list(filter).await.map_err(store_err) })
    }

    fn get<'a>(
        &'a self,
        id: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move {
            self.inner
                .store
                .get(id)
                .await
                .map(|s| s.record)
                .map_err(store_err)
        })
    }

    fn decide<'a>(
        &'a self,
        id: &'a ApprovalId,
        approver: &'a Identity,
        decision: ApprovalDecision,
        justification: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(self.inner.decide(id, approver, decision, justification))
    }
}

//! Shared helpers: identities, requests, a recorder that captures events (and can be made to fail).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_approvals::{ApprovalBroker, ApprovalStore};
use gatehouse_core::{
    ApprovalId, ApprovalRecord, ApprovalRequest, ApprovalState, Approvals, AuthMethod, BoxFuture,
    Event, EventBody, EventReceipt, Identity, Operation, Protocol, RecordError, Recorder,
    RecordingKind, RecordingSink, ReviewRequirement, SessionId, SqlOperation, SqlProtocol,
    SqlSessionSettings, Target,
};

pub use gatehouse_testkit::within;

pub const LIMIT: Duration = Duration::from_secs(20);

pub fn person(subject: &str, groups: &[&str]) -> Identity {
    let mut id = Identity::new(subject, "https://idp.example", AuthMethod::Test);
    for g in groups {
        id = id.with_group(*g);
    }
    id
}

pub fn agent() -> Identity {
    person("agent-7", &["agents", "dba"])
}

pub fn delete_users(param: &str) -> Operation {
    Operation::Sql(SqlOperation {
        text: "DELETE FROM users WHERE id = $1".into(),
        parameters: vec![Some(param.into())],
        protocol: SqlProtocol::Extended,
        settings: SqlSessionSettings::default(),
    })
}

pub fn requirement(
    required: u32,
    timeout_ms: u64,
    grant_window_ms: Option<u64>,
) -> ReviewRequirement {
    ReviewRequirement {
        approver_groups: vec!["dba".into(), "oncall".into()],
        approvals_required: required,
        timeout_ms,
        grant_window_ms,
    }
}

pub fn request(
    requester: Identity,
    operation: Operation,
    req: ReviewRequirement,
) -> ApprovalRequest {
    ApprovalRequest {
        requester,
        session: SessionId::generate(),
        target: Target::new("orders-db", Protocol::Postgres).with_tag("prod"),
        operation,
        rule_id: "prod-writes".into(),
        reason: "writes to prod need a second pair of eyes".into(),
        requirement: req,
        index: 0,
        shown: None,
    }
}

/// A recorder that keeps every event and fails on demand.
#[derive(Debug, Default)]
pub struct CapturingRecorder {
    pub events: Mutex<Vec<Event>>,
    pub fail: AtomicBool,
    seq: AtomicU64,
}

impl CapturingRecorder {
    pub fn bodies(&self) -> Vec<EventBody> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.body.clone())
            .collect()
    }

    pub fn count(&self, pred: impl Fn(&EventBody) -> bool) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| pred(&e.body))
            .count()
    }
}

impl Recorder for CapturingRecorder {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>> {
        Box::pin(async move {
            if self.fail.load(Ordering::SeqCst) {
                return Err(RecordError::Store("disk full (injected)".into()));
            }
            self.events.lock().unwrap().push(event);
            Ok(EventReceipt {
                sequence: self.seq.fetch_add(1, Ordering::SeqCst),
                hash: String::new(),
            })
        })
    }

    fn open_recording<'a>(
        &'a self,
        _session: &'a SessionId,
        _kind: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>> {
        Box::pin(async { Err(RecordError::Closed) })
    }
}

pub fn broker_with(store: Arc<dyn ApprovalStore>) -> (ApprovalBroker, Arc<CapturingRecorder>) {
    let recorder = Arc::new(CapturingRecorder::default());
    let broker = ApprovalBroker::builder(store)
        .recorder(recorder.clone())
        .build();
    (broker, recorder)
}

/// Polls until the request reaches `state` (the abandon path runs in a spawned task).
pub async fn eventually_state(
    broker: &ApprovalBroker,
    id: &ApprovalId,
    state: ApprovalState,
) -> ApprovalRecord {
    within(LIMIT, async {
        loop {
            let r = broker.get(id).await.unwrap();
            if r.state == state {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

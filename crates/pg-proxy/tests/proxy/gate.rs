//! The operation gate seen from a PostgreSQL client: each outcome's SQLSTATE (the table in
//! `docs/DESIGN.md`), hooks that can only tighten, and the approval evidence recorded once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gatehouse_core::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord,
    ApprovalRequest, ApprovalState, ApprovalTicket, Approvals, BoxFuture, ChunkVerdict, Decision,
    Event, EventBody, EventReceipt, GateContext, GateHooks, Identity, Operation, RecordError,
    Recorder, RecordingKind, RecordingSink, SessionId,
};
use gatehouse_testkit::layers::MemoryRecorder;

use crate::common::*;

const SETUP: &str = "CREATE TABLE jobs (id int); INSERT INTO jobs SELECT generate_series(1, 10);";

fn opts(timeout_ms: u64) -> Options {
    Options {
        policy: keyword_policy(&["drop "], &["delete"], timeout_ms),
        setup_sql: SETUP,
        ..Options::default()
    }
}

fn jobs(h: &Harness) -> String {
    h.db.psql("select count(*) from jobs").unwrap()
}

/// An approvals layer whose store is down.
struct DownApprovals;

fn down<T>() -> Result<T, ApprovalError> {
    Err(ApprovalError::Store("approval store is down".into()))
}

impl Approvals for DownApprovals {
    fn open(&self, _: ApprovalRequest) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>> {
        Box::pin(async { down() })
    }
    fn wait<'a>(
        &'a self,
        _: &'a ApprovalId,
        _: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>> {
        Box::pin(async { down() })
    }
    fn list<'a>(
        &'a self,
        _: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>> {
        Box::pin(async { down() })
    }
    fn get<'a>(
        &'a self,
        _: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async { down() })
    }
    fn decide<'a>(
        &'a self,
        _: &'a ApprovalId,
        _: &'a Identity,
        _: ApprovalDecision,
        _: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async { down() })
    }
}

#[tokio::test]
async fn approvals_unavailable_is_58000_not_a_permission_error() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            approvals: Some(Arc::new(DownApprovals)),
            ..opts(30_000)
        })
        .await;
        let c = h.connect().await;
        let err = c.simple_query("delete from jobs").await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "58000", "{msg}");
        assert!(msg.contains("approvals unavailable"), "{msg}");
        assert_eq!(jobs(&h), "10");
        // The extended protocol renders it the same way, and the session stays usable.
        let err = c
            .execute("delete from jobs where id = $1", &[&1i32])
            .await
            .err()
            .unwrap();
        assert_eq!(db_error(&err).0, "58000");
        assert_eq!(jobs(&h), "10");
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

/// Tries to loosen every decision at both phases.
struct Loosening;

impl GateHooks for Loosening {
    fn before_decide(&self, _: &GateContext<'_>, _: &Operation) -> Option<Decision> {
        Some(Decision::allow("hook", "let it through"))
    }
    fn after_decide(&self, _: &GateContext<'_>, _: &Operation, _: &Decision) -> Option<Decision> {
        Some(Decision::allow("hook", "let it through"))
    }
}

#[tokio::test]
async fn a_hook_cannot_turn_a_deny_into_an_allow() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            hooks: Some(Arc::new(Loosening)),
            ..opts(300)
        })
        .await;
        let c = h.connect().await;
        let err = c.simple_query("drop table jobs").await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501", "{msg}");
        assert!(msg.contains("no-ddl"), "{msg}");
        // Nor a review into an allow: the delete is held and times out.
        let err = c.simple_query("delete from jobs").await.err().unwrap();
        assert_eq!(db_error(&err).0, "57014");
        assert_eq!(jobs(&h), "10");
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

/// Tightens: every statement reading `jobs` is denied.
struct NoJobs;

impl GateHooks for NoJobs {
    fn after_decide(&self, _: &GateContext<'_>, op: &Operation, _: &Decision) -> Option<Decision> {
        match op {
            Operation::Sql(sql) if sql.text.contains("jobs") => {
                Some(Decision::deny("hook-no-jobs", "jobs are off limits"))
            }
            _ => None,
        }
    }
}

#[tokio::test]
async fn a_hook_can_tighten_an_allow_into_a_deny() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            hooks: Some(Arc::new(NoJobs)),
            ..opts(300)
        })
        .await;
        let c = h.connect().await;
        let err = c.query("select id from jobs", &[]).await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501", "{msg}");
        assert!(msg.contains("hook-no-jobs"), "{msg}");
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn each_held_statement_is_requested_once_with_its_index() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(30_000)).await;
        let c = h.connect().await;
        let approvals = h.tp.approvals.clone();
        tokio::spawn(async move {
            for _ in 0..2 {
                let id = approvals.next_pending().await;
                approvals
                    .decide(&id, &approver(), ApprovalDecision::Approve, "ticket OPS-2")
                    .await
                    .unwrap();
            }
        });
        c.simple_query("select 1").await.unwrap();
        c.simple_query("delete from jobs where id = 1")
            .await
            .unwrap();
        c.execute("delete from jobs where id = $1", &[&2i32])
            .await
            .unwrap();
        assert_eq!(jobs(&h), "8");
        let events = h.tp.recorder.events();
        let deletes: Vec<u64> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Operation {
                    index,
                    operation: Operation::Sql(op),
                    ..
                } if op.text.starts_with("delete") => Some(*index),
                _ => None,
            })
            .collect();
        let requested: Vec<(u64, Option<Operation>)> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::ApprovalRequested {
                    index, operation, ..
                } => Some((*index, operation.clone())),
                _ => None,
            })
            .collect();
        // The extended-protocol statement is recorded at Parse (held until Bind) and again,
        // with its parameters, as the execution its Bind decides.
        assert_eq!(deletes.len(), 3, "{deletes:?}");
        assert_eq!(
            requested.iter().map(|r| r.0).collect::<Vec<_>>(),
            [deletes[0], deletes[2]],
            "one request per held execution, with its index: {requested:?}"
        );
        // The approver saw the operation as the audit log keeps it.
        for (_, shown) in &requested {
            let Some(Operation::Sql(op)) = shown else {
                panic!("no operation shown: {requested:?}")
            };
            assert!(op.text.starts_with("delete from jobs"), "{op:?}");
        }
        let used = events
            .iter()
            .filter(|e| matches!(e.body, EventBody::ApprovalUsed { .. }))
            .count();
        assert_eq!(used, 2);
    })
    .await;
}

/// Stops the response at its second message with tag `.1` (DataRow `D`, CopyData `d`),
/// counting what it saw.
struct StopSecondRow(AtomicUsize, u8);

impl GateHooks for StopSecondRow {
    fn wants_chunks(&self) -> bool {
        true
    }
    fn on_chunk(&self, _: &GateContext<'_>, _: u64, chunk: &[u8]) -> ChunkVerdict {
        if chunk.first() != Some(&self.1) {
            return ChunkVerdict::Continue;
        }
        if self.0.fetch_add(1, Ordering::SeqCst) >= 1 {
            ChunkVerdict::Stop
        } else {
            ChunkVerdict::Continue
        }
    }
}

#[tokio::test]
async fn a_chunk_hook_sees_each_row_and_can_stop_the_response() {
    gatehouse_testkit::within(T, async {
        let hook = Arc::new(StopSecondRow(AtomicUsize::new(0), b'D'));
        let h = start(Options {
            hooks: Some(hook.clone()),
            ..opts(300)
        })
        .await;
        let c = h.connect().await;
        let err = c
            .simple_query("select id from jobs order by id")
            .await
            .err()
            .unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501", "{msg}");
        assert!(msg.contains("GateHooks::on_chunk"), "{msg}");
        assert_eq!(hook.0.load(Ordering::SeqCst), 2);
    })
    .await;
}

/// Records everything but the use of an approval.
struct NoApprovalUse(MemoryRecorder);

impl Recorder for NoApprovalUse {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>> {
        if matches!(event.body, EventBody::ApprovalUsed { .. }) {
            return Box::pin(async { Err(RecordError::Store("injected failure".into())) });
        }
        self.0.record(event)
    }
    fn open_recording<'a>(
        &'a self,
        session: &'a SessionId,
        kind: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>> {
        self.0.open_recording(session, kind)
    }
}

#[tokio::test]
async fn an_approval_whose_use_cannot_be_recorded_runs_nothing_and_is_58030() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            recorder: Some(Arc::new(NoApprovalUse(MemoryRecorder::new()))),
            ..opts(30_000)
        })
        .await;
        let c = h.connect().await;
        let approvals = h.tp.approvals.clone();
        let approver = tokio::spawn(async move {
            let id = approvals.next_pending().await;
            approvals
                .decide(&id, &approver(), ApprovalDecision::Approve, "ticket OPS-3")
                .await
                .unwrap();
            id
        });
        let err = c.simple_query("delete from jobs").await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "58030", "{msg}");
        let id = approver.await.unwrap();
        assert_eq!(
            h.tp.approvals.get(&id).await.unwrap().state,
            ApprovalState::Approved
        );
        assert_eq!(jobs(&h), "10");
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

//! Review: a statement waits for a human approval, then runs or is refused.

use std::time::Duration;

use gatehouse_core::{ApprovalDecision, Approvals, EventBody};

use crate::common::*;

const SETUP: &str = "CREATE TABLE jobs (id int); INSERT INTO jobs SELECT generate_series(1, 10);";

fn opts(timeout_ms: u64) -> Options {
    Options {
        policy: keyword_policy(&["drop "], &["delete"], timeout_ms),
        setup_sql: SETUP,
        ..Options::default()
    }
}

#[tokio::test]
async fn approved_delete_runs_after_the_wait() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(30_000)).await;
        let c = h.connect().await;
        let approvals = h.tp.approvals.clone();
        let approver = tokio::spawn(async move {
            let id = approvals.next_pending().await;
            approvals
                .decide(&id, &approver(), ApprovalDecision::Approve, "ticket OPS-1")
                .await
                .unwrap();
            id
        });
        let n = c
            .execute("delete from jobs where id <= 3", &[])
            .await
            .unwrap();
        assert_eq!(n, 3);
        let id = approver.await.unwrap();
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "7");
        let events = h.tp.recorder.events();
        // Recorded once, by the approvals layer.
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(&e.body, EventBody::ApprovalRequested { .. }))
                .count(),
            1
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(&e.body, EventBody::ApprovalRequested { id: i, .. } if *i == id))
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(&e.body, EventBody::ApprovalResolved { id: i, .. } if *i == id))
        );
        // The request was bound to the text and the parameters.
        let rec = h.tp.approvals.get(&id).await.unwrap();
        let gatehouse_core::Operation::Sql(op) = rec.request.operation else {
            panic!()
        };
        assert_eq!(op.text, "delete from jobs where id <= 3");
    })
    .await;
}

#[tokio::test]
async fn denied_delete_is_refused_and_the_session_stays_usable() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(30_000)).await;
        let c = h.connect().await;
        let approvals = h.tp.approvals.clone();
        tokio::spawn(async move {
            let id = approvals.next_pending().await;
            approvals
                .decide(
                    &id,
                    &approver(),
                    ApprovalDecision::Deny,
                    "not during business hours",
                )
                .await
                .unwrap();
        });
        let err = c.simple_query("delete from jobs").await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501");
        assert!(msg.contains("denied by alice"), "{msg}");
        assert!(msg.contains("not during business hours"), "{msg}");
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn unanswered_review_times_out() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(300)).await;
        let c = h.connect().await;
        let err = c
            .execute("delete from jobs where id = $1", &[&1i32])
            .await
            .err()
            .unwrap();
        let (code, msg) = db_error(&err);
        // Not a permission error: nobody answered in time.
        assert_eq!(code, "57014");
        assert!(msg.contains("timed out"), "{msg}");
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
        // Extended protocol state is intact: the next prepared statement works.
        let n: i64 = c
            .query_one("select count(*) from jobs where id > $1", &[&0i32])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 10);
    })
    .await;
}

#[tokio::test]
async fn cancel_during_the_wait_abandons_the_request() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(60_000)).await;
        let c = h.connect().await;
        let token = c.cancel_token();
        let waiting = tokio::spawn(async move { c.simple_query("delete from jobs").await.err() });
        let id = h.tp.approvals.next_pending().await;
        // The request is open: cancel from the client side (repeated until the wait has seen it;
        // a cancel that lands on an idle session does nothing).
        while !waiting.is_finished() {
            token.cancel_query(tokio_postgres::NoTls).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = waiting.await.unwrap().expect("refused");
        assert_eq!(db_error(&err).0, "57014");
        let rec = h.tp.approvals.get(&id).await.unwrap();
        assert_eq!(rec.state, gatehouse_core::ApprovalState::Abandoned);
        assert_eq!(
            h.tp.recorder
                .events()
                .iter()
                .filter(|e| matches!(&e.body, EventBody::ApprovalAbandoned { id: i } if *i == id))
                .count(),
            1
        );
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
    })
    .await;
}

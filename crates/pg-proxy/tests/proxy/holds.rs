//! Holds end with their client: a held statement whose client goes away is abandoned, and
//! approving it later runs nothing; nothing of it reaches the server while it is held.

use gatehouse_core::{ApprovalDecision, ApprovalState, Approvals, EventBody};
use gatehouse_sql::StatementKind as K;

use crate::common::*;
use crate::raw::*;

const SETUP: &str = "CREATE TABLE jobs (id int); INSERT INTO jobs SELECT generate_series(1, 10);";

#[tokio::test]
async fn a_held_statement_whose_client_leaves_is_abandoned_and_never_runs() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            policy: kind_policy(&[], &[K::Delete], 60_000),
            setup_sql: SETUP,
            ..Options::default()
        })
        .await;
        let mut c = RawClient::connect(h.port).await;
        c.send(&query("begin; delete from jobs")).await;
        let id = h.tp.approvals.next_pending().await;
        // While it is held nothing of the message has reached the server: its backend is idle,
        // not inside the transaction the message opens.
        let busy =
            h.db.psql(&format!(
                "select count(*) from pg_stat_activity where usename = '{}' and state <> 'idle'",
                h.role
            ))
            .unwrap();
        assert_eq!(busy, "0");
        drop(c);
        let approvals = h.tp.approvals.clone();
        let probe = id.clone();
        eventually("the request is abandoned", move || {
            futures::executor::block_on(approvals.get(&probe))
                .is_ok_and(|r| r.state == ApprovalState::Abandoned)
        })
        .await;
        assert!(
            h.tp.approvals
                .decide(&id, &approver(), ApprovalDecision::Approve, "late")
                .await
                .is_err()
        );
        h.wait_for_event("the abandonment", |e| match e.body {
            EventBody::ApprovalAbandoned { id: i } if i == id => Some(()),
            _ => None,
        })
        .await;
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
    })
    .await;
}

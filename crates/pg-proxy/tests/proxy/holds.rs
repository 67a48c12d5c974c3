//! Holds end with their client: a held statement whose client goes away is abandoned, and
//! approving it later runs nothing; nothing of it reaches the server while it is held.

use std::sync::Arc;

use gatehouse_approvals::{ApprovalBroker, HoldLimits, MemoryStore};
use gatehouse_core::{ApprovalDecision, ApprovalFilter, ApprovalState, Approvals, EventBody};
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

#[tokio::test]
async fn holds_past_the_cap_are_refused_at_once() {
    gatehouse_testkit::within(T, async {
        let broker = ApprovalBroker::builder(Arc::new(MemoryStore::new()))
            .limits(HoldLimits {
                per_identity: 1,
                per_target: 50,
            })
            .build();
        let h = start(Options {
            policy: kind_policy(&[], &[K::Delete], 60_000),
            setup_sql: SETUP,
            approvals: Some(Arc::new(broker.clone())),
            ..Options::default()
        })
        .await;
        let a = h.connect().await;
        let held = tokio::spawn(async move { a.simple_query("delete from jobs").await });
        let pending = ApprovalFilter {
            state: Some(ApprovalState::Pending),
            requester: None,
            target: None,
        };
        let probe = broker.clone();
        eventually("one request is held", move || {
            futures::executor::block_on(probe.list(&pending)).is_ok_and(|l| l.len() == 1)
        })
        .await;
        let b = h.connect().await;
        let Err(err) = b.simple_query("delete from jobs where id = 1").await else {
            panic!("refused past the cap")
        };
        let (code, msg) = db_error(&err);
        assert_eq!(code, "53400", "{msg}");
        assert!(msg.contains("waiting for approval"), "{msg}");
        b.simple_query("select 1").await.unwrap();
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
        held.abort();
    })
    .await;
}

/// Waits until `id` is abandoned, then checks a late approval is refused and nothing ran.
async fn assert_abandoned_and_nothing_ran(h: &Harness, id: &gatehouse_core::ApprovalId) {
    let approvals = h.tp.approvals.clone();
    let probe = id.clone();
    eventually("the request is abandoned", move || {
        futures::executor::block_on(approvals.get(&probe))
            .is_ok_and(|r| r.state == ApprovalState::Abandoned)
    })
    .await;
    assert!(
        h.tp.approvals
            .decide(id, &approver(), ApprovalDecision::Approve, "late")
            .await
            .is_err()
    );
    h.wait_for_event("the abandonment", |e| match e.body {
        EventBody::ApprovalAbandoned { id: i } if &i == id => Some(()),
        _ => None,
    })
    .await;
    assert!(
        !h.tp
            .recorder
            .events()
            .iter()
            .any(|e| matches!(e.body, EventBody::ApprovalUsed { .. })),
        "no approval is used"
    );
    assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
}

#[tokio::test]
async fn a_hold_ends_with_the_session_when_the_token_expires() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            policy: kind_policy(&[], &[K::Delete], 60_000),
            setup_sql: SETUP,
            identity_ttl: Some(time::Duration::seconds(5)),
            ..Options::default()
        })
        .await;
        let mut c = RawClient::connect(h.port).await;
        c.send(&query("delete from jobs")).await;
        let id = h.tp.approvals.next_pending().await;
        assert_abandoned_and_nothing_ran(&h, &id).await;
        // The session ends for the expiry: FATAL, then the connection closes.
        let mut got = Vec::new();
        while let Some(m) = c.next().await {
            got.push(m);
        }
        assert!(
            got.iter().any(|m| m.field(b'S').as_deref() == Some("FATAL")
                && m.field(b'M').is_some_and(|t| t.contains("expired"))),
            "{got:?}"
        );
        let reason = h
            .wait_for_event("the session's end", |e| match e.body {
                EventBody::SessionEnd { reason, .. } => Some(reason),
                _ => None,
            })
            .await;
        assert_eq!(reason, "token expired");
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
    })
    .await;
}

#[tokio::test]
async fn a_terminate_while_held_abandons_the_hold_even_with_the_socket_open() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            policy: kind_policy(&[], &[K::Delete], 60_000),
            setup_sql: SETUP,
            ..Options::default()
        })
        .await;
        let mut c = RawClient::connect(h.port).await;
        c.send(&query("delete from jobs")).await;
        let id = h.tp.approvals.next_pending().await;
        let notice = c.next().await.expect("the waiting notice");
        assert_eq!(notice.tag, b'N', "{notice:?}");
        // Terminate, but the socket stays open (`c` lives to the end of the test).
        c.send(&msg(b'X', &[])).await;
        assert_abandoned_and_nothing_ran(&h, &id).await;
        drop(c);
    })
    .await;
}

#[tokio::test]
async fn what_a_client_sends_while_held_runs_after_the_hold_in_order() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            policy: kind_policy(&[], &[K::Delete], 60_000),
            setup_sql: SETUP,
            ..Options::default()
        })
        .await;
        let mut c = RawClient::connect(h.port).await;
        c.send(&query("delete from jobs where id = 1")).await;
        let id = h.tp.approvals.next_pending().await;
        let notice = c.next().await.expect("the waiting notice");
        assert_eq!(notice.tag, b'N', "{notice:?}");
        // Sent while held: a query whose text holds an 'X', then a Terminate.
        let mut more = query("select count(*) from jobs where 'X' <> ''");
        more.extend(msg(b'X', &[]));
        c.send(&more).await;
        // The Terminate among them is the client leaving.
        assert_abandoned_and_nothing_ran(&h, &id).await;
        drop(c);

        // Without one, what it sent runs after the hold, in order.
        let mut c = RawClient::connect(h.port).await;
        c.send(&query("delete from jobs where id = 1")).await;
        let id = h.tp.approvals.next_pending().await;
        let notice = c.next().await.expect("the waiting notice");
        assert_eq!(notice.tag, b'N', "{notice:?}");
        c.send(&query("select count(*) from jobs")).await;
        h.tp.approvals
            .decide(&id, &approver(), ApprovalDecision::Approve, "ok")
            .await
            .unwrap();
        let got = c.until_ready_n(2).await;
        assert_eq!(tags(&got), ["DELETE 1", "SELECT 1"], "{got:?}");
        let row = got.iter().find(|m| m.tag == b'D').expect("a row");
        assert!(row.body.ends_with(b"9"), "{row:?}");
    })
    .await;
}

#[tokio::test]
async fn after_a_refusal_the_rest_of_the_sync_group_is_not_held() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            policy: kind_policy(&[], &[K::Delete], 60_000),
            setup_sql: SETUP,
            ..Options::default()
        })
        .await;
        let mut c = RawClient::connect(h.port).await;
        let mut pipeline = parse("s1", "delete from jobs where id = $1");
        pipeline.extend(bind("", "s1", &["3"]));
        pipeline.extend(execute(""));
        pipeline.extend(bind("", "s1", &["2"]));
        pipeline.extend(execute(""));
        pipeline.extend(sync());
        c.send(&pipeline).await;
        let id = h.tp.approvals.next_pending().await;
        h.tp.approvals
            .decide(&id, &approver(), ApprovalDecision::Deny, "no")
            .await
            .unwrap();
        // The server skips the second Bind and Execute: no second request is opened, and the
        // client sees the refusal and ReadyForQuery without waiting on one.
        let got = c.until_ready().await;
        assert_eq!(errors(&got), ["42501"], "{got:?}");
        let all = ApprovalFilter {
            state: None,
            requester: None,
            target: None,
        };
        assert_eq!(h.tp.approvals.list(&all).await.unwrap().len(), 1);
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
        // The next group is decided again.
        let mut again = bind("", "s1", &["2"]);
        again.extend(execute(""));
        again.extend(sync());
        c.send(&again).await;
        let id2 = h.tp.approvals.next_pending().await;
        assert_ne!(id2, id);
        h.tp.approvals
            .decide(&id2, &approver(), ApprovalDecision::Approve, "ok")
            .await
            .unwrap();
        let got = c.until_ready().await;
        assert_eq!(tags(&got), ["DELETE 1"], "{got:?}");
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "9");
        // Each Bind-time decision is an operation of its own: its request, the approval's use
        // and the result name its index, not the Parse's.
        let first = h.tp.approvals.get(&id).await.unwrap().request.index;
        let second = h.tp.approvals.get(&id2).await.unwrap().request.index;
        assert!(first > 0 && second > first, "{first} {second}");
        let used = h
            .wait_for_event("the approval's use", |e| match e.body {
                EventBody::ApprovalUsed { index, id } if id == id2 => Some(index),
                _ => None,
            })
            .await;
        assert_eq!(used, second);
        let result = h
            .wait_for_event("the result", |e| match e.body {
                EventBody::OperationResult(r) if r.status == "DELETE 1" => Some(r.index),
                _ => None,
            })
            .await;
        assert_eq!(result, second);
    })
    .await;
}

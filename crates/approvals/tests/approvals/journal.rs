//! The journal store across restarts: pending requests reload, decided ones stay decided, a torn
//! last line is tolerated, damage elsewhere refuses to open.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_approvals::{ApprovalBroker, BrokerError, JournalStore};
use gatehouse_core::{ApprovalDecision, ApprovalError, ApprovalOutcome, ApprovalState, Approvals};

use crate::common::*;

fn reopen(path: &std::path::Path) -> ApprovalBroker {
    ApprovalBroker::builder(Arc::new(JournalStore::open(path).unwrap())).build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_pending_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvals.jsonl");
    let (pending_id, approved_id, denied_id) = {
        let broker = reopen(&path);
        let pending = broker
            .open(request(
                agent(),
                delete_users("1"),
                requirement(1, 600_000, Some(600_000)),
            ))
            .await
            .unwrap();
        let approved = broker
            .open(request(
                agent(),
                delete_users("2"),
                requirement(1, 600_000, Some(600_000)),
            ))
            .await
            .unwrap();
        let denied = broker
            .open(request(
                agent(),
                delete_users("3"),
                requirement(1, 600_000, None),
            ))
            .await
            .unwrap();
        broker
            .decide(
                &approved.id,
                &person("alice", &["dba"]),
                ApprovalDecision::Approve,
                "ok",
            )
            .await
            .unwrap();
        broker
            .decide(
                &denied.id,
                &person("alice", &["dba"]),
                ApprovalDecision::Deny,
                "no",
            )
            .await
            .unwrap();
        (pending.id, approved.id, denied.id)
        // broker and store dropped here: the "gateway" stops.
    };

    let (store, report) = JournalStore::open_with_report(&path).unwrap();
    assert_eq!(report.requests, 3);
    assert_eq!(report.torn_bytes_dropped, 0);
    let broker = ApprovalBroker::builder(Arc::new(store)).build();
    assert_eq!(
        broker.get(&pending_id).await.unwrap().state,
        ApprovalState::Pending
    );
    assert_eq!(
        broker.get(&approved_id).await.unwrap().state,
        ApprovalState::Approved
    );
    assert_eq!(
        broker.get(&denied_id).await.unwrap().state,
        ApprovalState::Denied
    );
    // Decided stays decided.
    let again = broker
        .decide(
            &denied_id,
            &person("bob", &["dba"]),
            ApprovalDecision::Approve,
            "overrule",
        )
        .await;
    assert!(matches!(again, Err(ApprovalError::AlreadyClosed(..))));
    // The grant window survives the restart too.
    let reuse = broker
        .open(request(
            agent(),
            delete_users("2"),
            requirement(1, 600_000, Some(600_000)),
        ))
        .await
        .unwrap();
    assert!(reuse.already_granted);
    // The reloaded pending request is still waitable and decidable.
    let waiter = {
        let broker = broker.clone();
        let id = pending_id.clone();
        tokio::spawn(async move { broker.wait(&id, Duration::from_secs(60)).await })
    };
    broker
        .decide(
            &pending_id,
            &person("bob", &["oncall"]),
            ApprovalDecision::Approve,
            "after restart",
        )
        .await
        .unwrap();
    let outcome = within(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(
        outcome,
        ApprovalOutcome::Approved {
            approvers: vec!["bob".into()]
        }
    );
    drop(broker);
    let broker = reopen(&path);
    assert_eq!(
        broker.get(&pending_id).await.unwrap().state,
        ApprovalState::Approved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_last_line_is_dropped_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvals.jsonl");
    let id = {
        let broker = reopen(&path);
        broker
            .open(request(
                agent(),
                delete_users("1"),
                requirement(1, 600_000, None),
            ))
            .await
            .unwrap()
            .id
    };
    let good_len = std::fs::metadata(&path).unwrap().len();
    // A crash in the middle of an append: half a line, no newline.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"revision":2,"record":{"id":"#).unwrap();
    drop(f);

    let (store, report) = JournalStore::open_with_report(&path).unwrap();
    assert_eq!(report.requests, 1);
    assert_eq!(report.torn_bytes_dropped, 29);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        good_len,
        "torn tail cut off"
    );
    let broker = ApprovalBroker::builder(Arc::new(store)).build();
    assert_eq!(broker.get(&id).await.unwrap().state, ApprovalState::Pending);
    // Appending after the cut produces a clean journal that reopens.
    broker
        .decide(
            &id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await
        .unwrap();
    drop(broker);
    let broker = reopen(&path);
    assert_eq!(
        broker.get(&id).await.unwrap().state,
        ApprovalState::Approved
    );

    // A damaged (zero-filled) last line, newline-terminated, is also a torn append.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(&[0u8; 64]).unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    let (_store, report) = JournalStore::open_with_report(&path).unwrap();
    assert_eq!(report.torn_bytes_dropped, 65);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_last_line_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("approvals.jsonl");
    {
        let broker = reopen(&path);
        for p in ["1", "2"] {
            broker
                .open(request(
                    agent(),
                    delete_users(p),
                    requirement(1, 600_000, None),
                ))
                .await
                .unwrap();
        }
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replacen("\"pending\"", "\"pendin", 1);
    std::fs::write(&path, edited).unwrap();
    match JournalStore::open(&path) {
        Err(BrokerError::JournalCorrupt { line, .. }) => assert_eq!(line, 1),
        other => panic!("expected a corrupt-journal error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_journal_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: opening fails with a clear error, nothing panics.
    let path = dir.path().join("is-a-dir");
    std::fs::create_dir(&path).unwrap();
    let err = JournalStore::open(&path).unwrap_err();
    assert!(matches!(err, BrokerError::JournalIo { .. }), "{err:?}");
    let _: ApprovalError = err.into();
}

//! The PostgreSQL store against a real PostgreSQL: the broker scenarios, two replicas sharing one
//! database (LISTEN/NOTIFY and the polling fallback), and a restart.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_approvals::{ApprovalBroker, ApprovalStore, PostgresStore, PostgresStoreOptions};
use gatehouse_core::{ApprovalDecision, ApprovalOutcome, ApprovalState, Approvals};
use gatehouse_testkit::pg::{PgCluster, TestDb};

use crate::broker::scenarios;
use crate::common::*;

fn options(poll: Duration, listen: bool) -> PostgresStoreOptions {
    PostgresStoreOptions {
        poll_interval: poll,
        statement_timeout: Duration::from_secs(10),
        listen,
        tls: None,
    }
}

/// A fresh database (starting the shared cluster on first use, off the async workers).
async fn fresh_db(prefix: &'static str) -> TestDb {
    tokio::task::spawn_blocking(move || PgCluster::shared().create_database(prefix))
        .await
        .unwrap()
}

/// Each scenario gets its own database. Built on a separate runtime-free thread because the
/// scenario macro wants a synchronous constructor.
fn pg_store() -> (Arc<dyn ApprovalStore>, TestDb) {
    let db = tokio::task::block_in_place(|| PgCluster::shared().create_database("approvals"));
    let conn = db.conn_str();
    let store = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async {
            within(
                LIMIT,
                PostgresStore::connect(&conn, options(Duration::from_millis(500), true)),
            )
            .await
            .unwrap()
        })
    });
    (Arc::new(store), db)
}

mod scenarios_on_postgres {
    use super::*;
    use crate::broker::*;
    scenarios!(on_postgres, pg_store());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_on_one_replica_releases_waiter_on_the_other() {
    let db = fresh_db("approvals_replicas").await;
    // Polling is slowed to a minute: only LISTEN/NOTIFY can release the waiter within a second.
    let slow_poll = options(Duration::from_secs(60), true);
    let a = ApprovalBroker::builder(Arc::new(
        within(
            LIMIT,
            PostgresStore::connect(&db.conn_str(), slow_poll.clone()),
        )
        .await
        .unwrap(),
    ))
    .build();
    let b = ApprovalBroker::builder(Arc::new(
        within(LIMIT, PostgresStore::connect(&db.conn_str(), slow_poll))
            .await
            .unwrap(),
    ))
    .build();
    let ticket = a
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 600_000, None),
        ))
        .await
        .unwrap();
    // The other replica sees the request.
    assert_eq!(
        b.get(&ticket.id).await.unwrap().state,
        ApprovalState::Pending
    );
    let waiter = {
        let a = a.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { a.wait(&id, Duration::from_secs(120)).await })
    };
    // Make sure the waiter is parked (it answers StillPending to nobody; just give it a moment).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    b.decide(
        &ticket.id,
        &person("alice", &["dba"]),
        ApprovalDecision::Approve,
        "from replica b",
    )
    .await
    .unwrap();
    let outcome = within(Duration::from_secs(1), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        ApprovalOutcome::Approved {
            approvers: vec!["alice".into()]
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_fallback_without_listen() {
    let db = fresh_db("approvals_poll").await;
    let a = ApprovalBroker::builder(Arc::new(
        within(
            LIMIT,
            PostgresStore::connect(&db.conn_str(), options(Duration::from_millis(100), false)),
        )
        .await
        .unwrap(),
    ))
    .build();
    let b = ApprovalBroker::builder(Arc::new(
        within(
            LIMIT,
            PostgresStore::connect(&db.conn_str(), options(Duration::from_secs(60), false)),
        )
        .await
        .unwrap(),
    ))
    .build();
    let ticket = a
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 600_000, None),
        ))
        .await
        .unwrap();
    let waiter = {
        let a = a.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { a.wait(&id, Duration::from_secs(120)).await })
    };
    b.decide(
        &ticket.id,
        &person("alice", &["dba"]),
        ApprovalDecision::Deny,
        "no",
    )
    .await
    .unwrap();
    let outcome = within(LIMIT, waiter).await.unwrap().unwrap();
    assert!(matches!(outcome, ApprovalOutcome::Denied { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_votes_on_two_replicas_both_count() {
    let db = fresh_db("approvals_cas").await;
    let opts = options(Duration::from_millis(200), true);
    let a = ApprovalBroker::builder(Arc::new(
        PostgresStore::connect(&db.conn_str(), opts.clone())
            .await
            .unwrap(),
    ))
    .build();
    let b = ApprovalBroker::builder(Arc::new(
        PostgresStore::connect(&db.conn_str(), opts).await.unwrap(),
    ))
    .build();
    for round in 0..5 {
        let ticket = a
            .open(request(
                agent(),
                delete_users(&round.to_string()),
                requirement(2, 600_000, None),
            ))
            .await
            .unwrap();
        let (alice, bob) = (person("alice", &["dba"]), person("bob", &["dba"]));
        let (ra, rb) = tokio::join!(
            a.decide(&ticket.id, &alice, ApprovalDecision::Approve, "ok"),
            b.decide(&ticket.id, &bob, ApprovalDecision::Approve, "ok"),
        );
        ra.unwrap();
        rb.unwrap();
        let rec = a.get(&ticket.id).await.unwrap();
        assert_eq!(rec.state, ApprovalState::Approved, "round {round}");
        assert_eq!(rec.votes.len(), 2, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_pending_and_decided() {
    let db = fresh_db("approvals_restart").await;
    let opts = options(Duration::from_millis(200), true);
    let (pending, decided) = {
        let broker = ApprovalBroker::builder(Arc::new(
            PostgresStore::connect(&db.conn_str(), opts.clone())
                .await
                .unwrap(),
        ))
        .build();
        let p = broker
            .open(request(
                agent(),
                delete_users("1"),
                requirement(1, 600_000, None),
            ))
            .await
            .unwrap();
        let d = broker
            .open(request(
                agent(),
                delete_users("2"),
                requirement(1, 600_000, None),
            ))
            .await
            .unwrap();
        broker
            .decide(
                &d.id,
                &person("alice", &["dba"]),
                ApprovalDecision::Approve,
                "ok",
            )
            .await
            .unwrap();
        (p.id, d.id)
    };
    // A new instance (the table already exists: creation is idempotent).
    let broker = ApprovalBroker::builder(Arc::new(
        PostgresStore::connect(&db.conn_str(), opts).await.unwrap(),
    ))
    .build();
    assert_eq!(
        broker.get(&pending).await.unwrap().state,
        ApprovalState::Pending
    );
    assert_eq!(
        broker.get(&decided).await.unwrap().state,
        ApprovalState::Approved
    );
    broker
        .decide(
            &pending,
            &person("bob", &["dba"]),
            ApprovalDecision::Approve,
            "after restart",
        )
        .await
        .unwrap();
    assert!(matches!(
        within(LIMIT, broker.wait(&pending, Duration::from_secs(5)))
            .await
            .unwrap(),
        ApprovalOutcome::Approved { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_fails_closed() {
    // Bound but never accepting-and-answering: a listener we hold and never serve.
    let listener = gatehouse_testkit::net::bind_loopback();
    let port = listener.local_addr().unwrap().port();
    let opts = PostgresStoreOptions {
        statement_timeout: Duration::from_millis(500),
        ..options(Duration::from_millis(100), false)
    };
    let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let result = within(LIMIT, PostgresStore::connect(&conn, opts)).await;
    assert!(result.is_err());
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_tls_over_tcp_with_a_scram_role() {
    let db = fresh_db("approvals_tls").await;
    let (port, ca) = tokio::task::spawn_blocking(|| {
        let cluster = PgCluster::shared();
        cluster.create_role("approvals_tls_role", "s3cret-approvals");
        (
            cluster.port(),
            cluster.ca_cert_path().map(|p| p.to_path_buf()),
        )
    })
    .await
    .unwrap();
    db.psql("GRANT ALL ON SCHEMA public TO approvals_tls_role")
        .unwrap();
    let ca = ca.expect("the shared cluster serves TLS");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret-approvals\n").unwrap();
    let text = format!(
        "[store]\nkind = \"postgres\"\nurl = \"host=127.0.0.1 port={port} user=approvals_tls_role dbname={} sslmode=require\"\npassword_file = {:?}\npoll_interval_ms = 200\n[store.tls]\nca_file = {:?}\n",
        db.name,
        pw.display().to_string(),
        ca.display().to_string(),
    );
    let config = gatehouse_approvals::ApprovalsConfig::from_toml(&text).unwrap();
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "no password in config debug output"
    );
    let broker = within(LIMIT, config.build(None)).await.unwrap();
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 600_000, None),
        ))
        .await
        .unwrap();
    let waiter = {
        let broker = broker.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { broker.wait(&id, Duration::from_secs(60)).await })
    };
    broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "over tls",
        )
        .await
        .unwrap();
    assert!(matches!(
        within(LIMIT, waiter).await.unwrap().unwrap(),
        ApprovalOutcome::Approved { .. }
    ));

    // The same server with only the public roots trusted: refused, not downgraded.
    let untrusted = text.replace(&format!("ca_file = {:?}\n", ca.display().to_string()), "");
    assert_ne!(untrusted, text);
    let config = gatehouse_approvals::ApprovalsConfig::from_toml(&untrusted).unwrap();
    let refused = within(LIMIT, config.build(None)).await;
    assert!(refused.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_client_reconnect_after_the_database_drops_them() {
    let db = fresh_db("approvals_reconnect").await;
    // Polling slowed to a minute: only a re-established LISTEN can wake the waiter in time.
    let slow_poll = options(Duration::from_secs(60), true);
    let a = ApprovalBroker::builder(Arc::new(
        within(
            LIMIT,
            PostgresStore::connect(&db.conn_str(), slow_poll.clone()),
        )
        .await
        .unwrap(),
    ))
    .build();
    let b = ApprovalBroker::builder(Arc::new(
        within(LIMIT, PostgresStore::connect(&db.conn_str(), slow_poll))
            .await
            .unwrap(),
    ))
    .build();
    let ticket = a
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 600_000, None),
        ))
        .await
        .unwrap();
    // The database drops every session of this database (failover, restart, admin kill).
    let killed = db
        .psql(&format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ))
        .unwrap();
    assert!(
        killed.trim().parse::<u32>().unwrap() >= 4,
        "killed {killed}"
    );
    // Operations fail closed while a connection is dead, then the store reconnects.
    within(LIMIT, async {
        while a.get(&ticket.id).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Wait for both listeners to be back (they show up in pg_stat_activity as LISTEN sessions).
    within(LIMIT, async {
        loop {
            let listening = db
                .psql(&format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND query LIKE 'LISTEN%'",
                    db.name
                ))
                .unwrap();
            if listening.trim() == "2" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let waiter = {
        let a = a.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { a.wait(&id, Duration::from_secs(120)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    within(LIMIT, async {
        while b
            .decide(
                &ticket.id,
                &person("alice", &["dba"]),
                ApprovalDecision::Approve,
                "after failover",
            )
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let outcome = within(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, ApprovalOutcome::Approved { .. }));
}

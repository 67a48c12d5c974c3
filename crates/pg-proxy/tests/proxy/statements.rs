//! Per-statement decisions over the simple and extended protocols, transactions, pipelining,
//! binary results and cancel.

use std::time::Duration;

use gatehouse_core::{EventBody, Operation, Verdict};
use tokio_postgres::SimpleQueryMessage;

use crate::common::*;

const SETUP: &str = "CREATE TABLE items (id int primary key, name text, price numeric); \
                     INSERT INTO items VALUES (1, 'apple', 1.5), (2, 'pear', 2.25);";

fn opts() -> Options {
    Options {
        policy: keyword_policy(&["drop ", "truncate"], &[], 1000),
        setup_sql: SETUP,
        ..Options::default()
    }
}

#[tokio::test]
async fn extended_protocol_prepared_binary_and_pipelined() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let stmt = c
            .prepare("select id, name, price::float8 from items where id = $1")
            .await
            .unwrap();
        let row = c.query_one(&stmt, &[&1i32]).await.unwrap();
        // tokio-postgres asks for binary results: int4 and float8 come back binary, intact.
        assert_eq!(row.get::<_, i32>(0), 1);
        assert_eq!(row.get::<_, &str>(1), "apple");
        assert_eq!(row.get::<_, f64>(2), 1.5);
        // Pipelining: several queries in flight at once.
        let (a, b, d) = futures::join!(
            c.query_one(&stmt, &[&1i32]),
            c.query_one(&stmt, &[&2i32]),
            c.query("select name from items order by id", &[])
        );
        assert_eq!(a.unwrap().get::<_, &str>(1), "apple");
        assert_eq!(b.unwrap().get::<_, &str>(1), "pear");
        assert_eq!(d.unwrap().len(), 2);
        // Unnamed statements with parameters, many times.
        for i in 0..20i64 {
            let n: i64 = c
                .query_one("select $1::int8 + 1", &[&i])
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, i + 1);
        }
    })
    .await;
}

#[tokio::test]
async fn denied_statement_in_a_transaction_does_not_commit_earlier_work() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let err = c
            .simple_query(
                "BEGIN; INSERT INTO items VALUES (3, 'plum', 3); DROP TABLE items; COMMIT",
            )
            .await
            .err()
            .unwrap_or_else(|| panic!("denied"));
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501");
        assert!(msg.contains("no-ddl"), "{msg}");
        assert!(msg.contains("schema changes are not allowed"), "{msg}");
        // PostgreSQL's own state: the transaction is aborted, the COMMIT never ran.
        let err = c.simple_query("select 1").await.err().unwrap();
        assert_eq!(db_error(&err).0, "25P02");
        c.simple_query("ROLLBACK").await.unwrap();
        let n: i64 = c
            .query_one("select count(*) from items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            n, 2,
            "the INSERT before the denied statement was not committed"
        );
        assert!(h.db.psql("select count(*) from items").unwrap() == "2");
        // The table still exists and the session is usable.
        c.simple_query("select * from items").await.unwrap();
        // Both statements were decided and recorded.
        let ops: Vec<_> =
            h.tp.recorder
                .events()
                .into_iter()
                .filter_map(|e| match e.body {
                    EventBody::Operation {
                        operation: Operation::Sql(s),
                        decision,
                        ..
                    } => Some((s.text, decision.verdict)),
                    _ => None,
                })
                .collect();
        assert!(
            ops.contains(&("DROP TABLE items".to_string(), Verdict::Deny)),
            "{ops:?}"
        );
        assert!(
            ops.iter()
                .any(|(t, v)| t.starts_with("INSERT") && *v == Verdict::Allow)
        );
    })
    .await;
}

#[tokio::test]
async fn denied_statement_in_extended_transaction_and_pipeline() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let mut c = h.connect().await;
        let tx = c.transaction().await.unwrap();
        tx.execute("insert into items values (4, 'fig', 4)", &[])
            .await
            .unwrap();
        let err = tx.execute("drop table items", &[]).await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501");
        assert!(msg.contains("no-ddl"));
        // The transaction is aborted upstream, exactly as the client was told.
        let err = tx.execute("select 1", &[]).await.err().unwrap();
        assert_eq!(db_error(&err).0, "25P02");
        drop(tx);
        let n: i64 = c
            .query_one("select count(*) from items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
        // Pipelined: an allowed query after a denied one in flight at the same time.
        let (bad, good) = futures::join!(
            c.execute("truncate items", &[]),
            c.query("select id from items", &[])
        );
        assert_eq!(db_error(&bad.err().unwrap()).0, "42501");
        assert_eq!(good.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn multi_statement_simple_query_returns_every_result() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let msgs = c
            .simple_query("select 1; select 'a;b' as x; ; select name from items order by id")
            .await
            .unwrap();
        let rows: Vec<String> = msgs
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(rows, vec!["1", "a;b", "apple", "pear"]);
    })
    .await;
}

#[tokio::test]
async fn cancel_of_pg_sleep_reaches_the_upstream() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let token = c.cancel_token();
        let sleeper = tokio::spawn(async move {
            let r = c.simple_query("select pg_sleep(30)").await;
            (r, c)
        });
        // Cancel once the statement is running upstream.
        loop {
            let running = h
                .db
                .psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'")
                .unwrap();
            if running == "1" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
        let (r, c) = sleeper.await.unwrap();
        let (code, _) = db_error(&r.err().unwrap());
        assert_eq!(code, "57014");
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn recorder_failure_refuses_the_statement_and_nothing_runs() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        h.tp.recorder.set_failing(true);
        let err = c
            .simple_query("insert into items values (9, 'x', 1)")
            .await
            .err()
            .unwrap();
        assert_eq!(db_error(&err).0, "58030");
        h.tp.recorder.set_failing(false);
        assert_eq!(
            h.db.psql("select count(*) from items where id = 9")
                .unwrap(),
            "0"
        );
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn results_are_recorded_with_status_and_rows() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        c.simple_query("select * from items").await.unwrap();
        // Result summaries are recorded off the client's path: wait for it.
        let r = h
            .wait_for_event("result summary", |e| match e.body {
                EventBody::OperationResult(r) if r.status == "SELECT 2" => Some(r),
                _ => None,
            })
            .await;
        assert_eq!(r.rows, Some(2));
        assert!(r.bytes_out > 0);
        // A failed statement's status is its SQLSTATE, and its rows are the rows it sent (none
        // here), never the SQLSTATE read as a number.
        c.simple_query("select 1 / 0").await.unwrap_err();
        let r = h
            .wait_for_event("error result", |e| match e.body {
                EventBody::OperationResult(r) if r.status == "22012" => Some(r),
                _ => None,
            })
            .await;
        assert_eq!(r.rows, Some(0));
    })
    .await;
}

/// The client sees the server's real process id (it finds itself in `pg_stat_activity`, matches
/// notifications, ends its own backend), while the cancel secret stays the gateway's.
#[tokio::test]
async fn the_client_sees_its_backend_pid_and_can_terminate_its_own_backend() {
    use crate::raw::{RawClient, query};
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let mut raw = RawClient::connect(h.port).await;
        let key = raw
            .startup
            .iter()
            .find(|m| m.tag == b'K')
            .expect("BackendKeyData")
            .body
            .clone();
        let pid = i32::from_be_bytes(key[..4].try_into().unwrap());
        raw.send(&query(
            "select pg_backend_pid(), (select count(*) from pg_stat_activity where pid = pg_backend_pid())",
        ))
        .await;
        let got = raw.until_ready().await;
        let row = got.iter().find(|m| m.tag == b'D').expect("a row");
        let text = String::from_utf8_lossy(&row.body).into_owned();
        assert!(text.contains(&pid.to_string()), "pid {pid} vs row {text:?}");
        // LISTEN/NOTIFY: the notification carries the same pid.
        raw.send(&query("listen chan; notify chan, 'hi'")).await;
        let got = raw.until_ready().await;
        let note = got.iter().find(|m| m.tag == b'A').expect("a notification");
        assert_eq!(i32::from_be_bytes(note.body[..4].try_into().unwrap()), pid);
        // (The secret is the gateway's own: cancel_of_pg_sleep_reaches_the_upstream shows a
        // cancel with it still reaches the server; cancel::tests that it never is the server's.)
        assert_eq!(key.len(), 8);
        // Ending its own backend ends the session with the server's FATAL.
        raw.send(&query("select pg_terminate_backend(pg_backend_pid())")).await;
        let mut fatal = None;
        while let Some(m) = raw.next().await {
            if m.tag == b'E' {
                fatal = m.code();
            }
        }
        assert_eq!(fatal.as_deref(), Some("57P01"), "the session ends as the server ended it");
    })
    .await;
}

fn pgbench(port: u16, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(
        gatehouse_testkit::pg::PgCluster::shared()
            .bin_dir()
            .join("pgbench"),
    );
    cmd.args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "agent",
            "app",
        ])
        .env("PGPASSWORD", TOKEN)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGSSLMODE", "disable");
    gatehouse_testkit::process::run_with_timeout(cmd, Duration::from_secs(120))
        .expect("pgbench finishes within 120 s")
}

/// pgbench as a new user runs it: every initialisation step (drop, tables, client-side COPY …
/// FREEZE, server-side generation, VACUUM, primary and foreign keys), then select-only runs in
/// the simple, extended and prepared protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_with_every_step_and_runs_in_every_protocol() {
    let h = start(Options::default()).await;
    let port = h.port;
    for init in ["dtgvpf", "dtGvp"] {
        let out =
            tokio::task::spawn_blocking(move || pgbench(port, &["-i", "-I", init, "-s", "1"]))
                .await
                .unwrap();
        assert!(
            out.status.success(),
            "pgbench -i -I {init}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            h.db.psql("select count(*) from pgbench_accounts")
                .unwrap()
                .trim(),
            "100000",
            "-I {init}"
        );
    }
    for mode in ["simple", "extended", "prepared"] {
        let out = tokio::task::spawn_blocking(move || {
            pgbench(port, &["-n", "-S", "-t", "50", "-c", "2", "-M", mode])
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success()
                && stdout.contains("number of transactions actually processed: 100/100"),
            "-S -M {mode}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

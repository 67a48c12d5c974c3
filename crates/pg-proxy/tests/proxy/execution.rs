//! Every execution is decided by what it runs: statement names follow what the server accepted,
//! SQL `PREPARE`/`EXECUTE`/`DEALLOCATE` resolve to the prepared text, and a review holds one
//! execution with exactly its values.

use gatehouse_core::{ApprovalDecision, Approvals, Operation};
use gatehouse_sql::StatementKind as K;

use crate::common::*;
use crate::raw::*;

const SETUP: &str = "CREATE TABLE jobs (id int); INSERT INTO jobs SELECT generate_series(1, 10);";

/// Deletes are reviewed; nobody approves unless the test does, so a review times out quickly.
fn opts(timeout_ms: u64) -> Options {
    Options {
        policy: kind_policy(&[K::Truncate], &[K::Delete], timeout_ms),
        setup_sql: SETUP,
        ..Options::default()
    }
}

fn jobs(h: &Harness) -> String {
    h.db.psql("select count(*) from jobs").unwrap()
}

#[tokio::test]
async fn a_rejected_second_parse_does_not_change_what_a_name_runs() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(300)).await;
        let mut c = RawClient::connect(h.port).await;
        // One write: the name is defined as a DELETE (its review waits for a Bind), then a
        // SELECT is parsed under the same name — which the server refuses (42P05) — then the
        // name is bound and executed.
        c.send(
            &[
                parse("s1", "delete from jobs"),
                sync(),
                parse("s1", "select 1"),
                sync(),
                bind("", "s1", &[]),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
        let answers = c.until_ready_n(3).await;
        assert_eq!(errors(&answers), ["42P05", "57014"], "{answers:?}");
        assert_eq!(jobs(&h), "10");
        // The session is usable, and the name still runs the DELETE: reviewed again.
        c.send(&[bind("", "s1", &[]), execute(""), sync()].concat())
            .await;
        let answers = c.until_ready().await;
        assert_eq!(errors(&answers), ["57014"], "{answers:?}");
        assert_eq!(jobs(&h), "10");
    })
    .await;
}

#[tokio::test]
async fn sql_execute_of_a_parse_only_delete_is_decided_as_the_delete() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(300)).await;
        let mut raw = RawClient::connect(h.port).await;
        // Parse only: nothing runs, so nothing is reviewed yet.
        raw.send(&[parse("d1", "delete from jobs"), sync()].concat())
            .await;
        assert!(errors(&raw.until_ready().await).is_empty());
        raw.send(&query("execute d1")).await;
        let answers = raw.until_ready().await;
        assert_eq!(errors(&answers), ["57014"], "{answers:?}");
        let e = answers.iter().find(|m| m.tag == b'E').unwrap();
        assert!(e.field(b'M').unwrap().contains("timed out"), "{e:?}");
        assert_eq!(jobs(&h), "10");
        // A portal bound from a statement whose text is `EXECUTE name` is decided the same way.
        raw.send(
            &[
                parse("", "prepare d as delete from jobs"),
                bind("", "", &[]),
                execute(""),
                sync(),
                parse("x", "execute d"),
                bind("", "x", &[]),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
        let answers = raw.until_ready_n(2).await;
        assert_eq!(errors(&answers), ["57014"], "{answers:?}");
        assert_eq!(jobs(&h), "10");
    })
    .await;
}

#[tokio::test]
async fn one_approval_of_a_prepared_delete_covers_one_execution() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(30_000)).await;
        let c = h.connect().await;
        // PREPARE runs nothing: it is not held.
        c.simple_query("prepare p(int) as delete from jobs where id = $1")
            .await
            .unwrap();
        assert!(h.tp.approvals.pending().is_empty());
        let approvals = h.tp.approvals.clone();
        let approving = tokio::spawn(async move {
            let id = approvals.next_pending().await;
            let rec = approvals.get(&id).await.unwrap();
            approvals
                .decide(&id, &approver(), ApprovalDecision::Approve, "OPS-7")
                .await
                .unwrap();
            rec
        });
        c.simple_query("execute p(1)").await.unwrap();
        let rec = approving.await.unwrap();
        // The approver saw the statement the name runs and the exact values.
        let Operation::Sql(op) = rec.request.operation else {
            panic!()
        };
        assert_eq!(op.text, "delete from jobs where id = $1");
        assert_eq!(op.parameters, vec![Some("1".to_string())]);
        assert_eq!(jobs(&h), "9");
        // The next execution needs its own approval: denied here.
        let approvals = h.tp.approvals.clone();
        tokio::spawn(async move {
            let id = approvals.next_pending().await;
            approvals
                .decide(&id, &approver(), ApprovalDecision::Deny, "one is enough")
                .await
                .unwrap();
        });
        let Err(err) = c.simple_query("execute p(2)").await else {
            panic!("denied")
        };
        assert_eq!(db_error(&err).0, "42501");
        assert_eq!(jobs(&h), "9");
        // A Bind of the SQL-prepared name is an execution too.
        let mut raw = RawClient::connect(h.port).await;
        raw.send(&query("prepare q as delete from jobs")).await;
        assert!(errors(&raw.until_ready().await).is_empty());
        let approvals = h.tp.approvals.clone();
        tokio::spawn(async move {
            let id = approvals.next_pending().await;
            approvals
                .decide(&id, &approver(), ApprovalDecision::Deny, "no")
                .await
                .unwrap();
        });
        raw.send(&[bind("", "q", &[]), execute(""), sync()].concat())
            .await;
        assert_eq!(errors(&raw.until_ready().await), ["42501"]);
        assert_eq!(jobs(&h), "9");
    })
    .await;
}

#[tokio::test]
async fn execute_of_a_name_the_gateway_never_saw_prepared_is_refused() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(300)).await;
        let c = h.connect().await;
        let err = c.simple_query("execute nowhere(1)").await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "26000");
        assert!(msg.contains("did not see"), "{msg}");
        // Deallocated names are gone for the gateway too; a name prepared in one message and
        // executed in the same message is resolved in order.
        c.simple_query("prepare a as select 1; deallocate a")
            .await
            .unwrap();
        let err = c.simple_query("execute a").await.err().unwrap();
        assert_eq!(db_error(&err).0, "26000");
        let rows = c
            .simple_query("prepare b as select 2; execute b; deallocate all")
            .await
            .unwrap();
        assert!(rows.iter().any(|m| matches!(
            m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2")
        )));
        let err = c.simple_query("execute b").await.err().unwrap();
        assert_eq!(db_error(&err).0, "26000");
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn rows_of_an_executed_prepared_statement_are_masked_as_that_statement() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            masker: gatehouse_testkit::layers::LiteralMasker::new()
                .column("public.customers.email"),
            policy: kind_policy(&[], &[], 1_000),
            setup_sql: "CREATE TABLE customers (id int, email text);
                INSERT INTO customers VALUES (1, 'ann@example.com');",
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        let rows = c
            .simple_query("prepare pe as select upper(email) as e from customers; execute pe")
            .await
            .unwrap();
        let values: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert_eq!(values.len(), 1);
        assert!(!values[0].contains('@'), "{values:?}");
        // The same through the extended protocol (a portal of `EXECUTE pe`).
        let rows = c.query("execute pe", &[]).await.unwrap();
        let v: String = rows[0].get(0);
        assert!(!v.contains('@'), "{v}");
        // Copying its rows out of the masking boundary is refused.
        assert!(
            c.simple_query("create table leak as execute pe")
                .await
                .is_err()
        );
        assert_eq!(
            h.db.psql("select count(*) from pg_class where relname = 'leak'")
                .unwrap(),
            "0"
        );
    })
    .await;
}

/// A statement prepared with SQL `PREPARE` and run through the extended protocol (Bind of its
/// name, with or without a Describe of the portal, then Execute), as drivers do with a name
/// they did not parse themselves: rows come back masked as that statement's, and the session
/// stays usable.
#[tokio::test]
async fn a_sql_prepared_name_bound_and_executed_returns_its_rows_masked() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            masker: gatehouse_testkit::layers::LiteralMasker::new()
                .column("public.customers.email"),
            policy: kind_policy(&[], &[], 1_000),
            setup_sql: "CREATE TABLE customers (id int, email text);
                INSERT INTO customers VALUES (1, 'ann@example.com'), (2, 'bob@example.com');",
            ..Options::default()
        })
        .await;
        let mut raw = RawClient::connect(h.port).await;
        raw.send(&query(
            "prepare sel(int) as select id + $1 as n, upper(email) as e from customers order by id",
        ))
        .await;
        assert!(errors(&raw.until_ready().await).is_empty());
        for describe in [true, false] {
            let mut msgs = vec![bind("", "sel", &["40"])];
            if describe {
                msgs.push(describe_portal(""));
            }
            msgs.extend([execute(""), sync()]);
            raw.send(&msgs.concat()).await;
            let got = raw.until_ready().await;
            assert!(errors(&got).is_empty(), "{:?}", errors(&got));
            let t: Vec<u8> = got.iter().map(|m| m.tag).collect();
            let want: &[u8] = if describe { b"2TDDCZ" } else { b"2DDCZ" };
            assert_eq!(t, want, "{got:?}");
            let rows: Vec<String> = got
                .iter()
                .filter(|m| m.tag == b'D')
                .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                .collect();
            assert!(rows[0].contains("41") && rows[1].contains("42"), "{rows:?}");
            assert!(rows.iter().all(|r| !r.contains('@')), "{rows:?}");
        }
        raw.send(&query("select 1")).await;
        assert!(errors(&raw.until_ready().await).is_empty());
    })
    .await;
}

/// A name written with Unicode escapes (`U&"\0073\0031"` is `s1` to PostgreSQL) cannot make the
/// gateway decide an `EXECUTE` as another prepared statement than the one the server runs: it is
/// refused as unreadable, in either protocol, and nothing runs.
#[tokio::test]
async fn execute_of_a_unicode_escaped_name_runs_nothing_it_did_not_decide() {
    gatehouse_testkit::within(T, async {
        let h = start(opts(300)).await;
        let mut raw = RawClient::connect(h.port).await;
        raw.send(
            &[
                parse("s1", "delete from jobs"),
                parse("u", "select 1"),
                sync(),
            ]
            .concat(),
        )
        .await;
        assert!(errors(&raw.until_ready().await).is_empty());
        raw.send(&query(
            "prepare s2 as delete from jobs; prepare u2 as select 1",
        ))
        .await;
        assert!(errors(&raw.until_ready().await).is_empty());
        for text in [
            r#"EXECUTE U&"\0073\0031""#,
            r#"execute u&"s\0032""#,
            r#"EXECUTE U&"!0073!0031" UESCAPE '!'"#,
            r#"EXPLAIN ANALYZE EXECUTE U&"\0073\0031""#,
            r#"CREATE TABLE t2 AS EXECUTE U&"\0073\0032""#,
        ] {
            raw.send(&query(text)).await;
            let answers = raw.until_ready().await;
            assert_eq!(errors(&answers).len(), 1, "{text}: {answers:?}");
            assert!(
                !answers.iter().any(|m| m.tag == b'C'),
                "{text} completed: {answers:?}"
            );
            // Through the extended protocol too.
            raw.send(&[parse("", text), bind("", "", &[]), execute(""), sync()].concat())
                .await;
            let answers = raw.until_ready().await;
            assert_eq!(errors(&answers).len(), 1, "{text}: {answers:?}");
            assert_eq!(jobs(&h), "10", "{text}");
        }
        // The session goes on, and plain names still work.
        raw.send(&query("execute u")).await;
        let answers = raw.until_ready().await;
        assert!(errors(&answers).is_empty(), "{answers:?}");
    })
    .await;
}

/// A cursor declared in SQL and run as a protocol portal (Describe / Execute of its name): the
/// execution is decided as the FETCH it is, its rows come back masked (a column as the catalog
/// names it, an expression whole since its origin is not traced), and the session stays usable
/// (it ended with 08006, DataRow outside a result).
#[tokio::test]
async fn a_sql_cursor_executed_as_a_portal_returns_its_rows_masked() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            masker: gatehouse_testkit::layers::LiteralMasker::new()
                .column("public.customers.email"),
            policy: kind_policy(&[], &[], 1_000),
            setup_sql: "CREATE TABLE customers (id int, email text);
                INSERT INTO customers VALUES (1, 'ann@example.com'), (2, 'bob@example.com');",
            ..Options::default()
        })
        .await;
        let mut raw = RawClient::connect(h.port).await;
        raw.send(&query(
            "begin; declare c1 cursor for select * from customers order by id; \
             declare c2 cursor for select id, upper(email) as e from customers order by id",
        ))
        .await;
        assert!(errors(&raw.until_ready().await).is_empty());
        for (portal, describe) in [("c1", true), ("c2", false)] {
            let mut msgs = Vec::new();
            if describe {
                msgs.push(describe_portal(portal));
            }
            msgs.extend([execute(portal), sync()]);
            raw.send(&msgs.concat()).await;
            let got = raw.until_ready().await;
            assert!(errors(&got).is_empty(), "{portal}: {:?}", errors(&got));
            let rows: Vec<String> = got
                .iter()
                .filter(|m| m.tag == b'D')
                .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                .collect();
            assert_eq!(rows.len(), 2, "{portal}: {got:?}");
            assert!(
                rows.iter()
                    .all(|r| !r.contains('@') && !r.contains("EXAMPLE")),
                "{portal}: {rows:?}"
            );
        }
        raw.send(&query("commit; select 1")).await;
        assert!(errors(&raw.until_ready().await).is_empty());
        let fetches =
            h.tp.recorder
                .events()
                .into_iter()
                .filter(|e| match &e.body {
                    gatehouse_core::EventBody::Operation {
                        operation: Operation::Sql(s),
                        ..
                    } => s.text.starts_with("FETCH FORWARD ALL FROM \"c"),
                    _ => false,
                })
                .count();
        assert_eq!(fetches, 2, "each cursor execution is decided and recorded");
    })
    .await;
}

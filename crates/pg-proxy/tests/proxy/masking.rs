//! Masking of results: catalog-resolved columns (aliases, views), SQL lineage (expressions, CTEs,
//! subqueries, aggregates, row_to_json), content detection in free text, binary results, COPY,
//! error DETAIL lines, and refusal of statements that would copy a masked column elsewhere.

use gatehouse_testkit::layers::LiteralMasker;
use tokio_postgres::SimpleQueryMessage;

use crate::common::*;

const CARD: &str = "4111 1111 1111 1111";

const SETUP: &str = "CREATE TABLE customers (id int primary key, email text unique, note text, age int); \
     INSERT INTO customers VALUES \
       (1, 'ann@example.com', 'paid with 4111 1111 1111 1111 yesterday', 41), \
       (2, 'bob@example.com', 'nothing to see', 37); \
     CREATE VIEW contacts AS SELECT id, email AS contact FROM customers; \
     CREATE VIEW contacts2 AS SELECT id AS n, contact AS c FROM contacts;";

fn opts() -> Options {
    Options {
        masker: LiteralMasker::new()
            .column("public.customers.email")
            .literal(CARD, "[card]"),
        policy: keyword_policy(&["drop "], &[], 1000),
        setup_sql: SETUP,
        ..Options::default()
    }
}

async fn texts(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

fn leaks(rows: &[Vec<Option<String>>]) -> bool {
    rows.iter().flatten().flatten().any(|v| {
        v.contains("ann@example.com") || v.contains("bob@example.com") || v.contains("@example")
    })
}

#[tokio::test]
async fn every_bypass_form_of_a_masked_column_is_masked() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let forms = [
            "select email from customers",
            "select email as contact from customers",
            "select c.email from customers c",
            "select contact from contacts",
            "select c from contacts2",
            "select lower(email) from customers",
            "select encode(email::bytea, 'hex') from customers",
            "select substr(email, 1, 5) from customers",
            "select 'x' || email || 'y' as z from customers",
            "with t as (select email as e from customers) select e from t",
            "select e from (select email as e from customers) s",
            "select row_to_json(c)::text from customers c",
            "select string_agg(email, ',') from customers",
            "select upper(contact) from contacts",
            "select (select max(email) from customers) as m",
        ];
        for sql in forms {
            let rows = texts(&c, sql).await;
            assert!(!rows.is_empty(), "{sql}: no rows");
            assert!(!leaks(&rows), "{sql} leaked: {rows:?}");
        }
        // Unmasked columns pass untouched.
        let rows = texts(&c, "select id, age from customers order by id").await;
        assert_eq!(rows[0], vec![Some("1".to_string()), Some("41".to_string())]);
    })
    .await;
}

#[tokio::test]
async fn extended_protocol_and_binary_results_are_masked() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let rows = c
            .query("select id, email, note from customers order by id", &[])
            .await
            .unwrap();
        let email: &str = rows[0].get(1);
        assert!(!email.contains('@'), "{email}");
        let note: &str = rows[0].get(2);
        assert_eq!(note, "paid with [card] yesterday");
        // Parameters, prepared statement, executed several times.
        let st = c
            .prepare("select email || $1 from customers where id = $2")
            .await
            .unwrap();
        for _ in 0..3 {
            let r = c.query_one(&st, &[&"!", &2i32]).await.unwrap();
            let v: &str = r.get(0);
            assert!(!v.contains("bob@"), "{v}");
        }
    })
    .await;
}

#[tokio::test]
async fn content_detectors_run_on_every_text_value() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let rows = texts(&c, "select note from customers where id = 1").await;
        assert_eq!(rows[0][0].as_deref(), Some("paid with [card] yesterday"));
        let rows = texts(&c, "select email, note from customers").await;
        assert!(!leaks(&rows));
        // Recordings and results carry findings, never the value. Recording frames reach the
        // sink in batches (within 50 ms): wait for the masked rows.
        let dump = loop {
            let dump = h.audit_dump();
            if dump.contains("[card]") {
                break dump;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(!dump.contains(CARD), "{dump}");
        assert!(!dump.contains("ann@example.com"));
        // Values computed by the query itself are scanned too.
        let rows = texts(&c, "select 'literal 4111 ' || '1111 1111 1111'").await;
        assert_eq!(rows[0][0].as_deref(), Some("literal [card]"));
    })
    .await;
}

#[tokio::test]
async fn copy_out_is_masked_and_copy_of_masked_column_is_refused() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        // COPY of a table with a masked column: refused (content detectors alone can't see columns).
        let err = c.simple_query("copy customers to stdout").await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501");
        assert!(msg.contains("masked-column-copy"), "{msg}");
        // CREATE TABLE AS / INSERT … SELECT / CREATE VIEW over a masked column: refused.
        for sql in [
            "create table leak as select email from customers",
            "create table leak2 (e text); insert into leak2 select email from customers",
            "create view leak3 as select email from customers",
            // An UPDATE that copies a masked column into one the plan does not mask, then reads
            // it back: refused (its SET list takes values from columns).
            "update customers set note = encode(convert_to(email, 'UTF8'), 'hex')",
            "update customers set note = (select c.email from customers c limit 1)",
            "insert into customers (id, email) values (1, 'x') \
             on conflict (id) do update set note = customers.email",
        ] {
            let err = c.simple_query(sql).await.err().unwrap_or_else(|| panic!("{sql} ran"));
            assert_eq!(db_error(&err).0, "42501", "{sql}");
        }
        assert_eq!(h.db.psql("select count(*) from pg_class where relname like 'leak%'").unwrap(), "0");
        assert_eq!(
            h.db.psql("select count(*) from customers where note like '%@%' or note ~ '^[0-9a-f]{16,}$'").unwrap(),
            "0"
        );
        // An UPDATE that sets constants runs.
        c.simple_query("update customers set note = 'checked' where id = 1").await.unwrap();
        // COPY of a table without masked columns runs, and content detectors mask its data.
        c.simple_query("create table notes (t text); insert into notes values ('card 4111 1111 1111 1111 here')").await.unwrap();
        let stream = c.copy_out("copy notes to stdout").await.unwrap();
        use futures::StreamExt;
        let chunks: Vec<_> = stream.collect().await;
        let data: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(String::from_utf8(data).unwrap(), "card [card] here\n");
    })
    .await;
}

#[tokio::test]
async fn values_echoed_in_error_details_are_masked() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        c.simple_query("create table uniq (v text unique)")
            .await
            .unwrap();
        c.simple_query(&format!("insert into uniq values ('{CARD}')"))
            .await
            .unwrap();
        let err = c
            .simple_query(&format!("insert into uniq values ('{CARD}')"))
            .await
            .err()
            .unwrap();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "23505");
        let detail = db.detail().unwrap_or_default();
        assert!(detail.contains("[card]"), "{detail}");
        assert!(!detail.contains(CARD));
    })
    .await;
}

#[tokio::test]
async fn masked_non_text_values_become_null() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            masker: LiteralMasker::new().column("public.customers.age"),
            setup_sql: SETUP,
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        let rows = c
            .query("select id, age from customers order by id", &[])
            .await
            .unwrap();
        let age: Option<i32> = rows[0].get(1);
        assert_eq!(age, None, "binary int4 that must be masked is NULLed");
        let id: i32 = rows[0].get(0);
        assert_eq!(id, 1);
        let rows = texts(&c, "select age from customers").await;
        assert_eq!(rows[0][0], None);
    })
    .await;
}

#[tokio::test]
async fn masked_non_text_can_refuse_instead() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            masker: LiteralMasker::new().column("public.customers.age"),
            setup_sql: SETUP,
            configure: Box::new(|c| c.non_text_masking = gatehouse_pg::NonTextMasking::Refuse),
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        let err = c
            .simple_query("select age from customers")
            .await
            .err()
            .unwrap();
        assert_eq!(db_error(&err).0, "28000");
    })
    .await;
}

/// Notices and notification payloads of code the gateway cannot see into are withheld only
/// while the profile masks some column of the database; with content detectors alone they pass
/// through the detectors (psycopg's own suite relies on notices of DO blocks).
#[tokio::test]
async fn opaque_notices_pass_the_detectors_when_no_column_is_masked_and_are_withheld_otherwise() {
    use crate::raw::{RawClient, query};
    gatehouse_testkit::within(T, async {
        let notice_sql = "do $$ begin raise notice 'hello %', '4111 1111 1111 1111'; end $$; \
                          listen ch; select pg_notify('ch', 'pay 4111 1111 1111 1111')";
        for (masks_a_column, expect_withheld) in [(false, false), (true, true)] {
            let masker = if masks_a_column {
                LiteralMasker::new()
                    .column("public.customers.email")
                    .literal(CARD, "[card]")
            } else {
                LiteralMasker::new().literal(CARD, "[card]")
            };
            let h = start(Options {
                masker,
                setup_sql: SETUP,
                ..Options::default()
            })
            .await;
            let mut raw = RawClient::connect(h.port).await;
            raw.send(&query(notice_sql)).await;
            let got = raw.until_ready().await;
            let notice = got
                .iter()
                .find(|m| m.tag == b'N')
                .and_then(|m| m.field(b'M'))
                .expect("a notice");
            let note = got.iter().find(|m| m.tag == b'A').expect("a notification");
            let payload = String::from_utf8_lossy(&note.body[4..]).into_owned();
            assert!(
                !notice.contains(CARD) && !payload.contains(CARD),
                "{notice} / {payload}"
            );
            if expect_withheld {
                assert!(notice.contains("withholds"), "{notice}");
                assert!(payload.contains("withheld"), "{payload}");
            } else {
                assert_eq!(notice, "hello [card]");
                assert!(payload.contains("pay [card]"), "{payload}");
            }
        }
    })
    .await;
}

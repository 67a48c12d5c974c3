//! The settings SQL is read under are followed exactly: a text whose reading depends on them is
//! classified only once the server has reported them after everything sent before it; a change
//! the gateway did not expect ends the session; `backslash_quote` cannot be changed; clients
//! that change settings keep working. And a property: whatever settings changes are pipelined,
//! the statements the gateway decided are the statements the server ran.

use std::collections::HashSet;

use gatehouse_core::{EventBody, Operation, SessionId};
use gatehouse_sql::StatementKind as K;
use proptest::prelude::*;

use crate::common::*;
use crate::raw::*;

const SETUP: &str = "CREATE TABLE jobs (id int); INSERT INTO jobs SELECT generate_series(1, 10);
    CREATE FUNCTION scs(v text) RETURNS void LANGUAGE plpgsql AS $$
      BEGIN PERFORM set_config('standard_conforming_strings', v, false); END $$;";

/// Read with standard_conforming_strings on: one SELECT of a string. Read with it off: a SELECT,
/// then a TRUNCATE, then a comment.
const HIDDEN_TRUNCATE: &str = r"select 'x\'' ; truncate jobs; --'";

fn opts() -> Options {
    Options {
        policy: kind_policy(&[K::Truncate], &[], 1_000),
        setup_sql: SETUP,
        ..Options::default()
    }
}

fn jobs(h: &Harness) -> String {
    h.db.psql("select count(*) from jobs").unwrap()
}

#[tokio::test]
async fn a_function_turning_off_standard_conforming_strings_cannot_hide_a_truncate() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        for changer in [
            "select scs('off')",
            "do $$ begin perform set_config('standard_conforming_strings', 'off', false); end $$",
        ] {
            let mut c = RawClient::connect(h.port).await;
            // Both messages in one write: the second must be read as the server will read it,
            // after the first has run.
            c.send(&[query(changer), query(HIDDEN_TRUNCATE)].concat())
                .await;
            let answers = c.until_ready_n(2).await;
            assert_eq!(errors(&answers), ["42501"], "{changer}: {answers:?}");
            assert_eq!(jobs(&h), "10", "{changer}");
            // The same in the extended protocol.
            c.send(
                &[
                    query("select scs('on')"),
                    parse("", changer),
                    bind("", "", &[]),
                    execute(""),
                    sync(),
                    query(HIDDEN_TRUNCATE),
                ]
                .concat(),
            )
            .await;
            let answers = c.until_ready_n(3).await;
            assert_eq!(errors(&answers), ["42501"], "{changer}: {answers:?}");
            assert_eq!(jobs(&h), "10", "{changer}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_setting_change_the_gateway_did_not_expect_ends_the_session() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            setup_sql: "CREATE TABLE t (x int);
                CREATE FUNCTION flip() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN PERFORM set_config('standard_conforming_strings', 'off', false);
                  RETURN NEW; END $$;
                CREATE TRIGGER flip BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION flip();",
            ..Options::default()
        })
        .await;
        let mut c = RawClient::connect(h.port).await;
        c.send(&query("insert into t values (1)")).await;
        let mut got = Vec::new();
        while let Some(m) = c.next().await {
            got.push(m);
        }
        let fatal = got
            .iter()
            .find(|m| m.tag == b'E')
            .unwrap_or_else(|| panic!("no error before the close: {got:?}"));
        assert_eq!(fatal.field(b'S').as_deref(), Some("FATAL"));
        assert!(
            fatal
                .field(b'M')
                .is_some_and(|m| m.contains("unexpected change of standard_conforming_strings")),
            "{fatal:?}"
        );
        assert!(!got.iter().any(|m| m.tag == b'Z'), "{got:?}");
    })
    .await;
}

#[tokio::test]
async fn backslash_quote_cannot_be_changed() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let c = h.connect().await;
        for sql in [
            "set backslash_quote = on",
            "select set_config('backslash_quote', 'on', false)",
            "reset backslash_quote",
            // Defaults of later sessions (the gateway's own among them).
            "alter role current_user set backslash_quote = on",
            "alter role current_user in database pgproxy set backslash_quote to on",
            &format!("alter database \"{}\" set backslash_quote = on", h.db.name),
        ] {
            let Err(err) = c.simple_query(sql).await else {
                panic!("{sql} refused")
            };
            let (code, msg) = db_error(&err);
            assert_eq!(code, "0A000", "{sql}: {msg}");
            assert!(msg.contains("backslash_quote"), "{msg}");
        }
        c.simple_query("select 1").await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn clients_that_change_settings_keep_working() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        c.simple_query("set standard_conforming_strings = off")
            .await
            .unwrap();
        let rows = c.simple_query(r"select 'it\'s'").await.unwrap();
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("it's"));
        c.simple_query("reset all; set client_encoding = 'UTF8'")
            .await
            .unwrap();
        let n: i64 = c
            .query_one("select count(*) from jobs where id > $1", &[&0i32])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 10);
        // psql changes client_encoding itself (\encoding), then reads non-ASCII text.
        let port = h.port.to_string();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(gatehouse_testkit::pg::psql_path())
                .args([
                    "-X",
                    "-At",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "agent",
                    "-d",
                    "app",
                    "-c",
                    "\\encoding SQL_ASCII",
                    "-c",
                    "\\encoding UTF8",
                    "-c",
                    "select 'é' || 'x'",
                ])
                .env("PGCONNECT_TIMEOUT", "10")
                .env("PGSSLMODE", "disable")
                .env("PGPASSWORD", TOKEN)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("éx"),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

/// One step of a generated pipeline.
#[derive(Debug, Clone)]
enum Step {
    Set(bool),
    Function(bool),
    DoBlock(bool),
    Reset,
    Probe,
}

impl Step {
    fn sql(&self) -> String {
        let v = |on: bool| if on { "on" } else { "off" };
        match self {
            Step::Set(on) => format!("set standard_conforming_strings = {}", v(*on)),
            Step::Function(on) => format!("select scs('{}')", v(*on)),
            Step::DoBlock(on) => format!(
                "do $$ begin perform set_config('standard_conforming_strings', '{}', false); end $$",
                v(*on)
            ),
            Step::Reset => "reset standard_conforming_strings".into(),
            // On: one SELECT. Off: a SELECT, then an UPDATE.
            Step::Probe => r"select 'x\'' ; update jobs set id = id where false; --'".into(),
        }
    }
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<bool>().prop_map(Step::Set),
        any::<bool>().prop_map(Step::Function),
        any::<bool>().prop_map(Step::DoBlock),
        Just(Step::Reset),
        Just(Step::Probe),
        Just(Step::Probe),
    ]
}

/// The command tag's verb for a statement text the gateway decided.
fn verb(text: &str) -> String {
    let first = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match first.as_str() {
        // `select scs(…)` and the probe's first statement are SELECTs; DO completes as "DO".
        "RESET" => "RESET".into(),
        other => other.to_string(),
    }
}

#[test]
fn what_the_gateway_decides_is_what_the_server_runs() {
    let cases: u32 = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let h = runtime.block_on(start(Options {
        setup_sql: SETUP,
        ..Options::default()
    }));
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in proptest::collection::vec(step(), 1..8), extended in any::<bool>())| {
        runtime.block_on(gatehouse_testkit::within(T, async {
            let before: HashSet<SessionId> =
                h.tp.recorder.events().into_iter().map(|e| e.session).collect();
            let mut c = RawClient::connect(h.port).await;
            // Everything in one write; in the extended variant, setting changes go through
            // Parse/Bind/Execute/Sync.
            let mut bytes = Vec::new();
            for s in &steps {
                match (s, extended) {
                    (Step::Probe, _) | (_, false) => bytes.extend(query(&s.sql())),
                    (_, true) => {
                        bytes.extend(parse("", &s.sql()));
                        bytes.extend(bind("", "", &[]));
                        bytes.extend(execute(""));
                        bytes.extend(sync());
                    }
                }
            }
            c.send(&bytes).await;
            let answers = c.until_ready_n(steps.len()).await;
            assert!(errors(&answers).is_empty(), "{steps:?}: {answers:?}");
            let ran: Vec<String> = tags(&answers)
                .iter()
                .map(|t| t.split_whitespace().next().unwrap_or("").to_string())
                .collect();
            drop(c);
            // The operations this session's gateway decided, in order.
            let session = {
                let mut found = None;
                for _ in 0..500 {
                    found = h.tp.recorder.events().into_iter().map(|e| e.session)
                        .find(|s| !before.contains(s));
                    if found.is_some() { break; }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                found.expect("the session was recorded")
            };
            let decided: Vec<String> = h.tp.recorder.events().into_iter()
                .filter(|e| e.session == session)
                .filter_map(|e| match e.body {
                    EventBody::Operation { operation: Operation::Sql(op), .. } => Some(verb(&op.text)),
                    _ => None,
                })
                .collect();
            assert_eq!(decided, ran, "{steps:?} extended={extended}");
        }));
    });
}

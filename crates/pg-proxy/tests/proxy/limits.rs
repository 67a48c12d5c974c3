//! Large inputs get clear answers: a message over the size limit gets an ErrorResponse (54000)
//! in protocol order and the session stays usable; a Query of too many statements is refused
//! whole, with one audit record.

use gatehouse_core::EventBody;

use crate::common::*;
use crate::raw::*;

fn opts() -> Options {
    Options {
        setup_sql: "CREATE TABLE jobs (id int); INSERT INTO jobs SELECT generate_series(1, 10);",
        configure: Box::new(|c| {
            c.limits.max_client_message = 64 * 1024;
            c.limits.max_statements_per_query = 10;
        }),
        ..Options::default()
    }
}

#[tokio::test]
async fn an_oversized_message_gets_an_error_and_the_session_stays_usable() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let mut c = RawClient::connect(h.port).await;
        let big = format!("select '{}'", "x".repeat(100 * 1024));
        c.send(&[query(&big), query("select 1")].concat()).await;
        let answers = c.until_ready_n(2).await;
        assert_eq!(errors(&answers), ["54000"], "{answers:?}");
        assert_eq!(tags(&answers), ["SELECT 1"]);
        // Extended protocol: an oversized Bind fails its sync group only.
        c.send(
            &[
                parse("s", "select $1::text"),
                bind("", "s", &[&"y".repeat(100 * 1024)]),
                execute(""),
                sync(),
                parse("", "select count(*) from jobs"),
                bind("", "", &[]),
                describe_portal(""),
                execute(""),
                sync(),
            ]
            .concat(),
        )
        .await;
        let answers = c.until_ready_n(2).await;
        assert_eq!(errors(&answers), ["54000"], "{answers:?}");
        assert_eq!(tags(&answers), ["SELECT 1"]);
        let e = answers.iter().find(|m| m.tag == b'E').unwrap();
        assert!(e.field(b'M').unwrap().contains("exceeds"), "{e:?}");
    })
    .await;
}

#[tokio::test]
async fn a_query_of_too_many_statements_is_refused_with_one_record() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        let before = h.tp.recorder.events().len();
        let many = "delete from jobs where id = 1;".repeat(11);
        let err = c.simple_query(&many).await.err().unwrap();
        let (code, msg) = db_error(&err);
        assert_eq!(code, "54000", "{msg}");
        assert!(msg.contains("11 statements"), "{msg}");
        let ops = h.tp.recorder.events()[before..]
            .iter()
            .filter(|e| matches!(e.body, EventBody::Operation { .. }))
            .count();
        assert_eq!(ops, 1);
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
        // At the limit it runs.
        c.simple_query(&"select 1;".repeat(10)).await.unwrap();
    })
    .await;
}

/// A statement PostgreSQL's parser rejects is decided the same way in both protocols: one
/// operation the policy sees, refused (42601, naming the parser's reason), and the session
/// goes on.
#[tokio::test]
async fn unparseable_sql_is_refused_alike_in_both_protocols() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let mut c = RawClient::connect(h.port).await;
        let text = "delete from jobs where id = 1 +";
        let mut seen = Vec::new();
        for simple in [true, false] {
            let before = h.tp.recorder.events().len();
            if simple {
                c.send(&query(text)).await;
            } else {
                c.send(&[parse("", text), bind("", "", &[]), execute(""), sync()].concat())
                    .await;
            }
            let answers = c.until_ready().await;
            assert_eq!(errors(&answers), ["42601"], "{answers:?}");
            let e = answers.iter().find(|m| m.tag == b'E').unwrap();
            let message = e.field(b'M').unwrap().to_string();
            assert!(message.contains("cannot parse"), "{message}");
            seen.push(message);
            let ops = h.tp.recorder.events()[before..]
                .iter()
                .filter(|e| matches!(e.body, EventBody::Operation { .. }))
                .count();
            assert_eq!(ops, 1, "simple: {simple}");
            c.send(&query("select count(*) from jobs")).await;
            let answers = c.until_ready().await;
            assert!(errors(&answers).is_empty(), "{answers:?}");
        }
        assert_eq!(seen[0], seen[1]);
        assert_eq!(h.db.psql("select count(*) from jobs").unwrap(), "10");
    })
    .await;
}

/// One identity cannot take every upstream connection: past `max_sessions_per_identity` a login
/// is refused at startup with FATAL 53300 naming the cap, recorded; a closed session frees its
/// place.
#[tokio::test]
async fn sessions_are_capped_per_identity() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            configure: Box::new(|c| {
                c.limits.max_sessions_per_identity = Some(3);
                c.limits.max_sessions_per_target = None;
            }),
            ..Options::default()
        })
        .await;
        let mut open = Vec::new();
        for _ in 0..3 {
            let c = h.connect().await;
            c.simple_query("select 1").await.unwrap();
            open.push(c);
        }
        let Err(err) = h.try_connect(TOKEN).await else {
            panic!("not refused past the cap");
        };
        let (code, msg) = db_error(&err);
        assert_eq!(code, "53300", "{msg}");
        assert!(
            msg.contains("at most 3 concurrent sessions per identity"),
            "{msg}"
        );
        h.wait_for_event("refused session", |e| match e.body {
            EventBody::Error { message, .. }
                if message.contains("53300") || message.contains("at most 3") =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
        // The sessions already open are untouched; one closed frees its place.
        open[0].simple_query("select 1").await.unwrap();
        drop(open.pop());
        let mut again = None;
        for _ in 0..500 {
            if let Ok(c) = h.try_connect(TOKEN).await {
                again = Some(c);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        again
            .expect("a closed session frees its place")
            .simple_query("select 1")
            .await
            .unwrap();
    })
    .await;
}

/// `max_sessions_per_target` caps every identity's sessions on one target together.
#[tokio::test]
async fn sessions_are_capped_per_target() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            configure: Box::new(|c| {
                c.limits.max_sessions_per_identity = None;
                c.limits.max_sessions_per_target = Some(2);
            }),
            ..Options::default()
        })
        .await;
        let a = h.connect().await;
        let b = h.connect().await;
        let Err(err) = h.try_connect(TOKEN).await else {
            panic!("not refused past the cap");
        };
        let (code, msg) = db_error(&err);
        assert_eq!(code, "53300", "{msg}");
        assert!(msg.contains("target \"app\": at most 2"), "{msg}");
        a.simple_query("select 1").await.unwrap();
        b.simple_query("select 1").await.unwrap();
    })
    .await;
}

#[test]
fn twenty_sessions_per_identity_by_default() {
    let l = gatehouse_pg::Limits::default();
    assert_eq!(l.max_sessions_per_identity, Some(20));
}

//! COPY keeps its framing: one CopyData per row in every format, binary header and trailer as
//! the server sent them; masked values in binary COPY get fresh tuple and field lengths, so the
//! output loads back with `COPY … FROM STDIN (FORMAT binary)`.

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use gatehouse_testkit::layers::LiteralMasker;

use crate::common::*;

const CARD: &str = "4111 1111 1111 1111";

const SETUP: &str = "CREATE TABLE notes (id int, t text, n numeric, tags text[], doc jsonb); \
     INSERT INTO notes VALUES \
       (1, 'paid with 4111 1111 1111 1111 yesterday', 12.5, ARRAY['a', 'card 4111 1111 1111 1111'], '{\"k\": \"4111 1111 1111 1111\"}'), \
       (2, 'nothing to see', NULL, NULL, '{}'), \
       (3, E'tab\\there and a \\\\ backslash', -1, ARRAY[]::text[], '[1, 2]'); \
     CREATE TABLE people (id int, email text); INSERT INTO people VALUES (1, 'ann@example.com');";

fn opts() -> Options {
    Options {
        masker: LiteralMasker::new()
            .column("public.people.email")
            .literal(CARD, "[card]"),
        setup_sql: SETUP,
        ..Options::default()
    }
}

async fn copy_chunks(c: &tokio_postgres::Client, sql: &str) -> Vec<Bytes> {
    let stream = c
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    stream.map(|c| c.unwrap()).collect().await
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The tuples of binary COPY chunks, each checked to hold exactly one tuple (the header with the
/// first), and the trailer alone in the last chunk.
fn binary_tuples(chunks: &[Bytes]) -> Vec<Vec<Option<Vec<u8>>>> {
    let (last, rows) = chunks.split_last().expect("at least the trailer");
    assert_eq!(&last[..], b"\xff\xff", "the trailer goes out on its own");
    let mut out = Vec::new();
    for (i, chunk) in rows.iter().enumerate() {
        let mut b = &chunk[..];
        if i == 0 {
            assert!(b.starts_with(SIGNATURE), "header first: {b:?}");
            let ext = u32::from_be_bytes(b[15..19].try_into().unwrap()) as usize;
            b = &b[19 + ext..];
        }
        let n = i16::from_be_bytes([b[0], b[1]]);
        b = &b[2..];
        let mut fields = Vec::new();
        for _ in 0..n {
            let len = i32::from_be_bytes(b[..4].try_into().unwrap());
            b = &b[4..];
            if len < 0 {
                fields.push(None);
            } else {
                fields.push(Some(b[..len as usize].to_vec()));
                b = &b[len as usize..];
            }
        }
        assert!(b.is_empty(), "chunk {i} holds exactly one tuple");
        out.push(fields);
    }
    out
}

#[tokio::test]
async fn copy_out_sends_one_copydata_per_row_in_every_format() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        for format in ["text", "csv"] {
            let chunks = copy_chunks(
                &c,
                &format!("copy (select id, t from notes order by id) to stdout (format {format})"),
            )
            .await;
            assert_eq!(
                chunks.len(),
                3,
                "{format}: one CopyData per row: {chunks:?}"
            );
            assert!(chunks.iter().all(|c| c.ends_with(b"\n")), "{chunks:?}");
            let all: Vec<u8> = chunks.concat();
            let all = String::from_utf8(all).unwrap();
            assert!(all.contains("[card]") && !all.contains(CARD), "{all}");
        }
        // Binary, nothing to mask: byte for byte what the server sent, framing included.
        let chunks = copy_chunks(
            &c,
            "copy (select id, n from notes order by id) to stdout (format binary)",
        )
        .await;
        let tuples = binary_tuples(&chunks);
        assert_eq!(tuples.len(), 3);
        assert_eq!(tuples[0][0].as_deref(), Some(&1i32.to_be_bytes()[..]));
        assert_eq!(tuples[1][1], None);
    })
    .await;
}

#[tokio::test]
async fn masked_binary_copy_keeps_lengths_right_and_loads_back() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        for sql in [
            "copy notes to stdout (format binary)",
            "copy notes (id, t, tags, doc) to stdout with binary",
            "copy (select * from notes order by id) to stdout (format binary)",
        ] {
            let chunks = copy_chunks(&c, sql).await;
            let raw: Vec<u8> = chunks.concat();
            assert!(
                !raw.windows(CARD.len()).any(|w| w == CARD.as_bytes()),
                "{sql}: the card number left in binary COPY"
            );
            let tuples = binary_tuples(&chunks);
            assert_eq!(tuples.len(), 3, "{sql}");
            // The masked text value, with its new length.
            let t = tuples
                .iter()
                .find(|t| t[0].as_deref() == Some(&1i32.to_be_bytes()[..]))
                .unwrap();
            assert_eq!(
                t[1].as_deref(),
                Some(&b"paid with [card] yesterday"[..]),
                "{sql}"
            );
            // Loads back: every length is consistent.
            c.simple_query("drop table if exists back; create table back (like notes)")
                .await
                .unwrap();
            if sql.contains("(id, t, tags, doc)") {
                c.simple_query("alter table back drop column n")
                    .await
                    .unwrap();
            }
            let sink = c
                .copy_in::<_, Bytes>("copy back from stdin (format binary)")
                .await
                .unwrap();
            futures::pin_mut!(sink);
            sink.send(Bytes::from(raw)).await.unwrap();
            let n = sink
                .finish()
                .await
                .unwrap_or_else(|e| panic!("{sql}: load back: {e:?}"));
            assert_eq!(n, 3, "{sql}");
            let row = c
                .query_one(
                    "select t, tags::text, doc::text from back where id = 1",
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, &str>(0), "paid with [card] yesterday");
            assert_eq!(row.get::<_, &str>(1), "{a,\"card [card]\"}");
            assert_eq!(row.get::<_, &str>(2), "{\"k\": \"[card]\"}");
        }
    })
    .await;
}

#[tokio::test]
async fn binary_copy_the_gateway_cannot_describe_is_refused_and_the_session_goes_on() {
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        let c = h.connect().await;
        c.simple_query("create temp table scratch as select t from notes")
            .await
            .unwrap();
        let err = c
            .copy_out("copy scratch to stdout (format binary)")
            .await
            .err()
            .expect("refused");
        let msg = err
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("binary COPY") && msg.contains("text format"),
            "{msg}"
        );
        // The same data in text format, masked.
        let chunks = copy_chunks(&c, "copy scratch to stdout").await;
        let all = String::from_utf8(chunks.concat()).unwrap();
        assert!(all.contains("[card]") && !all.contains(CARD), "{all}");
        // A masked column stays out of COPY in any format and any spelling (the pre-9.0
        // `COPY BINARY table` included).
        for sql in [
            "copy people to stdout (format binary)",
            "COPY BINARY people TO STDOUT",
            "copy binary\tpeople (email) to stdout",
            "copy people to stdout binary",
            "copy people to stdout csv",
        ] {
            let err = c.copy_out(sql).await.err().expect("refused");
            let msg = err
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default();
            assert!(msg.contains("masked-column-copy"), "{sql}: {msg}");
        }
    })
    .await;
}

/// Where masked columns may be copied (`allow_masked_column_copies`), binary COPY masks them by
/// their column rule, with fresh lengths, and the output still loads back.
#[tokio::test]
async fn binary_copy_masks_a_masked_column_by_its_rule_when_copies_are_allowed() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            configure: Box::new(|c| c.allow_masked_column_copies = true),
            ..opts()
        })
        .await;
        let c = h.connect().await;
        let chunks = copy_chunks(&c, "copy people to stdout (format binary)").await;
        let raw: Vec<u8> = chunks.concat();
        assert!(
            !raw.windows(b"ann@example.com".len())
                .any(|w| w == b"ann@example.com"),
            "the masked column left in binary COPY"
        );
        let tuples = binary_tuples(&chunks);
        assert_eq!(tuples.len(), 1);
        assert_eq!(tuples[0][0].as_deref(), Some(&1i32.to_be_bytes()[..]));
        c.simple_query("create table people_back (like people)")
            .await
            .unwrap();
        let sink = c
            .copy_in::<_, Bytes>("copy people_back from stdin (format binary)")
            .await
            .unwrap();
        futures::pin_mut!(sink);
        sink.send(Bytes::from(raw)).await.unwrap();
        assert_eq!(sink.finish().await.unwrap(), 1);
        let email: String = c
            .query_one("select email from people_back", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!email.contains("ann@"), "{email}");
    })
    .await;
}

/// The catalog connection describes a name as it resolves there; a temporary table of the
/// session may shadow it with other types. What the typed walk would pass unread is checked:
/// a value without its type's size, or with something a detector finds, fails the COPY.
#[tokio::test]
async fn a_temporary_table_shadowing_a_described_one_gets_nothing_past_the_masking() {
    use crate::raw::{RawClient, query};
    gatehouse_testkit::within(T, async {
        let h = start(opts()).await;
        for (public, n) in [("uuid", 1), ("inet", 2)] {
            let mut raw = RawClient::connect(h.port).await;
            raw.send(&query(&format!(
                "create table shadow{n} (a {public}); create temp table shadow{n} (a text); \
                 insert into shadow{n} values ('{CARD}')"
            )))
            .await;
            raw.until_ready().await;
            raw.send(&query(&format!("copy shadow{n} to stdout (format binary)")))
                .await;
            let mut got = Vec::new();
            while let Some(m) = raw.next().await {
                let ready = m.tag == b'Z';
                got.push(m);
                if ready {
                    break;
                }
            }
            for m in &got {
                assert!(
                    !m.body.windows(CARD.len()).any(|w| w == CARD.as_bytes()),
                    "{public}: the card went out raw"
                );
            }
            let error = got.iter().find_map(|m| m.field(b'M')).unwrap_or_default();
            assert!(error.contains("binary COPY"), "{public}: {error}");
            assert!(
                !h.audit_dump().contains(CARD),
                "{public}: the card reached the recording"
            );
        }
    })
    .await;
}

/// The CopyData payloads among the messages a chunk hook was shown.
fn copy_data_seen(hook: &gatehouse_testkit::layers::RecordChunks) -> Vec<Vec<u8>> {
    hook.chunks()
        .into_iter()
        .filter(|(_, m)| m.first() == Some(&b'd'))
        .map(|(_, m)| m.get(5..).unwrap_or_default().to_vec())
        .collect()
}

#[tokio::test]
async fn a_chunk_hook_sees_each_copy_row_masked_as_the_client_gets_it() {
    gatehouse_testkit::within(T, async {
        let hook = std::sync::Arc::new(gatehouse_testkit::layers::RecordChunks::new());
        let h = start(Options {
            hooks: Some(hook.clone()),
            ..opts()
        })
        .await;
        let c = h.connect().await;
        for format in ["text", "csv", "binary"] {
            let before = copy_data_seen(&hook).len();
            let chunks = copy_chunks(
                &c,
                &format!("copy (select * from notes order by id) to stdout (format {format})"),
            )
            .await;
            let seen = copy_data_seen(&hook);
            let seen = seen.get(before..).unwrap();
            // One message per row (and the binary trailer), exactly what the client received.
            let received: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
            assert_eq!(seen, &received[..], "{format}");
            let all = seen.concat();
            assert!(
                !all.windows(CARD.len()).any(|w| w == CARD.as_bytes()),
                "{format}: the hook saw the card number"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_stopping_mid_copy_ends_the_copy_with_42501_and_the_session() {
    gatehouse_testkit::within(T, async {
        // Row 2 of three.
        let hook = std::sync::Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on(
            "nothing to see",
        ));
        let h = start(Options {
            hooks: Some(hook.clone()),
            ..opts()
        })
        .await;
        let c = h.connect().await;
        let stream = c
            .copy_out("copy (select id, t from notes order by id) to stdout")
            .await
            .unwrap();
        // Up to the first error (tokio-postgres's stream keeps yielding the closed
        // connection's error after it).
        futures::pin_mut!(stream);
        let mut rows = Vec::new();
        let err = loop {
            match stream.next().await {
                Some(Ok(row)) => rows.push(row),
                Some(Err(e)) => break e,
                None => panic!("the COPY ended without an error: {rows:?}"),
            }
        };
        assert_eq!(rows.len(), 1, "only the row before the stop: {rows:?}");
        assert!(String::from_utf8_lossy(&rows[0]).contains("[card]"));
        let (code, msg) = db_error(&err);
        assert_eq!(code, "42501", "{msg}");
        assert!(msg.contains("GateHooks::on_chunk"), "{msg}");
        assert!(hook.stopped());
        // As documented: the session ends (what the hook had not seen is never sent).
        assert!(c.simple_query("select 1").await.is_err());
    })
    .await;
}

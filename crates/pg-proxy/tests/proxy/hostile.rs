//! Hostile and malformed input: every case ends only its own session with a clean error, the
//! gateway keeps serving others; and the canary: the upstream password never reaches the client
//! or the audit log.

use std::time::Duration;

use gatehouse_core::{EgressGuard, Event, EventBody, Operation, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 0x0003_0000u32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads until the server closes (or 10 s pass) and returns everything received.
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    out
}

/// Reads until `needle` appears in what was received.
async fn read_until(s: &mut TcpStream, got: &mut Vec<u8>, needle: &[u8]) {
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed early; got {:?}",
            String::from_utf8_lossy(got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

/// A raw session that has completed login (ReadyForQuery seen). Returns the stream and every byte
/// received so far.
async fn logged_in(port: u16) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&startup_packet(&[("user", "agent"), ("database", "app")]))
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(&mut s, &mut got, &[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
    let mut pw = TOKEN.as_bytes().to_vec();
    pw.push(0);
    s.write_all(&msg(b'p', &pw)).await.unwrap();
    read_until(&mut s, &mut got, &[b'Z', 0, 0, 0, 5, b'I']).await;
    (s, got)
}

fn error_code(bytes: &[u8]) -> Option<String> {
    let at = bytes.windows(2).position(|w| w == b"\0C")?;
    let rest = &bytes[at + 2..];
    let end = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

async fn healthy(h: &Harness) {
    let c = h.connect().await;
    let v: i32 = c.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

#[tokio::test]
async fn malformed_frames_end_only_their_session() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let bystander = h.connect().await;
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("length below four", vec![b'Q', 0, 0, 0, 2], "08P01"),
            (
                "negative length",
                vec![b'Q', 0xff, 0xff, 0xff, 0xff],
                "08P01",
            ),
            (
                "2 GB length prefix",
                vec![b'Q', 0x7f, 0xff, 0xff, 0xf0],
                "54000",
            ),
            ("query without terminator", msg(b'Q', b"select 1"), "08P01"),
            ("unknown message type", msg(b'@', b"x"), "08P01"),
            (
                "bind with lying counts",
                msg(b'B', &[0, 0, 0x7f, 0xff]),
                "08P01",
            ),
            ("execute truncated", msg(b'E', b"\0\0"), "08P01"),
            ("password message after login", msg(b'p', b"x\0"), "08P01"),
        ];
        for (name, bytes, code) in cases {
            let (mut s, _) = logged_in(h.port).await;
            s.write_all(&bytes).await.unwrap();
            let got = read_all(&mut s).await;
            assert_eq!(
                error_code(&got).as_deref(),
                Some(code),
                "{name}: {:?}",
                String::from_utf8_lossy(&got)
            );
            assert!(got.windows(5).any(|w| w == b"FATAL"), "{name}");
            // The other session never noticed.
            let v: i32 = bystander.query_one("select 1", &[]).await.unwrap().get(0);
            assert_eq!(v, 1, "{name}");
        }
        // A truncated frame followed by a close: the session ends quietly.
        let (mut s, _) = logged_in(h.port).await;
        s.write_all(&[b'Q', 0, 0, 0, 100, b's']).await.unwrap();
        s.shutdown().await.unwrap();
        let _ = read_all(&mut s).await;
        healthy(&h).await;
    })
    .await;
}

#[tokio::test]
async fn malformed_startup_gets_a_clean_fatal() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        // Startup without a database.
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        s.write_all(&startup_packet(&[("user", "agent")]))
            .await
            .unwrap();
        let got = read_all(&mut s).await;
        assert_eq!(error_code(&got).as_deref(), Some("3D000"));
        // Oversized startup, wrong protocol, random bytes, password with length < 4 (pgwire panics
        // on that one).
        let mut huge = 100_000u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 64]);
        let cases: Vec<Vec<u8>> = vec![
            huge,
            vec![0, 0, 0, 8, 0, 2, 0, 0],
            (0..200u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            vec![0, 0, 0, 3],
        ];
        for bytes in cases {
            let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let got = read_all(&mut s).await;
            assert!(
                got.is_empty() || got.first() == Some(&b'E'),
                "{:?}",
                String::from_utf8_lossy(&got)
            );
        }
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        s.write_all(&startup_packet(&[("user", "agent"), ("database", "app")]))
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
        s.write_all(&[b'p', 0, 0, 0, 2]).await.unwrap();
        let got = read_all(&mut s).await;
        assert_eq!(error_code(&got).as_deref(), Some("08P01"));
        // A token far over the auth message cap.
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        s.write_all(&startup_packet(&[("user", "agent"), ("database", "app")]))
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
        let mut big = vec![b'a'; 100_000];
        big.push(0);
        let _ = s.write_all(&msg(b'p', &big)).await;
        let got = read_all(&mut s).await;
        assert_eq!(error_code(&got).as_deref(), Some("54000"));
        healthy(&h).await;
    })
    .await;
}

#[tokio::test]
async fn tls_garbage_and_gss_requests_are_handled() {
    gatehouse_testkit::within(T, async {
        let ca = gatehouse_testkit::tls::TestCa::new("gw");
        let (cert, key) = ca.issue_server(&["localhost"]);
        let certs: Vec<_> = rustls_pemfile::certs(&mut cert.as_bytes())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let h = start(Options {
            configure: Box::new(move |c| c.tls = Some(std::sync::Arc::new(server))),
            ..Options::default()
        })
        .await;
        // SSLRequest, then garbage instead of a ClientHello.
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
            .await
            .unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S");
        s.write_all(b"this is not a TLS record at all, not even close.......")
            .await
            .unwrap();
        let _ = read_all(&mut s).await;
        // SSLRequest with bytes pipelined behind it (would be read as if inside TLS): refused.
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        let mut both = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        both.extend_from_slice(&startup_packet(&[("user", "agent"), ("database", "app")]));
        s.write_all(&both).await.unwrap();
        let got = read_all(&mut s).await;
        assert_eq!(error_code(&got).as_deref(), Some("08P01"));
        // GSSENCRequest is declined with 'N' and the client may continue in plaintext.
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
            .await
            .unwrap();
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N");
        s.write_all(&startup_packet(&[("user", "agent"), ("database", "app")]))
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
        healthy(&h).await;
    })
    .await;
}

#[tokio::test]
async fn newer_protocol_minor_and_pq_options_are_negotiated_down() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let mut s = TcpStream::connect(("127.0.0.1", h.port)).await.unwrap();
        let mut p = startup_packet(&[("user", "agent"), ("database", "app"), ("_pq_.future", "1")]);
        p[4..8].copy_from_slice(&0x0003_0002u32.to_be_bytes());
        s.write_all(&p).await.unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
        assert_eq!(got[0], b'v', "NegotiateProtocolVersion first");
        assert!(got.windows(11).any(|w| w == b"_pq_.future"));
    })
    .await;
}

#[tokio::test]
async fn canary_upstream_password_never_reaches_the_client_or_the_audit_log() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let canary = h.password.clone();
        // Plant the password where a query can reach it (a careless secrets table).
        h.db.psql(&format!(
            "CREATE TABLE leaked (v text); INSERT INTO leaked VALUES ('{canary}'); GRANT SELECT ON leaked TO \"{}\"",
            h.role
        ))
        .unwrap();
        let (mut s, mut got) = logged_in(h.port).await;
        // The password inside a statement's own text: its audit record and its recording entries
        // must not hold it either.
        let in_text = format!("select length('{canary}') as n");
        for sql in [
            "select current_user, session_user",
            "select * from pg_stat_activity",
            "show all",
            "select 1/0",
            in_text.as_str(),
            "select v from leaked",
        ] {
            let mut q = sql.as_bytes().to_vec();
            q.push(0);
            if s.write_all(&msg(b'Q', &q)).await.is_err() {
                break;
            }
            let mut buf = [0u8; 65536];
            loop {
                match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
                            break;
                        }
                    }
                }
            }
        }
        let tail = read_all(&mut s).await;
        got.extend_from_slice(&tail);
        let needle = canary.as_bytes();
        assert!(!got.windows(needle.len()).any(|w| w == needle), "the client received the upstream password");
        // The select of the planted secret was blocked and the session ended with a clear error.
        assert!(String::from_utf8_lossy(&got).contains("egress guard blocked"));
        assert!(h.tp.egress.counters().hits.values().sum::<u64>() >= 1);
        // The statement holding the password in its own text reaches the recorder as it is; the
        // audit recorder's egress guard refuses that record (gatehouse-recorder's tests), this
        // in-memory double has none. Every other event, and every recording frame, is clean.
        let events = h.tp.recorder.events();
        let others: Vec<&Event> = events
            .iter()
            .filter(|e| {
                !matches!(&e.body, EventBody::Operation { operation: Operation::Sql(op), .. }
                    if op.text == in_text)
            })
            .collect();
        let others = serde_json::to_string(&others).unwrap();
        assert!(!others.contains(&canary), "the audit log holds the upstream password");
        let mut sessions: Vec<&SessionId> = events.iter().map(|e| &e.session).collect();
        sessions.dedup();
        let frames: String = sessions
            .into_iter()
            .map(|s| serde_json::to_string(&h.tp.recorder.recording(s)).unwrap())
            .collect();
        assert!(!frames.contains(&canary), "a recording holds the upstream password");
        assert!(frames.contains("length('[redacted]')"), "the statement was recorded, redacted");
        healthy(&h).await;
    })
    .await;
}

/// A FunctionCall message calling `btrim(text)` (OID 885) with one text argument.
fn function_call_btrim(arg: &str) -> Vec<u8> {
    let mut body = 885u32.to_be_bytes().to_vec();
    body.extend_from_slice(&1i16.to_be_bytes()); // one argument format code
    body.extend_from_slice(&0i16.to_be_bytes()); // text
    body.extend_from_slice(&1i16.to_be_bytes()); // one argument
    body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
    body.extend_from_slice(arg.as_bytes());
    body.extend_from_slice(&0i16.to_be_bytes()); // text result
    msg(b'F', &body)
}

#[tokio::test]
async fn function_call_is_refused_by_default_and_the_session_stays_usable() {
    gatehouse_testkit::within(T, async {
        let h = start(Options::default()).await;
        let (mut s, _) = logged_in(h.port).await;
        s.write_all(&function_call_btrim("  abc  ")).await.unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &[b'Z', 0, 0, 0, 5]).await;
        assert_eq!(error_code(&got).as_deref(), Some("42501"), "{got:?}");
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(
            !text.contains("\0\0\0\x03abc"),
            "no FunctionCallResponse reaches the client: {text}"
        );
        assert!(text.contains("function-call"), "{text}");
        // The session is still usable.
        s.write_all(&msg(b'Q', b"select 'still here'\0"))
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, b"still here").await;
    })
    .await;
}

#[tokio::test]
async fn allowed_function_call_results_are_masked() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            masker: gatehouse_testkit::layers::LiteralMasker::new()
                .literal("4111111111111111", "[card]"),
            configure: Box::new(|c| c.allow_function_call = true),
            ..Options::default()
        })
        .await;
        let (mut s, _) = logged_in(h.port).await;
        s.write_all(&function_call_btrim(" paid 4111111111111111 "))
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &[b'Z', 0, 0, 0, 5]).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.contains("paid [card]"), "{text}");
        assert!(!text.contains("4111111111111111"), "{text}");
        assert_eq!(error_code(&got), None, "{text}");
    })
    .await;
}

#[tokio::test]
async fn an_idle_session_is_ended_with_a_fatal_and_recorded() {
    gatehouse_testkit::within(T, async {
        let h = start(Options {
            configure: Box::new(|c| c.limits.idle_timeout = Some(Duration::from_millis(300))),
            ..Options::default()
        })
        .await;
        let (mut s, _) = logged_in(h.port).await;
        // Say nothing: the gateway ends the session.
        let got = read_all(&mut s).await;
        assert_eq!(error_code(&got).as_deref(), Some("57P05"), "{got:?}");
        assert!(got.windows(5).any(|w| w == b"FATAL"));
        // SessionEnd names the reason: the idle timeout, not the upstream EOF that follows the
        // gateway's own shutdown of the upstream connection.
        let reason = h
            .wait_for_event("SessionEnd", |e| match e.body {
                gatehouse_core::EventBody::SessionEnd { reason, .. } => Some(reason),
                _ => None,
            })
            .await;
        assert_eq!(reason, "idle timeout");
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_sees_function_call_results_masked_and_its_stop_ends_the_session() {
    gatehouse_testkit::within(T, async {
        let hook = std::sync::Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on(
            "stop-here",
        ));
        let h = start(Options {
            masker: gatehouse_testkit::layers::LiteralMasker::new()
                .literal("4111111111111111", "[card]"),
            configure: Box::new(|c| c.allow_function_call = true),
            hooks: Some(hook.clone()),
            ..Options::default()
        })
        .await;
        let (mut s, _) = logged_in(h.port).await;
        s.write_all(&function_call_btrim(" paid 4111111111111111 "))
            .await
            .unwrap();
        let mut got = Vec::new();
        read_until(&mut s, &mut got, &[b'Z', 0, 0, 0, 5]).await;
        assert!(String::from_utf8_lossy(&got).contains("paid [card]"));
        // The hook was shown the FunctionCallResponse as the client received it: masked.
        let results: Vec<Vec<u8>> = hook
            .chunks()
            .into_iter()
            .filter(|(_, m)| m.first() == Some(&b'V'))
            .map(|(_, m)| m)
            .collect();
        assert_eq!(results.len(), 1, "{results:?}");
        let shown = String::from_utf8_lossy(&results[0]).into_owned();
        assert!(shown.contains("paid [card]"), "{shown}");
        assert!(!shown.contains("4111111111111111"), "{shown}");
        assert!(
            got.windows(results[0].len()).any(|w| w == &results[0][..]),
            "the client got what the hook saw"
        );
        // A stopped result is withheld; the session ends with 42501 naming the hook.
        s.write_all(&function_call_btrim(" stop-here "))
            .await
            .unwrap();
        let got = read_all(&mut s).await;
        assert_eq!(error_code(&got).as_deref(), Some("42501"), "{got:?}");
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.contains("GateHooks::on_chunk"), "{text}");
        assert!(!text.contains("stop-here"), "{text}");
        assert!(hook.stopped());
    })
    .await;
}

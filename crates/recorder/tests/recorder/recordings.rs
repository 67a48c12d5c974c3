//! Recordings: sinks, seals, backpressure, egress, and the replay formats.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{
    Decision, Event, EventBody, OperationResult, RecordError, Recorder as _, RecordingFrame,
    RecordingKind, SessionId,
};
use gatehouse_recorder::recording::{check_seal, parse_recording, read_recording_bytes};
use gatehouse_recorder::replay::{
    http_exchanges, render_sql_transcript, sql_transcript, to_asciicast,
};
use gatehouse_recorder::{
    AuditRecorder, RecorderConfig, RecordingConfig, RecordingStore, SessionRecording,
};

use crate::common::*;

const LOG: &str = "gw-rec";

fn out(s: &[u8]) -> RecordingFrame {
    RecordingFrame::Output { data: s.to_vec() }
}

#[tokio::test]
async fn a_terminal_session_replays_as_asciicast_and_its_seal_is_in_session_end() {
    let dir = tempfile::tempdir().unwrap();
    let rec = AuditRecorder::open(dir.path(), RecorderConfig::new(LOG), signer(), None)
        .await
        .unwrap();
    let s = SessionId::generate();
    rec.record(Event::now(
        s.clone(),
        Some(identity()),
        Some(target()),
        EventBody::SessionStart {
            client_addr: "127.0.0.1:5000".into(),
            details: serde_json::Value::Null,
        },
    ))
    .await
    .unwrap();
    let mut sink = rec
        .open_recording(
            &s,
            RecordingKind::Terminal {
                cols: 100,
                rows: 30,
            },
        )
        .await
        .unwrap();
    let e_acute = "é".as_bytes();
    sink.write(out(b"$ ls\r\n")).await.unwrap();
    sink.write(RecordingFrame::Input {
        data: b"ls\r".to_vec(),
    })
    .await
    .unwrap();
    sink.write(out(&[b"caf", &e_acute[..1]].concat()))
        .await
        .unwrap();
    sink.write(out(&[&e_acute[1..], b"\r\n"].concat()))
        .await
        .unwrap();
    sink.write(RecordingFrame::Resize {
        cols: 120,
        rows: 40,
    })
    .await
    .unwrap();
    sink.write(RecordingFrame::ErrorOutput {
        data: b"oops\n".to_vec(),
    })
    .await
    .unwrap();
    let seal = sink.seal().await.unwrap();
    assert_eq!(seal.frames, 6);
    rec.record(Event::now(
        s.clone(),
        Some(identity()),
        Some(target()),
        EventBody::SessionEnd {
            reason: "client closed".into(),
            recording: Some(seal.clone()),
            operations: 0,
        },
    ))
    .await
    .unwrap();
    rec.log().close().await.unwrap();

    let logs = gatehouse_recorder::read::load_local_logs(&dir.path().join("audit")).unwrap();
    assert!(gatehouse_recorder::verify(&logs, &options()).ok());
    let sessions = gatehouse_recorder::read::list_sessions(&logs);
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].recording.as_ref(), Some(&seal));
    assert_eq!(sessions[0].end_reason.as_deref(), Some("client closed"));

    let bytes = read_recording_bytes(rec.recording_store(), &seal.location)
        .await
        .unwrap();
    assert!(check_seal(&bytes, &seal));
    let mut tampered = bytes.clone();
    let n = tampered.len();
    tampered[n - 3] ^= 1;
    assert!(!check_seal(&tampered, &seal));

    let recording = parse_recording(&bytes).unwrap();
    let cast = to_asciicast(&recording).unwrap();
    let mut lines = cast.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 100);
    assert_eq!(header["height"], 30);
    let events: Vec<(f64, String, String)> =
        lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    let output: String = events
        .iter()
        .filter(|e| e.1 == "o")
        .map(|e| e.2.as_str())
        .collect();
    assert_eq!(
        output, "$ ls\r\ncafé\r\noops\n",
        "a character split across frames is kept whole"
    );
    assert!(events.iter().any(|e| e.1 == "i" && e.2 == "ls\r"));
    assert!(events.iter().any(|e| e.1 == "r" && e.2 == "120x40"));
    assert!(
        events.windows(2).all(|w| w[0].0 <= w[1].0),
        "times never go backwards"
    );
}

#[tokio::test]
async fn a_full_buffer_applies_backpressure_then_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordingStore::Local(dir.path().to_owned());
    use gatehouse_core::RecordingSink as _;
    // Current-thread runtime: the writer task cannot run until this test yields, so the buffer
    // state below is deterministic.
    let waiting = RecordingConfig {
        buffer_frames: 1,
        backpressure_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let mut sink = SessionRecording::open(
        &store,
        &SessionId::generate(),
        RecordingKind::Exec,
        &waiting,
        None,
    )
    .await
    .unwrap();
    let mut first = sink.write(out(b"one"));
    assert!(
        futures::poll!(&mut first).is_ready(),
        "a write with room resolves at once"
    );
    drop(first);
    let mut second = sink.write(out(b"two"));
    assert!(
        futures::poll!(&mut second).is_pending(),
        "a full buffer makes the writer wait"
    );
    assert_eq!(
        within(10, second).await,
        Ok(()),
        "and it goes through once there is room"
    );
    let seal = Box::new(sink).seal().await.unwrap();
    assert_eq!(seal.frames, 2);

    let never_wait = RecordingConfig {
        buffer_frames: 1,
        backpressure_timeout: Duration::ZERO,
        ..Default::default()
    };
    let mut sink = SessionRecording::open(
        &store,
        &SessionId::generate(),
        RecordingKind::Exec,
        &never_wait,
        None,
    )
    .await
    .unwrap();
    sink.write(out(b"one")).await.unwrap();
    assert_eq!(sink.write(out(b"two")).await, Err(RecordError::BacklogFull));

    // With room and time, every write goes through.
    let config = RecordingConfig {
        buffer_frames: 64,
        ..Default::default()
    };
    let mut sink = SessionRecording::open(
        &store,
        &SessionId::generate(),
        RecordingKind::Exec,
        &config,
        None,
    )
    .await
    .unwrap();
    let mut total = 0u64;
    for i in 0..5000u32 {
        let data = format!("line {i}\n").into_bytes();
        total += data.len() as u64;
        within(10, sink.write(out(&data))).await.unwrap();
    }
    let seal = Box::new(sink).seal().await.unwrap();
    assert_eq!(seal.frames, 5000);
    let bytes = read_recording_bytes(&store, &seal.location).await.unwrap();
    assert!(check_seal(&bytes, &seal));
    let rec = parse_recording(&bytes).unwrap();
    let replayed: u64 = rec
        .frames
        .iter()
        .map(|f| match &f.frame {
            RecordingFrame::Output { data } => data.len() as u64,
            _ => 0,
        })
        .sum();
    assert_eq!(replayed, total);
}

#[tokio::test]
async fn a_recording_with_a_held_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = b"pg-password-canary-1234";
    let guard = Arc::new(LiteralGuard {
        secret: secret.to_vec(),
    });
    let rec = AuditRecorder::open(dir.path(), RecorderConfig::new(LOG), signer(), Some(guard))
        .await
        .unwrap();
    let s = SessionId::generate();
    let mut sink = rec.open_recording(&s, RecordingKind::Exec).await.unwrap();
    sink.write(out(b"hello ")).await.unwrap();
    // Split across two frames: still caught.
    sink.write(out(&secret[..8])).await.unwrap();
    let _ = sink.write(out(&secret[8..])).await;
    let err = sink.seal().await.unwrap_err();
    assert_eq!(err, RecordError::EgressBlocked);
    for entry in walk(&dir.path().join("recordings")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&secret[8..]);
        assert!(!text.contains(&b64), "the rest of the secret was written");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn hostile_session_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rec = AuditRecorder::open(dir.path(), RecorderConfig::new(LOG), signer(), None)
        .await
        .unwrap();
    for bad in ["../../etc", "", ".hidden", "a/b"] {
        assert!(
            rec.open_recording(&SessionId(bad.into()), RecordingKind::Sql)
                .await
                .is_err(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_sql_session_replays_as_a_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let rec = AuditRecorder::open(dir.path(), RecorderConfig::new(LOG), signer(), None)
        .await
        .unwrap();
    let s = SessionId::generate();
    rec.record(sql_event(&s, 0, "select id, email from customers"))
        .await
        .unwrap();
    let mut deny = sql_event(&s, 1, "drop table customers");
    if let EventBody::Operation { decision, .. } = &mut deny.body {
        *decision = Decision::deny("no-ddl", "DDL is not allowed");
    }
    rec.record(deny).await.unwrap();
    let mut sink = rec.open_recording(&s, RecordingKind::Sql).await.unwrap();
    let rows: Vec<serde_json::Value> = (0..10).map(|i| serde_json::json!([i, "***@***"])).collect();
    sink.write(RecordingFrame::Entry {
        label: "rows".into(),
        body: serde_json::json!({"index": 0, "columns": ["id", "email"], "rows": rows}),
    })
    .await
    .unwrap();
    let seal = sink.seal().await.unwrap();
    rec.record(Event::now(
        s.clone(),
        Some(identity()),
        Some(target()),
        EventBody::OperationResult(OperationResult {
            index: 0,
            status: "SELECT 10".into(),
            rows: Some(10),
            bytes_out: 300,
            duration_us: 800,
            findings: vec![],
        }),
    ))
    .await
    .unwrap();
    rec.log().close().await.unwrap();
    let logs = gatehouse_recorder::read::load_local_logs(&dir.path().join("audit")).unwrap();
    let events = gatehouse_recorder::read::session_events(&logs, &s);
    let bytes = read_recording_bytes(rec.recording_store(), &seal.location)
        .await
        .unwrap();
    let recording = parse_recording(&bytes).unwrap();
    let t = sql_transcript(Some(&recording), &events, 3);
    assert_eq!(t.len(), 2);
    assert_eq!(
        t[0].text.as_deref(),
        Some("select id, email from customers")
    );
    assert_eq!(t[0].rows.len(), 3);
    assert_eq!(t[0].rows_omitted, 7);
    assert_eq!(t[0].row_count, Some(10));
    assert_eq!(t[1].decision.as_ref().unwrap().rule_id, "no-ddl");
    let text = render_sql_transcript(&t);
    assert!(text.contains("drop table customers"));
    assert!(text.contains("deny by rule no-ddl"));
    assert!(text.contains("7 more rows not shown"));
    assert!(text.contains("SELECT 10, 10 rows"));
}

#[tokio::test]
async fn an_http_session_replays_as_a_list() {
    let dir = tempfile::tempdir().unwrap();
    let store = RecordingStore::Local(dir.path().to_owned());
    let mut sink = SessionRecording::open(
        &store,
        &SessionId::generate(),
        RecordingKind::Http,
        &Default::default(),
        None,
    )
    .await
    .unwrap();
    use gatehouse_core::RecordingSink as _;
    for (label, body) in [
        (
            "http_request",
            serde_json::json!({"method": "GET", "path": "/v1/users"}),
        ),
        ("http_response", serde_json::json!({"status": 200})),
        (
            "http_request",
            serde_json::json!({"method": "DELETE", "path": "/v1/users/7"}),
        ),
        ("http_response", serde_json::json!({"status": 403})),
    ] {
        sink.write(RecordingFrame::Entry {
            label: label.into(),
            body,
        })
        .await
        .unwrap();
    }
    let seal = Box::new(sink).seal().await.unwrap();
    let rec =
        parse_recording(&read_recording_bytes(&store, &seal.location).await.unwrap()).unwrap();
    let x = http_exchanges(&rec);
    assert_eq!(x.len(), 2);
    assert_eq!(x[1].request.as_ref().unwrap()["method"], "DELETE");
    assert_eq!(x[1].response.as_ref().unwrap()["status"], 403);
    assert!(
        to_asciicast(&rec).is_err(),
        "HTTP recordings are not terminals"
    );
}

#[test]
fn hostile_recording_bytes_are_errors_not_panics() {
    for bad in [
        &b""[..],
        b"{}",
        b"{\"recording_version\":1,\"session\":\"s\",\"kind\":\"sql\",\"started\":\"x\"}\n{\"t\":1,\"frame\":\"output\"}",
        b"{\"recording_version\":1,\"session\":\"s\",\"kind\":\"sql\",\"started\":\"x\"}\n{\"t\":1,\"frame\":\"output\",\"data\":\"***\"}",
        b"{\"recording_version\":1,\"session\":\"s\",\"kind\":\"sql\",\"started\":\"x\"}\n{\"t\":-1}",
    ] {
        assert!(parse_recording(bad).is_err());
    }
}

/// Frames that trickle in share writes, yet the file never lags the session by much more than
/// the linger: a lone frame reaches the file without the sink being sealed.
#[tokio::test]
async fn a_lone_frame_reaches_the_file_within_the_linger() {
    use gatehouse_core::RecordingSink as _;
    let dir = tempfile::tempdir().unwrap();
    let store = RecordingStore::Local(dir.path().to_owned());
    let config = RecordingConfig {
        write_linger: Duration::from_millis(50),
        ..Default::default()
    };
    let session = SessionId::generate();
    let mut sink = SessionRecording::open(&store, &session, RecordingKind::Exec, &config, None)
        .await
        .unwrap();
    sink.write(out(b"first line\n")).await.unwrap();
    sink.write(out(b"second line\n")).await.unwrap();
    let session_dir = dir.path().join(&session.0);
    let stored = within(10, async {
        loop {
            let mut found = Vec::new();
            if let Ok(entries) = std::fs::read_dir(&session_dir) {
                for e in entries.flatten() {
                    found = std::fs::read(e.path()).unwrap_or_default();
                }
            }
            if found.iter().filter(|&&b| b == b'\n').count() >= 3 {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let text = String::from_utf8(stored).unwrap();
    // Header plus both frames, still unsealed.
    assert_eq!(text.lines().count(), 3, "{text}");
    sink.write(out(b"third line\n")).await.unwrap();
    let seal = Box::new(sink).seal().await.unwrap();
    assert_eq!(seal.frames, 3);
    let bytes = read_recording_bytes(&store, &seal.location).await.unwrap();
    assert!(check_seal(&bytes, &seal));
    let rec = parse_recording(&bytes).unwrap();
    assert_eq!(rec.frames.len(), 3);
}

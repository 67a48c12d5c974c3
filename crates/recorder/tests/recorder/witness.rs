//! The webhook witness against a real HTTP listener on loopback.

use std::sync::Arc;

use gatehouse_core::SessionId;
use gatehouse_recorder::verify::verify_log;
use gatehouse_recorder::{Checkpoint, LogHooks, ProblemKind, VerifyOptions, WebhookWitness};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::common::*;

const LOG: &str = "gw-hook";

/// A tiny HTTP/1.1 server: every POST body goes to the channel; answers `status`.
async fn serve(status: u16) -> (String, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/checkpoints", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: head, then Content-Length bytes of body.
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    buf.drain(..head_end + len);
                    let _ = tx.send(body);
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    if conn.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn checkpoints_are_posted_to_the_webhook_and_catch_a_cut_tail() {
    let (url, mut rx) = serve(200).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = LogHooks {
        witnesses: vec![Arc::new(WebhookWitness::new(&url).unwrap())],
        shipper: None,
    };
    let log = open_log_with(dir.path(), config(LOG), hooks).await;
    let s = SessionId::generate();
    for i in 0..250 {
        log.append(&sql_event(&s, i, "select 1")).await.unwrap();
    }
    let last = log.checkpoint().await.unwrap().unwrap();
    // Latest wins: wait until the witness holds the last checkpoint.
    let mut held: Vec<Checkpoint> = Vec::new();
    within(20, async {
        while let Some(body) = rx.recv().await {
            let cp: Checkpoint = serde_json::from_slice(&body).unwrap();
            let done = cp == last;
            held.push(cp);
            if done {
                break;
            }
        }
    })
    .await;
    log.close().await.unwrap();
    let opts = VerifyOptions {
        witnesses: held.clone(),
        ..options()
    };
    let data = load(dir.path(), LOG);
    let v = verify_log(&data, &opts);
    assert!(v.ok(), "{:?}", v.problem);
    assert!(v.witnesses_matched >= 1);
    // Cut the tail (checkpoints included): the webhook's copy still catches it.
    let mut cut = data.clone();
    let seg = &mut cut.segments.last_mut().unwrap().bytes;
    let text = String::from_utf8(seg.clone()).unwrap();
    let keep: Vec<&str> = text.lines().take(120).collect();
    *seg = format!("{}\n", keep.join("\n")).into_bytes();
    assert!(
        verify_log(&cut, &options()).ok(),
        "without a witness a clean cut looks like a shorter log"
    );
    assert_eq!(
        verify_log(&cut, &opts).problem.unwrap().kind,
        ProblemKind::TruncatedTail
    );
}

#[tokio::test]
async fn a_failing_witness_never_blocks_appends() {
    let (url, mut rx) = serve(500).await;
    let dir = tempfile::tempdir().unwrap();
    let hooks = LogHooks {
        witnesses: vec![Arc::new(WebhookWitness::new(&url).unwrap())],
        shipper: None,
    };
    let log = open_log_with(dir.path(), config(LOG), hooks).await;
    let s = SessionId::generate();
    for i in 0..300 {
        within(10, log.append(&sql_event(&s, i, "select 1")))
            .await
            .unwrap();
    }
    // The witness was asked (and refused); the log is fine.
    within(20, rx.recv()).await.unwrap();
    log.close().await.unwrap();
    assert!(verify_log(&load(dir.path(), LOG), &options()).ok());
    assert!(
        WebhookWitness::new("https://example.invalid/x").is_err(),
        "http:// only"
    );
    assert!(WebhookWitness::new("not a url").is_err());
}

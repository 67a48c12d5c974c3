//! The webhook notifier against a real HTTP receiver (hyper on 127.0.0.1:0) that is down, then up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_approvals::{
    ApprovalBroker, ApprovalsConfig, MemoryStore, StoreConfig, WebhookConfig, WebhookNotifier,
};
use gatehouse_core::{ApprovalDecision, ApprovalOutcome, ApprovalState, Approvals};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use crate::common::*;

/// How the receiver treats connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Accept and close at once (the service is down behind its port).
    Reset,
    /// Answer 503.
    Unavailable,
    /// Answer 200 and keep the message.
    Up,
}

struct Receiver {
    mode: Mutex<Mode>,
    bodies: Mutex<Vec<serde_json::Value>>,
    attempts: AtomicUsize,
    stop: AtomicBool,
}

async fn serve(listener: tokio::net::TcpListener, receiver: Arc<Receiver>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        if receiver.stop.load(Ordering::SeqCst) {
            return;
        }
        receiver.attempts.fetch_add(1, Ordering::SeqCst);
        let mode = *receiver.mode.lock().await;
        if mode == Mode::Reset {
            drop(stream);
            continue;
        }
        let receiver = receiver.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let receiver = receiver.clone();
                async move {
                    assert_eq!(req.method(), hyper::Method::POST);
                    assert_eq!(req.uri().path(), "/hooks/approvals");
                    assert_eq!(
                        req.headers()[hyper::header::CONTENT_TYPE],
                        "application/json"
                    );
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    if mode == Mode::Unavailable {
                        return Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .status(503)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        );
                    }
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    receiver.bodies.lock().await.push(json);
                    Ok(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn fast_retry(url: String) -> WebhookConfig {
    WebhookConfig {
        initial_backoff_ms: 20,
        max_backoff_ms: 100,
        attempt_timeout_ms: 2_000,
        ..WebhookConfig::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up() {
    let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
    let url = format!("http://{}/hooks/approvals", listener.local_addr().unwrap());
    let receiver = Arc::new(Receiver {
        mode: Mutex::new(Mode::Reset),
        bodies: Mutex::new(Vec::new()),
        attempts: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let server = tokio::spawn(serve(listener, receiver.clone()));

    let notifier = Arc::new(WebhookNotifier::spawn(fast_retry(url)).unwrap());
    let stats = notifier.stats();
    let broker = ApprovalBroker::builder(Arc::new(MemoryStore::new()))
        .notifier(notifier.clone())
        .build();

    // While the receiver is down, the request opens, waits and is decided without delay.
    let ticket = within(
        LIMIT,
        broker.open(request(
            agent(),
            delete_users("42"),
            requirement(1, 600_000, None),
        )),
    )
    .await
    .unwrap();
    let waiter = {
        let broker = broker.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { broker.wait(&id, Duration::from_secs(60)).await })
    };
    let rec = within(
        LIMIT,
        broker.decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "go ahead",
        ),
    )
    .await
    .unwrap();
    assert_eq!(rec.state, ApprovalState::Approved);
    assert!(matches!(
        within(LIMIT, waiter).await.unwrap().unwrap(),
        ApprovalOutcome::Approved { .. }
    ));

    // It keeps retrying: through resets, then through 503s.
    within(LIMIT, async {
        while stats.failed_attempts() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    *receiver.mode.lock().await = Mode::Unavailable;
    let before = stats.failed_attempts();
    within(LIMIT, async {
        while stats.failed_attempts() < before + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(stats.delivered(), 0);
    assert!(receiver.bodies.lock().await.is_empty());

    // The receiver comes back: both messages arrive, in order, once each.
    *receiver.mode.lock().await = Mode::Up;
    within(LIMIT, async {
        while stats.delivered() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let bodies = receiver.bodies.lock().await.clone();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let opened = bodies[0]["text"].as_str().unwrap();
    assert!(opened.starts_with("Approval requested"), "{opened}");
    assert!(opened.contains(&ticket.id.0));
    assert!(opened.contains("DELETE FROM users"));
    assert!(opened.contains("agent-7"));
    let decided = bodies[1]["text"].as_str().unwrap();
    assert!(decided.contains(&ticket.id.0));
    assert!(decided.contains("approved by *alice*"), "{decided}");
    assert!(decided.contains("go ahead"));
    assert_eq!(stats.queued(), 2);

    receiver.stop.store(true, Ordering::SeqCst);
    server.abort();
}

#[test]
fn webhook_url_is_validated() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for bad in [
            "ftp://example.com/x",
            "not a url",
            "/relative/path",
            "http://",
        ] {
            assert!(
                WebhookNotifier::spawn(WebhookConfig::new(bad)).is_err(),
                "{bad}"
            );
        }
        assert!(
            WebhookNotifier::spawn(WebhookConfig::new(
                "https://hooks.example.com/services/T/B/x"
            ))
            .is_ok()
        );
    });
}

#[test]
fn config_parses_and_refuses_unknown_keys() {
    let cfg = ApprovalsConfig::from_toml(
        r#"
        [store]
        kind = "journal"
        path = "/var/lib/gatehouse/approvals.jsonl"

        [webhook]
        url = "https://hooks.example.com/services/T/B/x"
        initial_backoff_ms = 250
        "#,
    )
    .unwrap();
    assert_eq!(
        cfg.store,
        StoreConfig::Journal {
            path: "/var/lib/gatehouse/approvals.jsonl".into()
        }
    );
    assert_eq!(cfg.webhook.as_ref().unwrap().initial_backoff_ms, 250);
    assert_eq!(
        cfg.webhook.as_ref().unwrap().url.as_deref(),
        Some("https://hooks.example.com/services/T/B/x")
    );
    assert_eq!(cfg.webhook.as_ref().unwrap().max_backoff_ms, 60_000);

    let pg = ApprovalsConfig::from_toml(
        r#"
        [store]
        kind = "postgres"
        url = "host=db.internal user=gatehouse dbname=gatehouse"
        password_env = "GATEHOUSE_APPROVALS_PG_PASSWORD"
        "#,
    )
    .unwrap();
    assert!(matches!(
        pg.store,
        StoreConfig::Postgres {
            listen: true,
            poll_interval_ms: 2_000,
            ..
        }
    ));

    for bad in [
        "[store]\nkind = \"journal\"\npath = \"x\"\nfsync = false\n",
        "[store]\nkind = \"journal\"\npath = \"x\"\n[webhook]\nurl = \"http://x\"\nretries = 3\n",
        "[store]\nkind = \"journal\"\npath = \"x\"\ntimeout = 3\n[other]\n",
        "[store]\nkind = \"carrier-pigeon\"\n",
        "[store]\nkind = \"postgres\"\nurl = \"host=x\"\npasword_env = \"typo\"\n",
    ] {
        assert!(ApprovalsConfig::from_toml(bad).is_err(), "accepted: {bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_builds_a_working_journal_broker() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[store]\nkind = \"journal\"\npath = {:?}\n",
        dir.path().join("a.jsonl").display().to_string()
    );
    let broker = ApprovalsConfig::from_toml(&text)
        .unwrap()
        .build(None)
        .await
        .unwrap();
    let t = broker
        .open(request(
            agent(),
            delete_users("1"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    assert_eq!(
        broker.get(&t.id).await.unwrap().state,
        ApprovalState::Pending
    );
    assert!(dir.path().join("a.jsonl").exists());
}

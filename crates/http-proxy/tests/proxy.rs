#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The gateway end to end: the real `curl` binary and a hyper client, through the proxy, to a
//! real HTTP server started by the test, with the real masking, egress guard and approvals
//! layers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use gatehouse_core::{ApprovalDecision, Approvals as _, EventBody};
use gatehouse_testkit::json_escapes::decode_json_escapes;
use gatehouse_testkit::within;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

const T: Duration = Duration::from_secs(60);

fn json_body(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn credential_is_injected_and_the_callers_token_is_not_forwarded() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, _, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let seen = up.last();
        assert_eq!(seen.path_and_query, "/users");
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {SECRET}").as_str()
        );
        assert!(!format!("{:?}", seen.headers).contains(AGENT_TOKEN));

        // Header, query and basic kinds.
        curl(&[
            &gw.url("/hdr/users"),
            "-H",
            &bearer(AGENT_TOKEN),
            "-H",
            "X-Api-Key: mine",
        ])
        .await;
        let seen = up.last();
        assert_eq!(seen.headers.get_all("x-api-key").iter().count(), 1);
        assert_eq!(seen.headers["x-api-key"], SECRET);
        assert!(seen.headers.get("authorization").is_none());

        curl(&[
            &gw.url("/qry/users?x=1&api_key=mine"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(
            up.last().path_and_query,
            format!("/users?x=1&api_key={SECRET}")
        );

        curl(&[&gw.url("/basic/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        let auth = up.last().headers["authorization"]
            .to_str()
            .unwrap()
            .to_string();
        use base64::Engine as _;
        let expected = base64::engine::general_purpose::STANDARD.encode(format!("svc:{SECRET}"));
        assert_eq!(auth, format!("Basic {expected}"));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_reflected_credential_never_reaches_the_caller_or_the_record() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let mut every_byte = Vec::new();
        // The upstream echoes every header (or the query) back: each credential kind, with curl.
        for path in [
            "/api/echo-raw",
            "/hdr/echo-raw",
            "/basic/echo-raw",
            "/qry/echo-raw?a=1",
        ] {
            let (status, head, body) = curl(&[&gw.url(path), "-H", &bearer(AGENT_TOKEN)]).await;
            assert_eq!(status, 502, "{path}: {}", String::from_utf8_lossy(&body));
            assert_eq!(json_body(&body)["error"], "egress_blocked");
            every_byte.extend_from_slice(head.as_bytes());
            every_byte.extend_from_slice(&body);
        }
        // As JSON, the masker already hides secret-looking keys; whatever the outcome, no secret.
        for path in ["/api/echo", "/qry/echo?a=1"] {
            let (status, head, body) = curl(&[&gw.url(path), "-H", &bearer(AGENT_TOKEN)]).await;
            assert!(status == 200 || status == 502, "{path}: {status}");
            every_byte.extend_from_slice(head.as_bytes());
            every_byte.extend_from_slice(&body);
        }
        // A header carrying the secret: withheld.
        let (status, head, body) =
            curl(&[&gw.url("/api/leak-header"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 502);
        every_byte.extend_from_slice(head.as_bytes());
        every_byte.extend_from_slice(&body);
        // A redirect whose Location carries the query credential (`api_key=…`): the header
        // masker hides the value, or the egress guard withholds the response.
        let (status, head, body) =
            curl(&[&gw.url("/qry/redirect"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert!(status == 302 || status == 502, "{status}: {head}");
        every_byte.extend_from_slice(head.as_bytes());
        every_byte.extend_from_slice(&body);
        // The same with a Rust client.
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let req = http::Request::get(gw.url("/api/echo-raw"))
            .header("authorization", format!("Bearer {AGENT_TOKEN}"))
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 502);
        every_byte.extend_from_slice(&resp.into_body().collect().await.unwrap().to_bytes());

        assert_no_secret("responses", &every_byte);
        let layers = gw.shutdown().await;
        let dump = layers.recorder.dump();
        assert_no_secret("audit log and recordings", dump.as_bytes());
        let blocks = layers
            .recorder
            .events()
            .iter()
            .filter(|e| matches!(e.body, EventBody::EgressBlocked { .. }))
            .count();
        assert!(blocks >= 6, "every block is recorded, got {blocks}");
        // The upstream did get the credential every time (it was injected, then withheld).
        assert!(up.seen().len() >= 9);
        assert!(up.seen().iter().all(|s| s.method == "GET"));
    })
    .await;
}

#[tokio::test]
async fn a_held_key_as_utf16_reversed_or_in_parts_never_reaches_the_caller() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let utf16: Vec<u8> = SECRET.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let reversed: String = SECRET.chars().rev().collect();
        // Under a raw rule (`/raw/…`): the body is opaque bytes, only the egress guard stands
        // between the echoed `X-Api-Key` and the caller.
        for form in ["utf16", "utf16be", "reversed", "parts"] {
            let path = format!("/hdr/raw/echo-key-{form}");
            let (status, head, body) = curl(&[&gw.url(&path), "-H", &bearer(AGENT_TOKEN)]).await;
            assert_eq!(status, 502, "{path}: {}", String::from_utf8_lossy(&body));
            assert_eq!(json_body(&body)["error"], "egress_blocked", "{path}");
            let mut all = head.into_bytes();
            all.extend_from_slice(&body);
            assert!(!all.windows(utf16.len()).any(|w| w == utf16), "{path}");
            assert!(!String::from_utf8_lossy(&all).contains(&reversed), "{path}");
            assert!(
                !String::from_utf8_lossy(&all).contains(&SECRET[..16]),
                "{path}"
            );
        }
        assert!(
            up.seen()
                .iter()
                .filter(|s| s.path_and_query.contains("echo-key-"))
                .all(|s| s.headers["x-api-key"] == SECRET),
            "the upstream did get the key"
        );
        let layers = gw.shutdown().await;
        let dump = layers.recorder.dump();
        assert!(!dump.contains(&reversed));
        assert!(!dump.contains(&SECRET[..16]));
    })
    .await;
}

#[tokio::test]
async fn ranges_never_slice_a_masked_body() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        assert_eq!(&RANGE_BODY[20..29], "alice@exa");
        // The range is not forwarded: the whole body comes back masked, with 200.
        for extra in [
            vec!["-H", "Range: bytes=20-28"],
            vec!["-H", "Range: bytes=29-36", "-H", "If-Range: \"x\""],
        ] {
            let mut args = vec![gw.url("/api/range-pii"), "-H".into(), bearer(AGENT_TOKEN)];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (status, head, body) = curl(&args).await;
            assert_eq!(status, 200, "{head}");
            let text = String::from_utf8_lossy(&body);
            assert!(text.starts_with("contact the owner:"), "{text}");
            assert!(!text.contains("alice@"), "{text}");
            assert!(!text.contains("example.com"), "{text}");
            assert!(
                !head.to_ascii_lowercase().contains("content-range"),
                "{head}"
            );
            let seen = up.last();
            assert!(seen.headers.get("range").is_none());
            assert!(seen.headers.get("if-range").is_none());
        }
        // An upstream that answers 206 anyway is refused, naming why.
        let (status, _, body) =
            curl(&[&gw.url("/api/always-206"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 502);
        let v = json_body(&body);
        assert_eq!(v["error"], "upstream_refused", "{v}");
        assert!(v["message"].as_str().unwrap().contains("206"), "{v}");
        assert!(!String::from_utf8_lossy(&body).contains("alice"));
        // Under a raw rule, ranges pass as they are.
        let (status, head, _) = curl(&[
            &gw.url("/api/raw/range-pii"),
            "-H",
            &bearer(AGENT_TOKEN),
            "-H",
            "Range: bytes=0-6",
        ])
        .await;
        assert_eq!(status, 206, "{head}");
        assert_eq!(up.last().headers["range"], "bytes=0-6");
        let layers = gw.shutdown().await;
        assert!(!layers.recorder.dump().contains("alice@exa"));
    })
    .await;
}

#[tokio::test]
async fn response_headers_are_masked_for_the_caller_and_the_recording() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, head, _) =
            curl(&[&gw.url("/api/pii-headers"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 302, "{head}");
        assert!(!head.contains("alice@example.com"), "{head}");
        assert!(!head.contains("4111111111111111"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("location: http://x.example/?e="), "{head}");
        assert!(lower.contains("x-card: "), "{head}");
        assert!(lower.contains("x-plain: nothing personal"), "{head}");
        // The gateway's refusal does not echo the upstream's content type.
        for path in ["/api/ct-leak", "/hdr/ct-key"] {
            let (status, head, body) = curl(&[&gw.url(path), "-H", &bearer(AGENT_TOKEN)]).await;
            assert_eq!(status, 502, "{path}");
            let v = json_body(&body);
            assert_eq!(v["error"], "binary_refused", "{path}: {v}");
            let all = format!("{head}{}", String::from_utf8_lossy(&body));
            assert!(!all.contains("alice@example.com"), "{path}: {all}");
            assert!(!all.contains("4111111111111111"), "{path}: {all}");
            assert!(!all.contains(&SECRET[..16]), "{path}: {all}");
        }
        let layers = gw.shutdown().await;
        let dump = layers.recorder.dump();
        assert!(dump.contains("x.example"), "the exchange was recorded");
        assert!(!dump.contains("alice@example.com"));
        assert!(!dump.contains("4111111111111111"));
        assert!(!dump.contains(&SECRET[..16]));
    })
    .await;
}

/// The process's peak resident set (`VmHWM`), bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_gzip_bomb_streams_in_bounded_memory_and_is_cut_at_the_limit() {
    within(Duration::from_secs(120), async {
        let up = start_upstream().await;
        // Built before measuring: the test's own upstream holds the compressed body.
        let compressed = gzip_bomb().len();
        assert!(compressed < 2 * 1024 * 1024, "{compressed}");
        let mut cfg = config(up.addr, dead_addr());
        let limit = 128 * 1024 * 1024u64;
        cfg.limits.max_response_body = limit;
        let gw = Gateway::start(cfg, None).await;
        let before = peak_rss();
        // Through the real curl, the body to /dev/null: `%{size_download}` is what arrived.
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "60",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .arg(gw.url("/api/gzip-bomb"))
        .args(["-H", &bearer(AGENT_TOKEN)]);
        let out = tokio::task::spawn_blocking(move || {
            gatehouse_testkit::process::run_with_timeout(cmd, Duration::from_secs(90))
        })
        .await
        .unwrap()
        .expect("curl runs");
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let (code, size) = report.split_once(' ').unwrap();
        let size: u64 = size.parse().unwrap();
        // Streamed: the head left with 200, then the body was cut at the limit (curl reports a
        // transfer error), never the whole half gigabyte.
        assert_eq!(code, "200", "{report}");
        assert!(
            !out.status.success(),
            "the cut is visible to curl: {report}"
        );
        assert!(size <= limit, "{report}");
        assert!(size > 0, "{report}");
        let grown = peak_rss().saturating_sub(before);
        assert!(
            grown < 64 * 1024 * 1024,
            "peak RSS grew by {} MiB decoding the bomb",
            grown / (1024 * 1024)
        );
        // The gateway keeps serving.
        let (status, _, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn denied_path_gets_403_json_naming_the_rule_and_never_reaches_upstream() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        for path in ["/api/admin/users", "/api/users/../admin/x", "/api/%61dmin", "/api//admin/"] {
            let (status, head, body) = curl(&[
                "--path-as-is",
                &gw.url(path),
                "-H",
                &bearer(AGENT_TOKEN),
            ])
            .await;
            assert_eq!(status, 403, "{path}");
            assert!(head.to_ascii_lowercase().contains("content-type: application/json"));
            let v = json_body(&body);
            assert_eq!(v["error"], "denied");
            assert_eq!(v["rule"], "no-admin");
        }
        assert!(up.seen().is_empty(), "nothing denied reached the upstream");
        let layers = gw.shutdown().await;
        let denied = layers
            .recorder
            .events()
            .iter()
            .filter(|e| matches!(&e.body, EventBody::Operation { decision, .. } if decision.rule_id == "no-admin"))
            .count();
        assert_eq!(denied, 4);
    })
    .await;
}

#[tokio::test]
async fn unauthenticated_and_unknown_targets_get_json_errors() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, head, body) = curl(&[&gw.url("/api/users")]).await;
        assert_eq!(status, 401);
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer")
        );
        assert_eq!(json_body(&body)["error"], "unauthenticated");
        let (status, _, _) = curl(&[&gw.url("/api/users"), "-H", &bearer("wrong")]).await;
        assert_eq!(status, 401);
        let (status, _, body) = curl(&[&gw.url("/nothing/here"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 404);
        assert_eq!(json_body(&body)["error"], "no_target");
        assert!(up.seen().is_empty());
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn recorder_failure_fails_closed() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        gw.layers.recorder.set_failing(true);
        let (status, head, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 503);
        assert_eq!(json_body(&body)["error"], "audit_unavailable");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 5"),
            "audit unavailable is retry-later: {head}"
        );
        assert!(up.seen().is_empty(), "nothing runs unrecorded");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn reviewed_delete_is_held_then_runs_once_approved() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let approvals = gw.layers.approvals.clone();
        let approver = tokio::spawn(async move {
            loop {
                let pending = approvals
                    .list(&gatehouse_core::ApprovalFilter::default())
                    .await
                    .unwrap();
                if let Some(r) = pending.first() {
                    assert_eq!(r.request.rule_id, "review-delete");
                    approvals
                        .decide(
                            &r.id,
                            &approver(),
                            ApprovalDecision::Approve,
                            "ticket OPS-1",
                        )
                        .await
                        .unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let (status, _, body) = curl(&[
            "-X",
            "DELETE",
            &gw.url("/api/users/42"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        approver.await.unwrap();
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(up.deletes.load(std::sync::atomic::Ordering::SeqCst), 1);
        let layers = gw.shutdown().await;
        assert!(layers.recorder.events().iter().any(|e| matches!(
            &e.body,
            EventBody::ApprovalResolved {
                outcome: gatehouse_core::ApprovalOutcome::Approved { .. },
                ..
            }
        )));
    })
    .await;
}

#[tokio::test]
async fn reviewed_delete_gets_409_then_the_retry_passes_once_approved() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.review_hold_ms = 0;
        cfg.retry_after_s = 3;
        let gw = Gateway::start(cfg, None).await;
        let del = || async {
            curl(&[
                "-X",
                "DELETE",
                &gw.url("/api/users/7"),
                "-H",
                &bearer(AGENT_TOKEN),
            ])
            .await
        };
        let (status, head, body) = del().await;
        assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
        assert!(head.to_ascii_lowercase().contains("retry-after: 3"));
        let v = json_body(&body);
        assert_eq!(v["error"], "approval_pending");
        let id = v["approval_id"].as_str().unwrap().to_string();

        // Retrying before anyone decided waits on the same request, not a new one.
        let (status, _, body) = del().await;
        assert_eq!(status, 409);
        assert_eq!(json_body(&body)["approval_id"], id.as_str());
        assert_eq!(up.deletes.load(std::sync::atomic::Ordering::SeqCst), 0);

        let approvals = gw.layers.approvals.clone();
        approvals
            .decide(
                &gatehouse_core::ApprovalId(id.clone()),
                &approver(),
                ApprovalDecision::Approve,
                "looks right",
            )
            .await
            .unwrap();
        let (status, _, body) = del().await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(up.deletes.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A different DELETE is not covered by that approval.
        let (status, _, _) = curl(&[
            "-X",
            "DELETE",
            &gw.url("/api/users/8"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 409);
        assert_eq!(up.deletes.load(std::sync::atomic::Ordering::SeqCst), 1);
        let layers = gw.shutdown().await;

        // One approval request for /users/7, recorded once (by the broker), with the index of
        // the operation that asked for it.
        let events = layers.recorder.events();
        let requested: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::ApprovalRequested { index, id: rid, .. } if rid.0 == id => Some(*index),
                _ => None,
            })
            .collect();
        assert_eq!(
            requested.len(),
            1,
            "one approval_requested per held operation"
        );
        let first_delete = events
            .iter()
            .find_map(|e| match &e.body {
                EventBody::Operation {
                    index,
                    operation: gatehouse_core::Operation::Http(op),
                    ..
                } if op.method == "DELETE" && op.path == "/users/7" => Some(*index),
                _ => None,
            })
            .unwrap();
        assert_eq!(requested[0], first_delete);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e.body, EventBody::ApprovalRequested { .. }))
                .count(),
            2,
            "/users/7 and /users/8, each once"
        );
    })
    .await;
}

#[tokio::test]
async fn denied_approval_gets_403() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.review_hold_ms = 0;
        let gw = Gateway::start(cfg, None).await;
        let (status, _, body) = curl(&[
            "-X",
            "DELETE",
            &gw.url("/api/users/9"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 409);
        let id = json_body(&body)["approval_id"]
            .as_str()
            .unwrap()
            .to_string();
        gw.layers
            .approvals
            .decide(
                &gatehouse_core::ApprovalId(id),
                &approver(),
                ApprovalDecision::Deny,
                "no",
            )
            .await
            .unwrap();
        let (status, _, body) = curl(&[
            "-X",
            "DELETE",
            &gw.url("/api/users/9"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        // The retry picks up its own request, decided while it was away: denied.
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        let v = json_body(&body);
        assert_eq!(v["error"], "approval_denied");
        assert_eq!(v["rule"], "review-delete");
        // That answer is given once; a further retry asks again (pending), and never runs.
        let (status, _, _) = curl(&[
            "-X",
            "DELETE",
            &gw.url("/api/users/9"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 409);
        assert_eq!(up.deletes.load(std::sync::atomic::Ordering::SeqCst), 0);
        gw.shutdown().await;
    })
    .await;
}

/// Connections spread over serving threads (each its own runtime and upstream pool) keep every
/// guarantee: the credential injected, bodies masked, policy applied, each session recorded and
/// ended at shutdown, nothing unmasked in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_threads_keep_every_guarantee_and_end_every_session() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start_threaded(config(up.addr, dead_addr()), 3).await;
        // Twelve callers at once: twelve connections, handed round-robin to the threads.
        let url = gw.url("/api/users");
        let calls = (0..12).map(|_| {
            let url = url.clone();
            async move { curl(&[&url, "-H", &bearer(AGENT_TOKEN)]).await }
        });
        for (status, _, body) in futures::future::join_all(calls).await {
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let v = json_body(&body);
            assert_eq!(v["users"][0]["email"], "[email]");
        }
        assert_eq!(up.seen().len(), 12);
        for seen in up.seen() {
            assert_eq!(
                seen.headers["authorization"],
                format!("Bearer {SECRET}").as_str()
            );
        }
        let (status, _, body) = curl(&[&gw.url("/api/admin/x"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        assert_eq!(
            up.seen().len(),
            12,
            "a denied request never reaches the upstream"
        );
        // Two keep-alive connections still open at shutdown: their sessions end before
        // `serve_threaded` returns.
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let requests = (0..2).map(|_| {
            let req = http::Request::get(gw.url("/api/users"))
                .header("authorization", format!("Bearer {AGENT_TOKEN}"))
                .body(Empty::new())
                .unwrap();
            client.request(req)
        });
        for resp in futures::future::join_all(requests).await {
            let resp = resp.unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
        let layers = gw.shutdown().await;
        let events = layers.recorder.events();
        let count = |f: fn(&EventBody) -> bool| events.iter().filter(|e| f(&e.body)).count();
        let starts = count(|b| matches!(b, EventBody::SessionStart { .. }));
        assert!((14..=15).contains(&starts), "{starts} sessions");
        assert_eq!(count(|b| matches!(b, EventBody::SessionEnd { .. })), starts);
        assert_eq!(count(|b| matches!(b, EventBody::OperationResult(_))), 15);
        let dump = layers.recorder.dump();
        assert!(!dump.contains("jane@example.com"));
        assert!(!dump.contains(AGENT_TOKEN));
        assert_no_secret("record", dump.as_bytes());
    })
    .await;
}

#[tokio::test]
async fn json_fields_are_masked_for_the_caller_and_the_recording() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, head, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(!text.contains("jane@example.com"), "{text}");
        assert!(!text.contains("4111 1111 1111 1111"), "{text}");
        let v = json_body(&body);
        assert_eq!(v["users"][0]["email"], "[email]");
        assert_eq!(v["users"][0]["note"], "ok");
        // Hop-by-hop headers the upstream named in Connection do not reach the caller.
        assert!(!head.to_ascii_lowercase().contains("x-upstream-hop"));
        let layers = gw.shutdown().await;
        let dump = layers.recorder.dump();
        assert!(!dump.contains("jane@example.com"));
        assert!(dump.contains("[email]"));
        assert!(dump.contains("http_exchange"));
        // Cookies and the caller's token are redacted in the recording.
        assert!(!dump.contains("session=abc"));
        assert!(!dump.contains(AGENT_TOKEN));
        assert!(layers.recorder.events().iter().any(|e| matches!(
            &e.body,
            EventBody::OperationResult(r) if r.status == "200" && !r.findings.is_empty()
        )));
    })
    .await;
}

#[tokio::test]
async fn gzip_responses_are_decoded_masked_and_sent_identity() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, head, body) = curl(&[
            &gw.url("/api/gzip"),
            "-H",
            &bearer(AGENT_TOKEN),
            "-H",
            "Accept-Encoding: br, gzip",
        ])
        .await;
        assert_eq!(status, 200);
        assert!(!head.to_ascii_lowercase().contains("content-encoding"));
        assert_eq!(json_body(&body)["users"][0]["email"], "[email]");
        // Upstream was only offered what the gateway can decode.
        assert_eq!(up.last().headers["accept-encoding"], "gzip");
        // An encoding the gateway cannot decode is never passed through unmasked.
        let (status, _, body) = curl(&[&gw.url("/api/brotli"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 502);
        assert_eq!(json_body(&body)["error"], "upstream_refused");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn sse_is_masked_per_event_and_arrives_incrementally() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let req = http::Request::get(gw.url("/api/sse"))
            .header("authorization", format!("Bearer {AGENT_TOKEN}"))
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        // The first event arrives while the upstream is still holding the second one back.
        while !String::from_utf8_lossy(&got).contains("\n\n") {
            let frame = body.frame().await.unwrap().unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        let first = String::from_utf8_lossy(&got).into_owned();
        assert_eq!(first, "event: msg\ndata: {\"to\": \"[email]\"}\n\n");
        up.go.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(String::from_utf8_lossy(&rest), "data: second [email]\n\n");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn text_streams_arrive_line_by_line_and_a_partial_line_waits_for_its_end() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let req = http::Request::get(gw.url("/api/prompt"))
            .header("authorization", format!("Bearer {AGENT_TOKEN}"))
            .body(Empty::new())
            .unwrap();
        let mut body = client.request(req).await.unwrap().into_body();
        let mut got = Vec::new();
        // The complete line arrives while the upstream waits (the upstream sends its rest only
        // after the test saw it: held back, this would never end).
        while !String::from_utf8_lossy(&got).contains("contact [email]\n") {
            let frame = body.frame().await.unwrap().unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        up.go.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        got.extend_from_slice(&rest);
        // "password> " had no line end: it was held until the bytes after it came, never
        // released on a timer.
        assert_eq!(
            String::from_utf8_lossy(&got),
            "contact [email]\npassword> done\n"
        );
        gw.shutdown().await;
    })
    .await;
}

/// Values cut across upstream writes 0.3 s apart (chunked and sized bodies, text and JSON,
/// HTTP/1.1 and HTTP/2) are masked whole, for the caller and in the recording.
#[tokio::test]
async fn values_split_across_paused_body_writes_are_masked_whole() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let pieces = ["alice", "exam", "ple.com", "41111111", "11111111"];
        for path in [
            "/api/pieces-chunked",
            "/api/pieces-sized",
            "/api/pieces-json",
            "/api/pieces-json-chunked",
        ] {
            for h2 in [false, true] {
                let url = gw.url(path);
                let auth = bearer(AGENT_TOKEN);
                let mut args = vec![url.as_str(), "-H", auth.as_str()];
                if h2 {
                    args.push("--http2-prior-knowledge");
                }
                let (ok, body, err) = curl_output(&args).await;
                assert!(ok, "{path} h2={h2}: {err}");
                let text = String::from_utf8_lossy(&body);
                for p in pieces {
                    assert!(!text.contains(p), "{path} h2={h2}: {p:?} leaked: {text}");
                }
                assert!(text.contains("to "), "{path} h2={h2}: {text}");
                assert!(text.contains(" end"), "{path} h2={h2}: {text}");
            }
        }
        let layers = gw.shutdown().await;
        let recorded = serde_json::to_string(&exchanges(&layers)).unwrap();
        assert!(recorded.contains("pieces-sized"), "{recorded}");
        for p in pieces {
            assert!(!recorded.contains(p), "recording: {p:?} leaked: {recorded}");
        }
    })
    .await;
}

/// Under a raw rule, a text body that turns binary after text masking changed is cut with an
/// error (never passed on silently altered); text in the same write as the first binary byte
/// is masked; text that masking left alone lets the rest pass byte-exact.
#[tokio::test]
async fn a_body_turning_binary_after_masked_text_is_refused_not_altered() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        for path in ["/api/raw/late-binary", "/api/raw/late-binary-nl"] {
            let (_ok, body, _err) = curl_output(&[&gw.url(path), "-H", &bearer(AGENT_TOKEN)]).await;
            assert!(!contains(&body, b"alice@example.com"), "{path}: {body:?}");
            assert!(!contains(&body, b"\x00\x01bin"), "{path}: {body:?}");
        }
        let (ok, body, err) = curl_output(&[
            &gw.url("/api/raw/late-binary-clean"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert!(ok, "{err}");
        assert_eq!(body, b"plain text\nmore\x00\x01\xffend");
        let layers = gw.shutdown().await;
        let recorded = serde_json::to_string(&exchanges(&layers)).unwrap();
        assert!(!recorded.contains("alice@example.com"), "{recorded}");
    })
    .await;
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn upstream_down_is_502_json() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, _, body) = curl(&[&gw.url("/down/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 502);
        let v = json_body(&body);
        assert_eq!(v["error"], "upstream_unavailable");
        assert_eq!(v["side"], "upstream");
        assert_no_secret("502 body", &body);
        gw.shutdown().await;
    })
    .await;
}

/// What the gateway must do with one raw request target.
enum Verdict {
    /// Forwarded; the upstream receives exactly this path (and query).
    Upstream(&'static str),
    /// Refused by policy (the admin rule).
    Denied,
    /// Refused as malformed or ambiguous.
    BadRequest,
}

#[tokio::test]
async fn path_normalisation_corpus() {
    use Verdict::*;
    let corpus: &[(&str, Verdict)] = &[
        ("/api/users", Upstream("/users")),
        ("/api/users/", Upstream("/users/")),
        ("/api", Upstream("/")),
        ("/api/", Upstream("/")),
        ("/api/a/./b", Upstream("/a/b")),
        ("/api/a/b/../c", Upstream("/a/c")),
        ("/api//users", Upstream("/users")),
        ("/api/%75sers", Upstream("/users")),
        ("/api/users?q=a%2Fb&x", Upstream("/users?q=a%2Fb&x")),
        ("/api/a%2fb", Upstream("/a%2Fb")),
        ("/api/a%5Cb", Upstream("/a%5Cb")),
        ("/api/caf%c3%a9", Upstream("/caf%C3%A9")),
        ("/api/a%20b", Upstream("/a%20b")),
        ("/api/../api/users", Upstream("/users")),
        ("/api/%2e%2e/api/x", Upstream("/x")),
        ("/api/Admin", Upstream("/Admin")),
        ("/api/admin", Denied),
        ("/api/admin/", Denied),
        ("/api/x/../admin", Denied),
        ("/api/x/%2e%2e/admin", Denied),
        ("/api/x/.%2E/admin/y", Denied),
        ("/api//admin", Denied),
        ("/api/%61dmin", Denied),
        ("/api/./admin", Denied),
        ("/api/..;/admin", BadRequest),
        ("/api/a%00b", BadRequest),
        ("/api/a%zz", BadRequest),
        ("/api/a%2", BadRequest),
    ];
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        for (raw, verdict) in corpus {
            let before = up.seen().len();
            let req = format!(
                "GET {raw} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nConnection: close\r\n\r\n"
            );
            let out = raw_exchange(gw.addr, req.as_bytes()).await;
            let (status, _, body) = split_response(&out);
            let seen = up.seen();
            match verdict {
                Upstream(expected) => {
                    assert_eq!(status, 200, "{raw}: {}", String::from_utf8_lossy(&body));
                    assert_eq!(seen.len(), before + 1, "{raw}");
                    assert_eq!(seen.last().unwrap().path_and_query, *expected, "{raw}");
                }
                Denied => {
                    assert_eq!(status, 403, "{raw}");
                    assert_eq!(json_body(&body)["rule"], "no-admin", "{raw}");
                    assert_eq!(seen.len(), before, "{raw}");
                }
                BadRequest => {
                    assert_eq!(status, 400, "{raw}: {}", String::from_utf8_lossy(&body));
                    assert_eq!(seen.len(), before, "{raw}");
                }
            }
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn encoded_separators_can_be_refused_by_configuration() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.encoded_separators = gatehouse_http::EncodedSeparatorPolicy::Reject;
        let gw = Gateway::start(cfg, None).await;
        let (status, _, body) = curl(&[
            "--path-as-is",
            &gw.url("/api/users%2F..%2Fadmin"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 400);
        assert_eq!(json_body(&body)["error"], "path_refused");
        assert!(up.seen().is_empty());
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn conflicting_content_length_and_transfer_encoding_are_refused() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let cases: [&str; 3] = [
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {T}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/admin HTTP/1.1\r\nHost: gw\r\n\r\n",
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {T}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {T}\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\nabc",
        ];
        for case in cases {
            let req = case.replace("{T}", AGENT_TOKEN);
            let out = raw_exchange(gw.addr, req.as_bytes()).await;
            let (status, _, body) = split_response(&out);
            assert_eq!(status, 400, "{case}");
            assert_eq!(json_body(&body)["error"], "conflicting_framing", "{case}");
        }
        // A clean pipelined pair on one connection still works.
        let ok = format!(
            "POST /api/upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\
GET /api/users HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {AGENT_TOKEN}\r\nConnection: close\r\n\r\n"
        );
        let out = raw_exchange(gw.addr, ok.as_bytes()).await;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
        assert!(up.seen().iter().all(|s| s.path_and_query != "/admin"));
        assert_eq!(
            up.seen().iter().filter(|s| s.path_and_query == "/upload").count(),
            1
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn hop_by_hop_headers_stop_at_the_gateway() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, _, _) = curl(&[
            &gw.url("/api/users"),
            "-H",
            &bearer(AGENT_TOKEN),
            "-H",
            "Connection: x-client-hop",
            "-H",
            "X-Client-Hop: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "-H",
            "TE: trailers",
            "-H",
            "X-End-To-End: kept",
        ])
        .await;
        assert_eq!(status, 200);
        let h = up.last().headers;
        for hop in ["x-client-hop", "keep-alive", "proxy-authorization", "te"] {
            assert!(h.get(hop).is_none(), "{hop} was forwarded");
        }
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["host"], up.addr.to_string().as_str());
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn request_body_limit_is_413() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.limits.max_request_body = 16;
        let gw = Gateway::start(cfg, None).await;
        let (status, _, body) = curl(&[
            &gw.url("/api/upload"),
            "-H",
            &bearer(AGENT_TOKEN),
            "--data-binary",
            "0123456789abcdefghijklmnopqrstuvwxyz",
        ])
        .await;
        assert_eq!(status, 413);
        assert_eq!(json_body(&body)["error"], "body_too_large");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn http2_via_alpn_on_tls_and_h2c_prior_knowledge() {
    within(T, async {
        let up = start_upstream().await;
        let ca = gatehouse_testkit::tls::TestCa::new("gatehouse test CA");
        let (cert, key) = ca.issue_server(&["localhost", "127.0.0.1"]);
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let certs = rustls_pemfile::certs(&mut cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .unwrap()
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let gw = Gateway::start(config(up.addr, dead_addr()), Some(tls)).await;
        let url = format!("https://localhost:{}/api/users", gw.addr.port());
        let resolve = format!("localhost:{}:127.0.0.1", gw.addr.port());
        let (status, head, body) = curl(&[
            "--http2",
            "--cacert",
            ca_path.to_str().unwrap(),
            "--resolve",
            &resolve,
            &url,
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 200);
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        assert_eq!(json_body(&body)["users"][0]["email"], "[email]");
        gw.shutdown().await;

        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, head, body) = curl(&[
            "--http2-prior-knowledge",
            &gw.url("/api/users"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 200);
        assert!(head.starts_with("HTTP/2 200"), "{head}");
        assert_eq!(json_body(&body)["users"][0]["email"], "[email]");
        let (status, _, body) = curl(&[
            "--http2-prior-knowledge",
            &gw.url("/api/admin"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 403);
        assert_eq!(json_body(&body)["rule"], "no-admin");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn websocket_upgrade_per_policy_with_compression_stripped_and_frames_masked() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let mut req = format!("ws://{}/api/ws", gw.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
        );
        req.headers_mut().insert(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits"
                .parse()
                .unwrap(),
        );
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        assert!(resp.headers().get("sec-websocket-extensions").is_none());
        let seen = up.last();
        assert_eq!(seen.path_and_query, "/ws");
        assert!(seen.headers.get("sec-websocket-extensions").is_none());
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {SECRET}").as_str()
        );

        let first = ws.next().await.unwrap().unwrap();
        assert_eq!(first, Message::text("hello [email]"));
        ws.send(Message::text("ping jane@example.com"))
            .await
            .unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo, Message::text("echo: ping [email]"));
        ws.close(None).await.unwrap();

        // Policy decides upgrades as WEBSOCKET: elsewhere it is denied.
        let mut req = format!("ws://{}/api/other", gw.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
        );
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let err = tokio_tungstenite::client_async(req, tcp).await.unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
            other => panic!("expected a 403, got {other}"),
        }
        let layers = gw.shutdown().await;
        let dump = layers.recorder.dump();
        assert!(!dump.contains("jane@example.com"));
        assert_no_secret("recording", dump.as_bytes());
    })
    .await;
}

#[tokio::test]
async fn identity_provider_down_fails_closed_with_503() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        gw.layers.authenticator.set_unavailable(true);
        let (status, _, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 503);
        assert_eq!(json_body(&body)["error"], "auth_unavailable");
        assert!(up.seen().is_empty());
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn sessions_are_recorded_per_connection_and_sealed() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        // Two requests on one keep-alive connection (curl reuses it), then another caller.
        let u = gw.url("/api/users");
        curl(&[
            &u,
            "-H",
            &bearer(AGENT_TOKEN),
            "--next",
            &u,
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        curl(&[&u, "-H", &bearer(OTHER_TOKEN)]).await;
        let layers = gw.shutdown().await;
        let events = layers.recorder.events();
        let starts = events
            .iter()
            .filter(|e| matches!(e.body, EventBody::SessionStart { .. }))
            .count();
        let ends: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::SessionEnd {
                    operations,
                    recording,
                    ..
                } => Some((*operations, recording.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, 2);
        assert_eq!(ends.len(), 2);
        assert!(ends.iter().any(|(ops, _)| *ops == 2));
        assert!(
            ends.iter()
                .all(|(_, seal)| seal.as_ref().is_some_and(|s| s.frames >= 1))
        );
        let subjects: Vec<_> = events
            .iter()
            .filter(|e| matches!(e.body, EventBody::Operation { .. }))
            .map(|e| e.identity.as_ref().unwrap().subject.clone())
            .collect();
        assert_eq!(subjects, ["agent-7", "agent-7", "agent-8"]);
    })
    .await;
}

/// Passes every event to the memory recorder, but fails `OperationResult` events on demand: the
/// result of an exchange is recorded in the background, after the caller has its response.
struct FailingResults {
    inner: std::sync::Arc<gatehouse_testkit::layers::MemoryRecorder>,
    fail: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicU64,
}

impl gatehouse_core::Recorder for FailingResults {
    fn record(
        &self,
        event: gatehouse_core::Event,
    ) -> gatehouse_core::BoxFuture<
        '_,
        Result<gatehouse_core::EventReceipt, gatehouse_core::RecordError>,
    > {
        use std::sync::atomic::Ordering;
        if matches!(event.body, EventBody::OperationResult(_)) && self.fail.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(gatehouse_core::RecordError::Store("disk full".into())) });
        }
        self.inner.record(event)
    }

    fn open_recording<'a>(
        &'a self,
        session: &'a gatehouse_core::SessionId,
        kind: gatehouse_core::RecordingKind,
    ) -> gatehouse_core::BoxFuture<
        'a,
        Result<Box<dyn gatehouse_core::RecordingSink>, gatehouse_core::RecordError>,
    > {
        self.inner.open_recording(session, kind)
    }
}

#[tokio::test]
async fn a_failed_background_result_record_fails_the_connection_closed() {
    use std::sync::atomic::Ordering;
    within(T, async {
        let up = start_upstream().await;
        let config = config(up.addr, dead_addr());
        let layers = layers(&config.held_secrets());
        let recorder = std::sync::Arc::new(FailingResults {
            inner: layers.recorder.clone(),
            fail: std::sync::atomic::AtomicBool::new(true),
            failed: std::sync::atomic::AtomicU64::new(0),
        });
        let mut pipeline = layers.pipeline.clone();
        pipeline.recorder = recorder.clone();
        let gw = Gateway::start_with(config, None, layers, pipeline).await;
        // One keep-alive connection, two requests.
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let get = || {
            http::Request::get("/api/users")
                .header("host", "gw")
                .header("authorization", format!("Bearer {AGENT_TOKEN}"))
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        // The first caller gets its response: its operation was recorded before it was
        // forwarded; only the result record (written afterwards) fails.
        let first = send.send_request(get()).await.unwrap();
        assert_eq!(first.status(), 200);
        let body = first.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains("jane@example.com"));
        while recorder.failed.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Every later request on that connection is refused before it reaches the upstream.
        let second = send.send_request(get()).await.unwrap();
        assert_eq!(second.status(), 503);
        let body = second.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(json_body(&body)["error"], "audit_unavailable");
        assert_eq!(up.seen().len(), 1, "the refused request never ran");
        drop(send);
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_small_masked_response_leaves_whole_with_a_content_length() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, head, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200);
        let head = head.to_ascii_lowercase();
        // Masking changed the length: the upstream's Content-Length is gone, the gateway's own
        // is exact.
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert_eq!(json_body(&body)["users"][0]["email"], "[email]");
        gw.shutdown().await;
    })
    .await;
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// The `http_exchange` recording entries of every session.
fn exchanges(layers: &Layers) -> Vec<serde_json::Value> {
    let mut sessions: Vec<_> = layers
        .recorder
        .events()
        .iter()
        .map(|e| e.session.clone())
        .collect();
    sessions.dedup();
    let mut out = Vec::new();
    for s in sessions {
        for f in layers.recorder.recording(&s) {
            if let gatehouse_core::RecordingFrame::Entry { label, body } = f
                && label == "http_exchange"
                && !out.contains(&body)
            {
                out.push(body);
            }
        }
    }
    out
}

#[tokio::test]
async fn binary_bodies_are_refused_without_a_raw_rule_and_never_rewritten() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        // By content type, and by content: a text/plain or JSON body with NUL bytes is binary,
        // and so is a gzip-encoded one once decoded.
        for path in [
            "/api/bin",
            "/api/bin-as-text",
            "/api/bin-as-json",
            "/api/bin-gzip",
        ] {
            let (status, head, body) = curl(&[&gw.url(path), "-H", &bearer(AGENT_TOKEN)]).await;
            assert_eq!(status, 502, "{path}: {head}");
            let v = json_body(&body);
            assert_eq!(v["error"], "binary_refused", "{path}: {v}");
            assert_eq!(v["rule"], "default-allow", "{path}");
            assert_eq!(v["setting"], "binary", "{path}");
            let msg = v["message"].as_str().unwrap();
            assert!(msg.contains("binary = \"raw\""), "{msg}");
        }
        // An empty body of a binary type has nothing to refuse.
        let (status, _, body) =
            curl(&[&gw.url("/api/empty-bin"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200);
        assert!(body.is_empty());
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn binary_bodies_pass_byte_exact_under_a_raw_rule_and_are_recorded_by_digest() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let blob = binary_blob();
        let expected = sha256_hex(&blob);
        for path in [
            "/api/raw/bin",
            "/api/raw/bin-as-text",
            "/api/raw/bin-as-json",
            "/api/raw/bin-gzip",
        ] {
            let (ok, body, err) = curl_output(&[&gw.url(path), "-H", &bearer(AGENT_TOKEN)]).await;
            assert!(ok, "{path}: {err}");
            assert_eq!(body.len(), blob.len(), "{path}");
            assert_eq!(sha256_hex(&body), expected, "{path}: altered");
        }
        // Text under the raw rule is still text: masked.
        let (ok, body, err) =
            curl_output(&[&gw.url("/api/raw/text-pii"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert!(ok, "{err}");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("jane@example.com"), "{text}");
        assert!(!text.contains("4111 1111 1111 1111"), "{text}");
        assert!(text.starts_with("mail [email] card"), "{text}");
        let layers = gw.shutdown().await;
        let entries = exchanges(&layers);
        let raw: Vec<_> = entries
            .iter()
            .filter(|e| !e["response_raw"].is_null())
            .collect();
        assert_eq!(raw.len(), 4, "{entries:#?}");
        for e in raw {
            assert_eq!(e["response_body_sha256"], expected.as_str(), "{e}");
            assert_eq!(e["response_body_bytes"], blob.len() as u64, "{e}");
            // The digest covers the whole body; the text before its first binary byte (the
            // blob's first bytes up to its NUL at 7) went out as text, and is recorded as such.
            let from = e["response_raw"]["from"].as_u64().unwrap();
            assert!(from < 8, "{e}");
            // The raw bytes themselves are not in the recording.
            assert_eq!(
                e["response_body"].as_str().unwrap().len() as u64,
                from,
                "{e}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn binary_request_bodies_reach_the_upstream_byte_exact_and_are_recorded_by_digest() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        // Random bytes with e-mail addresses and a card number planted in them.
        let blob = binary_blob();
        let expected = sha256_hex(&blob);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("blob");
        std::fs::write(&file, &blob).unwrap();
        let data = format!("@{}", file.display());
        // By content type, and by content (a text/plain or JSON body holding NUL bytes).
        for ct in ["application/octet-stream", "text/plain", "application/json"] {
            let (status, _, body) = curl(&[
                &gw.url("/api/upload"),
                "-H",
                &bearer(AGENT_TOKEN),
                "-H",
                &format!("content-type: {ct}"),
                "--data-binary",
                &data,
            ])
            .await;
            assert_eq!(status, 200, "{ct}");
            let v = json_body(&body);
            assert_eq!(v["received"], blob.len() as u64, "{ct}");
            assert_eq!(
                v["sha256"],
                expected.as_str(),
                "{ct}: the upstream got other bytes"
            );
        }
        // A text body is still recorded masked.
        let (status, _, _) = curl(&[
            &gw.url("/api/upload"),
            "-H",
            &bearer(AGENT_TOKEN),
            "-H",
            "content-type: application/json",
            "--data-binary",
            r#"{"email":"jane@example.com"}"#,
        ])
        .await;
        assert_eq!(status, 200);
        let layers = gw.shutdown().await;
        let entries: Vec<_> = exchanges(&layers)
            .into_iter()
            .filter(|e| e["path"] == "/upload")
            .collect();
        assert_eq!(entries.len(), 4, "{entries:#?}");
        let whys: Vec<_> = entries
            .iter()
            .take(3)
            .map(|e| {
                assert_eq!(e["request_body_sha256"], expected.as_str(), "{e}");
                assert_eq!(e["request_body_bytes"], blob.len() as u64, "{e}");
                // Neither the bytes nor a masked rewrite of them are in the recording.
                assert_eq!(e["request_body"], "", "{e}");
                assert_eq!(e["request_raw"]["from"], 0, "{e}");
                e["request_raw"]["why"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(whys, ["binary content type", "binary body", "binary body"]);
        let text = &entries[3];
        assert!(text["request_raw"].is_null(), "{text}");
        assert!(text["request_body_sha256"].is_null(), "{text}");
        let recorded = text["request_body"].as_str().unwrap();
        assert!(!recorded.contains("jane@example.com"), "{recorded}");
        assert!(recorded.contains("[email]"), "{recorded}");
    })
    .await;
}

#[tokio::test]
async fn masked_text_keeps_content_length_consistent() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let (status, head, body) =
            curl(&[&gw.url("/api/text-pii"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("mail [email] card"), "{text}");
        if let Some(len) = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        }) {
            assert_eq!(len.parse::<usize>().unwrap(), body.len(), "{head}");
        }
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_text_body_that_turns_binary_is_cut_not_rewritten() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        for (path, raw) in [
            ("/api/turns-binary", false),
            ("/api/raw/turns-binary", true),
        ] {
            let req = http::Request::get(gw.url(path))
                .header("authorization", format!("Bearer {AGENT_TOKEN}"))
                .body(Empty::new())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let mut body = resp.into_body();
            let mut got = Vec::new();
            // The text part arrives masked while the upstream holds the binary part back.
            while !got.ends_with(b"\n") {
                let frame = body.frame().await.unwrap().unwrap();
                got.extend_from_slice(frame.data_ref().unwrap());
            }
            assert_eq!(String::from_utf8_lossy(&got), "contact [email]\n", "{path}");
            up.go.notify_one();
            let rest = body.collect().await;
            // The text was masked (changed), so the stream is cut also under the raw rule:
            // the caller sees an error, never a silently altered body.
            assert!(
                rest.is_err(),
                "{path} (raw {raw}): the binary part must not arrive"
            );
        }
        let layers = gw.shutdown().await;
        let entries = exchanges(&layers);
        for path in ["/turns-binary", "/raw/turns-binary"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e["error"] == "binary_refused" && e["path"] == path),
                "{path}: {entries:#?}"
            );
        }
    })
    .await;
}

/// A binary WebSocket frame from the upstream cannot be masked: the stream ends with a policy
/// close naming the rule, unless the rule says `binary = "raw"`; then it arrives unchanged.
#[tokio::test]
async fn websocket_binary_frames_are_refused_or_passed_raw() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let blob = binary_blob();
        for (path, raw) in [("/api/ws", false), ("/api/raw/ws", true)] {
            let mut req = format!("ws://{}{path}", gw.addr)
                .into_client_request()
                .unwrap();
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
            );
            let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
            let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
            let first = ws.next().await.unwrap().unwrap();
            assert_eq!(first, Message::text("hello [email]"), "{path}");
            ws.send(Message::binary(blob.clone())).await.unwrap();
            let next = ws.next().await.unwrap().unwrap();
            if raw {
                match next {
                    Message::Binary(b) => assert_eq!(sha256_hex(&b), sha256_hex(&blob)),
                    other => panic!("{path}: expected the frame back, got {other:?}"),
                }
                ws.close(None).await.unwrap();
            } else {
                match next {
                    Message::Close(Some(f)) => {
                        assert_eq!(f.code, CloseCode::Policy);
                        assert!(f.reason.contains("rule 'default-allow'"), "{}", f.reason);
                        assert!(f.reason.contains("binary = \"raw\""), "{}", f.reason);
                    }
                    other => panic!("{path}: expected a policy close, got {other:?}"),
                }
            }
        }
        // The relays record when they end, after the close: wait for both records.
        let recorder = gw.layers.recorder.clone();
        let done = || {
            recorder.dump().contains(&sha256_hex(&blob))
                && recorder.events().iter().any(|e| {
                    matches!(
                        &e.body,
                        EventBody::OperationResult(r) if r.status == "101 refused: binary frame"
                    )
                })
        };
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let layers = gw.shutdown().await;
        let dump = layers.recorder.dump();
        assert!(!dump.contains("bob@example.org"), "raw bytes were recorded");
    })
    .await;
}

#[tokio::test]
async fn approval_timed_out_gets_504_with_retry_after() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.retry_after_s = 6;
        let layers = layers(&cfg.held_secrets());
        let mut pipeline = layers.pipeline.clone();
        // Every DELETE needs a review that nobody can give in time.
        pipeline.policy = Arc::new(gatehouse_testkit::layers::FnPolicy::new(
            |_, _, op| match op {
                gatehouse_core::Operation::Http(h) if h.method == "DELETE" => {
                    gatehouse_core::Decision::review(
                        "review-quick",
                        "deletions need a human, quickly",
                        gatehouse_core::ReviewRequirement {
                            approver_groups: vec!["approvers".into()],
                            approvals_required: 1,
                            timeout_ms: 1,
                            grant_window_ms: None,
                        },
                    )
                }
                _ => gatehouse_core::Decision::allow("default-allow", "allowed"),
            },
        ));
        let gw = Gateway::start_with(cfg, None, layers, pipeline).await;
        let (status, head, body) = curl(&[
            "-X",
            "DELETE",
            &gw.url("/api/users/3"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        // Retry later, not forbidden: a client tells it from a denial by the status alone.
        assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 6"),
            "a timed-out approval is retry-later: {head}"
        );
        let v = json_body(&body);
        assert_eq!(v["error"], "approval_timed_out");
        assert_eq!(v["rule"], "review-quick");
        assert_eq!(up.deletes.load(std::sync::atomic::Ordering::SeqCst), 0);
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn approvals_at_capacity_get_503_with_retry_after() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.review_hold_ms = 0;
        cfg.retry_after_s = 4;
        let mut layers = layers(&cfg.held_secrets());
        // At most one pending request per requester.
        let approvals = Arc::new(
            gatehouse_approvals::ApprovalBroker::builder(Arc::new(
                gatehouse_approvals::MemoryStore::new(),
            ))
            .recorder(layers.recorder.clone())
            .limits(gatehouse_approvals::HoldLimits {
                per_identity: 1,
                per_target: 50,
            })
            .build(),
        );
        layers.approvals = approvals.clone();
        let mut pipeline = layers.pipeline.clone();
        pipeline.approvals = approvals;
        let gw = Gateway::start_with(cfg, None, layers, pipeline).await;
        let del = |path: &'static str| {
            let url = gw.url(path);
            async move { curl(&["-X", "DELETE", &url, "-H", &bearer(AGENT_TOKEN)]).await }
        };
        let (status, _, _) = del("/api/users/1").await;
        assert_eq!(status, 409);
        let (status, head, body) = del("/api/users/2").await;
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        assert_eq!(json_body(&body)["error"], "approvals_unavailable");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 4"),
            "approvals unavailable is retry-later: {head}"
        );
        assert_eq!(up.deletes.load(std::sync::atomic::Ordering::SeqCst), 0);
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_hook_cannot_turn_a_deny_or_a_review_into_an_allow() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.review_hold_ms = 0;
        let layers = layers(&cfg.held_secrets());
        let mut pipeline = layers.pipeline.clone();
        pipeline.hooks = Arc::new(gatehouse_testkit::layers::LetEverythingThrough);
        let gw = Gateway::start_with(cfg, None, layers, pipeline).await;
        let (status, _, body) = curl(&[&gw.url("/api/admin/x"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        let v = json_body(&body);
        assert_eq!(v["error"], "denied");
        assert_eq!(v["rule"], "no-admin");
        let (status, _, body) = curl(&[
            "-X",
            "DELETE",
            &gw.url("/api/users/5"),
            "-H",
            &bearer(AGENT_TOKEN),
        ])
        .await;
        assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
        assert!(up.seen().is_empty(), "{:?}", up.seen());
        gw.shutdown().await;
    })
    .await;
}

/// A gateway whose pipeline has `hook` as its gate hooks.
async fn gateway_with_hook(
    up: &Upstream,
    hook: Arc<gatehouse_testkit::layers::RecordChunks>,
) -> Gateway {
    let cfg = config(up.addr, dead_addr());
    let layers = layers(&cfg.held_secrets());
    let mut pipeline = layers.pipeline.clone();
    pipeline.hooks = hook;
    Gateway::start_with(cfg, None, layers, pipeline).await
}

#[tokio::test]
async fn a_chunk_hook_sees_the_response_body_as_the_client_gets_it_masked() {
    within(T, async {
        let up = start_upstream().await;
        let hook = Arc::new(gatehouse_testkit::layers::RecordChunks::new());
        let gw = gateway_with_hook(&up, hook.clone()).await;
        let (status, _, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("[email]"));
        // Exactly what the client received, and never the unmasked value.
        assert_eq!(hook.seen(), body);
        assert!(!String::from_utf8_lossy(&hook.seen()).contains("jane@example.com"));
        // Streamed (gzip-decoded, masked) bodies too.
        let (status, _, body) = curl(&[&gw.url("/api/gzip"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 200);
        let seen = String::from_utf8_lossy(&hook.seen()).into_owned();
        assert!(seen.ends_with(&*String::from_utf8_lossy(&body)), "{seen}");
        assert!(!seen.contains("jane@example.com"), "{seen}");
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_stopping_the_first_chunk_is_a_403_and_nothing_of_the_body_leaves() {
    within(T, async {
        let up = start_upstream().await;
        let hook = Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on(
            "[email]",
        ));
        let gw = gateway_with_hook(&up, hook.clone()).await;
        let (status, _, body) = curl(&[&gw.url("/api/users"), "-H", &bearer(AGENT_TOKEN)]).await;
        assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
        let v = json_body(&body);
        assert_eq!(v["error"], "hook_stopped");
        assert!(!String::from_utf8_lossy(&body).contains("[email]"));
        assert!(hook.stopped());
        // The hook was shown the masked body only.
        assert!(!String::from_utf8_lossy(&hook.seen()).contains("jane@example.com"));
        let layers = gw.shutdown().await;
        let stopped = layers
            .recorder
            .events()
            .into_iter()
            .filter(|e| {
                matches!(&e.body, EventBody::OperationResult(r)
                    if r.status.ends_with(" hook_stopped"))
            })
            .count();
        assert_eq!(stopped, 1, "{}", layers.recorder.dump());
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_stopping_mid_stream_cuts_the_body() {
    within(T, async {
        let up = start_upstream().await;
        let hook = Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on(
            "second",
        ));
        let gw = gateway_with_hook(&up, hook.clone()).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let req = http::Request::get(gw.url("/api/sse"))
            .header("authorization", format!("Bearer {AGENT_TOKEN}"))
            .body(Empty::new())
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("\n\n") {
            let frame = body.frame().await.unwrap().unwrap();
            got.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "event: msg\ndata: {\"to\": \"[email]\"}\n\n"
        );
        up.go.notify_one();
        // The response head has left: the body is cut (no terminating chunk), so the client
        // sees an incomplete message rather than a complete, shortened one.
        let rest = body.collect().await;
        assert!(rest.is_err(), "the body ended cleanly: {rest:?}");
        assert!(hook.stopped());
        assert!(String::from_utf8_lossy(&hook.seen()).contains("data: second [email]"));
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_chunk_hook_sees_websocket_messages_masked_and_its_stop_is_a_policy_close() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    within(T, async {
        let up = start_upstream().await;
        let hook = Arc::new(gatehouse_testkit::layers::RecordChunks::stopping_on("echo"));
        let gw = gateway_with_hook(&up, hook.clone()).await;
        let mut req = format!("ws://{}/api/ws", gw.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
        );
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
        let first = ws.next().await.unwrap().unwrap();
        assert_eq!(first, Message::text("hello [email]"));
        assert_eq!(hook.seen(), b"hello [email]");
        ws.send(Message::text("ping jane@example.com"))
            .await
            .unwrap();
        match ws.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => {
                assert_eq!(f.code, CloseCode::Policy);
                assert!(f.reason.contains("GateHooks::on_chunk"), "{f:?}");
            }
            other => panic!("expected a policy close, got {other:?}"),
        }
        assert!(hook.stopped());
        assert!(!String::from_utf8_lossy(&hook.seen()).contains("jane@example.com"));
        let layers = gw.shutdown().await;
        let dump = layers.recorder.dump();
        assert!(dump.contains("101 hook_stopped"), "{dump}");
    })
    .await;
}

#[tokio::test]
async fn escaped_json_pii_is_masked_in_the_recording_and_for_the_caller() {
    within(T, async {
        let up = start_upstream().await;
        let gw = Gateway::start(config(up.addr, dead_addr()), None).await;
        let every =
            |s: &str| -> String { s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect() };
        let every_upper =
            |s: &str| -> String { s.chars().map(|c| format!("\\u{:04X}", c as u32)).collect() };
        // (JSON body, the value it spells, which must never be readable)
        let cases: Vec<(String, &str)> = vec![
            (
                r#"{"email":"jane\u0040example.com"}"#.into(),
                "jane@example.com",
            ),
            (
                format!(r#"{{"email":"{}"}}"#, every("jane@example.com")),
                "jane@example.com",
            ),
            (
                format!(r#"{{"card":"{}"}}"#, every_upper("4111111111111111")),
                "4111111111111111",
            ),
            (
                r#"{"url":"postgres:\/\/u:hunter2pw@db\/x"}"#.into(),
                "hunter2pw",
            ),
            (
                r#"{"n":"\uD83D\uDE00jane\u0040example.com\uD83D\uDE00"}"#.into(),
                "jane@example.com",
            ),
            (
                r#"{"jane\u0040example.com":"key"}"#.into(),
                "jane@example.com",
            ),
            (
                r#"{"pass\u0077ord":"hunter2hunter2"}"#.into(),
                "hunter2hunter2",
            ),
            // Claims JSON, does not parse: masked as text, escapes decoded first.
            (
                r#"{"a": ] "jane\u0040example.com" x"#.into(),
                "jane@example.com",
            ),
        ];
        for (doc, value) in &cases {
            let (status, _, body) = curl(&[
                &gw.url("/api/echo-body"),
                "-H",
                &bearer(AGENT_TOKEN),
                "-H",
                "content-type: application/json",
                "--data-binary",
                doc,
            ])
            .await;
            assert_eq!(status, 200, "{doc}");
            let text = String::from_utf8_lossy(&body);
            assert!(
                !decode_json_escapes(&text).contains(value),
                "{doc}: the caller got {text}"
            );
            // A body that was JSON is still JSON.
            if serde_json::from_str::<serde_json::Value>(doc).is_ok() {
                json_body(&body);
            }
        }
        let layers = gw.shutdown().await;
        let entries: Vec<_> = exchanges(&layers)
            .into_iter()
            .filter(|e| e["path"] == "/echo-body")
            .collect();
        assert_eq!(entries.len(), cases.len(), "{entries:#?}");
        for (e, (doc, value)) in entries.iter().zip(&cases) {
            for field in ["request_body", "response_body"] {
                let recorded = e[field].as_str().unwrap();
                assert!(!recorded.is_empty(), "{doc}: {field} not recorded: {e}");
                assert!(
                    !decode_json_escapes(recorded).contains(value),
                    "{doc}: {field} recorded as {recorded}"
                );
            }
        }
        let dump = decode_json_escapes(&layers.recorder.dump());
        for (doc, value) in &cases {
            assert!(!dump.contains(value), "{doc}: in the record");
        }
    })
    .await;
}

/// PII a caller writes into a query string or a request header reaches the upstream and the
/// policy as written, while the audit log (`operation` events, the approval request) and the
/// recording keep it masked; an approval still binds the real request.
#[tokio::test]
async fn query_and_header_pii_is_masked_in_the_audit_log_and_recording_only() {
    within(T, async {
        const PII: [&str; 4] = [
            "carol@example.net",
            "carol%40example.net",
            "dave@example.net",
            "4012888888881881",
        ];
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.review_hold_ms = 0;
        let layers = layers(&cfg.held_secrets());
        let mut pipeline = layers.pipeline.clone();
        // Rules that only the real query can match.
        pipeline.policy = Arc::new(gatehouse_testkit::layers::FnPolicy::new(|_, _, op| {
            let gatehouse_core::Operation::Http(op) = op else {
                return gatehouse_core::Decision::deny("not-http", "only HTTP here");
            };
            let query = op.query.as_deref().unwrap_or("");
            if op.method == "DELETE" && query.contains("owner=carol%40example.net") {
                return gatehouse_core::Decision::review(
                    "review-carol",
                    "deleting carol's data needs a human",
                    gatehouse_core::ReviewRequirement {
                        approver_groups: vec!["approvers".into()],
                        approvals_required: 1,
                        timeout_ms: 60_000,
                        grant_window_ms: None,
                    },
                );
            }
            if query.contains("email=carol@example.net&card=4012888888881881") {
                return gatehouse_core::Decision::allow("saw-real-query", "the real query");
            }
            gatehouse_core::Decision::deny("masked-query", "the policy saw a masked query")
        }));
        let gw = Gateway::start_with(cfg, None, layers, pipeline).await;

        let query = "email=carol@example.net&card=4012888888881881";
        let (status, _, _) = curl(&[
            &gw.url(&format!("/api/echo?{query}")),
            "-H",
            &bearer(AGENT_TOKEN),
            "-H",
            "X-Note: dave@example.net 4012888888881881",
        ])
        .await;
        assert_eq!(status, 200, "the policy matched on the real query");
        let seen = up.last();
        assert_eq!(seen.path_and_query, format!("/echo?{query}"));
        assert_eq!(
            seen.headers.get("x-note").unwrap(),
            "dave@example.net 4012888888881881"
        );

        // Held for review: the approver sees the query masked; the approval binds the real one.
        let url = gw.url("/api/users/9?owner=carol%40example.net");
        let auth = bearer(AGENT_TOKEN);
        let delete = ["-X", "DELETE", url.as_str(), "-H", auth.as_str()];
        let (status, _, body) = curl(&delete).await;
        assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
        let id = json_body(&body)["approval_id"]
            .as_str()
            .unwrap()
            .to_string();
        let id = gatehouse_core::ApprovalId(id);
        let record = gw.layers.approvals.get(&id).await.unwrap();
        let shown = serde_json::to_string(record.request.shown()).unwrap();
        assert!(shown.contains("owner=["), "{shown}");
        let gatehouse_core::Operation::Http(real) = &record.request.operation else {
            panic!("not HTTP");
        };
        assert_eq!(real.query.as_deref(), Some("owner=carol%40example.net"));
        gw.layers
            .approvals
            .decide(&id, &approver(), ApprovalDecision::Approve, "ok")
            .await
            .unwrap();
        let (status, _, _) = curl(&delete).await;
        assert_eq!(status, 200);
        assert_eq!(
            up.last().path_and_query,
            "/users/9?owner=carol%40example.net"
        );

        let layers = gw.shutdown().await;
        let events = layers.recorder.events();
        let operations: Vec<_> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Operation {
                    operation: gatehouse_core::Operation::Http(op),
                    decision,
                    ..
                } => Some((op.clone(), decision.rule_id.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(operations.len(), 3, "{operations:?}");
        assert_eq!(operations[0].1, "saw-real-query");
        assert!(
            operations[0]
                .0
                .query
                .as_deref()
                .is_some_and(|q| q.starts_with("email=[")),
            "{operations:?}"
        );
        let dump = layers.recorder.dump();
        assert!(dump.contains("x-note"), "the header is recorded");
        for pii in PII {
            assert!(
                !dump.contains(pii),
                "{pii} in the audit log or recording: {dump}"
            );
        }
    })
    .await;
}

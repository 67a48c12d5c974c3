//! Each outcome of the operation gate, as an SSH client sees it (the table in `docs/DESIGN.md`):
//! exit 126 for denied, 124 for an approval that timed out, 75 (EX_TEMPFAIL) when approvals or
//! the audit log are unavailable, a held command abandoned when its channel closes, and hooks
//! that cannot loosen a decision.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::*;
use gatehouse_ssh::{EXIT_APPROVAL_TIMED_OUT, EXIT_DENIED, EXIT_UNAVAILABLE};
use gatehouse_testkit::layers::{FnPolicy, MemoryRecorder};
use gatehouse_testkit::within;

use crate::common::*;

/// `test_policy`, except that `systemctl`'s review times out after `timeout_ms`.
fn review_policy(timeout_ms: u64) -> FnPolicy {
    let base = test_policy();
    FnPolicy::new(move |identity, target, op| {
        let decision = base.decide(identity, target, op);
        match decision.review.clone() {
            Some(mut review) => {
                review.timeout_ms = timeout_ms;
                Decision::review(decision.rule_id, decision.reason, review)
            }
            None => decision,
        }
    })
}

fn statuses(recorder: &MemoryRecorder) -> Vec<String> {
    results(recorder).into_iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_timed_out_exits_124() {
    let gw = start(Options {
        policy: Some(review_policy(300)),
        ..Options::default()
    })
    .await;
    let marker = gw.dir.path().join("ran");
    let run = gw
        .ssh(
            &format!("systemctl restart x; touch {}", marker.display()),
            b"",
        )
        .await;
    assert_eq!(run.status, Some(EXIT_APPROVAL_TIMED_OUT as i32), "{run:?}");
    assert!(run.stderr.contains("timed out"), "{run:?}");
    assert!(!marker.exists());
    let recorder = gw.shutdown().await;
    assert_eq!(statuses(&recorder), ["approval timed out"]);
}

/// An approvals layer that cannot take a request.
struct DownApprovals(ApprovalError);

impl Approvals for DownApprovals {
    fn open(&self, _: ApprovalRequest) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>> {
        Box::pin(async move { Err(self.0.clone()) })
    }
    fn wait<'a>(
        &'a self,
        _: &'a ApprovalId,
        _: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>> {
        Box::pin(async move { Err(self.0.clone()) })
    }
    fn list<'a>(
        &'a self,
        _: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>> {
        Box::pin(async move { Err(self.0.clone()) })
    }
    fn get<'a>(
        &'a self,
        _: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move { Err(self.0.clone()) })
    }
    fn decide<'a>(
        &'a self,
        _: &'a ApprovalId,
        _: &'a Identity,
        _: ApprovalDecision,
        _: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move { Err(self.0.clone()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_unavailable_exits_75_not_126() {
    for (error, says) in [
        (
            ApprovalError::Store("store offline".into()),
            "store offline",
        ),
        (
            ApprovalError::TooManyPending("agent-1 has 10 held".into()),
            "too many operations waiting",
        ),
    ] {
        let gw = start(Options {
            approvals: Some(Arc::new(DownApprovals(error))),
            ..Options::default()
        })
        .await;
        let marker = gw.dir.path().join("ran");
        let run = gw
            .ssh(
                &format!("systemctl restart x; touch {}", marker.display()),
                b"",
            )
            .await;
        assert_eq!(run.status, Some(EXIT_UNAVAILABLE as i32), "{run:?}");
        assert!(run.stderr.contains("approvals are unavailable"), "{run:?}");
        assert!(run.stderr.contains(says), "{run:?}");
        assert!(run.stderr.contains("try again later"), "{run:?}");
        assert!(!marker.exists());
        let recorder = gw.shutdown().await;
        assert_eq!(statuses(&recorder), ["approvals unavailable"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_command_is_abandoned_when_its_channel_closes() {
    let gw = start(Options::default()).await;
    let marker = gw.dir.path().join("ran");
    let client = russh_login(&gw, TARGET).await;
    let ch = client.channel_open_session().await.unwrap();
    ch.exec(
        true,
        format!("systemctl restart x; touch {}", marker.display()),
    )
    .await
    .unwrap();
    let id = within(LIMIT, gw.approvals.next_pending()).await;
    ch.close().await.unwrap();
    // The gate drops the wait: the approvals layer closes the request as abandoned.
    within(LIMIT, async {
        while gw.approvals.pending().contains(&id) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // An approval arriving afterwards runs nothing.
    let late = gw
        .approvals
        .decide(&id, &approver(), ApprovalDecision::Approve, "too late")
        .await;
    assert!(late.is_err(), "{late:?}");
    within(LIMIT, async {
        while !statuses(&gw.recorder).iter().any(|s| s == "abandoned") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = client
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    let recorder = gw.shutdown().await;
    assert!(!marker.exists());
    let events = recorder.events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(&e.body, EventBody::ApprovalAbandoned { id: a } if *a == id))
            .count(),
        1,
        "{}",
        recorder.dump()
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.body, EventBody::ApprovalUsed { .. }))
    );
}

/// Hooks that try to allow everything, before and after the policy.
struct AllowEverything;

impl GateHooks for AllowEverything {
    fn before_decide(&self, _: &GateContext<'_>, _: &Operation) -> Option<Decision> {
        Some(Decision::allow("hook", "the hook says yes"))
    }
    fn after_decide(&self, _: &GateContext<'_>, _: &Operation, _: &Decision) -> Option<Decision> {
        Some(Decision::allow("hook", "the hook says yes"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_cannot_turn_a_deny_into_an_allow() {
    let gw = start(Options {
        hooks: Some(Arc::new(AllowEverything)),
        ..Options::default()
    })
    .await;
    let canary = gw.dir.path().join("canary");
    std::fs::write(&canary, "x").unwrap();
    let run = gw.ssh(&format!("rm -f {}", canary.display()), b"").await;
    assert_eq!(run.status, Some(EXIT_DENIED as i32), "{run:?}");
    assert!(run.stderr.contains("denied by rule 'no-rm'"), "{run:?}");
    assert!(canary.exists(), "the hook let rm run");
    let recorder = gw.shutdown().await;
    let ops = operations(&recorder);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(ops[0].1.verdict, Verdict::Deny, "{ops:?}");
    assert_eq!(ops[0].1.rule_id, "no-rm", "{ops:?}");
}

/// A response hook that stops the output at the first chunk naming `stop-here`, and keeps every
/// chunk it saw.
#[derive(Default)]
struct StopAtWord {
    seen: std::sync::Mutex<Vec<u8>>,
}

impl GateHooks for StopAtWord {
    fn on_chunk(&self, _: &GateContext<'_>, _: u64, chunk: &[u8]) -> ChunkVerdict {
        self.seen.lock().unwrap().extend_from_slice(chunk);
        if contains(chunk, b"stop-here") {
            ChunkVerdict::Stop
        } else {
            ChunkVerdict::Continue
        }
    }
    fn wants_chunks(&self) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_hook_sees_masked_chunks_and_can_stop_the_output() {
    let hook = Arc::new(StopAtWord::default());
    let gw = start(Options {
        hooks: Some(hook.clone()),
        ..Options::default()
    })
    .await;
    // The hook sees the output after masking: never the card number itself.
    let run = gw.ssh("echo customer card 4111 1111 1111 1111", b"").await;
    assert_eq!(run.status, Some(0), "{run:?}");
    assert!(
        !run.stdout_text().contains("4111 1111 1111 1111"),
        "{run:?}"
    );
    assert!(!contains(
        &hook.seen.lock().unwrap(),
        b"4111 1111 1111 1111"
    ));
    assert!(contains(&hook.seen.lock().unwrap(), b"card"));

    let run = gw.ssh("echo stop-here", b"").await;
    assert_eq!(run.status, Some(EXIT_DENIED as i32), "{run:?}");
    assert!(!run.stdout_text().contains("stop-here"), "{run:?}");
    assert!(run.stderr.contains("GateHooks::on_chunk"), "{run:?}");
    let recorder = gw.shutdown().await;
    assert!(
        statuses(&recorder).iter().any(|s| s == "stopped by hook"),
        "{:?}",
        statuses(&recorder)
    );
}

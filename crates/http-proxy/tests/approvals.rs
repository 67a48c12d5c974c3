#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Retried reviewed requests against the real approvals broker: an approval is used only while
//! it meets the policy as it stands, concurrent identical requests share one approval request,
//! and after a denial only a later approval runs the operation.

#[allow(dead_code)] // the harness is shared with `proxy.rs`
mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_core::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord,
    ApprovalRequest, ApprovalState, ApprovalTicket, Approvals, AuthMethod, BoxFuture, Decision,
    Identity, Operation, ReviewRequirement,
};
use gatehouse_testkit::layers::FnPolicy;
use gatehouse_testkit::within;
use support::*;

const T: Duration = Duration::from_secs(90);

fn json_body(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn dba() -> Identity {
    Identity::new("dana", "https://idp.test", AuthMethod::Test).with_group("dba")
}

fn second_approver() -> Identity {
    Identity::new("bob", "https://idp.test", AuthMethod::Test).with_group("approvers")
}

/// `DELETE` on `/api/users/{n}`: (status, `approval_id` or "").
async fn delete(gw: &Gateway, n: u32) -> (u16, String) {
    let (status, _, body) = curl(&[
        "-X",
        "DELETE",
        &gw.url(&format!("/api/users/{n}")),
        "-H",
        &bearer(AGENT_TOKEN),
    ])
    .await;
    let id = if status == 200 {
        String::new()
    } else {
        json_body(&body)["approval_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    (status, id)
}

async fn decide(gw: &Gateway, id: &str, who: &Identity, d: ApprovalDecision) {
    gw.layers
        .approvals
        .decide(&ApprovalId(id.into()), who, d, "reviewed")
        .await
        .unwrap();
}

fn deletes(up: &Upstream) -> u64 {
    up.deletes.load(std::sync::atomic::Ordering::SeqCst)
}

/// F14: a policy reload that tightens a review rule also binds approvals given before it, on
/// a retry (the client's own earlier request) and through a grant window alike.
#[tokio::test]
async fn an_approval_the_reloaded_policy_no_longer_accepts_is_not_used() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.review_hold_ms = 0;
        let layers = layers(&cfg.held_secrets());
        let mut pipeline = layers.pipeline.clone();
        // The rule as the (reloadable) policy currently states it.
        let rule = Arc::new(Mutex::new(ReviewRequirement {
            approver_groups: vec!["approvers".into(), "dba".into()],
            approvals_required: 1,
            timeout_ms: 60_000,
            grant_window_ms: Some(60_000),
        }));
        let current = rule.clone();
        pipeline.policy = Arc::new(FnPolicy::new(move |_, _, op| match op {
            Operation::Http(h) if h.method == "DELETE" => Decision::review(
                "review-delete",
                "deletions need a human",
                current.lock().unwrap().clone(),
            ),
            _ => Decision::allow("default-allow", "allowed"),
        }));
        let gw = Gateway::start_with(cfg, None, layers, pipeline).await;

        // One approval under `approvals = 1`; then the rule asks for two.
        let (status, first) = delete(&gw, 11).await;
        assert_eq!(status, 409);
        decide(&gw, &first, &approver(), ApprovalDecision::Approve).await;
        rule.lock().unwrap().approvals_required = 2;
        let (status, second) = delete(&gw, 11).await;
        assert_eq!(
            status, 409,
            "the one-vote approval was used under a two-vote rule"
        );
        assert_ne!(second, first, "a new request under the current rule");
        assert_eq!(deletes(&up), 0);

        // The rule now names only `dba`: neither the approval by `approvers` nor the pending
        // request that `approvers` may decide is used.
        {
            let mut r = rule.lock().unwrap();
            r.approvals_required = 1;
            r.approver_groups = vec!["dba".into()];
        }
        let (status, third) = delete(&gw, 11).await;
        assert_eq!(
            status, 409,
            "an approval by a group the rule no longer names was used"
        );
        assert!(
            third != first && third != second,
            "{first} {second} {third}"
        );
        assert_eq!(deletes(&up), 0);
        decide(&gw, &third, &dba(), ApprovalDecision::Approve).await;
        let (status, _) = delete(&gw, 11).await;
        assert_eq!(status, 200);
        assert_eq!(deletes(&up), 1);

        // That approval's grant window covers the next identical request...
        let (status, _) = delete(&gw, 11).await;
        assert_eq!(status, 200);
        assert_eq!(deletes(&up), 2);
        // ...until the rule asks for two approvers: then a new request, needing two.
        rule.lock().unwrap().approvals_required = 2;
        let (status, fourth) = delete(&gw, 11).await;
        assert_eq!(status, 409, "a grant window outlived a tightened rule");
        assert_eq!(deletes(&up), 2);
        let dba2 = Identity::new("dave", "https://idp.test", AuthMethod::Test).with_group("dba");
        decide(&gw, &fourth, &dba(), ApprovalDecision::Approve).await;
        let (status, again) = delete(&gw, 11).await;
        assert_eq!(
            (status, again.as_str()),
            (409, fourth.as_str()),
            "one vote of two"
        );
        decide(&gw, &fourth, &dba2, ApprovalDecision::Approve).await;
        let (status, _) = delete(&gw, 11).await;
        assert_eq!(status, 200);
        assert_eq!(deletes(&up), 3);
        gw.shutdown().await;
    })
    .await;
}

/// The approvals layer with the latency of a remote store on `list` (the answer is read, then
/// arrives late), so that concurrent requests interleave between looking for an earlier
/// request and opening one.
struct SlowList(Arc<dyn Approvals + Send + Sync>);

impl Approvals for SlowList {
    fn open(
        &self,
        request: ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>> {
        self.0.open(request)
    }

    fn wait<'a>(
        &'a self,
        id: &'a ApprovalId,
        max_wait: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>> {
        self.0.wait(id, max_wait)
    }

    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>> {
        Box::pin(async move {
            // The answer is read at once and arrives late, as from a remote store.
            let records = self.0.list(filter).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            records
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        self.0.get(id)
    }

    fn decide<'a>(
        &'a self,
        id: &'a ApprovalId,
        approver: &'a Identity,
        decision: ApprovalDecision,
        justification: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        self.0.decide(id, approver, decision, justification)
    }
}

/// F9: ten concurrent identical requests share one approval request; and once an approver
/// denies the operation, an approval given before that denial never runs it (duplicates
/// opened elsewhere, e.g. by another replica sharing the store, included).
#[tokio::test]
async fn identical_requests_share_one_approval_and_a_denial_ends_earlier_approvals() {
    within(T, async {
        let up = start_upstream().await;
        let mut cfg = config(up.addr, dead_addr());
        cfg.review_hold_ms = 0;
        let layers = layers(&cfg.held_secrets());
        let mut pipeline = layers.pipeline.clone();
        pipeline.approvals = Arc::new(SlowList(layers.approvals.clone()));
        let gw = Gateway::start_with(cfg, None, layers, pipeline).await;

        let answers = futures::future::join_all((0..10).map(|_| delete(&gw, 21))).await;
        assert!(answers.iter().all(|(s, _)| *s == 409), "{answers:?}");
        let ids: HashSet<&str> = answers.iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(ids.len(), 1, "one approval request, not {ids:?}");
        let pending = gw
            .layers
            .approvals
            .list(&ApprovalFilter {
                state: Some(ApprovalState::Pending),
                requester: Some(agent().subject),
                target: None,
            })
            .await
            .unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        let a = answers[0].1.clone();

        // Two more identical requests, opened elsewhere on the same store.
        let request = gw
            .layers
            .approvals
            .get(&ApprovalId(a.clone()))
            .await
            .unwrap()
            .request;
        let b = gw
            .layers
            .approvals
            .open(request.clone())
            .await
            .unwrap()
            .id
            .0;
        let c = gw.layers.approvals.open(request).await.unwrap().id.0;

        // Approved, then denied: the latest word is the denial.
        decide(&gw, &a, &approver(), ApprovalDecision::Approve).await;
        decide(&gw, &b, &approver(), ApprovalDecision::Deny).await;
        let (status, id) = delete(&gw, 21).await;
        assert_eq!((status, id.as_str()), (403, b.as_str()));
        let (status, id) = delete(&gw, 21).await;
        assert_eq!(
            (status, id.as_str()),
            (409, c.as_str()),
            "the approval given before the denial was used"
        );
        decide(&gw, &c, &approver(), ApprovalDecision::Deny).await;
        let (status, id) = delete(&gw, 21).await;
        assert_eq!((status, id.as_str()), (403, c.as_str()));
        // Nothing pending: a new request (neither the old approval nor its grant window).
        let (status, d) = delete(&gw, 21).await;
        assert_eq!(status, 409, "a denied operation ran on an earlier approval");
        assert!(![&a, &b, &c].contains(&&d), "{d}");
        assert_eq!(deletes(&up), 0);

        // A later approval runs it, once.
        decide(&gw, &d, &second_approver(), ApprovalDecision::Approve).await;
        let (status, _) = delete(&gw, 21).await;
        assert_eq!(status, 200);
        assert_eq!(deletes(&up), 1);
        gw.shutdown().await;
    })
    .await;
}

//! The operation gate with in-memory layers: every outcome, hooks that try to loosen a decision,
//! one execution per approval, abandonment when the client goes, and fail-closed recording.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_core::{
    ApprovalError, ApprovalId, ApprovalOutcome, ApprovalState, AuthMethod, BinaryHandling,
    Classified, Decision, Gate, GateContext, GateHooks, HoldMode, Identity, Operation, Outcome,
    Pipeline, Protocol, ReviewRequirement, SessionId, SqlOperation, Target, Verdict, tighten,
};

mod support;

use support::mem::*;

// ---- fixture ----

struct Fixture {
    gate: Gate,
    policy: Arc<FixedPolicy>,
    approvals: Arc<MemApprovals>,
    recorder: Arc<MemRecorder>,
    session: SessionId,
    identity: Identity,
    target: Target,
}

fn requirement() -> ReviewRequirement {
    ReviewRequirement {
        approver_groups: vec!["dba".into(), "sre".into()],
        approvals_required: 2,
        timeout_ms: 60_000,
        grant_window_ms: Some(600_000),
    }
}

fn review() -> Decision {
    Decision::review("writes", "writes need review", requirement())
}

fn fixture(decision: Decision, wait: Script, hooks: Arc<dyn GateHooks + Send + Sync>) -> Fixture {
    let policy = Arc::new(FixedPolicy(Mutex::new(decision)));
    let approvals = Arc::new(MemApprovals::new(wait));
    let recorder = Arc::new(MemRecorder::default());
    let pipeline = Pipeline {
        authenticator: Arc::new(NoAuth),
        policy: policy.clone(),
        approvals: approvals.clone(),
        masker: Arc::new(NoMask),
        egress: Arc::new(NoEgress),
        recorder: recorder.clone(),
        hooks,
    };
    Fixture {
        gate: Gate::new(pipeline),
        policy,
        approvals,
        recorder,
        session: SessionId::generate(),
        identity: Identity::new("agent", "https://idp", AuthMethod::Test),
        target: Target::new("db", Protocol::Postgres),
    }
}

fn op() -> Operation {
    Operation::Sql(SqlOperation::simple("DELETE FROM t WHERE id = 1"))
}

impl Fixture {
    fn ctx(&self) -> GateContext<'_> {
        GateContext {
            session: &self.session,
            identity: &self.identity,
            target: &self.target,
        }
    }

    fn run(&self, index: u64, mode: HoldMode, gone: impl Future<Output = ()>) -> Outcome {
        let op = op();
        block_on(self.gate.run(
            &self.ctx(),
            index,
            &Classified::new(op.clone()),
            &op,
            mode,
            gone,
        ))
    }
}

fn never() -> std::future::Pending<()> {
    std::future::pending()
}

// ---- tests ----

#[test]
fn allow_and_deny_are_recorded_before_they_are_answered() {
    let f = fixture(
        Decision::allow("r", "ok"),
        Script::Never,
        Pipeline::no_hooks(),
    );
    assert!(matches!(
        f.run(1, HoldMode::UntilDecided, never()),
        Outcome::Allowed { approval: None, .. }
    ));
    *f.policy.0.lock().unwrap() = Decision::deny("no-drop", "never");
    let out = f.run(2, HoldMode::UntilDecided, never());
    assert_eq!(out.name(), "denied");
    assert!(!out.retry_later());
    assert_eq!(f.recorder.names(), vec!["operation", "operation"]);
}

#[test]
fn an_approved_review_runs_once_and_its_use_is_recorded() {
    let approved = ApprovalOutcome::Approved {
        approvers: vec!["bob".into()],
    };
    let f = fixture(review(), Script::Outcome(approved), Pipeline::no_hooks());
    let out = f.run(3, HoldMode::UntilDecided, never());
    assert!(
        matches!(&out, Outcome::Allowed { approval: Some(id), .. } if id.0 == "apr-1"),
        "{out:?}"
    );
    // The gate records the operation and the approval's use; the approvals layer the rest.
    assert_eq!(f.recorder.names(), vec!["operation", "approval_used"]);
    let request = f
        .approvals
        .records
        .lock()
        .unwrap()
        .get("apr-1")
        .cloned()
        .unwrap();
    assert_eq!(request.request.index, 3);
    assert_eq!(request.request.shown(), &op());
    // The same operation again asks again: an approval covers one execution.
    let again = f.run(4, HoldMode::UntilDecided, never());
    assert!(
        matches!(&again, Outcome::Allowed { approval: Some(id), .. } if id.0 == "apr-2"),
        "{again:?}"
    );
}

#[test]
fn denied_timed_out_and_abandoned_reviews_run_nothing() {
    let denied = ApprovalOutcome::Denied {
        by: "bob".into(),
        justification: "no".into(),
    };
    let f = fixture(review(), Script::Outcome(denied), Pipeline::no_hooks());
    let out = f.run(1, HoldMode::UntilDecided, never());
    assert!(
        matches!(&out, Outcome::ApprovalDenied { by, .. } if by == "bob"),
        "{out:?}"
    );
    assert!(!out.retry_later());

    let f = fixture(
        review(),
        Script::Outcome(ApprovalOutcome::TimedOut),
        Pipeline::no_hooks(),
    );
    assert_eq!(
        f.run(1, HoldMode::UntilDecided, never()).name(),
        "approval_timed_out"
    );
    // In hold-until-decided mode a still-pending answer is a timeout, never a run.
    let f = fixture(
        review(),
        Script::Outcome(ApprovalOutcome::StillPending),
        Pipeline::no_hooks(),
    );
    assert_eq!(
        f.run(1, HoldMode::UntilDecided, never()).name(),
        "approval_timed_out"
    );

    // The client goes away: the wait is dropped (which abandons the request).
    let f = fixture(review(), Script::Never, Pipeline::no_hooks());
    let out = f.run(1, HoldMode::UntilDecided, async {});
    assert_eq!(out.name(), "abandoned");
    assert_eq!(f.approvals.abandoned.load(Ordering::SeqCst), 1);
    assert_eq!(f.recorder.names(), vec!["operation"]);
}

#[test]
fn unavailable_layers_say_retry_later_never_forbidden() {
    let f = fixture(review(), Script::Never, Pipeline::no_hooks());
    *f.approvals.open_error.lock().unwrap() = Some(ApprovalError::Store("down".into()));
    let out = f.run(1, HoldMode::UntilDecided, never());
    assert!(
        matches!(
            &out,
            Outcome::ApprovalsUnavailable {
                capacity: false,
                ..
            }
        ),
        "{out:?}"
    );
    assert!(out.retry_later());
    *f.approvals.open_error.lock().unwrap() = Some(ApprovalError::TooManyPending("10".into()));
    let out = f.run(2, HoldMode::UntilDecided, never());
    assert!(
        matches!(&out, Outcome::ApprovalsUnavailable { capacity: true, .. }),
        "{out:?}"
    );
    *f.approvals.open_error.lock().unwrap() = Some(ApprovalError::Audit("disk".into()));
    assert_eq!(
        f.run(3, HoldMode::UntilDecided, never()).name(),
        "audit_unavailable"
    );

    // The recorder fails: nothing is answered as allowed, nothing is held.
    let f = fixture(
        Decision::allow("r", "ok"),
        Script::Never,
        Pipeline::no_hooks(),
    );
    f.recorder.fail.store(true, Ordering::SeqCst);
    let out = f.run(1, HoldMode::UntilDecided, never());
    assert_eq!(out.name(), "audit_unavailable");
    assert!(out.retry_later());
    let f = fixture(review(), Script::Never, Pipeline::no_hooks());
    f.recorder.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        f.run(1, HoldMode::UntilDecided, never()).name(),
        "audit_unavailable"
    );
    assert_eq!(
        f.approvals.opened.load(Ordering::SeqCst),
        0,
        "nothing held unrecorded"
    );
}

#[test]
fn an_approval_whose_use_cannot_be_recorded_runs_nothing() {
    let approved = ApprovalOutcome::Approved {
        approvers: vec!["bob".into()],
    };
    let f = fixture(review(), Script::Outcome(approved), Pipeline::no_hooks());
    // The operation is recorded; the record of the approval's use is not.
    f.recorder.keep.store(1, Ordering::SeqCst);
    let out = f.run(1, HoldMode::UntilDecided, never());
    assert_eq!(out.name(), "audit_unavailable", "{out:?}");
    assert!(!out.is_allowed());
}

#[test]
fn a_review_without_approvers_is_denied() {
    let mut d = review();
    d.review = None;
    let f = fixture(d, Script::Never, Pipeline::no_hooks());
    assert_eq!(f.run(1, HoldMode::UntilDecided, never()).name(), "denied");
    assert_eq!(f.approvals.opened.load(Ordering::SeqCst), 0);
}

#[test]
fn a_retried_request_picks_up_its_own_request_and_one_approval_runs_it_once() {
    let mut d = review();
    if let Some(r) = d.review.as_mut() {
        r.grant_window_ms = None;
    }
    let f = fixture(
        d,
        Script::Outcome(ApprovalOutcome::StillPending),
        Pipeline::no_hooks(),
    );
    let hold = HoldMode::AtMost(Duration::from_millis(1));
    let first = f.run(1, hold, never());
    assert!(
        matches!(&first, Outcome::Held { approval, .. } if approval.0 == "apr-1"),
        "{first:?}"
    );
    assert!(first.retry_later());
    // A retry while pending waits on the same request, not a new one.
    let second = f.run(2, hold, never());
    assert_eq!(second.approval().map(|a| a.0.as_str()), Some("apr-1"));
    assert_eq!(f.approvals.opened.load(Ordering::SeqCst), 1);
    // Approved while the client was away: the next retry runs, once.
    f.approvals
        .set_state(&ApprovalId("apr-1".into()), ApprovalState::Approved);
    let third = f.run(3, hold, never());
    assert!(
        matches!(&third, Outcome::Allowed { approval: Some(id), .. } if id.0 == "apr-1"),
        "{third:?}"
    );
    let fourth = f.run(4, hold, never());
    assert!(
        matches!(&fourth, Outcome::Held { approval, .. } if approval.0 == "apr-2"),
        "{fourth:?}"
    );
}

#[test]
fn a_grant_window_runs_without_asking() {
    let f = fixture(review(), Script::Never, Pipeline::no_hooks());
    f.approvals.grant.store(true, Ordering::SeqCst);
    let out = f.run(1, HoldMode::UntilDecided, never());
    assert!(
        matches!(
            &out,
            Outcome::Allowed {
                approval: Some(_),
                ..
            }
        ),
        "{out:?}"
    );
    assert_eq!(f.recorder.names(), vec!["operation", "approval_used"]);
}

/// A hook that proposes a fixed decision at both phases.
struct Loosen(Decision, bool);
impl GateHooks for Loosen {
    fn before_decide(&self, _: &GateContext<'_>, _: &Operation) -> Option<Decision> {
        self.1.then(|| self.0.clone())
    }
    fn after_decide(&self, _: &GateContext<'_>, _: &Operation, _: &Decision) -> Option<Decision> {
        Some(self.0.clone())
    }
}

#[test]
fn hooks_cannot_loosen_a_verdict_in_either_phase() {
    let verdicts = [
        Decision::allow("hook", "let it through"),
        review(),
        Decision::deny("hook", "no"),
    ];
    for base in &verdicts {
        for proposed in &verdicts {
            for early in [false, true] {
                let hooks = Arc::new(Loosen(proposed.clone(), early));
                let f = fixture(base.clone(), Script::Never, hooks);
                let got = f.gate.decide(&f.ctx(), &Classified::new(op()));
                assert_eq!(
                    got.verdict,
                    base.verdict.strictest(proposed.verdict),
                    "base {:?} proposed {:?}",
                    base.verdict,
                    proposed.verdict
                );
                if proposed.verdict <= base.verdict {
                    assert_eq!(got.rule_id, base.rule_id);
                }
            }
        }
    }
}

#[test]
fn hooks_cannot_weaken_a_review_a_masking_profile_or_binary_handling() {
    let base = review().with_masking_profile("strict");
    let loose = Decision::review(
        "hook",
        "looser",
        ReviewRequirement {
            approver_groups: vec!["interns".into()],
            approvals_required: 1,
            timeout_ms: 3_600_000,
            grant_window_ms: Some(86_400_000),
        },
    )
    .with_masking_profile("none")
    .with_binary(BinaryHandling::Raw);
    let got = tighten(&base, loose);
    let r = got.review.clone().unwrap();
    assert_eq!(r.approvals_required, 2, "no fewer approvers");
    assert_eq!(
        r.approver_groups,
        vec!["dba".to_string(), "sre".to_string()],
        "no other groups"
    );
    assert_eq!(r.timeout_ms, 60_000);
    assert_eq!(r.grant_window_ms, Some(600_000), "no wider grant window");
    assert_eq!(got.masking_profile.as_deref(), Some("strict"));
    assert_eq!(got.binary, BinaryHandling::Refuse);
    assert_eq!(got.rule_id, "writes");

    // Stricter proposals are kept: more approvers, a narrower group, no window.
    let strict = Decision::review(
        "hook",
        "stricter",
        ReviewRequirement {
            approver_groups: vec!["dba".into()],
            approvals_required: 3,
            timeout_ms: 1_000,
            grant_window_ms: None,
        },
    );
    let r = tighten(&base, strict).review.unwrap();
    assert_eq!(
        (r.approvals_required, r.timeout_ms, r.grant_window_ms),
        (3, 1_000, None)
    );
    assert_eq!(r.approver_groups, vec!["dba".to_string()]);

    // Raising the verdict brings the hook's rule, but never its masking profile.
    let raised = tighten(
        &Decision::allow("r", "ok").with_masking_profile("strict"),
        Decision::deny("hook", "no").with_masking_profile("none"),
    );
    assert_eq!(
        (raised.verdict, raised.rule_id.as_str()),
        (Verdict::Deny, "hook")
    );
    assert_eq!(raised.masking_profile.as_deref(), Some("strict"));
}

#[test]
fn a_hook_that_denies_before_the_policy_wins_over_an_allow() {
    let hooks = Arc::new(Loosen(
        Decision::deny("embedder", "maintenance window"),
        true,
    ));
    let f = fixture(Decision::allow("r", "ok"), Script::Never, hooks);
    let out = f.run(1, HoldMode::UntilDecided, never());
    assert!(
        matches!(&out, Outcome::Denied { decision } if decision.rule_id == "embedder"),
        "{out:?}"
    );
}

#[test]
fn a_protocol_default_adjusts_the_policy_decision_never_a_hooks() {
    // A hook denies, naming the rule `default`; the protocol's built-in default would allow
    // what only the policy's default verdict denied. The hook's deny stands.
    let hooks = Arc::new(Loosen(Decision::deny("default", "hook says no"), false));
    let f = fixture(
        Decision::deny("default", "no rule matched"),
        Script::Never,
        hooks,
    );
    let loosen_default = |d: Decision| {
        if d.rule_id == "default" {
            Decision::allow("discovery", "discovery reads")
        } else {
            d
        }
    };
    let got = f
        .gate
        .decide_adjusted(&f.ctx(), &Classified::new(op()), loosen_default);
    assert_eq!(got.verdict, Verdict::Deny, "{got:?}");
    // Without the hook the adjustment applies to the policy's decision.
    let f = fixture(
        Decision::deny("default", "no rule matched"),
        Script::Never,
        Pipeline::no_hooks(),
    );
    let got = f
        .gate
        .decide_adjusted(&f.ctx(), &Classified::new(op()), loosen_default);
    assert_eq!(
        (got.verdict, got.rule_id.as_str()),
        (Verdict::Allow, "discovery")
    );
}

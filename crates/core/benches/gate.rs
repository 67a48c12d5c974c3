//! The operation gate alone, over in-memory layers (a policy that returns a fixed decision, a
//! recorder that keeps events in memory): what deciding, hooking and recording an operation costs
//! the gate itself, apart from the policy engine and the audit log's I/O.
//!
//! `cargo bench -p gatehouse-core --bench gate`

use std::sync::{Arc, Mutex};

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_core::{
    ApprovalOutcome, AuthMethod, Classified, Decision, Gate, GateContext, GateHooks, HoldMode,
    Identity, Operation, Pipeline, Protocol, ReviewRequirement, SessionId, SqlOperation, Target,
    tighten,
};

#[path = "../tests/support/mem.rs"]
mod mem;
use mem::*;

/// A hook that proposes a decision at both phases (the gate tightens it).
struct Propose(Decision);
impl GateHooks for Propose {
    fn before_decide(&self, _: &GateContext<'_>, _: &Operation) -> Option<Decision> {
        Some(self.0.clone())
    }
    fn after_decide(&self, _: &GateContext<'_>, _: &Operation, _: &Decision) -> Option<Decision> {
        Some(self.0.clone())
    }
}

fn gate(
    decision: Decision,
    wait: Script,
    hooks: Arc<dyn GateHooks + Send + Sync>,
) -> (Gate, Arc<MemRecorder>) {
    let recorder = Arc::new(MemRecorder::default());
    let pipeline = Pipeline {
        authenticator: Arc::new(NoAuth),
        policy: Arc::new(FixedPolicy(Mutex::new(decision))),
        approvals: Arc::new(MemApprovals::new(wait)),
        masker: Arc::new(NoMask),
        egress: Arc::new(NoEgress),
        recorder: recorder.clone(),
        hooks,
    };
    (Gate::new(pipeline), recorder)
}

fn bench(c: &mut Criterion) {
    let session = SessionId::generate();
    let identity = Identity::new("agent", "https://idp", AuthMethod::Test);
    let target = Target::new("db", Protocol::Postgres);
    let ctx = GateContext {
        session: &session,
        identity: &identity,
        target: &target,
    };
    let op = Operation::Sql(SqlOperation::simple(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
    ));
    let classified = Classified::new(op.clone());
    let requirement = ReviewRequirement {
        approver_groups: vec!["dba".into()],
        approvals_required: 1,
        timeout_ms: 60_000,
        grant_window_ms: None,
    };

    let mut g = c.benchmark_group("gate");
    let (allow, recorder) = gate(
        Decision::allow("r", "ok"),
        Script::Never,
        Pipeline::no_hooks(),
    );
    g.bench_function("decide_allow_no_hooks", |b| {
        b.iter(|| allow.decide(&ctx, &classified))
    });
    g.bench_function("run_allow_record", |b| {
        b.iter(|| {
            if let Ok(mut e) = recorder.events.lock() {
                e.clear();
            }
            block_on(allow.run(
                &ctx,
                1,
                &classified,
                &op,
                HoldMode::UntilDecided,
                std::future::pending(),
            ))
        })
    });
    let (hooked, _) = gate(
        Decision::allow("r", "ok"),
        Script::Never,
        Arc::new(Propose(Decision::deny("hook", "no"))),
    );
    g.bench_function("decide_allow_with_hooks", |b| {
        b.iter(|| hooked.decide(&ctx, &classified))
    });
    let approved = ApprovalOutcome::Approved {
        approvers: vec!["bob".into()],
    };
    let (review, recorder) = gate(
        Decision::review("w", "review", requirement.clone()),
        Script::Outcome(approved),
        Pipeline::no_hooks(),
    );
    g.bench_function("run_review_approved", |b| {
        b.iter(|| {
            if let Ok(mut e) = recorder.events.lock() {
                e.clear();
            }
            block_on(review.run(
                &ctx,
                1,
                &classified,
                &op,
                HoldMode::UntilDecided,
                std::future::pending(),
            ))
        })
    });
    let base = Decision::review("w", "review", requirement.clone());
    let proposed = Decision::review("h", "hook", requirement);
    g.bench_function("tighten_two_reviews", |b| {
        b.iter(|| tighten(&base, proposed.clone()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The must-hold broker behaviours, written once as scenarios over any store and run against the
//! memory and journal stores here (and PostgreSQL in `postgres.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gatehouse_approvals::{ApprovalBroker, ApprovalStore, JournalStore, MemoryStore};
use gatehouse_core::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalOutcome, ApprovalState, Approvals,
    EventBody,
};

use crate::common::*;

pub async fn approve(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store);
    let mut asked = request(agent(), delete_users("42"), requirement(1, 60_000, None));
    // The operation's index in its session, and the operation as the approver is shown it.
    asked.index = 7;
    asked.shown = Some(delete_users("[masked]"));
    let ticket = broker.open(asked).await.unwrap();
    assert!(!ticket.already_granted);
    assert_eq!(
        ticket.operation_hash,
        gatehouse_approvals::operation_hash(&delete_users("42"))
    );
    let waiter = {
        let broker = broker.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { broker.wait(&id, Duration::from_secs(60)).await })
    };
    let alice = person("alice", &["dba"]);
    let rec = broker
        .decide(
            &ticket.id,
            &alice,
            ApprovalDecision::Approve,
            "checked the ticket OPS-1",
        )
        .await
        .unwrap();
    assert_eq!(rec.state, ApprovalState::Approved);
    assert_eq!(rec.votes.len(), 1);
    assert_eq!(rec.votes[0].justification, "checked the ticket OPS-1");
    let outcome = within(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(
        outcome,
        ApprovalOutcome::Approved {
            approvers: vec!["alice".into()]
        }
    );
    let bodies = recorder.bodies();
    assert!(matches!(bodies[0], EventBody::ApprovalRequested { ref id, .. } if *id == ticket.id));
    // Who asked for what, why, in one record: the shown (masked) operation, the rule, its reason.
    match &bodies[0] {
        EventBody::ApprovalRequested {
            index,
            operation,
            rule_id,
            reason,
            granted,
            ..
        } => {
            assert_eq!(*index, 7);
            assert_eq!(operation.as_ref(), Some(&delete_users("[masked]")));
            assert_eq!(rule_id.as_deref(), Some("prod-writes"));
            assert!(
                reason
                    .as_deref()
                    .is_some_and(|r| r.contains("second pair of eyes"))
            );
            assert!(!granted);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        recorder.count(|b| matches!(b, EventBody::ApprovalRequested { .. })),
        1
    );
    assert!(
        bodies
            .iter()
            .any(|b| matches!(b, EventBody::ApprovalResolved { index: 7, .. }))
    );
    assert!(bodies.iter().any(|b| matches!(b, EventBody::ApprovalDecided { approver, decision: ApprovalDecision::Approve, justification, .. } if approver == "alice" && justification == "checked the ticket OPS-1")));
    assert!(bodies.iter().any(|b| matches!(
        b,
        EventBody::ApprovalResolved {
            outcome: ApprovalOutcome::Approved { .. },
            ..
        }
    )));
    // Decided stays decided.
    let again = broker
        .decide(
            &ticket.id,
            &person("bob", &["dba"]),
            ApprovalDecision::Deny,
            "too late",
        )
        .await;
    assert!(
        matches!(again, Err(ApprovalError::AlreadyClosed(_, ref s)) if s == "approved"),
        "{again:?}"
    );
}

pub async fn deny(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(2, 60_000, None),
        ))
        .await
        .unwrap();
    let waiter = {
        let broker = broker.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { broker.wait(&id, Duration::from_secs(60)).await })
    };
    // One approval, then a deny: the deny closes it.
    broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "fine by me",
        )
        .await
        .unwrap();
    let rec = broker
        .decide(
            &ticket.id,
            &person("bob", &["oncall"]),
            ApprovalDecision::Deny,
            "not during the freeze",
        )
        .await
        .unwrap();
    assert_eq!(rec.state, ApprovalState::Denied);
    let outcome = within(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(
        outcome,
        ApprovalOutcome::Denied {
            by: "bob".into(),
            justification: "not during the freeze".into()
        }
    );
    assert_eq!(
        recorder.count(|b| matches!(b, EventBody::ApprovalDecided { .. })),
        2
    );
}

pub async fn timeout(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 300, None),
        ))
        .await
        .unwrap();
    let outcome = within(LIMIT, broker.wait(&ticket.id, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(outcome, ApprovalOutcome::TimedOut);
    assert_eq!(
        broker.get(&ticket.id).await.unwrap().state,
        ApprovalState::TimedOut
    );
    // Nobody can approve it afterwards.
    let late = broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "sorry, late",
        )
        .await;
    assert!(
        matches!(late, Err(ApprovalError::AlreadyClosed(_, ref s)) if s == "timed_out"),
        "{late:?}"
    );
    assert!(recorder.bodies().iter().any(|b| matches!(
        b,
        EventBody::ApprovalResolved {
            outcome: ApprovalOutcome::TimedOut,
            ..
        }
    )));
}

pub async fn timeout_noticed_by_approver(store: Arc<dyn ApprovalStore>) {
    // No waiter at all (its gateway went away): an approver arriving after the timeout cannot
    // approve, and the request is closed as timed out.
    let (broker, recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 100, None),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let late = broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await;
    assert!(
        matches!(late, Err(ApprovalError::AlreadyClosed(_, ref s)) if s == "timed_out"),
        "{late:?}"
    );
    let rec = broker.get(&ticket.id).await.unwrap();
    assert_eq!(rec.state, ApprovalState::TimedOut);
    assert!(rec.votes.is_empty());
    assert!(recorder.bodies().iter().any(|b| matches!(
        b,
        EventBody::ApprovalResolved {
            outcome: ApprovalOutcome::TimedOut,
            ..
        }
    )));
}

pub async fn abandoned_wait(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    // The client goes away: the task holding the wait is cancelled, dropping the future.
    let waiter = {
        let broker = broker.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { broker.wait(&id, Duration::from_secs(60)).await })
    };
    // Let it start waiting before cancelling it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    waiter.abort();
    let rec = eventually_state(&broker, &ticket.id, ApprovalState::Abandoned).await;
    assert!(rec.closed_at.is_some());
    within(LIMIT, async {
        while recorder
            .count(|b| matches!(b, EventBody::ApprovalAbandoned { id } if *id == ticket.id))
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // An abandoned request cannot be approved any more (the operation never ran).
    let late = broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await;
    assert!(
        matches!(late, Err(ApprovalError::AlreadyClosed(_, ref s)) if s == "abandoned"),
        "{late:?}"
    );

    // Same through a caller-side timeout that drops the wait.
    let ticket = broker
        .open(request(
            agent(),
            delete_users("43"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        broker.wait(&ticket.id, Duration::from_secs(60)),
    )
    .await;
    assert!(dropped.is_err());
    eventually_state(&broker, &ticket.id, ApprovalState::Abandoned).await;
}

pub async fn still_pending_is_not_abandoned(store: Arc<dyn ApprovalStore>) {
    let (broker, _recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    let first = within(LIMIT, broker.wait(&ticket.id, Duration::from_millis(100)))
        .await
        .unwrap();
    assert_eq!(first, ApprovalOutcome::StillPending);
    // Give a (wrongly armed) abandon task every chance to run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        broker.get(&ticket.id).await.unwrap().state,
        ApprovalState::Pending
    );
    broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await
        .unwrap();
    let second = within(LIMIT, broker.wait(&ticket.id, Duration::from_millis(100)))
        .await
        .unwrap();
    assert!(matches!(second, ApprovalOutcome::Approved { .. }));
}

pub async fn self_approval_refused(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store);
    // The requester is even a member of an approver group.
    let requester = agent();
    let ticket = broker
        .open(request(
            requester.clone(),
            delete_users("42"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    let own = broker
        .decide(
            &ticket.id,
            &requester,
            ApprovalDecision::Approve,
            "trust me",
        )
        .await;
    assert_eq!(own, Err(ApprovalError::SelfApproval));
    // Same subject under another issuer is still the requester.
    let mut twin = requester.clone();
    twin.issuer = "https://other-idp.example".into();
    let twin_vote = broker
        .decide(&ticket.id, &twin, ApprovalDecision::Approve, "trust me")
        .await;
    assert_eq!(twin_vote, Err(ApprovalError::SelfApproval));
    let rec = broker.get(&ticket.id).await.unwrap();
    assert_eq!(rec.state, ApprovalState::Pending);
    assert!(rec.votes.is_empty());
    assert_eq!(
        recorder.count(|b| matches!(b, EventBody::ApprovalDecided { .. })),
        0
    );
}

pub async fn non_approver_refused(store: Arc<dyn ApprovalStore>) {
    let (broker, _recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    let mallory = person("mallory", &["developers"]);
    let vote = broker
        .decide(
            &ticket.id,
            &mallory,
            ApprovalDecision::Approve,
            "looks fine",
        )
        .await;
    assert_eq!(vote, Err(ApprovalError::NotAnApprover("mallory".into())));
    // A non-approver cannot deny either.
    let vote = broker
        .decide(&ticket.id, &mallory, ApprovalDecision::Deny, "no")
        .await;
    assert_eq!(vote, Err(ApprovalError::NotAnApprover("mallory".into())));
    // Justification is required (whitespace is not a justification).
    let vote = broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "  \n ",
        )
        .await;
    assert_eq!(vote, Err(ApprovalError::JustificationRequired));
    // A rule with no approver groups can never be approved.
    let mut nobody = requirement(1, 60_000, None);
    nobody.approver_groups.clear();
    let ticket2 = broker
        .open(request(agent(), delete_users("43"), nobody))
        .await
        .unwrap();
    let vote = broker
        .decide(
            &ticket2.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await;
    assert_eq!(vote, Err(ApprovalError::NotAnApprover("alice".into())));
    assert_eq!(
        broker.get(&ticket.id).await.unwrap().state,
        ApprovalState::Pending
    );
    // Unknown ids are reported as such.
    let missing = broker
        .decide(
            &gatehouse_core::ApprovalId("nope".into()),
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await;
    assert_eq!(missing, Err(ApprovalError::NotFound("nope".into())));
}

pub async fn two_of_three(store: Arc<dyn ApprovalStore>) {
    let (broker, _recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(2, 60_000, None),
        ))
        .await
        .unwrap();
    let (a, b) = (person("alice", &["dba"]), person("bob", &["oncall"]));
    let rec = broker
        .decide(&ticket.id, &a, ApprovalDecision::Approve, "ok")
        .await
        .unwrap();
    assert_eq!(rec.state, ApprovalState::Pending);
    assert_eq!(
        within(LIMIT, broker.wait(&ticket.id, Duration::from_millis(50)))
            .await
            .unwrap(),
        ApprovalOutcome::StillPending
    );
    // The same approver twice does not count twice (not even under another issuer).
    let dup = broker
        .decide(&ticket.id, &a, ApprovalDecision::Approve, "ok again")
        .await;
    assert_eq!(dup, Err(ApprovalError::DuplicateVote("alice".into())));
    let mut a_elsewhere = a.clone();
    a_elsewhere.issuer = "https://other-idp.example".into();
    let dup = broker
        .decide(
            &ticket.id,
            &a_elsewhere,
            ApprovalDecision::Approve,
            "ok again",
        )
        .await;
    assert_eq!(dup, Err(ApprovalError::DuplicateVote("alice".into())));
    let rec = broker
        .decide(&ticket.id, &b, ApprovalDecision::Approve, "ok")
        .await
        .unwrap();
    assert_eq!(rec.state, ApprovalState::Approved);
    let outcome = within(LIMIT, broker.wait(&ticket.id, Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ApprovalOutcome::Approved {
            approvers: vec!["alice".into(), "bob".into()]
        }
    );
    // The third is too late.
    let c = broker
        .decide(
            &ticket.id,
            &person("carol", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await;
    assert!(matches!(c, Err(ApprovalError::AlreadyClosed(..))));
}

pub async fn concurrent_votes_all_count(store: Arc<dyn ApprovalStore>) {
    let (broker, _recorder) = broker_with(store);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(3, 60_000, None),
        ))
        .await
        .unwrap();
    let mut votes = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let broker = broker.clone();
        let id = ticket.id.clone();
        votes.push(tokio::spawn(async move {
            broker
                .decide(
                    &id,
                    &person(name, &["dba"]),
                    ApprovalDecision::Approve,
                    "ok",
                )
                .await
        }));
    }
    for v in votes {
        within(LIMIT, v).await.unwrap().unwrap();
    }
    let rec = broker.get(&ticket.id).await.unwrap();
    assert_eq!(rec.state, ApprovalState::Approved);
    assert_eq!(rec.votes.len(), 3);
}

pub async fn grant_window(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store);
    let window = Some(60_000);
    let first = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, window),
        ))
        .await
        .unwrap();
    broker
        .decide(
            &first.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok for the hour",
        )
        .await
        .unwrap();
    // Same identity, same target, same operation hash: covered at once.
    let again = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, window),
        ))
        .await
        .unwrap();
    assert!(again.already_granted);
    assert_eq!(again.id, first.id);
    let outcome = within(LIMIT, broker.wait(&again.id, Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(matches!(outcome, ApprovalOutcome::Approved { .. }));
    assert_eq!(
        recorder.count(|b| matches!(b, EventBody::ApprovalRequested { id, .. } if *id == first.id)),
        2,
        "the reuse is recorded"
    );

    // A different bound parameter is a different operation: a new pending request.
    let other = broker
        .open(request(
            agent(),
            delete_users("43"),
            requirement(1, 60_000, window),
        ))
        .await
        .unwrap();
    assert!(!other.already_granted);
    assert_ne!(other.operation_hash, first.operation_hash);
    assert_eq!(
        broker.get(&other.id).await.unwrap().state,
        ApprovalState::Pending
    );

    // Another identity is not covered.
    let colleague = person("agent-8", &["agents"]);
    let t = broker
        .open(request(
            colleague,
            delete_users("42"),
            requirement(1, 60_000, window),
        ))
        .await
        .unwrap();
    assert!(!t.already_granted);

    // Another target is not covered.
    let mut elsewhere = request(agent(), delete_users("42"), requirement(1, 60_000, window));
    elsewhere.target.name = "billing-db".into();
    assert!(!broker.open(elsewhere).await.unwrap().already_granted);

    // Another rule is not covered.
    let mut other_rule = request(agent(), delete_users("42"), requirement(1, 60_000, window));
    other_rule.rule_id = "stricter-rule".into();
    assert!(!broker.open(other_rule).await.unwrap().already_granted);

    // A rule without a grant window never reuses.
    let t = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    assert!(!t.already_granted);
}

pub async fn grant_window_expires(store: Arc<dyn ApprovalStore>) {
    let (broker, _recorder) = broker_with(store);
    let first = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, Some(200)),
        ))
        .await
        .unwrap();
    broker
        .decide(
            &first.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await
        .unwrap();
    // The new rule's window is smaller: the smaller one applies (never wider).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wide = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, Some(3_600_000)),
        ))
        .await
        .unwrap();
    assert!(
        !wide.already_granted,
        "an expired grant must not be widened by the new rule"
    );
}

pub async fn recorder_failure_fails_closed(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store);
    // open: nothing opened unrecorded.
    recorder.fail.store(true, Ordering::SeqCst);
    let open = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, None),
        ))
        .await;
    assert!(matches!(open, Err(ApprovalError::Audit(_))), "{open:?}");
    assert!(
        broker
            .list(&ApprovalFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // decide: an unrecorded vote does not count.
    recorder.fail.store(false, Ordering::SeqCst);
    let ticket = broker
        .open(request(
            agent(),
            delete_users("42"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    recorder.fail.store(true, Ordering::SeqCst);
    let vote = broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await;
    assert!(matches!(vote, Err(ApprovalError::Audit(_))), "{vote:?}");
    let rec = broker.get(&ticket.id).await.unwrap();
    assert_eq!(rec.state, ApprovalState::Pending);
    assert!(rec.votes.is_empty());

    // The deciding vote records the resolution, once, with the operation's index; waiting
    // records nothing more (the gate records each use of the approval before it runs).
    recorder.fail.store(false, Ordering::SeqCst);
    broker
        .decide(
            &ticket.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "ok",
        )
        .await
        .unwrap();
    let resolved = || recorder.count(|b| matches!(b, EventBody::ApprovalResolved { .. }));
    assert_eq!(resolved(), 1);
    for _ in 0..2 {
        let outcome = within(LIMIT, broker.wait(&ticket.id, Duration::from_secs(5))).await;
        assert!(
            matches!(outcome, Ok(ApprovalOutcome::Approved { .. })),
            "{outcome:?}"
        );
    }
    assert_eq!(resolved(), 1, "a wait never records the resolution again");
}

pub async fn list_and_get(store: Arc<dyn ApprovalStore>) {
    let (broker, _recorder) = broker_with(store);
    let a = broker
        .open(request(
            agent(),
            delete_users("1"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    let b = broker
        .open(request(
            person("agent-9", &[]),
            delete_users("2"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    broker
        .decide(
            &a.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Deny,
            "no",
        )
        .await
        .unwrap();
    let all = broker.list(&ApprovalFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![a.id.clone(), b.id.clone()]
    );
    let pending = broker
        .list(&ApprovalFilter {
            state: Some(ApprovalState::Pending),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, b.id);
    let by = broker
        .list(&ApprovalFilter {
            requester: Some("agent-7".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by.len(), 1);
    assert_eq!(by[0].id, a.id);
    let none = broker
        .list(&ApprovalFilter {
            target: Some("other".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let got = broker.get(&b.id).await.unwrap();
    assert_eq!(got.request.requester.subject, "agent-9");
    assert_eq!(got.operation_hash, b.operation_hash);
    // The admin API's JSON round-trips.
    let json = serde_json::to_string(&got).unwrap();
    let back: gatehouse_core::ApprovalRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(back, got);
    assert!(matches!(
        broker
            .get(&gatehouse_core::ApprovalId("missing".into()))
            .await,
        Err(ApprovalError::NotFound(_))
    ));
}

/// Concurrent holds are capped per identity and per target, counted in the store, so two
/// brokers sharing it share the caps; past a cap nothing is opened.
pub async fn hold_limits(store: Arc<dyn ApprovalStore>) {
    let limits = gatehouse_approvals::HoldLimits {
        per_identity: 2,
        per_target: 3,
    };
    let a = ApprovalBroker::builder(store.clone())
        .limits(limits)
        .build();
    let b = ApprovalBroker::builder(store).limits(limits).build();
    let open = |broker: &ApprovalBroker, who: gatehouse_core::Identity, n: &str| {
        let broker = broker.clone();
        let op = delete_users(n);
        async move {
            broker
                .open(request(who, op, requirement(1, 60_000, None)))
                .await
        }
    };
    open(&a, agent(), "1").await.unwrap();
    open(&b, agent(), "2").await.unwrap();
    let err = open(&a, agent(), "3").await.unwrap_err();
    assert!(
        matches!(&err, ApprovalError::TooManyPending(m) if m.contains("agent-7")),
        "{err:?}"
    );
    let other = person("agent-8", &["agents"]);
    open(&b, other.clone(), "4").await.unwrap();
    let err = open(&a, other, "5").await.unwrap_err();
    assert!(
        matches!(&err, ApprovalError::TooManyPending(m) if m.contains("orders-db")),
        "{err:?}"
    );
    let pending = a
        .list(&ApprovalFilter {
            state: Some(ApprovalState::Pending),
            requester: None,
            target: None,
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 3);
}

/// At shutdown every request this broker holds is closed as abandoned (recorded), and a later
/// approval is refused; requests of another broker on the same store are left alone.
pub async fn abandon_held(store: Arc<dyn ApprovalStore>) {
    let (broker, recorder) = broker_with(store.clone());
    let other = ApprovalBroker::builder(store).build();
    let mine = broker
        .open(request(
            agent(),
            delete_users("1"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    let theirs = other
        .open(request(
            agent(),
            delete_users("2"),
            requirement(1, 60_000, None),
        ))
        .await
        .unwrap();
    assert_eq!(broker.abandon_held().await.unwrap(), 1);
    assert_eq!(
        broker.get(&mine.id).await.unwrap().state,
        ApprovalState::Abandoned
    );
    assert_eq!(
        broker.get(&theirs.id).await.unwrap().state,
        ApprovalState::Pending
    );
    assert!(
        recorder
            .bodies()
            .iter()
            .any(|b| matches!(b, EventBody::ApprovalAbandoned { id } if *id == mine.id))
    );
    let late = broker
        .decide(
            &mine.id,
            &person("alice", &["dba"]),
            ApprovalDecision::Approve,
            "late",
        )
        .await;
    assert!(
        matches!(late, Err(ApprovalError::AlreadyClosed(..))),
        "{late:?}"
    );
}

macro_rules! scenarios {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;
            #[allow(unused_imports)]
            use std::sync::Arc;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn approve() {
                let (s, _g) = $make;
                super::approve(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deny() {
                let (s, _g) = $make;
                super::deny(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn timeout() {
                let (s, _g) = $make;
                super::timeout(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn timeout_noticed_by_approver() {
                let (s, _g) = $make;
                super::timeout_noticed_by_approver(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abandoned_wait() {
                let (s, _g) = $make;
                super::abandoned_wait(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn still_pending_is_not_abandoned() {
                let (s, _g) = $make;
                super::still_pending_is_not_abandoned(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn self_approval_refused() {
                let (s, _g) = $make;
                super::self_approval_refused(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn non_approver_refused() {
                let (s, _g) = $make;
                super::non_approver_refused(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_of_three() {
                let (s, _g) = $make;
                super::two_of_three(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_votes_all_count() {
                let (s, _g) = $make;
                super::concurrent_votes_all_count(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn grant_window() {
                let (s, _g) = $make;
                super::grant_window(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn grant_window_expires() {
                let (s, _g) = $make;
                super::grant_window_expires(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn recorder_failure_fails_closed() {
                let (s, _g) = $make;
                super::recorder_failure_fails_closed(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn list_and_get() {
                let (s, _g) = $make;
                super::list_and_get(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hold_limits() {
                let (s, _g) = $make;
                super::hold_limits(s).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abandon_held() {
                let (s, _g) = $make;
                super::abandon_held(s).await
            }
        }
    };
}
pub(crate) use scenarios;

fn memory() -> (Arc<dyn ApprovalStore>, ()) {
    (Arc::new(MemoryStore::new()), ())
}

fn journal() -> (Arc<dyn ApprovalStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = JournalStore::open(dir.path().join("approvals.jsonl")).unwrap();
    (Arc::new(store), dir)
}

scenarios!(on_memory, memory());
scenarios!(on_journal, journal());

//! A policy swaps atomically while sessions decide.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use gatehouse_core::{
    AuthMethod, Identity, Operation, Policy, Protocol, SqlOperation, Target, Verdict,
};
use gatehouse_policy::{CompiledPolicy, PolicyHandle};

const ALLOW_ALL: &str = "[defaults]\ndefault = \"allow\"\n";
const DENY_ALL: &str = "[defaults]\ndefault = \"deny\"\n";

fn decide(p: &dyn Policy) -> Verdict {
    p.decide(
        &Identity::new("x", "y", AuthMethod::Test),
        &Target::new("db", Protocol::Postgres),
        &Operation::Sql(SqlOperation::simple("SELECT 1")),
    )
    .verdict
}

#[test]
fn reload_swaps_and_bad_reload_keeps_the_old_policy() {
    let handle = PolicyHandle::new(CompiledPolicy::from_toml(ALLOW_ALL, "a.toml").unwrap());
    assert_eq!(decide(&handle), Verdict::Allow);
    let snapshot = handle.load();
    handle.reload(DENY_ALL, "b.toml").unwrap();
    assert_eq!(decide(&handle), Verdict::Deny);
    // A snapshot taken before the swap still decides with the old policy.
    assert_eq!(decide(snapshot.as_ref()), Verdict::Allow);
    let e = handle.reload("[[rules]]\nid = 1\n", "c.toml").unwrap_err();
    assert!(e.to_string().starts_with("c.toml:"), "{e}");
    assert_eq!(handle.load().source(), "b.toml");
    assert_eq!(decide(&handle), Verdict::Deny);
}

#[test]
fn swaps_under_concurrent_decisions_see_only_whole_policies() {
    let handle = Arc::new(PolicyHandle::new(
        CompiledPolicy::from_toml(ALLOW_ALL, "a.toml").unwrap(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let h = Arc::clone(&handle);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = [0u32; 2];
                while !stop.load(Ordering::Relaxed) {
                    let p = h.load();
                    let v = decide(p.as_ref());
                    // The verdict must match the policy the snapshot came from.
                    match p.source() {
                        "a.toml" => assert_eq!(v, Verdict::Allow),
                        "b.toml" => assert_eq!(v, Verdict::Deny),
                        other => panic!("unknown policy {other}"),
                    }
                    seen[usize::from(v == Verdict::Deny)] += 1;
                }
                seen
            })
        })
        .collect();
    for i in 0..200 {
        let (text, name) = if i % 2 == 0 {
            (DENY_ALL, "b.toml")
        } else {
            (ALLOW_ALL, "a.toml")
        };
        handle.reload(text, name).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread");
    }
    assert_eq!(handle.load().source(), "a.toml");
}

//! Property tests: decide never panics and is total, whatever the input.

use gatehouse_core::{
    AuthMethod, ExecCommand, HttpOperation, Identity, KubeOperation, Operation, Policy, Protocol,
    SqlOperation, SqlProtocol, SqlSessionSettings, SshOperation, Target, Verdict,
};
use proptest::prelude::*;

use crate::corpus::corpus_policy;

fn sqlish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "SELECT", "select", " ", "*", "FROM", "orders", "secrets", ";", "'", "''", "\\", "E'",
        "$$", "$a$", "--", "\n", "/*", "*/", "\"", "DROP", "TABLE", "WITH", "(", ")", "DELETE",
        "COPY", "PROGRAM", "DO", "SET", "ROLE", "U&'", "$1", "x", ",", "1", "é", "\u{a0}",
    ]);
    prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn sql_decide_never_panics(text in prop_oneof![sqlish(), any::<String>()], scs in any::<bool>(), enc in prop::sample::select(vec!["UTF8", "SJIS", "LATIN1", "bogus"])) {
        let policy = corpus_policy();
        let op = Operation::Sql(SqlOperation {
            text,
            parameters: Vec::new(),
            protocol: SqlProtocol::Simple,
            settings: SqlSessionSettings { standard_conforming_strings: scs, client_encoding: enc.into() },
        });
        let who = Identity::new("ann", "i", AuthMethod::Test).with_group("analysts");
        let d = policy.decide(&who, &Target::new("shop", Protocol::Postgres), &op);
        prop_assert!(!d.rule_id.is_empty());
        prop_assert_eq!(d.review.is_some(), d.verdict == Verdict::Review);
        prop_assert_eq!(policy.explain(&who, &Target::new("shop", Protocol::Postgres), &op).decision, d);
    }

    #[test]
    fn exec_http_kube_decide_never_panic(line in any::<String>(), path in any::<String>(), method in "[A-Za-z]{0,8}", ns in proptest::option::of("[a-z-]{0,10}")) {
        let policy = corpus_policy();
        let who = Identity::new("olga", "i", AuthMethod::Test);
        let exec = Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line.clone())));
        let _ = policy.decide(&who, &Target::new("web", Protocol::Ssh), &exec);
        let http = Operation::Http(HttpOperation { method, path, query: None, body_sha256: None });
        let _ = policy.decide(&who, &Target::new("api", Protocol::Http), &http);
        let kube = Operation::Kubernetes(KubeOperation {
            verb: "create".into(),
            resource: "pods".into(),
            subresource: Some("exec".into()),
            namespace: ns,
            command: Some(ExecCommand::parse(line)),
            ..KubeOperation::default()
        });
        let _ = policy.decide(&who, &Target::new("k", Protocol::Kubernetes), &kube);
    }

    #[test]
    fn policy_parse_never_panics(text in any::<String>()) {
        let _ = gatehouse_policy::CompiledPolicy::from_toml(&text, "fuzz.toml");
    }

    /// Appending a statement never makes a string more permissive.
    #[test]
    fn strictest_statement_wins(first in sqlish(), second in sqlish()) {
        let policy = corpus_policy();
        let who = Identity::new("ann", "i", AuthMethod::Test).with_group("analysts");
        let t = Target::new("shop", Protocol::Postgres);
        let one = policy.decide(&who, &t, &Operation::Sql(SqlOperation::simple(first.clone()))).verdict;
        let both = policy.decide(&who, &t, &Operation::Sql(SqlOperation::simple(format!("{first}\n;\n{second}")))).verdict;
        // Only when `first` splits cleanly (no open quote/comment swallowing the separator).
        let c = gatehouse_sql::classify(&first, &SqlSessionSettings::default());
        if c.is_fully_parsed() {
            prop_assert!(both >= one, "{:?} then {:?}: {:?} < {:?}", first, second, both, one);
        }
    }
}

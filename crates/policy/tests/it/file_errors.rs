//! A bad policy file says which file, which line, and what is wrong.

use gatehouse_policy::{CompiledPolicy, PolicyError};

fn err(text: &str) -> PolicyError {
    CompiledPolicy::from_toml(text, "p.toml").expect_err("must be rejected")
}

fn line_of(e: &PolicyError) -> usize {
    match e {
        PolicyError::Syntax { line, .. } | PolicyError::Invalid { line, .. } => *line,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    let e = err("[defaults]\ndefault = \"deny\"\n\n[[rules]\nid = 1\n");
    assert!(matches!(e, PolicyError::Syntax { line: 4, .. }), "{e:?}");
    assert!(e.to_string().starts_with("p.toml:4:"), "{e}");
}

#[test]
fn unknown_key_is_an_error_at_its_line() {
    let text = "[[rules]]\nid = \"a\"\nverdict = \"allow\"\n\n[[rules]]\nid = \"b\"\nverdict = \"deny\"\ntargts = [\"x\"]\n";
    let e = err(text);
    assert_eq!(line_of(&e), 8, "{e}");
    assert!(e.to_string().contains("targts"), "{e}");
}

#[test]
fn unknown_verdict() {
    let e = err("[[rules]]\nid = \"a\"\nverdict = \"permit\"\n");
    assert_eq!(line_of(&e), 3, "{e}");
    assert!(e.to_string().contains("permit"), "{e}");
}

#[test]
fn semantic_errors_name_the_rule_and_line() {
    let text = "[defaults]\ndefault = \"deny\"\n\n[[rules]]\nid = \"ok\"\nverdict = \"allow\"\n\n[[rules]]\nid = \"bad-kind\"\nverdict = \"deny\"\nsql = { kinds = [\"selet\"] }\n";
    let e = err(text);
    assert!(matches!(e, PolicyError::Invalid { line: 8, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("bad-kind") && msg.contains("selet") && msg.contains("select"),
        "{msg}"
    );

    let e = err("[[rules]]\nid = \"g\"\nverdict = \"deny\"\nhttp = { paths = [\"/a/[\"] }\n");
    assert!(e.to_string().contains("bad pattern"), "{e}");
    let e = err("[[rules]]\nid = \"p\"\nverdict = \"deny\"\nhttp = { paths = [\"admin\"] }\n");
    assert!(e.to_string().contains("must start with '/'"), "{e}");
    let e = err(
        "[[rules]]\nid = \"d\"\nverdict = \"deny\"\n[[rules]]\nid = \"d\"\nverdict = \"allow\"\n",
    );
    assert!(matches!(e, PolicyError::Invalid { line: 4, .. }), "{e:?}");
    assert!(e.to_string().contains("duplicate"), "{e}");
    let e = err("[[rules]]\nid = \"r\"\nverdict = \"allow\"\napprovers = [\"x\"]\n");
    assert!(e.to_string().contains("only apply to verdict"), "{e}");
    let e = err("[[rules]]\nid = \"t\"\nverdict = \"review\"\ntimeout = \"5 parsecs\"\n");
    assert!(e.to_string().contains("duration"), "{e}");
    let e = err("[[rules]]\nid = \"e\"\nverdict = \"deny\"\ntargets = []\n");
    assert!(e.to_string().contains("empty list"), "{e}");
    let e = err(
        "[[rules]]\nid = \"m\"\nverdict = \"deny\"\nsql = { kinds = [\"select\"] }\nhttp = { methods = [\"GET\"] }\n",
    );
    assert!(e.to_string().contains("one protocol"), "{e}");
    let e = err("version = 2\n");
    assert!(e.to_string().contains("version"), "{e}");
}

#[test]
fn from_file_reports_missing_file() {
    let e = CompiledPolicy::from_file(std::path::Path::new("/nonexistent/policy.toml"))
        .expect_err("missing");
    assert!(matches!(e, PolicyError::Io { .. }), "{e:?}");
}

#[test]
fn empty_policy_denies_everything() {
    use gatehouse_core::{
        AuthMethod, Identity, Operation, Policy, Protocol, SqlOperation, Target, Verdict,
    };
    let p = CompiledPolicy::from_toml("", "empty.toml").unwrap();
    let d = p.decide(
        &Identity::new("x", "y", AuthMethod::Test),
        &Target::new("db", Protocol::Postgres),
        &Operation::Sql(SqlOperation::simple("SELECT 1")),
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule_id, "default");
}

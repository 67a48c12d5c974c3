//! The `opaque` kind: what the gateway cannot see into never reaches `default`, rules written for
//! it decide it, old configs with the previous floors still load (with a deprecation note), and
//! the exec corpus decides as the programs read their argv.

use gatehouse_core::{
    AuthMethod, ExecCommand, Identity, KubeOperation, Operation, Policy, Protocol, SqlOperation,
    SshOperation, Target, Verdict,
};
use gatehouse_policy::CompiledPolicy;
use proptest::prelude::*;

fn who() -> Identity {
    Identity::new("agent", "i", AuthMethod::Test).with_group("agents")
}

fn ssh() -> Target {
    Target::new("box", Protocol::Ssh)
}

fn exec(line: &str) -> Operation {
    Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line)))
}

fn kube_exec(argv: &[&str]) -> Operation {
    Operation::Kubernetes(KubeOperation {
        verb: "exec".into(),
        version: "v1".into(),
        resource: "pods".into(),
        subresource: Some("exec".into()),
        namespace: Some("apps".into()),
        name: Some("api-0".into()),
        command: Some(ExecCommand::parse(gatehouse_core::shell::join(argv))),
        ..KubeOperation::default()
    })
}

fn policy(text: &str) -> CompiledPolicy {
    CompiledPolicy::from_toml(text, "p.toml").unwrap()
}

/// The policy the exec corpus runs under (the same text as the SSH and Kubernetes corpus tests).
pub(crate) const CORPUS_POLICY: &str = r#"
[defaults]
default = "allow"
opaque = "deny"

[[rules]]
id = "no-rm-r"
reason = "recursive deletes are forbidden"
verdict = "deny"
exec = { program = ["rm"], options = ["-r"] }
"#;

/// `(expect_deletes, line)` with `D` replaced by `dir`.
pub(crate) fn corpus(dir: &str) -> Vec<(bool, String)> {
    include_str!("../../../core/tests/data/exec-corpus.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (kind, line) = l.split_once('\t').expect("kind<TAB>line");
            (kind == "deletes", substitute(line, dir))
        })
        .collect()
}

/// Replaces the placeholder `D` (a `D` not next to a letter, digit or `_`) with `dir`.
fn substitute(line: &str, dir: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        let before = i.checked_sub(1).and_then(|j| chars.get(j)).copied();
        if *c == 'D' && !word(before) && !word(chars.get(i + 1).copied()) {
            out.push_str(dir);
        } else {
            out.push(*c);
        }
    }
    out
}

#[test]
fn the_corpus_decides_as_the_programs_read_it() {
    let p = policy(CORPUS_POLICY);
    let cases = corpus("/tmp/gh-corpus/d");
    assert!(cases.len() >= 100, "{}", cases.len());
    for (deletes, line) in cases {
        let d = p.decide(&who(), &ssh(), &exec(&line));
        if deletes {
            assert_eq!(d.verdict, Verdict::Deny, "{line}: {d:?}");
            assert_ne!(d.rule_id, "default", "{line}");
        } else {
            assert_eq!(d.verdict, Verdict::Allow, "{line}: {d:?}");
        }
    }
}

#[test]
fn the_issue_spellings_are_refused_under_the_quickstart_shape() {
    // The quickstart's shape: default allow, a deny tripwire on `rm -r`, opaque reviewed.
    let p = policy(
        r#"
[defaults]
default = "allow"

[[rules]]
id = "no-rm-rf"
reason = "recursive deletes are forbidden"
verdict = "deny"
exec = { program = ["rm"], options = ["-r"] }
"#,
    );
    for line in [
        "rm --rec -f D",
        "rm --recur D",
        "rm -dr D",
        "env rm -rf D",
        "nice rm -rf D",
        "timeout 5 rm -rf D",
    ] {
        let d = p.decide(&who(), &ssh(), &exec(line));
        assert_eq!(
            (d.verdict, d.rule_id.as_str()),
            (Verdict::Deny, "no-rm-rf"),
            "{line}"
        );
    }
    for line in [
        "find D -delete",
        "find D -exec rm -rf {} +",
        "python3 -c \"import shutil; shutil.rmtree('D')\"",
        "perl -MFile::Path -e \"rmtree('D')\"",
        "bash",
        "./x",
    ] {
        let d = p.decide(&who(), &ssh(), &exec(line));
        assert_eq!(
            (d.verdict, d.rule_id.as_str()),
            (Verdict::Review, "opaque"),
            "{line}"
        );
    }
}

#[test]
fn kubernetes_exec_decides_like_ssh_exec() {
    // examples/kubernetes's allow-list: `env` is allowed, so it must not carry anything with it.
    let p = policy(
        r#"
[defaults]
default = "deny"
opaque = "review"

[[rules]]
id = "inspect"
reason = "read-only inspection"
verdict = "allow"
kubernetes = { verbs = ["exec"], namespaces = ["apps"] }
exec = { program = ["env", "ps", "cat", "ls", "df"] }
"#,
    );
    let k = Target::new("k", Protocol::Kubernetes);
    let allowed = p.decide(&who(), &k, &kube_exec(&["ls", "/"]));
    assert_eq!(allowed.verdict, Verdict::Allow);
    let env_alone = p.decide(&who(), &k, &kube_exec(&["env"]));
    assert_eq!(env_alone.verdict, Verdict::Allow);
    for argv in [
        &["env", "sh", "-c", "id"][..],
        &["env", "-S", "sh -c id"],
        &["env", "python3", "-c", "print(1)"],
        &["env", "LD_PRELOAD=/tmp/x.so", "ls"],
        &["env", "sh"],
        &["env", "rm", "-rf", "/"],
    ] {
        let d = p.decide(&who(), &k, &kube_exec(argv));
        assert_ne!(d.verdict, Verdict::Allow, "{argv:?}: {d:?}");
    }
    // The same lines over SSH decide the same way.
    let ssh_policy = policy(
        r#"
[defaults]
default = "deny"

[[rules]]
id = "inspect"
reason = "read-only inspection"
verdict = "allow"
exec = { program = ["env", "ps", "cat", "ls", "df"] }
"#,
    );
    for line in ["env sh -c id", "env -S 'sh -c id'", "env LD_PRELOAD=/x ls"] {
        let d = ssh_policy.decide(&who(), &ssh(), &exec(line));
        assert_ne!(d.verdict, Verdict::Allow, "{line}: {d:?}");
    }
    // The request's own environment counts like `env NAME=…`.
    let with_env = Operation::Ssh(SshOperation::Exec(
        ExecCommand::parse("ls").with_env(vec![("LD_PRELOAD".into(), "/tmp/x.so".into())]),
    ));
    let d = ssh_policy.decide(&who(), &ssh(), &with_env);
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Review, "opaque"));
    let harmless = Operation::Ssh(SshOperation::Exec(
        ExecCommand::parse("ls").with_env(vec![("LANG".into(), "C".into())]),
    ));
    assert_eq!(
        ssh_policy.decide(&who(), &ssh(), &harmless).verdict,
        Verdict::Allow
    );
}

#[test]
fn kubernetes_attach_is_opaque_unless_a_rule_names_it() {
    let attach = Operation::Kubernetes(KubeOperation {
        verb: "attach".into(),
        version: "v1".into(),
        resource: "pods".into(),
        subresource: Some("attach".into()),
        namespace: Some("apps".into()),
        name: Some("api-0".into()),
        ..KubeOperation::default()
    });
    let k = Target::new("k", Protocol::Kubernetes);
    let p = policy(
        r#"
[defaults]
default = "allow"

[[rules]]
id = "pods"
reason = "everything on pods"
verdict = "allow"
kubernetes = { resources = ["pods"] }
"#,
    );
    let d = p.decide(&who(), &k, &attach);
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Review, "opaque"));
    let p = policy(
        r#"
[defaults]
default = "deny"

[[rules]]
id = "attach"
reason = "attach to app pods"
verdict = "allow"
kubernetes = { verbs = ["attach"], namespaces = ["apps"] }
"#,
    );
    assert_eq!(p.decide(&who(), &k, &attach).verdict, Verdict::Allow);
}

#[test]
fn rules_written_for_opaque_decide_it() {
    let p = policy(
        r#"
[defaults]
default = "allow"
opaque = "deny"

[[rules]]
id = "admins-scripts"
reason = "admins may run python"
verdict = "allow"
opaque = true
groups = ["admins"]
exec = { program = ["python3"] }

[[rules]]
id = "review-do"
reason = "DO blocks are reviewed"
verdict = "review"
opaque = true
sql = { kinds = ["do_block"] }

[[rules]]
id = "allow-all-sql"
reason = "everything understood"
verdict = "allow"
sql = { kinds = ["select", "do_block", "call"] }
"#,
    );
    let admin = Identity::new("root", "i", AuthMethod::Test).with_group("admins");
    let py = exec("python3 -c 'print(1)'");
    assert_eq!(p.decide(&admin, &ssh(), &py).verdict, Verdict::Allow);
    assert_eq!(
        p.decide(&who(), &ssh(), &py).rule_id,
        "opaque",
        "not an admin: the opaque verdict"
    );
    let pg = Target::new("db", Protocol::Postgres);
    let d = p.decide(
        &who(),
        &pg,
        &Operation::Sql(SqlOperation::simple("DO $$ BEGIN END $$")),
    );
    assert_eq!(
        (d.verdict, d.rule_id.as_str()),
        (Verdict::Review, "review-do")
    );
    // An allow rule not written for opaque never allows it, even if it lists the kind.
    let d = p.decide(
        &who(),
        &pg,
        &Operation::Sql(SqlOperation::simple("CALL p()")),
    );
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Deny, "opaque"));
    let d = p.decide(
        &who(),
        &pg,
        &Operation::Sql(SqlOperation::simple("SELECT 1")),
    );
    assert_eq!(d.verdict, Verdict::Allow);
    // Interactive shells are opaque, and like every SSH channel other than exec refused unless a
    // rule names them: never the default.
    let shell = Operation::Ssh(SshOperation::Shell { pty: true });
    let d = p.decide(&who(), &ssh(), &shell);
    assert_eq!(
        (d.verdict, d.rule_id.as_str()),
        (Verdict::Deny, "ssh-channel-not-allowed")
    );
}

#[test]
fn old_floors_still_load_with_a_deprecation_note() {
    let p = policy(
        r#"
[defaults]
default = "allow"
unparseable_sql = "deny"
non_plain_exec = "review"

[[targets]]
name = "lab"
non_plain_exec = "deny"
"#,
    );
    let notes = p.warnings().join("\n");
    assert!(notes.contains("`unparseable_sql` is deprecated"), "{notes}");
    assert!(notes.contains("`non_plain_exec` is deprecated"), "{notes}");
    assert_eq!(p.warnings().len(), 3, "{notes}");
    // They still act: as the opaque verdict of their protocol.
    let pg = Target::new("db", Protocol::Postgres);
    let d = p.decide(
        &who(),
        &pg,
        &Operation::Sql(SqlOperation::simple("SELECT 'abc")),
    );
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Deny, "opaque"));
    let d = p.decide(&who(), &ssh(), &exec("ls | sh"));
    assert_eq!((d.verdict, d.rule_id.as_str()), (Verdict::Review, "opaque"));
    let lab = Target::new("lab", Protocol::Ssh);
    assert_eq!(
        p.decide(&who(), &lab, &exec("ls | sh")).verdict,
        Verdict::Deny
    );
    // A policy without them has no notes, and `opaque` defaults to review.
    let p = policy("[defaults]\ndefault = \"allow\"\n");
    assert!(p.warnings().is_empty());
    assert_eq!(
        p.decide(&who(), &ssh(), &exec("bash")).verdict,
        Verdict::Review
    );
}

#[test]
fn exec_options_must_be_options() {
    for bad in ["r", "-", "--", "--x=1"] {
        let text = format!(
            "[[rules]]\nid = \"x\"\nverdict = \"deny\"\nexec = {{ program = [\"rm\"], options = [\"{bad}\"] }}\n"
        );
        assert!(CompiledPolicy::from_toml(&text, "p.toml").is_err(), "{bad}");
    }
}

/// Lines whose effect the gateway cannot determine.
fn opaque_line() -> impl Strategy<Value = String> {
    let prefix = prop::sample::select(vec![
        "",
        "env ",
        "nice ",
        "timeout 5 ",
        "sudo ",
        "nohup ",
        "env -i ",
        "xargs ",
        "busybox ",
        "command ",
        "time ",
        "stdbuf -o0 ",
        "setsid ",
    ]);
    let body = prop::sample::select(vec![
        "python3 -c 'x'",
        "perl -e x",
        "node -e x",
        "bash",
        "sh",
        "sh -s",
        "bash script.sh",
        "./x",
        "/tmp/x",
        "find / -delete",
        "find / -exec rm {} +",
        "eval x",
        "awk 'BEGIN{system(\"x\")}'",
        "LD_PRELOAD=/x ls",
        "env PATH=/tmp ls",
        "ls $(id)",
        "ls | sh",
        "ls > /x",
        "git -c core.pager=x log",
        "tar --to-command=x -xf a",
        "strace ls",
    ]);
    (prefix, body).prop_map(|(p, b)| format!("{p}{b}"))
}

/// Allow rules of every shape (none written for opaque).
fn allow_rules() -> impl Strategy<Value = Vec<String>> {
    let rule = prop::sample::select(vec![
        "exec = { program = [\"*\"] }",
        "exec = { program = [\"python3\", \"perl\", \"node\", \"bash\", \"sh\", \"env\", \"find\", \"eval\", \"awk\", \"ls\", \"git\", \"tar\", \"strace\", \"sudo\", \"xargs\", \"nice\"] }",
        "exec = { program = [\"*\"], args = [\"**\"] }",
        "exec = { program = [\"*\"], plain = false }",
        "ssh = { channels = [\"exec\"] }",
        "sql = { kinds = [\"select\", \"do_block\", \"call\", \"other\"] }",
        "sql = { risks = [\"opaque_code\"] }",
        "protocols = [\"ssh\", \"postgres\"]",
    ]);
    prop::collection::vec(rule, 0..6).prop_map(|v| v.into_iter().map(String::from).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]

    /// Whatever allow rules a policy has (none written for opaque) and whatever its default, an
    /// opaque operation is never allowed and never decided by `default`.
    #[test]
    fn opaque_never_reaches_default(rules in allow_rules(), line in opaque_line(), opaque in prop::sample::select(vec!["review", "deny"]), sql in prop::sample::select(vec!["DO $$ BEGIN END $$", "CALL p()", "SELECT 'unterminated"])) {
        let mut text = format!("[defaults]\ndefault = \"allow\"\nopaque = \"{opaque}\"\n");
        for (i, r) in rules.iter().enumerate() {
            text.push_str(&format!("\n[[rules]]\nid = \"r{i}\"\nverdict = \"allow\"\n{r}\n"));
        }
        let p = policy(&text);
        let d = p.decide(&who(), &ssh(), &exec(&line));
        prop_assert!(d.verdict != Verdict::Allow, "{line}: {d:?}\n{text}");
        prop_assert_eq!(d.rule_id.as_str(), "opaque", "{}", line);
        let pg = Target::new("db", Protocol::Postgres);
        let d = p.decide(&who(), &pg, &Operation::Sql(SqlOperation::simple(sql)));
        prop_assert!(d.verdict != Verdict::Allow, "{sql}: {d:?}\n{text}");
        prop_assert_eq!(d.rule_id.as_str(), "opaque");
        let d = p.decide(&who(), &ssh(), &Operation::Ssh(SshOperation::Shell { pty: true }));
        prop_assert!(d.verdict != Verdict::Allow);
    }
}

/// Statements the caller found opaque from the database's catalog (`decide_with_opaque`) are
/// opaque items: never the default, decided by a rule written for opaque items, tripwires apply;
/// the other statements of the same text are decided as usual.
#[test]
fn statements_found_opaque_by_the_caller_never_reach_default() {
    let p = policy(
        r#"
[defaults]
default = "allow"
opaque = "review"

[[rules]]
id = "no-victims"
reason = "nobody touches victims"
verdict = "deny"
sql = { tables = ["victims"] }
"#,
    );
    let target = Target::new("db", Protocol::Postgres);
    let op = Operation::Sql(SqlOperation::simple("select 1; select length(3)"));
    assert_eq!(p.decide(&who(), &target, &op).verdict, Verdict::Allow);
    let opaque = [(
        1,
        "function length may call public.length(integer)".to_string(),
    )];
    let d = p.decide_with_opaque(&who(), &target, &op, &opaque);
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.rule_id, "opaque");
    assert!(d.reason.contains("public.length(integer)"), "{}", d.reason);
    // An index past the statements changes nothing.
    let d = p.decide_with_opaque(&who(), &target, &op, &[(7, "x".into())]);
    assert_eq!(d.verdict, Verdict::Allow);
    // A tripwire on the table still applies to an opaque statement.
    let op = Operation::Sql(SqlOperation::simple("update victims set id = 1"));
    let d = p.decide_with_opaque(&who(), &target, &op, &[(0, "trigger t".into())]);
    assert_eq!(d.verdict, Verdict::Deny);
    // A rule written for opaque items decides them.
    let p = policy(
        r#"
[defaults]
default = "deny"
opaque = "deny"

[[rules]]
id = "dba-code"
reason = "stored code is fine here"
verdict = "allow"
opaque = true
sql = { kinds = ["update"] }
"#,
    );
    let op = Operation::Sql(SqlOperation::simple("update t set x = 1"));
    let d = p.decide_with_opaque(&who(), &target, &op, &[(0, "trigger t".into())]);
    assert_eq!(
        (d.verdict, d.rule_id.as_str()),
        (Verdict::Allow, "dba-code")
    );
    assert_eq!(p.decide(&who(), &target, &op).verdict, Verdict::Deny);
}

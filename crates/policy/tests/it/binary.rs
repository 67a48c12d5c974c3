//! `binary = "refuse" | "raw"`: what happens to output the masker cannot rewrite safely. Raw is
//! only ever an explicit choice, and only when every part of an operation says so.

use gatehouse_core::{
    AuthMethod, BinaryHandling, Decision, ExecCommand, Identity, Operation, Policy, Protocol,
    SshOperation, Target, Verdict,
};
use gatehouse_policy::CompiledPolicy;

const POLICY: &str = r#"
[defaults]
default = "allow"

[[targets]]
name = "archive-*"
binary = "raw"

[[rules]]
id = "raw-transfers"
verdict = "allow"
binary = "raw"
ssh = { channels = ["scp", "subsystem"], subsystems = ["sftp"] }

[[rules]]
id = "raw-sha256sum"
verdict = "allow"
binary = "raw"
exec = { program = ["gzip"] }

[[rules]]
id = "plain-cat"
verdict = "allow"
exec = { program = ["cat"] }

[[rules]]
id = "refusing-tar"
verdict = "allow"
binary = "refuse"
exec = { program = ["tar"] }
"#;

fn decide_on(target: &str, op: Operation) -> Decision {
    let policy = CompiledPolicy::from_toml(POLICY, "binary.toml").unwrap();
    let who = Identity::new("a", "test", AuthMethod::Test);
    policy.decide(&who, &Target::new(target, Protocol::Ssh), &op)
}

fn exec(line: &str) -> Operation {
    Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line)))
}

fn transfer(line: &str) -> Operation {
    let command = ExecCommand::parse(line);
    let tool = command.file_transfer_tool().unwrap().to_string();
    Operation::Ssh(SshOperation::FileTransfer { tool, command })
}

#[test]
fn refuse_is_the_default_and_raw_is_an_explicit_rule_choice() {
    let d = decide_on("web", exec("cat /tmp/x"));
    assert_eq!(
        (d.verdict, d.binary),
        (Verdict::Allow, BinaryHandling::Refuse)
    );
    let d = decide_on("web", exec("ls"));
    assert_eq!(
        (d.verdict, d.binary),
        (Verdict::Allow, BinaryHandling::Refuse)
    );
    let d = decide_on("web", exec("gzip -c /tmp/x"));
    assert_eq!(d.binary, BinaryHandling::Raw);
    let d = decide_on("web", transfer("scp -f /tmp/x"));
    assert_eq!((d.verdict, d.binary), (Verdict::Allow, BinaryHandling::Raw));
    let d = decide_on(
        "web",
        Operation::Ssh(SshOperation::Subsystem {
            name: "sftp".into(),
        }),
    );
    assert_eq!((d.verdict, d.binary), (Verdict::Allow, BinaryHandling::Raw));
}

#[test]
fn raw_needs_every_part_of_the_line() {
    // The transfer's rule is raw, but `cat`'s is not: the whole stream is refused if binary.
    let d = decide_on("web", transfer("cat /etc/pii.txt; scp -f /tmp/x"));
    assert_eq!(d.binary, BinaryHandling::Refuse);
    let d = decide_on("web", exec("gzip -c a; cat b"));
    assert_eq!(d.binary, BinaryHandling::Refuse);
}

#[test]
fn a_target_block_sets_it_for_rules_that_do_not_and_a_rule_wins() {
    let d = decide_on("archive-1", exec("cat /tmp/x"));
    assert_eq!(d.binary, BinaryHandling::Raw);
    let d = decide_on("archive-1", exec("tar -cf - /srv"));
    assert_eq!(d.binary, BinaryHandling::Refuse);
}

#[test]
fn a_deny_is_never_raw_and_unknown_values_are_errors() {
    let d = decide_on("web", Operation::Ssh(SshOperation::Shell { pty: false }));
    assert_eq!(
        (d.verdict, d.binary),
        (Verdict::Deny, BinaryHandling::Refuse)
    );
    let err = CompiledPolicy::from_toml(
        "[[rules]]\nid = \"x\"\nverdict = \"allow\"\nbinary = \"mask\"\n",
        "bad.toml",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("expected `refuse` or `raw`"),
        "{err}"
    );
}

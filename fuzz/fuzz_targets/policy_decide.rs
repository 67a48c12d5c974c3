#![no_main]
//! Decisions on arbitrary operations against a fixed allow-list policy: must never panic, must
//! be total, and `explain` must agree with `decide`.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use gatehouse_core::{
    AuthMethod, ExecCommand, HttpOperation, Identity, KubeOperation, Operation, Policy, Protocol,
    SqlOperation, SqlProtocol, SqlSessionSettings, SshOperation, Target, Verdict,
};
use gatehouse_policy::CompiledPolicy;

const POLICY: &str = r#"
[defaults]
default = "deny"
[[rules]]
id = "no-secrets"
verdict = "deny"
sql = { tables = ["secrets"] }
[[rules]]
id = "read"
verdict = "allow"
sql = { kinds = ["select"], tables = ["public.*"], risks = [] }
[[rules]]
id = "no-rm"
verdict = "deny"
exec = { program = ["rm"] }
[[rules]]
id = "ls"
verdict = "allow"
exec = { program = ["ls"] }
[[rules]]
id = "admin"
verdict = "deny"
http = { paths = ["/admin/**"], case_insensitive = true }
[[rules]]
id = "api"
verdict = "allow"
http = { methods = ["GET"], paths = ["/api/**"] }
[[rules]]
id = "pods"
verdict = "allow"
kubernetes = { verbs = ["get"], resources = ["pods"], namespaces = ["apps"] }
"#;

#[derive(Arbitrary, Debug)]
enum Input {
    Sql { text: String, scs: bool },
    Exec { line: String },
    Http { method: String, path: String },
    Kube { verb: String, resource: String, namespace: Option<String>, command: Option<String> },
}

fn policy() -> &'static CompiledPolicy {
    static POLICY_CELL: OnceLock<CompiledPolicy> = OnceLock::new();
    POLICY_CELL.get_or_init(|| CompiledPolicy::from_toml(POLICY, "fuzz.toml").unwrap())
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let (target, op) = match input {
        Input::Sql { text, scs } => (
            Target::new("db", Protocol::Postgres),
            Operation::Sql(SqlOperation {
                text,
                parameters: Vec::new(),
                protocol: SqlProtocol::Simple,
                settings: SqlSessionSettings {
                    standard_conforming_strings: scs,
                    ..SqlSessionSettings::default()
                },
            }),
        ),
        Input::Exec { line } => (
            Target::new("host", Protocol::Ssh),
            Operation::Ssh(SshOperation::Exec(ExecCommand::parse(line))),
        ),
        Input::Http { method, path } => (
            Target::new("api", Protocol::Http),
            Operation::Http(HttpOperation { method, path, query: None, body_sha256: None }),
        ),
        Input::Kube { verb, resource, namespace, command } => (
            Target::new("k8s", Protocol::Kubernetes),
            Operation::Kubernetes(KubeOperation {
                verb,
                resource,
                namespace,
                command: command.map(ExecCommand::parse),
                ..KubeOperation::default()
            }),
        ),
    };
    let who = Identity::new("fuzz", "fuzz", AuthMethod::Test);
    let d = policy().decide(&who, &target, &op);
    assert_eq!(d.review.is_some(), d.verdict == Verdict::Review);
    assert_eq!(policy().explain(&who, &target, &op).decision, d);
});

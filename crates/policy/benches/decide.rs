//! Decisions per second with 1,000 rules, for simple operations (HTTP, exec, Kubernetes) and
//! for parsed SQL, each next to a baseline measured in the same run: the same operation against
//! a one-rule policy, and (for SQL) classification alone.
//!
//! Run: `cargo bench -p gatehouse-policy --bench decide`

// A broken fixture should stop the benchmark loudly.
#![allow(clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gatehouse_core::{
    AuthMethod, ExecCommand, HttpOperation, Identity, KubeOperation, Operation, Policy, Protocol,
    SqlOperation, SqlSessionSettings, SshOperation, Target,
};
use gatehouse_policy::CompiledPolicy;

/// 1,000 rules: 996 deny rules spread over the four protocols (none of which matches the
/// benchmark operations, so every decision scans its protocol's share) and 4 allow rules at the
/// end that do match.
fn thousand_rules() -> String {
    let mut text = String::from("[defaults]\ndefault = \"deny\"\n");
    for i in 0..996 {
        let body = match i % 4 {
            0 => format!("sql = {{ tables = [\"secret_{i}\", \"audit_{i}.log_*\"] }}"),
            1 => format!("http = {{ paths = [\"/internal/{i}/**\"] }}"),
            2 => format!("exec = {{ program = [\"tool{i}\"] }}"),
            _ => format!("kubernetes = {{ namespaces = [\"team-{i}\"], verbs = [\"delete\"] }}"),
        };
        let _ = write!(
            text,
            "\n[[rules]]\nid = \"r{i}\"\nverdict = \"deny\"\ngroups = [\"g{i}\", \"staff\"]\n{body}\n"
        );
    }
    text.push_str(ALLOW_RULES);
    text
}

const ALLOW_RULES: &str = r#"
[[rules]]
id = "sql-read-write"
verdict = "allow"
sql = { kinds = ["select", "update", "insert", "transaction"], tables = ["pgbench_*"], risks = [] }

[[rules]]
id = "http-read"
verdict = "allow"
http = { methods = ["GET"], paths = ["/api/**"] }

[[rules]]
id = "exec-ls"
verdict = "allow"
exec = { program = ["ls"] }

[[rules]]
id = "kube-read"
verdict = "allow"
kubernetes = { verbs = ["get", "list"], resources = ["pods"], namespaces = ["apps"] }
"#;

fn bench(c: &mut Criterion) {
    let big = CompiledPolicy::from_toml(&thousand_rules(), "bench.toml").expect("policy");
    assert_eq!(big.rule_count(), 1000);
    let small = CompiledPolicy::from_toml(ALLOW_RULES, "small.toml").expect("policy");
    let who = Identity::new("bench", "bench", AuthMethod::Test).with_group("staff");

    let http_target = Target::new("api", Protocol::Http);
    let http = Operation::Http(HttpOperation {
        method: "GET".into(),
        path: "/api/v1/users/42".into(),
        query: None,
        body_sha256: None,
    });
    let ssh_target = Target::new("web1", Protocol::Ssh);
    let exec = Operation::Ssh(SshOperation::Exec(ExecCommand::parse("ls -la /var/log")));
    let kube_target = Target::new("cluster", Protocol::Kubernetes);
    let kube = Operation::Kubernetes(KubeOperation {
        verb: "get".into(),
        version: "v1".into(),
        resource: "pods".into(),
        namespace: Some("apps".into()),
        name: Some("web-0".into()),
        ..KubeOperation::default()
    });
    let pg_target = Target::new("shop", Protocol::Postgres);
    // The pgbench TPC-B-like transaction's UPDATE, as one simple query.
    let sql_text = "UPDATE pgbench_accounts SET abalance = abalance + -1234 WHERE aid = 5678;";
    let sql = Operation::Sql(SqlOperation::simple(sql_text));
    let settings = SqlSessionSettings::default();

    for (name, target, op) in [
        ("http", &http_target, &http),
        ("exec", &ssh_target, &exec),
        ("kubernetes", &kube_target, &kube),
        ("sql", &pg_target, &sql),
    ] {
        // Sanity: both policies allow it (the benchmark measures the allow path).
        assert_eq!(
            big.decide(&who, target, op).verdict,
            gatehouse_core::Verdict::Allow,
            "{name}"
        );
        assert_eq!(
            small.decide(&who, target, op).verdict,
            gatehouse_core::Verdict::Allow,
            "{name}"
        );
        let mut group = c.benchmark_group(format!("decide/{name}"));
        group.throughput(Throughput::Elements(1));
        group.bench_function("1000_rules", |b| {
            b.iter(|| big.decide(black_box(&who), black_box(target), black_box(op)))
        });
        group.bench_function("baseline_4_rules", |b| {
            b.iter(|| small.decide(black_box(&who), black_box(target), black_box(op)))
        });
        if name == "sql" {
            group.bench_function("baseline_classify_only", |b| {
                b.iter(|| gatehouse_sql::classify(black_box(sql_text), black_box(&settings)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Cost of binding an approval to its operation (canonical hash) and of one approval round trip
//! per store. Baselines, measured in the same run: a bare SHA-256 of the SQL text (what hashing
//! costs with no canonical encoding), and the in-memory store (what the broker costs without I/O).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_approvals::{
    ApprovalBroker, ApprovalStore, JournalStore, MemoryStore, operation_hash,
};
use gatehouse_core::{
    ApprovalDecision, ApprovalRequest, Approvals, AuthMethod, ExecCommand, Identity, KubeOperation,
    Operation, Protocol, ReviewRequirement, SessionId, SqlOperation, SqlProtocol,
    SqlSessionSettings, Target,
};
use sha2::{Digest, Sha256};

const PGBENCH_UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";

fn sql_op() -> Operation {
    Operation::Sql(SqlOperation {
        text: PGBENCH_UPDATE.into(),
        parameters: vec![Some("-4321".into()), Some("98765".into())],
        protocol: SqlProtocol::Extended,
        settings: SqlSessionSettings::default(),
    })
}

fn big_sql_op() -> Operation {
    let text = format!(
        "INSERT INTO audit_log (payload) VALUES ('{}')",
        "x".repeat(16 * 1024)
    );
    Operation::Sql(SqlOperation::simple(text))
}

fn kube_op() -> Operation {
    Operation::Kubernetes(KubeOperation {
        verb: "create".into(),
        version: "v1".into(),
        resource: "pods".into(),
        subresource: Some("exec".into()),
        namespace: Some("payments".into()),
        name: Some("api-7d9f".into()),
        command: Some(ExecCommand::parse("sh -c 'rm -rf /var/cache/app/*'")),
        ..KubeOperation::default()
    })
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("operation_hash");
    let op = sql_op();
    g.bench_function("baseline_sha256_of_sql_text", |b| {
        b.iter(|| hex::encode(Sha256::digest(black_box(PGBENCH_UPDATE).as_bytes())))
    });
    g.bench_function("sql_pgbench_update_2_params", |b| {
        b.iter(|| operation_hash(black_box(&op)))
    });
    let big = big_sql_op();
    let Operation::Sql(big_sql) = &big else {
        unreachable!()
    };
    let big_text = big_sql.text.clone();
    g.bench_function("baseline_sha256_of_16k_sql_text", |b| {
        b.iter(|| hex::encode(Sha256::digest(black_box(&big_text).as_bytes())))
    });
    g.bench_function("sql_16k_literal", |b| {
        b.iter(|| operation_hash(black_box(&big)))
    });
    let kube = kube_op();
    g.bench_function("kubernetes_exec", |b| {
        b.iter(|| operation_hash(black_box(&kube)))
    });
    g.finish();
}

fn request() -> ApprovalRequest {
    ApprovalRequest {
        requester: Identity::new("agent-7", "https://idp.example", AuthMethod::Test),
        session: SessionId::generate(),
        target: Target::new("orders-db", Protocol::Postgres),
        operation: sql_op(),
        rule_id: "prod-writes".into(),
        reason: "bench".into(),
        requirement: ReviewRequirement {
            approver_groups: vec!["dba".into()],
            approvals_required: 1,
            timeout_ms: 600_000,
            grant_window_ms: None,
        },
        index: 0,
        shown: None,
    }
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let approver =
        Identity::new("alice", "https://idp.example", AuthMethod::Test).with_group("dba");
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<(&str, Arc<dyn ApprovalStore>)> = vec![
        ("baseline_memory_store", Arc::new(MemoryStore::new())),
        (
            "journal_store_fsync",
            Arc::new(JournalStore::open(dir.path().join("bench.jsonl")).unwrap()),
        ),
    ];
    let mut g = c.benchmark_group("open_decide_wait");
    g.measurement_time(Duration::from_secs(8));
    for (name, store) in stores {
        let broker = ApprovalBroker::builder(store).build();
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let t = broker.open(request()).await.unwrap();
                broker
                    .decide(&t.id, &approver, ApprovalDecision::Approve, "bench")
                    .await
                    .unwrap();
                broker.wait(&t.id, Duration::from_secs(1)).await.unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hashing, round_trip);
criterion_main!(benches);

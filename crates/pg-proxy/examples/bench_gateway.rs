//! A gateway for whole-system benchmarks (benches/pg/run.sh): the PostgreSQL proxy with the real
//! layers — gatehouse-policy (a rule file allowing pgbench's statements), gatehouse-masking
//! (default profile: content detectors on every text value), the secret egress guard, and
//! gatehouse-recorder (hash-chained audit log + recordings in a temp dir) — or, with `--relay`,
//! a bare TCP relay for the baseline.
//!
//! ```text
//! bench_gateway --listen 127.0.0.1:6433 --upstream 127.0.0.1:5432 --user bench --password pw \
//!     --database bench --token bench-token [--durability fsync|os-write] [--audit-dir DIR] [--relay]
//! ```
//!
//! `--durability` is the audit log's level for control events: `fsync` (the default: each
//! awaited event is on disk, group-committed) or `os-write` (handed to the kernel: survives a
//! gateway crash, not a power loss).
//! `BENCH_WORKERS=n` sets the tokio worker threads (default: one per core).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

/// The allocator of the `gatehouse` binary, so the benchmark measures what ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::time::Duration;

use gatehouse_core::{
    ApprovalDecision, ApprovalError, ApprovalFilter, ApprovalId, ApprovalOutcome, ApprovalRecord,
    ApprovalRequest, ApprovalTicket, Approvals, AuthMethod, BoxFuture, Identity, Pipeline,
    Protocol, Target,
};
use gatehouse_pg::{
    PgProxy, PgProxyConfig, PgTarget, Secret, UpstreamAddress, UpstreamConfig, UpstreamTls,
};

const POLICY: &str = r#"
[defaults]
default = "deny"

[[rules]]
id = "bench-rw"
reason = "pgbench workload"
verdict = "allow"
masking = "default"
sql = { kinds = ["select", "insert", "update", "transaction"], tables = ["pgbench_*"] }

[[rules]]
id = "bench-plain"
reason = "statements without tables"
verdict = "allow"
sql = { kinds = ["select", "transaction", "set", "show"] }
"#;

/// pgbench never triggers a review; any request is refused.
struct NoApprovals;

impl Approvals for NoApprovals {
    fn open(&self, _r: ApprovalRequest) -> BoxFuture<'_, Result<ApprovalTicket, ApprovalError>> {
        Box::pin(async { Err(ApprovalError::Store("no approvals in benchmarks".into())) })
    }
    fn wait<'a>(
        &'a self,
        _id: &'a ApprovalId,
        _m: Duration,
    ) -> BoxFuture<'a, Result<ApprovalOutcome, ApprovalError>> {
        Box::pin(async { Ok(ApprovalOutcome::TimedOut) })
    }
    fn list<'a>(
        &'a self,
        _f: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, ApprovalError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn get<'a>(
        &'a self,
        id: &'a ApprovalId,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move { Err(ApprovalError::NotFound(id.0.clone())) })
    }
    fn decide<'a>(
        &'a self,
        id: &'a ApprovalId,
        _a: &'a Identity,
        _d: ApprovalDecision,
        _j: &'a str,
    ) -> BoxFuture<'a, Result<ApprovalRecord, ApprovalError>> {
        Box::pin(async move { Err(ApprovalError::NotFound(id.0.clone())) })
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn relay(listen: &str, upstream: &str) {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    loop {
        let (mut client, _) = listener.accept().await.unwrap();
        let upstream = upstream.to_string();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

fn main() {
    // BENCH_WORKERS=n: tokio worker threads (default: one per core, tokio's own default).
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // As the gatehouse binary does: statements are parsed on the worker's own stack.
    runtime.thread_stack_size(gatehouse_sql::PARSER_THREAD_STACK);
    if let Some(n) = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        runtime.worker_threads(n);
    }
    runtime.enable_all().build().unwrap().block_on(run());
}

async fn run() {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:6433".into());
    let upstream = arg(&args, "--upstream").unwrap_or_else(|| "127.0.0.1:5432".into());
    if args.iter().any(|a| a == "--relay") {
        relay(&listen, &upstream).await;
        return;
    }
    let user = arg(&args, "--user").unwrap_or_else(|| "bench".into());
    let password = arg(&args, "--password").unwrap_or_default();
    let database = arg(&args, "--database").unwrap_or_else(|| "bench".into());
    let token = arg(&args, "--token").unwrap_or_else(|| "bench-token".into());
    let (host, port) = upstream.rsplit_once(':').unwrap();

    let identity = Identity::new("bench", "gatehouse", AuthMethod::Test);
    let auth = gatehouse_testkit::layers::StaticAuthenticator::new().with_token(&token, identity);
    let policy = gatehouse_policy::CompiledPolicy::from_toml(POLICY, "bench-policy.toml").unwrap();
    let masker = gatehouse_masking::MaskingEngine::with_defaults().unwrap();
    let mut egress = gatehouse_masking::EgressGuardBuilder::new();
    if !password.is_empty() {
        egress.add_secret(password.as_bytes()).unwrap();
    }
    let egress: Arc<dyn gatehouse_core::EgressGuard + Send + Sync> =
        Arc::new(egress.build().unwrap());
    let durability = match arg(&args, "--durability").as_deref() {
        None | Some("fsync") => gatehouse_recorder::Durability::Fsync,
        Some("os-write") => gatehouse_recorder::Durability::OsWrite,
        Some(other) => panic!("--durability: fsync or os-write, not {other}"),
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = arg(&args, "--audit-dir").map_or_else(|| tmp.path().to_owned(), Into::into);
    let mut recorder_config = gatehouse_recorder::recorder::RecorderConfig::new("pg-bench");
    recorder_config.log.durability = durability;
    let recorder = gatehouse_recorder::recorder::AuditRecorder::open(
        &dir,
        recorder_config,
        gatehouse_recorder::checkpoint::CheckpointSigner::generate().unwrap(),
        Some(egress.clone()),
    )
    .await
    .unwrap();
    let pipeline = Pipeline {
        authenticator: Arc::new(auth),
        policy: Arc::new(policy),
        approvals: Arc::new(NoApprovals),
        masker: Arc::new(masker),
        egress,
        recorder: Arc::new(recorder),
        hooks: gatehouse_core::Pipeline::no_hooks(),
    };
    let mut config = PgProxyConfig::new([PgTarget {
        target: Target::new(database.clone(), Protocol::Postgres),
        upstream: UpstreamConfig {
            address: UpstreamAddress::Tcp {
                host: host.into(),
                port: port.parse().unwrap(),
            },
            user,
            database,
            password: (!password.is_empty()).then(|| Secret::new(password)),
            tls: UpstreamTls::Disable,
            connect_timeout: Duration::from_secs(10),
        },
    }]);
    config.allow_plaintext_password = true;
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    eprintln!(
        "gateway on {listen}, audit in {} ({durability:?})",
        dir.display()
    );
    PgProxy::new(config, pipeline)
        .serve(listener)
        .await
        .unwrap();
}

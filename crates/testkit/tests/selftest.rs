//! The test kit tests itself: real PostgreSQL as root and as non-root, real sshd, cleanup with no
//! stray process, and the in-memory layers keeping their promises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use gatehouse_core::*;
use gatehouse_testkit::layers::*;
use gatehouse_testkit::pg::{PgCluster, PgOptions};
use gatehouse_testkit::process::{ChildGuard, group_alive, run_with_timeout};
use gatehouse_testkit::{running_as_root, within};

const INNER_ENV: &str = "GATEHOUSE_TESTKIT_NONROOT_INNER";

/// Start a private cluster, run a query over the socket and over TLS-capable TCP, stop it, and
/// check that no process of its group is left.
fn start_query_teardown() {
    let cluster = PgCluster::start(PgOptions {
        tls: true,
        ..PgOptions::default()
    })
    .unwrap();
    let db = cluster.create_database("selftest");
    assert_eq!(db.psql("SELECT 40 + 2").unwrap(), "42");
    db.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)")
        .unwrap();
    assert_eq!(db.psql("SELECT sum(x) FROM t").unwrap(), "3");
    // Over TCP with TLS verified against the kit's CA, as a SCRAM role.
    cluster.create_role("scram_user", "s3cret");
    let ca = cluster.ca_cert_path().unwrap().display().to_string();
    let conn = format!(
        "host=127.0.0.1 port={} user=scram_user dbname={} sslmode=verify-full sslrootcert={ca}",
        cluster.port(),
        db.name
    );
    let mut cmd = Command::new(gatehouse_testkit::pg::psql_path());
    cmd.args([
        "-XAtq",
        "-c",
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &conn,
    ])
    .env("PGPASSWORD", "s3cret")
    .env("PGCONNECT_TIMEOUT", "5");
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    // A wrong password is refused.
    let mut cmd = Command::new(gatehouse_testkit::pg::psql_path());
    cmd.args(["-XAtq", "-c", "SELECT 1", &conn])
        .env("PGPASSWORD", "wrong")
        .env("PGCONNECT_TIMEOUT", "5");
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    assert!(!out.status.success());
    let pgid = cluster.pgid().unwrap();
    assert!(group_alive(pgid));
    drop(cluster);
    assert!(
        !group_alive(pgid),
        "postgres left processes behind in group {pgid}"
    );
}

#[test]
fn postgres_as_current_user() {
    start_query_teardown();
}

/// As root, re-run the same check as the unprivileged `postgres` user: the kit must work both ways.
#[test]
fn postgres_as_non_root_too() {
    if !running_as_root() {
        eprintln!("not root: postgres_as_current_user already covers the non-root path");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-selftest-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("selftest");
    std::fs::copy(&exe, &copy).unwrap();
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(&copy)
        .args([
            "--exact",
            "non_root_inner",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, "1")
        .env("TMPDIR", "/tmp")
        .current_dir(dir.path());
    let out = run_with_timeout(cmd, Duration::from_secs(180)).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "non-root run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run by postgres_as_non_root_too as the postgres user"]
fn non_root_inner() {
    assert_eq!(
        std::env::var(INNER_ENV).as_deref(),
        Ok("1"),
        "run through postgres_as_non_root_too"
    );
    assert!(!running_as_root());
    start_query_teardown();
}

#[test]
fn shared_cluster_gives_each_test_its_own_database() {
    let a = PgCluster::shared().create_database("a");
    let b = PgCluster::shared().create_database("b");
    assert_ne!(a.name, b.name);
    a.psql("CREATE TABLE only_in_a (x int)").unwrap();
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'")
            .unwrap(),
        "0"
    );
}

#[test]
fn child_guard_kills_the_whole_group() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 300 & sleep 300 & wait"]);
    let guard = ChildGuard::spawn("sleepers", cmd).unwrap();
    let pgid = guard.pgid();
    std::thread::sleep(Duration::from_millis(100));
    assert!(group_alive(pgid));
    drop(guard);
    assert!(!group_alive(pgid));
}

#[test]
fn run_with_timeout_kills_a_hung_command() {
    let mut cmd = Command::new("sleep");
    cmd.arg("300");
    let err = run_with_timeout(cmd, Duration::from_millis(200)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn sshd_accepts_the_real_ssh_client() {
    let sshd = match gatehouse_testkit::sshd::Sshd::start(Default::default()) {
        Ok(s) => s,
        Err(e) => panic!("sshd must be installed for the test suite (.ci/run installs it): {e}"),
    };
    let mut cmd = Command::new("ssh");
    cmd.args(sshd.ssh_args())
        .arg("echo hello-from-sshd; exit 3");
    let out = run_with_timeout(cmd, Duration::from_secs(60)).unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}\nsshd log: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-sshd"
    );
}

fn ident(sub: &str, group: &str) -> Identity {
    Identity::new(sub, "test", AuthMethod::Test).with_group(group)
}

fn request(requester: Identity, approvals_required: u32, timeout_ms: u64) -> ApprovalRequest {
    ApprovalRequest {
        requester,
        session: SessionId::generate(),
        target: Target::new("db", Protocol::Postgres),
        operation: Operation::Sql(SqlOperation::simple("DELETE FROM t")),
        rule_id: "review-delete".into(),
        reason: "deletes need review".into(),
        requirement: ReviewRequirement {
            approver_groups: vec!["dba".into()],
            approvals_required,
            timeout_ms,
            grant_window_ms: None,
        },
        index: 0,
        shown: None,
    }
}

#[tokio::test]
async fn memory_approvals_keep_the_trait_promises() {
    let approvals = std::sync::Arc::new(MemoryApprovals::new());
    let agent = ident("agent", "agents");
    let ticket = approvals
        .open(request(agent.clone(), 1, 10_000))
        .await
        .unwrap();
    assert_eq!(
        approvals
            .decide(&ticket.id, &agent, ApprovalDecision::Approve, "mine")
            .await,
        Err(ApprovalError::SelfApproval)
    );
    assert!(matches!(
        approvals
            .decide(
                &ticket.id,
                &ident("eve", "agents"),
                ApprovalDecision::Approve,
                "x"
            )
            .await,
        Err(ApprovalError::NotAnApprover(_))
    ));
    let waiter = {
        let approvals = approvals.clone();
        let id = ticket.id.clone();
        tokio::spawn(async move { approvals.wait(&id, Duration::from_secs(10)).await })
    };
    approvals
        .decide(
            &ticket.id,
            &ident("alice", "dba"),
            ApprovalDecision::Approve,
            "ok",
        )
        .await
        .unwrap();
    let outcome = within(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome,
        ApprovalOutcome::Approved {
            approvers: vec!["alice".into()]
        }
    );

    // Timeout, and abandon on drop.
    let t2 = approvals.open(request(agent.clone(), 1, 50)).await.unwrap();
    assert_eq!(
        approvals
            .wait(&t2.id, Duration::from_secs(5))
            .await
            .unwrap(),
        ApprovalOutcome::TimedOut
    );
    let t3 = approvals.open(request(agent, 1, 10_000)).await.unwrap();
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        approvals.wait(&t3.id, Duration::from_secs(5)),
    )
    .await;
    assert_eq!(
        approvals.get(&t3.id).await.unwrap().state,
        ApprovalState::Abandoned
    );
}

#[tokio::test]
async fn memory_layers_fail_closed_and_mask() {
    let auth = StaticAuthenticator::new().with_token("tok", ident("agent", "agents"));
    assert_eq!(
        auth.authenticate(&Credential::Password("tok".into()))
            .await
            .unwrap()
            .subject,
        "agent"
    );
    assert_eq!(
        auth.authenticate(&Credential::Password("nope".into()))
            .await
            .unwrap_err()
            .kind,
        AuthErrorKind::UnknownCredential
    );
    auth.set_unavailable(true);
    assert_eq!(
        auth.authenticate(&Credential::Password("tok".into()))
            .await
            .unwrap_err()
            .kind,
        AuthErrorKind::ProviderUnavailable
    );

    let rec = MemoryRecorder::new();
    let ev = Event::now(
        SessionId::generate(),
        None,
        None,
        EventBody::Other {
            name: "x".into(),
            details: serde_json::Value::Null,
        },
    );
    rec.record(ev.clone()).await.unwrap();
    rec.set_failing(true);
    assert!(rec.record(ev).await.is_err());
    assert_eq!(rec.events().len(), 1);

    let masker = LiteralMasker::new()
        .literal("4111111111111111", "[card]")
        .column("email");
    let plan = masker.plan(&[FieldDesc::text("email"), FieldDesc::text("note")], None);
    let (mut out, mut findings) = (Vec::new(), Vec::new());
    assert_eq!(
        plan.apply(0, b"a@b.c", &mut out, &mut findings),
        MaskOutcome::Masked
    );
    assert_eq!(
        plan.apply(1, b"nothing here", &mut out, &mut findings),
        MaskOutcome::Unchanged
    );
    assert_eq!(
        plan.apply(1, b"card 4111111111111111!", &mut out, &mut findings),
        MaskOutcome::Masked
    );
    assert_eq!(out, b"card [card]!");
    let mut stream = masker.stream(&Default::default());
    let mut streamed = Vec::new();
    for chunk in [&b"xx 41111111"[..], b"11111111 yy"] {
        stream.push(chunk, &mut streamed);
    }
    stream.finish(&mut streamed);
    assert_eq!(streamed, b"xx [card] yy");

    let guard = LiteralEgressGuard::new(&["hunter2"]);
    assert!(guard.check(EgressSite::Client, b"all good").is_ok());
    assert!(guard.check(EgressSite::Client, b"pw=hunter2").is_err());
    let mut s = guard.stream(EgressSite::Client);
    assert!(s.check(b"xxhun").is_ok());
    assert!(
        s.check(b"ter2yy").is_err(),
        "a secret split across chunks is caught"
    );
    assert_eq!(guard.counters().hits.get("client"), Some(&2));
}

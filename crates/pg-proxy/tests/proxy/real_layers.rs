//! The full path with the real layers, none from the testkit: a JWT minted by gatehouse-identity's
//! dev issuer and verified by its OIDC authenticator, gatehouse-policy from a TOML policy,
//! gatehouse-masking with a column rule and the default detectors, the masking crate's egress
//! guard, gatehouse-approvals' broker over its in-memory store, and gatehouse-recorder writing a
//! hash-chained, signed audit log into a temp dir — which is read back and verified at the end.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{
    ApprovalDecision, Approvals, AuthMethod, EventBody, Identity, Operation, Pipeline, Protocol,
    Target, Verdict,
};
use gatehouse_pg::{PgProxy, PgProxyConfig, PgTarget, Secret, UpstreamAddress, UpstreamConfig};
use gatehouse_testkit::pg::PgCluster;
use tokio_postgres::SimpleQueryMessage;

use crate::common::{CANARY_PREFIX, T, db_error, upstream_tls};

const POLICY: &str = r#"
version = 1

[defaults]
default = "deny"

[[rules]]
id = "no-drop"
reason = "agents do not drop tables"
verdict = "deny"
sql = { kinds = ["drop"] }

[[rules]]
id = "review-deletes"
reason = "deletes need a DBA"
verdict = "review"
approvers = ["dba"]
timeout = "30s"
sql = { kinds = ["delete"] }

[[rules]]
id = "agents-read-write"
reason = "agents work on the shop tables"
verdict = "allow"
masking = "pii"
groups = ["agents"]
sql = { kinds = ["select", "insert", "update", "transaction"] }
"#;

const SETUP: &str = "create table customers (id int primary key, email text, note text);
    insert into customers values
      (1, 'ann@example.com', 'paid with 4111 1111 1111 1111 yesterday'),
      (2, 'bob@example.com', 'no card');
    create table jobs (id int primary key);
    insert into jobs select generate_series(1, 5);";

const CARD: &str = "4111 1111 1111 1111";

fn rows(messages: Vec<SimpleQueryMessage>) -> Vec<Vec<Option<String>>> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_path_with_the_real_layers() {
    gatehouse_testkit::within(T, async {
        let dir = tempfile::tempdir().unwrap();

        // Upstream: a role whose password only the gateway holds.
        let cluster = PgCluster::shared();
        let role = format!("gh_real_{}", std::process::id());
        let password = format!("{CANARY_PREFIX}real-{}", std::process::id());
        cluster.create_role(&role, &password);
        let db = cluster.create_database("pgreal");
        db.psql(&format!(
            "GRANT ALL ON SCHEMA public TO \"{role}\"; ALTER DATABASE \"{}\" OWNER TO \"{role}\"",
            db.name
        ))
        .unwrap();
        db.psql(&format!("SET ROLE \"{role}\"; {SETUP}")).unwrap();

        // Identity: the dev issuer mints the agent's token; the OIDC authenticator verifies it.
        let issuer = gatehouse_identity::DevIssuer::load_or_create(
            &dir.path().join("dev-issuer.pem"),
            "https://dev.gatehouse.test",
            "gatehouse",
        )
        .unwrap();
        let token = issuer
            .mint("agent-7", &["agents".to_string()], Duration::from_secs(600))
            .unwrap();
        let authenticator =
            gatehouse_identity::OidcAuthenticator::new(vec![issuer.provider_config().unwrap()])
                .unwrap();

        // Policy, masking, egress guard, recorder, approvals.
        let policy = gatehouse_policy::CompiledPolicy::from_toml(POLICY, "policy.toml").unwrap();
        let mut pii = gatehouse_masking::ProfileConfig::default();
        pii.columns.push(gatehouse_masking::ColumnRule {
            pattern: "public.customers.email".into(),
            strategy: None,
        });
        let mut masking = gatehouse_masking::MaskingConfig::default();
        masking.profiles.insert("pii".into(), pii);
        let masker = gatehouse_masking::MaskingEngine::new(&masking).unwrap();
        let mut egress = gatehouse_masking::EgressGuardBuilder::new();
        egress.add_secret(password.as_bytes()).unwrap();
        let egress: Arc<dyn gatehouse_core::EgressGuard + Send + Sync> =
            Arc::new(egress.build().unwrap());
        let signer = gatehouse_recorder::CheckpointSigner::generate().unwrap();
        let public_key = signer.verifying_key();
        let recorder = Arc::new(
            gatehouse_recorder::AuditRecorder::open(
                dir.path(),
                gatehouse_recorder::RecorderConfig::new("pg-real"),
                signer,
                Some(egress.clone()),
            )
            .await
            .unwrap(),
        );
        let approvals = Arc::new(
            gatehouse_approvals::ApprovalBroker::builder(Arc::new(
                gatehouse_approvals::MemoryStore::new(),
            ))
            .recorder(recorder.clone())
            .build(),
        );
        let pipeline = Pipeline {
            authenticator: Arc::new(authenticator),
            policy: Arc::new(policy),
            approvals: approvals.clone(),
            masker: Arc::new(masker),
            egress,
            recorder: recorder.clone(),
            hooks: gatehouse_core::Pipeline::no_hooks(),
        };
        let mut config = PgProxyConfig::new([PgTarget {
            target: Target::new("shop", Protocol::Postgres),
            upstream: UpstreamConfig {
                address: UpstreamAddress::Tcp {
                    host: "127.0.0.1".into(),
                    port: cluster.port(),
                },
                user: role.clone(),
                database: db.name.clone(),
                password: Some(Secret::new(password.clone())),
                tls: upstream_tls(cluster),
                connect_timeout: Duration::from_secs(10),
            },
        }]);
        config.allow_plaintext_password = true;
        let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(PgProxy::new(config, pipeline).serve(listener));

        let conn_str = |token: &str| {
            format!(
                "host=127.0.0.1 port={port} user=agent dbname=shop password={token} connect_timeout=10"
            )
        };

        // A forged token is refused with 28P01.
        let err = tokio_postgres::connect(&conn_str("eyJhbGciOiJub25lIn0.e30."), tokio_postgres::NoTls)
            .await
            .err()
            .expect("a forged token is refused");
        assert_eq!(db_error(&err).0, "28P01");

        let (client, conn) = tokio_postgres::connect(&conn_str(&token), tokio_postgres::NoTls)
            .await
            .expect("the minted token logs in");
        tokio::spawn(async move {
            let _ = conn.await;
        });

        // Allowed, masked: the email column by catalog source, the card number by content.
        let got = rows(
            client
                .simple_query("select c.email as contact, note from customers c order by id")
                .await
                .unwrap(),
        );
        assert_eq!(got.len(), 2);
        for row in &got {
            let text = format!("{row:?}");
            assert!(!text.contains("@example.com"), "{text}");
            assert!(!text.contains(CARD), "{text}");
        }
        assert_eq!(got[1][1].as_deref(), Some("no card"));
        // The extended protocol goes through the same masking.
        let row = client
            .query_one("select email from customers where id = $1", &[&1i32])
            .await
            .unwrap();
        let email: Option<String> = row.get(0);
        assert!(!email.unwrap_or_default().contains("ann@"));

        // Denied: DROP TABLE fails with 42501 naming the rule; the session stays usable.
        let err = client.simple_query("drop table jobs").await.err().unwrap();
        let (code, message) = db_error(&err);
        assert_eq!(code, "42501");
        assert!(message.contains("no-drop"), "{message}");
        assert_eq!(db.psql("select count(*) from jobs").unwrap(), "5");

        // Review: a DELETE waits for a DBA's approval from another task, then runs.
        let dba = Identity::new("dana", "https://dev.gatehouse.test", AuthMethod::Test)
            .with_group("dba");
        let approver = {
            let approvals = approvals.clone();
            tokio::spawn(async move {
                loop {
                    let pending = approvals
                        .list(&gatehouse_core::ApprovalFilter::default())
                        .await
                        .unwrap();
                    if let Some(p) = pending
                        .iter()
                        .find(|r| r.state == gatehouse_core::ApprovalState::Pending)
                    {
                        approvals
                            .decide(&p.id, &dba, ApprovalDecision::Approve, "ticket OPS-1")
                            .await
                            .unwrap();
                        return p.id.clone();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let deleted = client
            .execute("delete from jobs where id <= 2", &[])
            .await
            .unwrap();
        assert_eq!(deleted, 2);
        let approval_id = approver.await.unwrap();
        assert_eq!(db.psql("select count(*) from jobs").unwrap(), "3");

        drop(client);
        // Wait for the session to end (SessionEnd recorded), then stop the gateway.
        let audit_root = dir.path().join("audit");
        let events = loop {
            let logs = gatehouse_recorder::read::load_local_logs(&audit_root).unwrap();
            let events: Vec<_> = logs
                .iter()
                .flat_map(gatehouse_recorder::read::records)
                .filter_map(|r| r.event)
                .collect();
            if events
                .iter()
                .any(|e| matches!(e.body, EventBody::SessionEnd { .. }))
            {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        server.abort();

        // The audit log: attributable events for every step.
        let who = |e: &gatehouse_core::Event| e.identity.as_ref().map(|i| i.subject.clone());
        assert!(events.iter().any(|e| matches!(e.body, EventBody::LoginFailed { .. })));
        let start = events
            .iter()
            .find(|e| matches!(e.body, EventBody::SessionStart { .. }))
            .expect("SessionStart");
        assert_eq!(who(start).as_deref(), Some("agent-7"));
        let decided: Vec<(String, Verdict, String)> = events
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::Operation {
                    operation: Operation::Sql(s),
                    decision,
                    ..
                } => Some((s.text.clone(), decision.verdict, decision.rule_id.clone())),
                _ => None,
            })
            .collect();
        assert!(
            decided
                .iter()
                .any(|(t, v, r)| t == "drop table jobs" && *v == Verdict::Deny && r == "no-drop"),
            "{decided:?}"
        );
        assert!(
            decided
                .iter()
                .any(|(t, v, r)| t.starts_with("delete") && *v == Verdict::Review && r == "review-deletes"),
            "{decided:?}"
        );
        assert!(events.iter().any(
            |e| matches!(&e.body, EventBody::ApprovalResolved { id, .. } if *id == approval_id)
        ));
        assert!(
            events
                .iter()
                .any(|e| matches!(&e.body, EventBody::OperationResult(r) if r.status == "DELETE 2"))
        );
        assert!(
            events.iter().any(|e| matches!(&e.body, EventBody::OperationResult(r)
                if r.status == "SELECT 2" && !r.findings.is_empty())),
            "masking findings are recorded with the result"
        );

        // Nothing recorded holds the upstream password or an unmasked value.
        let mut everything = Vec::new();
        for entry in walk(dir.path()) {
            everything.extend(std::fs::read(entry).unwrap());
        }
        let everything = String::from_utf8_lossy(&everything);
        assert!(!everything.contains(&password), "the upstream password was recorded");
        assert!(!everything.contains("ann@example.com"));
        assert!(!everything.contains(CARD));

        // The chain and its signed checkpoints verify.
        recorder.log().close().await.unwrap();
        let logs = gatehouse_recorder::read::load_local_logs(&audit_root).unwrap();
        let options = gatehouse_recorder::VerifyOptions {
            keys: gatehouse_recorder::TrustedKeys::new().with(public_key),
            ..Default::default()
        };
        let report = gatehouse_recorder::verify(&logs, &options);
        assert!(report.ok(), "{:?}", report.first_problem());
    })
    .await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

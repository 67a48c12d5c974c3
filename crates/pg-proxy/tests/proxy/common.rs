//! Harness: a throwaway database, an upstream role whose password only the gateway knows, the
//! proxy on a loopback listener, and helpers to connect through it.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gatehouse_core::{
    AuthMethod, Decision, Event, Identity, Masker, Operation, Policy, Protocol, Target,
};
use gatehouse_pg::{
    PgProxy, PgProxyConfig, PgTarget, Secret, UpstreamAddress, UpstreamConfig, UpstreamTls,
};
use gatehouse_testkit::layers::{FnPolicy, LiteralMasker, StaticAuthenticator, TestPipeline};
use gatehouse_testkit::pg::{PgCluster, TestDb};

/// The token the agent presents.
pub const TOKEN: &str = "agent-token-7f3a";
/// Planted upstream password: must never reach the client or the audit log.
pub const CANARY_PREFIX: &str = "canary-UpstreamPw-";

static N: AtomicU64 = AtomicU64::new(0);

pub struct Harness {
    pub db: TestDb,
    pub role: String,
    pub password: String,
    pub port: u16,
    pub tp: TestPipeline,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Options {
    pub policy: Arc<dyn Policy + Send + Sync>,
    pub masker: LiteralMasker,
    pub tls_upstream: bool,
    pub configure: Box<dyn FnOnce(&mut PgProxyConfig) + Send>,
    pub setup_sql: &'static str,
    pub identity_expiry: Option<time::OffsetDateTime>,
    /// The token's lifetime counted from when the gateway is ready (the database is made
    /// first); in place of `identity_expiry`.
    pub identity_ttl: Option<time::Duration>,
    /// Approvals in place of the testkit's (e.g. the real broker).
    pub approvals: Option<Arc<dyn gatehouse_core::Approvals + Send + Sync>>,
    /// Gate hooks in place of none.
    pub hooks: Option<Arc<dyn gatehouse_core::GateHooks + Send + Sync>>,
    /// The proxy's recorder in place of the testkit's (the approvals layer keeps recording into
    /// `tp.recorder`).
    pub recorder: Option<Arc<dyn gatehouse_core::Recorder + Send + Sync>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            policy: Arc::new(FnPolicy::allow_all()),
            masker: LiteralMasker::new(),
            tls_upstream: true,
            configure: Box::new(|_| {}),
            setup_sql: "",
            identity_expiry: None,
            identity_ttl: None,
            approvals: None,
            hooks: None,
            recorder: None,
        }
    }
}

pub fn agent() -> Identity {
    Identity::new("agent-1", "https://idp.test", AuthMethod::Test).with_group("agents")
}

pub fn approver() -> Identity {
    Identity::new("alice", "https://idp.test", AuthMethod::Test).with_group("dba")
}

pub fn upstream_tls(cluster: &PgCluster) -> UpstreamTls {
    let ca = std::fs::read(cluster.ca_cert_path().expect("shared cluster has TLS")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    UpstreamTls::Require {
        config: Arc::new(config),
        server_name: rustls_pki_types::ServerName::try_from("localhost").unwrap(),
    }
}

pub async fn start(opts: Options) -> Harness {
    let cluster = PgCluster::shared();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let role = format!("gh_agent_{n}_{}", std::process::id());
    let password = format!("{CANARY_PREFIX}{n}-{}", rand_suffix());
    cluster.create_role(&role, &password);
    let db = cluster.create_database("pgproxy");
    db.psql(&format!(
        "GRANT ALL ON SCHEMA public TO \"{role}\"; ALTER DATABASE \"{}\" OWNER TO \"{role}\"",
        db.name
    ))
    .unwrap();
    if !opts.setup_sql.is_empty() {
        db.psql(&format!("SET ROLE \"{role}\"; {}", opts.setup_sql))
            .unwrap();
    }
    let mut identity = agent();
    identity.expires_at = match opts.identity_ttl {
        Some(ttl) => Some(time::OffsetDateTime::now_utc() + ttl),
        None => opts.identity_expiry,
    };
    let auth = StaticAuthenticator::new().with_token(TOKEN, identity);
    let mut tp = TestPipeline::new(
        auth,
        PolicyRef(opts.policy),
        opts.masker,
        &[password.as_str()],
    );
    if let Some(a) = opts.approvals {
        tp.pipeline.approvals = a;
    }
    if let Some(hooks) = opts.hooks {
        tp.pipeline.hooks = hooks;
    }
    if let Some(recorder) = opts.recorder {
        tp.pipeline.recorder = recorder;
    }
    let upstream = UpstreamConfig {
        address: UpstreamAddress::Tcp {
            host: "127.0.0.1".into(),
            port: cluster.port(),
        },
        user: role.clone(),
        database: db.name.clone(),
        password: Some(Secret::new(password.clone())),
        tls: if opts.tls_upstream {
            upstream_tls(cluster)
        } else {
            UpstreamTls::Disable
        },
        connect_timeout: Duration::from_secs(10),
    };
    let mut config = PgProxyConfig::new([PgTarget {
        target: Target::new("app", Protocol::Postgres).with_tag("test"),
        upstream,
    }]);
    config.allow_plaintext_password = true;
    (opts.configure)(&mut config);
    let proxy = PgProxy::new(config, tp.pipeline.clone());
    let listener = gatehouse_testkit::net::bind_loopback_tokio().await;
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let _ = proxy.serve(listener).await;
    });
    Harness {
        db,
        role,
        password,
        port,
        tp,
        task,
    }
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

struct PolicyRef(Arc<dyn Policy + Send + Sync>);

impl Policy for PolicyRef {
    fn decide(&self, identity: &Identity, target: &Target, operation: &Operation) -> Decision {
        self.0.decide(identity, target, operation)
    }

    fn decide_with_opaque(
        &self,
        identity: &Identity,
        target: &Target,
        operation: &Operation,
        opaque: &[(usize, String)],
    ) -> Decision {
        self.0
            .decide_with_opaque(identity, target, operation, opaque)
    }
}

impl Harness {
    pub fn conn_str(&self, token: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=agent dbname=app password={token} connect_timeout=10",
            self.port
        )
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        self.try_connect(TOKEN)
            .await
            .expect("connect through the proxy")
    }

    pub async fn try_connect(
        &self,
        token: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_str(token), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Everything recorded so far (events + recordings), for canary scans.
    pub fn audit_dump(&self) -> String {
        self.tp.recorder.dump()
    }

    /// Waits (at most 10 s) for the first recorded event `pick` accepts; some events (result
    /// summaries, session end) are recorded off the client's path.
    pub async fn wait_for_event<R>(&self, what: &str, pick: impl Fn(Event) -> Option<R>) -> R {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self.tp.recorder.events().into_iter().find_map(&pick) {
                return r;
            }
            assert!(tokio::time::Instant::now() < deadline, "no {what} recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// SQL-based policy for tests: deny statements matching `deny`, review those matching `review`.
pub fn keyword_policy(
    deny: &'static [&'static str],
    review: &'static [&'static str],
    review_timeout_ms: u64,
) -> Arc<dyn Policy + Send + Sync> {
    Arc::new(FnPolicy::new(move |_, _, op| {
        let Operation::Sql(sql) = op else {
            return Decision::deny("not-sql", "only SQL here");
        };
        let text = sql.text.to_ascii_lowercase();
        if deny.iter().any(|d| text.contains(d)) {
            return Decision::deny("no-ddl", "schema changes are not allowed for agents");
        }
        if review.iter().any(|r| text.contains(r)) {
            return Decision::review(
                "review-deletes",
                "deletes need a human",
                gatehouse_core::ReviewRequirement {
                    approver_groups: vec!["dba".into()],
                    approvals_required: 1,
                    timeout_ms: review_timeout_ms,
                    grant_window_ms: None,
                },
            );
        }
        Decision::allow("default", "allowed").with_masking_profile("default")
    }))
}

pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {e:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

pub const T: Duration = Duration::from_secs(60);

pub fn masker_ref(m: &LiteralMasker) -> &dyn Masker {
    m
}

/// A policy that reads SQL as the gateway's classifier does (under the operation's settings):
/// statements of a `deny` kind are denied, of a `review` kind reviewed, the rest allowed.
pub fn kind_policy(
    deny: &'static [gatehouse_sql::StatementKind],
    review: &'static [gatehouse_sql::StatementKind],
    review_timeout_ms: u64,
) -> Arc<dyn Policy + Send + Sync> {
    Arc::new(FnPolicy::new(move |_, _, op| {
        let Operation::Sql(sql) = op else {
            return Decision::deny("not-sql", "only SQL here");
        };
        let c = gatehouse_sql::classify(&sql.text, &sql.settings);
        let has = |kinds: &[gatehouse_sql::StatementKind]| {
            c.statements
                .iter()
                .any(|s| s.kinds.iter().any(|k| kinds.contains(k)))
        };
        if has(deny) {
            return Decision::deny("no-truncate", "agents do not empty tables");
        }
        if has(review) {
            return Decision::review(
                "review-deletes",
                "deletes need a human",
                gatehouse_core::ReviewRequirement {
                    approver_groups: vec!["dba".into()],
                    approvals_required: 1,
                    timeout_ms: review_timeout_ms,
                    grant_window_ms: None,
                },
            );
        }
        Decision::allow("default", "allowed")
    }))
}

/// Polls `check` (at most 10 s) until it holds.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

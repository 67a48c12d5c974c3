//! Shared helpers: sample events, opening logs, a literal egress guard, timeouts.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{
    AuthMethod, Decision, EgressBlocked, EgressCounters, EgressGuard, EgressSite, EgressStream,
    Event, EventBody, Identity, Operation, Protocol, SessionId, SqlOperation, Target,
};
use gatehouse_recorder::{
    AuditLog, AuditLogConfig, CheckpointSigner, LocalSegmentStore, LogData, LogHooks, TrustedKeys,
    VerifyOptions,
};

pub const SEED: [u8; 32] = [42u8; 32];

pub fn signer() -> CheckpointSigner {
    CheckpointSigner::from_seed(&SEED)
}

pub fn keys() -> TrustedKeys {
    TrustedKeys::new().with(signer().verifying_key())
}

pub fn options() -> VerifyOptions {
    VerifyOptions {
        keys: keys(),
        ..Default::default()
    }
}

/// Panics with a message when `fut` does not finish within `secs`.
pub async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s"))
}

pub fn identity() -> Identity {
    Identity::new("agent-7", "https://idp.test", AuthMethod::Test).with_group("agents")
}

pub fn target() -> Target {
    Target::new("orders-db", Protocol::Postgres).with_tag("prod")
}

pub fn sql_event(session: &SessionId, index: u64, text: &str) -> Event {
    Event::now(
        session.clone(),
        Some(identity()),
        Some(target()),
        EventBody::Operation {
            index,
            operation: Operation::Sql(SqlOperation::simple(text)),
            decision: Decision::allow("r-read", "reads are fine"),
        },
    )
}

pub fn config(log: &str) -> AuditLogConfig {
    let mut c = AuditLogConfig::new(log);
    c.checkpoint_every_records = 100;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

pub async fn open_log(dir: &Path, config: AuditLogConfig) -> AuditLog {
    open_log_with(dir, config, LogHooks::default()).await
}

pub async fn open_log_with(dir: &Path, config: AuditLogConfig, hooks: LogHooks) -> AuditLog {
    let store = Arc::new(LocalSegmentStore::new(dir).unwrap());
    AuditLog::open(store, config, signer(), hooks)
        .await
        .unwrap()
}

pub fn load(dir: &Path, log: &str) -> LogData {
    gatehouse_recorder::read::load_local_log(dir, log).unwrap()
}

/// Writes `n` events in one session and closes the log.
pub async fn write_log(
    dir: &Path,
    config: AuditLogConfig,
    n: u64,
) -> Vec<gatehouse_core::EventReceipt> {
    let log = open_log(dir, config).await;
    let session = SessionId::generate();
    let mut receipts = Vec::new();
    for i in 0..n {
        receipts.push(
            log.append(&sql_event(&session, i, &format!("select {i} from orders")))
                .await
                .unwrap(),
        );
    }
    log.close().await.unwrap();
    receipts
}

/// A minimal egress guard over literal secrets (the real one lives in gatehouse-masking).
#[derive(Debug, Clone)]
pub struct LiteralGuard {
    pub secret: Vec<u8>,
}

fn count(hay: &[u8], needle: &[u8]) -> u64 {
    if needle.is_empty() || hay.len() < needle.len() {
        return 0;
    }
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

impl EgressGuard for LiteralGuard {
    fn check(&self, site: EgressSite, data: &[u8]) -> Result<(), EgressBlocked> {
        match count(data, &self.secret) {
            0 => Ok(()),
            hits => Err(EgressBlocked {
                site,
                hits,
                first_offset: 0,
            }),
        }
    }
    fn stream(&self, site: EgressSite) -> Box<dyn EgressStream> {
        Box::new(LiteralStream {
            secret: self.secret.clone(),
            tail: Vec::new(),
            site,
        })
    }
    fn counters(&self) -> EgressCounters {
        EgressCounters::default()
    }
}

struct LiteralStream {
    secret: Vec<u8>,
    tail: Vec<u8>,
    site: EgressSite,
}

impl EgressStream for LiteralStream {
    fn check(&mut self, chunk: &[u8]) -> Result<(), EgressBlocked> {
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(chunk);
        let hits = count(&joined, &self.secret);
        let keep = self.secret.len().saturating_sub(1).min(joined.len());
        self.tail = joined[joined.len() - keep..].to_vec();
        if hits > 0 {
            return Err(EgressBlocked {
                site: self.site,
                hits,
                first_offset: 0,
            });
        }
        Ok(())
    }
}

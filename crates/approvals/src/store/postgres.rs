//! The shared store for several gateway replicas: one PostgreSQL table, LISTEN/NOTIFY to wake
//! waiters on every replica, and polling as the fallback when a notification is missed.
//!
//! Every write is one statement that both changes the row (compare-and-swap on `revision`) and
//! calls `pg_notify`, so a notification is sent exactly when a write commits. The listener runs on
//! its own connection and reconnects with backoff; while it is down, waiters still see decisions
//! within one poll interval. Every statement has a deadline: a hung database fails closed.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::{ApprovalFilter, ApprovalId, ApprovalRecord, BoxFuture, Timestamp};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Mutex, broadcast};
use tokio::task::JoinHandle;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, NoTls, Socket};

use super::pg_tls::PgTls;
use super::{ApprovalStore, StoredApproval, grant_until, state_name};
use crate::BrokerError;

const SCHEMA: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7426173);
CREATE TABLE IF NOT EXISTS gatehouse_approvals (
    id                  text PRIMARY KEY,
    revision            bigint NOT NULL,
    state               text NOT NULL,
    requester_principal text NOT NULL,
    requester_subject   text NOT NULL,
    target              text NOT NULL,
    operation_hash      text NOT NULL,
    opened_at_ms        bigint NOT NULL,
    grant_until_ms      bigint,
    record              text NOT NULL
);
CREATE INDEX IF NOT EXISTS gatehouse_approvals_grant
    ON gatehouse_approvals (requester_principal, target, operation_hash) WHERE state = 'approved';
CREATE INDEX IF NOT EXISTS gatehouse_approvals_opened ON gatehouse_approvals (opened_at_ms, id);
COMMIT;
";

/// Options for [`PostgresStore::connect`].
#[derive(Debug, Clone)]
pub struct PostgresStoreOptions {
    /// How often waiters re-read their request without a notification.
    pub poll_interval: Duration,
    /// Deadline of every statement (and of connecting).
    pub statement_timeout: Duration,
    /// Whether to LISTEN for other replicas' writes (off: polling only).
    pub listen: bool,
    /// Verified TLS (`None`: plaintext, fit only for a Unix socket or loopback). With TLS set, use
    /// `sslmode=require` in the connection string so that a server without TLS is refused.
    pub tls: Option<PgTls>,
}

impl Default for PostgresStoreOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(10),
            listen: true,
            tls: None,
        }
    }
}

/// Approval requests in a PostgreSQL table shared by several gateway replicas.
#[derive(Debug)]
pub struct PostgresStore {
    config: tokio_postgres::Config,
    client: Mutex<Option<Arc<Client>>>,
    changes: broadcast::Sender<ApprovalId>,
    options: PostgresStoreOptions,
    listener: Option<JoinHandle<()>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl PostgresStore {
    /// Connects (libpq-style `host=… user=… dbname=…` or a `postgres://` URL), creates the table
    /// if it is missing, and starts the listener.
    pub async fn connect(
        conninfo: &str,
        options: PostgresStoreOptions,
    ) -> Result<Self, BrokerError> {
        let config: tokio_postgres::Config =
            conninfo.parse().map_err(|e: tokio_postgres::Error| {
                BrokerError::Config(format!("postgres connection string: {e}"))
            })?;
        Self::with_config(config, options).await
    }

    /// Like [`PostgresStore::connect`] with a parsed configuration (e.g. a password set from a
    /// secret file).
    pub async fn with_config(
        mut config: tokio_postgres::Config,
        options: PostgresStoreOptions,
    ) -> Result<Self, BrokerError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.statement_timeout);
        }
        let changes = broadcast::channel(1024).0;
        let mut store = Self {
            config,
            client: Mutex::new(None),
            changes,
            options,
            listener: None,
        };
        let client = store.client().await?;
        store.deadline(client.batch_execute(SCHEMA)).await?;
        if store.options.listen {
            store.listener = Some(tokio::spawn(listen_forever(
                store.config.clone(),
                store.options.tls.clone(),
                store.changes.clone(),
            )));
        }
        Ok(store)
    }

    /// The shared client, reconnecting if the last connection died.
    async fn client(&self) -> Result<Arc<Client>, BrokerError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let client = match &self.options.tls {
            None => {
                let (client, connection) = self.deadline(self.config.connect(NoTls)).await?;
                tokio::spawn(drive(connection));
                client
            }
            Some(tls) => {
                let (client, connection) = self.deadline(self.config.connect(tls.clone())).await?;
                tokio::spawn(drive(connection));
                client
            }
        };
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    async fn deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.options.statement_timeout, fut).await {
            Ok(result) => result.map_err(BrokerError::from),
            Err(_) => Err(BrokerError::Postgres(format!(
                "no answer within {} ms",
                self.options.statement_timeout.as_millis()
            ))),
        }
    }
}

async fn drive<T>(connection: tokio_postgres::Connection<tokio_postgres::Socket, T>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = connection.await {
        tracing::warn!(error = %e, "approval store connection ended");
    }
}

fn encode(record: &ApprovalRecord) -> Result<String, BrokerError> {
    serde_json::to_string(record).map_err(|e| BrokerError::CorruptRecord {
        id: record.id.0.clone(),
        detail: e.to_string(),
    })
}

fn decode(row: &tokio_postgres::Row) -> Result<StoredApproval, BrokerError> {
    let revision: i64 = row.try_get(0)?;
    let text: String = row.try_get(1)?;
    let record: ApprovalRecord =
        serde_json::from_str(&text).map_err(|e| BrokerError::CorruptRecord {
            id: row.try_get::<_, String>(2).unwrap_or_default(),
            detail: e.to_string(),
        })?;
    Ok(StoredApproval {
        record,
        revision: u64::try_from(revision).unwrap_or(0),
    })
}

fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl ApprovalStore for PostgresStore {
    fn insert(&self, record: ApprovalRecord) -> BoxFuture<'_, Result<StoredApproval, BrokerError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let text = encode(&record)?;
            let rows = self
                .deadline(client.query(
                    "WITH ins AS (
                        INSERT INTO gatehouse_approvals (id, revision, state, requester_principal,
                            requester_subject, target, operation_hash, opened_at_ms, grant_until_ms,
                            record)
                        VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8, $9)
                        ON CONFLICT (id) DO NOTHING
                        RETURNING id)
                     SELECT id, pg_notify('gatehouse_approvals', id)::text FROM ins",
                    &[
                        &record.id.0,
                        &state_name(record.state),
                        &record.request.requester.principal(),
                        &record.request.requester.subject,
                        &record.request.target.name,
                        &record.operation_hash,
                        &millis(record.opened_at),
                        &grant_until(&record).map(millis),
                        &text,
                    ],
                ))
                .await?;
            if rows.is_empty() {
                return Err(BrokerError::Duplicate(record.id.0.clone()));
            }
            Ok(StoredApproval {
                record,
                revision: 1,
            })
        })
    }

    fn get<'a>(&'a self, id: &'a ApprovalId) -> BoxFuture<'a, Result<StoredApproval, BrokerError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let row = self
                .deadline(client.query_opt(
                    "SELECT revision, record, id FROM gatehouse_approvals WHERE id = $1",
                    &[&id.0],
                ))
                .await?
                .ok_or_else(|| BrokerError::NotFound(id.0.clone()))?;
            decode(&row)
        })
    }

    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, BrokerError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let state = filter.state.map(state_name);
            let rows = self
                .deadline(client.query(
                    "SELECT revision, record, id FROM gatehouse_approvals
                     WHERE ($1::text IS NULL OR state = $1)
                       AND ($2::text IS NULL OR requester_subject = $2)
                       AND ($3::text IS NULL OR target = $3)
                     ORDER BY opened_at_ms, id",
                    &[&state, &filter.requester, &filter.target],
                ))
                .await?;
            rows.iter().map(|r| decode(r).map(|s| s.record)).collect()
        })
    }

    fn replace(
        &self,
        record: ApprovalRecord,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<Option<StoredApproval>, BrokerError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let text = encode(&record)?;
            let expected = i64::try_from(expected_revision)
                .map_err(|_| BrokerError::Postgres("revision out of range".into()))?;
            let rows = self
                .deadline(client.query(
                    "WITH upd AS (
                        UPDATE gatehouse_approvals
                           SET revision = revision + 1, state = $3, grant_until_ms = $4, record = $5
                         WHERE id = $1 AND revision = $2
                        RETURNING id, revision)
                     SELECT revision, pg_notify('gatehouse_approvals', id)::text FROM upd",
                    &[
                        &record.id.0,
                        &expected,
                        &state_name(record.state),
                        &grant_until(&record).map(millis),
                        &text,
                    ],
                ))
                .await?;
            let Some(row) = rows.first() else {
                // Either the revision moved on or the row is gone: tell them apart.
                let exists = self
                    .deadline(client.query_opt(
                        "SELECT 1 FROM gatehouse_approvals WHERE id = $1",
                        &[&record.id.0],
                    ))
                    .await?;
                return match exists {
                    Some(_) => Ok(None),
                    None => Err(BrokerError::NotFound(record.id.0.clone())),
                };
            };
            let revision: i64 = row.try_get(0)?;
            Ok(Some(StoredApproval {
                record,
                revision: u64::try_from(revision).unwrap_or(0),
            }))
        })
    }

    fn grants<'a>(
        &'a self,
        principal: &'a str,
        target: &'a str,
        operation_hash: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, BrokerError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let rows = self
                .deadline(client.query(
                    "SELECT revision, record, id FROM gatehouse_approvals
                     WHERE requester_principal = $1 AND target = $2 AND operation_hash = $3
                       AND state = 'approved' AND grant_until_ms > $4",
                    &[&principal, &target, &operation_hash, &millis(now)],
                ))
                .await?;
            rows.iter().map(|r| decode(r).map(|s| s.record)).collect()
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<ApprovalId> {
        self.changes.subscribe()
    }

    fn poll_interval(&self) -> Duration {
        self.options.poll_interval
    }
}

/// Keeps a LISTEN connection up and forwards every notification; reconnects with backoff.
async fn listen_forever(
    config: tokio_postgres::Config,
    tls: Option<PgTls>,
    changes: broadcast::Sender<ApprovalId>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let listened = match &tls {
            None => listen_once(&config, NoTls, &changes).await,
            Some(tls) => listen_once(&config, tls.clone(), &changes).await,
        };
        match listened {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, "approval store listener failed; waiters poll meanwhile");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    changes: &broadcast::Sender<ApprovalId>,
) -> Result<(), BrokerError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + Unpin,
{
    let (client, mut connection) = config.connect(tls).await?;
    let forward = changes.clone();
    let pump = async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = forward.send(ApprovalId(n.payload().to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(BrokerError::from(e)),
                None => return Ok(()),
            }
        }
    };
    tokio::pin!(pump);
    tokio::select! {
        listened = client.batch_execute("LISTEN gatehouse_approvals") => listened?,
        ended = &mut pump => return ended,
    }
    tracing::debug!("approval store listener up");
    // `client` stays alive (borrowed below) for as long as the connection is pumped.
    let ended = pump.await;
    drop(client);
    ended
}

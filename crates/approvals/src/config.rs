//! The `[approvals]` section of the gateway's config file, and building a broker from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::Recorder;
use serde::{Deserialize, Serialize};

use crate::notify::{WebhookConfig, WebhookNotifier};
use crate::store::{
    ApprovalStore, JournalStore, MemoryStore, PgTls, PostgresStore, PostgresStoreOptions,
};
use crate::{ApprovalBroker, BrokerError};

/// Approvals configuration. Unknown keys are refused, so a typo never silently disables something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Where requests live.
    pub store: StoreConfig,
    /// Optional Slack-compatible webhook, notified on open and on every decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    /// Caps on concurrent holds per identity and per target (`[approvals.limits]`).
    #[serde(default)]
    pub limits: crate::HoldLimits,
}

/// Which store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum StoreConfig {
    /// The embedded default: an fsynced JSON-lines journal on local disk.
    Journal {
        /// Journal file (created if missing).
        path: PathBuf,
    },
    /// PostgreSQL, shared by several gateway replicas.
    Postgres {
        /// libpq-style connection string or `postgres://` URL, without the password.
        url: String,
        /// Read the password from this environment variable.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_env: Option<String>,
        /// Read the password from this file (trailing newline ignored).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        /// Polling fallback for waiters, in milliseconds.
        #[serde(default = "default_poll_interval_ms")]
        poll_interval_ms: u64,
        /// Deadline of each statement, in milliseconds.
        #[serde(default = "default_statement_timeout_ms")]
        statement_timeout_ms: u64,
        /// LISTEN for other replicas' writes (turn off only where NOTIFY is unavailable).
        #[serde(default = "default_true")]
        listen: bool,
        /// Verified TLS to the database (put `sslmode=require` in `url` too). Absent: plaintext,
        /// fit only for a Unix socket or loopback.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tls: Option<PostgresTlsConfig>,
    },
    /// In memory: lost on restart. Tests and demos only.
    Memory,
}

/// TLS settings of the PostgreSQL store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresTlsConfig {
    /// PEM file of the CA(s) that sign the database's certificate; absent: public web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_poll_interval_ms() -> u64 {
    2_000
}
fn default_statement_timeout_ms() -> u64 {
    10_000
}
fn default_true() -> bool {
    true
}

impl ApprovalsConfig {
    /// Parses the TOML text of the section.
    pub fn from_toml(text: &str) -> Result<Self, BrokerError> {
        toml_from_str(text)
    }

    /// Opens the store, starts the webhook notifier, and builds the broker (needs a tokio runtime).
    pub async fn build(
        &self,
        recorder: Option<Arc<dyn Recorder + Send + Sync>>,
    ) -> Result<ApprovalBroker, BrokerError> {
        let store: Arc<dyn ApprovalStore> = match &self.store {
            StoreConfig::Journal { path } => {
                let path = path.clone();
                Arc::new(
                    tokio::task::spawn_blocking(move || JournalStore::open(path))
                        .await
                        .map_err(|e| BrokerError::Task(e.to_string()))??,
                )
            }
            StoreConfig::Postgres {
                url,
                password_env,
                password_file,
                poll_interval_ms,
                statement_timeout_ms,
                listen,
                tls,
            } => {
                let mut config: tokio_postgres::Config =
                    url.parse().map_err(|e: tokio_postgres::Error| {
                        BrokerError::Config(format!("postgres connection string: {e}"))
                    })?;
                if let Some(var) = password_env {
                    let pw = std::env::var(var).map_err(|_| {
                        BrokerError::Config(format!("environment variable {var} is not set"))
                    })?;
                    config.password(pw);
                }
                if let Some(file) = password_file {
                    let pw = std::fs::read_to_string(file).map_err(|e| {
                        BrokerError::Config(format!("password file {}: {e}", file.display()))
                    })?;
                    config.password(pw.trim_end_matches(['\n', '\r']));
                }
                let options = PostgresStoreOptions {
                    poll_interval: Duration::from_millis((*poll_interval_ms).max(10)),
                    statement_timeout: Duration::from_millis((*statement_timeout_ms).max(10)),
                    listen: *listen,
                    tls: match tls {
                        Some(t) => Some(PgTls::new(t.ca_file.as_deref())?),
                        None => None,
                    },
                };
                Arc::new(PostgresStore::with_config(config, options).await?)
            }
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
        };
        let mut builder = ApprovalBroker::builder(store).limits(self.limits);
        if let Some(recorder) = recorder {
            builder = builder.recorder(recorder);
        }
        if let Some(webhook) = &self.webhook {
            builder = builder.notifier(Arc::new(WebhookNotifier::spawn(webhook.clone())?));
        }
        Ok(builder.build())
    }
}

fn toml_from_str(text: &str) -> Result<ApprovalsConfig, BrokerError> {
    toml::from_str(text).map_err(|e| BrokerError::Config(e.to_string()))
}

//! Just-in-time approvals for Gatehouse: a `Review` verdict holds one exact operation (bound to
//! its canonical hash) until enough distinct approvers decide, it times out, or the caller leaves.
//!
//! - [`ApprovalBroker`] implements [`gatehouse_core::Approvals`]: open, wait (with `StillPending`
//!   for callers that poll), list, get, decide; separation of duties, N-of-M approvals, grant
//!   windows, timeouts, abandonment on drop, and an audit event for every state change.
//! - [`operation_hash`] is the documented canonical hash an approval is bound to.
//! - Stores ([`store`]): [`JournalStore`] (embedded default, survives restarts), [`PostgresStore`]
//!   (several replicas; LISTEN/NOTIFY plus polling), [`MemoryStore`] (tests).
//! - [`WebhookNotifier`] posts Slack-compatible `{"text": …}` messages on open and decision, retried
//!   with backoff in the background.
//! - [`ApprovalsConfig`] is the config-file section; the admin API and CLI use the trait methods
//!   and the core serde types ([`gatehouse_core::ApprovalRecord`], [`gatehouse_core::ApprovalFilter`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker;
mod config;
mod error;
mod hash;
mod notify;
pub mod store;

pub use broker::{ApprovalBroker, ApprovalBrokerBuilder, MAX_JUSTIFICATION_BYTES};
pub use config::{ApprovalsConfig, PostgresTlsConfig, StoreConfig};
pub use error::BrokerError;
pub use hash::{DOMAIN_TAG, canonical_encoding, operation_hash};
pub use notify::{ApprovalNotice, ApprovalNotifier, WebhookConfig, WebhookNotifier, WebhookStats};
pub use store::{
    ApprovalStore, JournalReload, JournalStore, MemoryStore, PgTls, PostgresStore,
    PostgresStoreOptions, StoredApproval,
};

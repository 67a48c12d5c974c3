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
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use gatehouse_approvals::{ApprovalBroker, MemoryStore};
//! use gatehouse_core::*;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let broker = ApprovalBroker::builder(Arc::new(MemoryStore::new())).build();
//! let agent = Identity::new("agent-7", "https://idp.example", AuthMethod::Test);
//! let ticket = broker
//!     .open(ApprovalRequest {
//!         requester: agent,
//!         session: SessionId::generate(),
//!         target: Target::new("orders-db", Protocol::Postgres),
//!         operation: Operation::Sql(SqlOperation::simple("DELETE FROM orders WHERE id = 7")),
//!         rule_id: "prod-writes".into(),
//!         reason: "writes to prod need a second pair of eyes".into(),
//!         requirement: ReviewRequirement {
//!             approver_groups: vec!["dba".into()],
//!             approvals_required: 1,
//!             timeout_ms: 60_000,
//!             grant_window_ms: None,
//!         },
//!         index: 0,
//!         shown: None,
//!     })
//!     .await?;
//! // A member of `dba` (never the requester) approves, with a justification.
//! let alice = Identity::new("alice", "https://idp.example", AuthMethod::Test).with_group("dba");
//! broker.decide(&ticket.id, &alice, ApprovalDecision::Approve, "ticket OPS-12").await?;
//! let outcome = broker.wait(&ticket.id, Duration::from_secs(5)).await?;
//! assert_eq!(outcome, ApprovalOutcome::Approved { approvers: vec!["alice".into()] });
//! # Ok::<(), ApprovalError>(())
//! # }).unwrap();
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker;
mod config;
mod error;
mod hash;
mod notify;
pub mod store;

pub use broker::{ApprovalBroker, ApprovalBrokerBuilder, HoldLimits, MAX_JUSTIFICATION_BYTES};
pub use config::{ApprovalsConfig, PostgresTlsConfig, StoreConfig};
pub use error::BrokerError;
pub use hash::{DOMAIN_TAG, canonical_encoding, operation_hash};
pub use notify::{ApprovalNotice, ApprovalNotifier, WebhookConfig, WebhookNotifier, WebhookStats};
pub use store::{
    ApprovalStore, JournalReload, JournalStore, MemoryStore, PgTls, PostgresStore,
    PostgresStoreOptions, StoredApproval,
};

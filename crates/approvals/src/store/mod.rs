//! Where requests and decisions live: a small store trait and its two implementations.
//!
//! Promise of every store: writes are compare-and-swap on a per-request revision, so two replicas
//! (or two approvers) deciding at once never lose a vote or reopen a closed request; every
//! successful write is announced on [`ApprovalStore::subscribe`] (locally, and for a shared store
//! to every replica), and waiters also poll every [`ApprovalStore::poll_interval`] in case an
//! announcement is missed.

mod journal;
mod pg_tls;
mod postgres;
mod table;

use std::time::Duration;

use gatehouse_core::{
    ApprovalFilter, ApprovalId, ApprovalRecord, ApprovalState, BoxFuture, Timestamp,
};
use tokio::sync::broadcast;

pub use journal::{JournalReload, JournalStore};
pub use pg_tls::PgTls;
pub use postgres::{PostgresStore, PostgresStoreOptions};
pub use table::MemoryStore;

use crate::BrokerError;

/// A record together with its store revision (incremented by every successful write).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredApproval {
    /// The request and its votes.
    pub record: ApprovalRecord,
    /// Revision for compare-and-swap.
    pub revision: u64,
}

/// Persistence for approval requests. Implementations must be safe to share between tasks.
pub trait ApprovalStore: Send + Sync + std::fmt::Debug {
    /// Stores a new request at revision 1. Fails with [`BrokerError::Duplicate`] if the id exists.
    fn insert(&self, record: ApprovalRecord) -> BoxFuture<'_, Result<StoredApproval, BrokerError>>;

    /// One request, or [`BrokerError::NotFound`].
    fn get<'a>(&'a self, id: &'a ApprovalId) -> BoxFuture<'a, Result<StoredApproval, BrokerError>>;

    /// Requests matching the filter, oldest first.
    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, BrokerError>>;

    /// Replaces a request if its revision is still `expected_revision`. `Ok(None)` means someone
    /// else wrote first: reload and re-check.
    fn replace(
        &self,
        record: ApprovalRecord,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<Option<StoredApproval>, BrokerError>>;

    /// Approved requests by `principal` on `target` for exactly `operation_hash` whose own grant
    /// window still covers `now`.
    fn grants<'a>(
        &'a self,
        principal: &'a str,
        target: &'a str,
        operation_hash: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, BrokerError>>;

    /// Announces the id of every request written (by this process or, for a shared store, any
    /// replica). Receivers may lag; they then fall back to polling.
    fn subscribe(&self) -> broadcast::Receiver<ApprovalId>;

    /// How often a waiter re-reads its request even without an announcement.
    fn poll_interval(&self) -> Duration;
}

/// Until when an approved record's grant window covers the same operation, if it has one.
pub fn grant_until(record: &ApprovalRecord) -> Option<Timestamp> {
    if record.state != ApprovalState::Approved {
        return None;
    }
    let window = record.request.requirement.grant_window_ms?;
    let closed = record.closed_at?;
    closed.checked_add(time::Duration::milliseconds(
        i64::try_from(window).unwrap_or(i64::MAX),
    ))
}

/// Whether a record matches a list filter.
pub fn filter_matches(filter: &ApprovalFilter, record: &ApprovalRecord) -> bool {
    filter.state.is_none_or(|s| s == record.state)
        && filter
            .requester
            .as_deref()
            .is_none_or(|r| r == record.request.requester.subject)
        && filter
            .target
            .as_deref()
            .is_none_or(|t| t == record.request.target.name)
}

/// Stable lower-case name of a state, as stored and shown.
pub fn state_name(state: ApprovalState) -> &'static str {
    match state {
        ApprovalState::Pending => "pending",
        ApprovalState::Approved => "approved",
        ApprovalState::Denied => "denied",
        ApprovalState::TimedOut => "timed_out",
        ApprovalState::Abandoned => "abandoned",
        _ => "unknown",
    }
}

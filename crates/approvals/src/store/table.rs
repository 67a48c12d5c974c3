//! The in-memory record table shared by [`MemoryStore`] and the journal store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gatehouse_core::{ApprovalFilter, ApprovalId, ApprovalRecord, BoxFuture, Timestamp};
use tokio::sync::broadcast;

use super::{ApprovalStore, StoredApproval, filter_matches, grant_until};
use crate::BrokerError;

/// Records by id, with compare-and-swap on the revision.
#[derive(Debug, Default)]
pub(crate) struct RecordTable {
    records: HashMap<ApprovalId, StoredApproval>,
}

impl RecordTable {
    pub(crate) fn check_insert(&self, record: &ApprovalRecord) -> Result<(), BrokerError> {
        if self.records.contains_key(&record.id) {
            return Err(BrokerError::Duplicate(record.id.0.clone()));
        }
        Ok(())
    }

    /// `Some(new revision)` if `expected` is current.
    pub(crate) fn check_replace(
        &self,
        record: &ApprovalRecord,
        expected: u64,
    ) -> Result<Option<u64>, BrokerError> {
        match self.records.get(&record.id) {
            None => Err(BrokerError::NotFound(record.id.0.clone())),
            Some(current) if current.revision == expected => Ok(Some(expected + 1)),
            Some(_) => Ok(None),
        }
    }

    /// Sets a record (used after the write is durable, and when reloading).
    pub(crate) fn put(&mut self, stored: StoredApproval) {
        self.records.insert(stored.record.id.clone(), stored);
    }

    pub(crate) fn get(&self, id: &ApprovalId) -> Result<StoredApproval, BrokerError> {
        self.records
            .get(id)
            .cloned()
            .ok_or_else(|| BrokerError::NotFound(id.0.clone()))
    }

    pub(crate) fn revision(&self, id: &ApprovalId) -> Option<u64> {
        self.records.get(id).map(|s| s.revision)
    }

    pub(crate) fn list(&self, filter: &ApprovalFilter) -> Vec<ApprovalRecord> {
        let mut out: Vec<ApprovalRecord> = self
            .records
            .values()
            .filter(|s| filter_matches(filter, &s.record))
            .map(|s| s.record.clone())
            .collect();
        out.sort_by(|a, b| a.opened_at.cmp(&b.opened_at).then_with(|| a.id.cmp(&b.id)));
        out
    }

    pub(crate) fn grants(
        &self,
        principal: &str,
        target: &str,
        operation_hash: &str,
        now: Timestamp,
    ) -> Vec<ApprovalRecord> {
        self.records
            .values()
            .filter(|s| {
                s.record.operation_hash == operation_hash
                    && s.record.request.target.name == target
                    && s.record.request.requester.principal() == principal
                    && grant_until(&s.record).is_some_and(|until| until > now)
            })
            .map(|s| s.record.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

/// A store that lives only as long as the process: for tests, benchmarks and single-shot tools.
/// Use [`super::JournalStore`] when requests must survive a restart.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    table: Arc<Mutex<RecordTable>>,
    changes: broadcast::Sender<ApprovalId>,
    poll_interval: Duration,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            table: Arc::new(Mutex::new(RecordTable::default())),
            changes: broadcast::channel(1024).0,
            poll_interval: Duration::from_secs(1),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut RecordTable) -> T) -> T {
        // A panic while holding the lock cannot leave a half-written record (every mutation is a
        // single `insert`), so a poisoned lock is safe to reuse.
        let mut guard = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

impl ApprovalStore for MemoryStore {
    fn insert(&self, record: ApprovalRecord) -> BoxFuture<'_, Result<StoredApproval, BrokerError>> {
        Box::pin(async move {
            let id = record.id.clone();
            let stored = self.with(|t| {
                t.check_insert(&record)?;
                let stored = StoredApproval {
                    record,
                    revision: 1,
                };
                t.put(stored.clone());
                Ok::<_, BrokerError>(stored)
            })?;
            let _ = self.changes.send(id);
            Ok(stored)
        })
    }

    fn get<'a>(&'a self, id: &'a ApprovalId) -> BoxFuture<'a, Result<StoredApproval, BrokerError>> {
        Box::pin(async move { self.with(|t| t.get(id)) })
    }

    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, BrokerError>> {
        Box::pin(async move { Ok(self.with(|t| t.list(filter))) })
    }

    fn replace(
        &self,
        record: ApprovalRecord,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<Option<StoredApproval>, BrokerError>> {
        Box::pin(async move {
            let id = record.id.clone();
            let stored = self.with(|t| {
                let Some(revision) = t.check_replace(&record, expected_revision)? else {
                    return Ok::<_, BrokerError>(None);
                };
                let stored = StoredApproval { record, revision };
                t.put(stored.clone());
                Ok(Some(stored))
            })?;
            if stored.is_some() {
                let _ = self.changes.send(id);
            }
            Ok(stored)
        })
    }

    fn grants<'a>(
        &'a self,
        principal: &'a str,
        target: &'a str,
        operation_hash: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, BrokerError>> {
        Box::pin(async move { Ok(self.with(|t| t.grants(principal, target, operation_hash, now))) })
    }

    fn subscribe(&self) -> broadcast::Receiver<ApprovalId> {
        self.changes.subscribe()
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }
}

//! The embedded default store: an append-only JSON-lines journal, fsynced per write.
//!
//! Each write appends the whole record with its new revision as one line
//! `{"revision":N,"record":{…}}` and calls `fdatasync` before it is acknowledged. On open the journal
//! is replayed (the highest revision of each id wins), so pending requests reload as pending and
//! decided ones stay decided. A torn last line (a crash mid-append) is dropped and cut off; any other
//! unreadable line refuses to open the journal, because guessing could revive or lose a decision.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gatehouse_core::{ApprovalFilter, ApprovalId, ApprovalRecord, BoxFuture, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::table::RecordTable;
use super::{ApprovalStore, StoredApproval};
use crate::BrokerError;

#[derive(Serialize)]
struct LineOut<'a> {
    revision: u64,
    record: &'a ApprovalRecord,
}

#[derive(Deserialize)]
struct LineIn {
    revision: u64,
    record: ApprovalRecord,
}

#[derive(Debug)]
struct JournalState {
    file: File,
    table: RecordTable,
}

/// An append-only, fsynced JSON-lines journal of approval requests.
#[derive(Debug, Clone)]
pub struct JournalStore {
    path: Arc<PathBuf>,
    state: Arc<Mutex<JournalState>>,
    changes: broadcast::Sender<ApprovalId>,
    poll_interval: Duration,
}

/// What reloading a journal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalReload {
    /// Distinct requests loaded.
    pub requests: usize,
    /// Lines replayed.
    pub lines: usize,
    /// Bytes of a torn last line that were cut off.
    pub torn_bytes_dropped: u64,
}

impl JournalStore {
    /// Opens (or creates) the journal at `path` and replays it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BrokerError> {
        Self::open_with_report(path).map(|(store, _)| store)
    }

    /// Like [`JournalStore::open`], also saying what was reloaded.
    pub fn open_with_report(path: impl AsRef<Path>) -> Result<(Self, JournalReload), BrokerError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| BrokerError::JournalIo {
            path: path.display().to_string(),
            source,
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        if !existed {
            // Make the new directory entry itself durable.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (table, report, good_len) = replay(&path, &bytes)?;
        if report.torn_bytes_dropped > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = report.torn_bytes_dropped,
                "approval journal ended in a torn line; cut it off"
            );
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok((
            Self {
                path: Arc::new(path),
                state: Arc::new(Mutex::new(JournalState { file, table })),
                changes: broadcast::channel(1024).0,
                poll_interval: Duration::from_secs(1),
            },
            report,
        ))
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a journal operation on the blocking pool (it writes and fsyncs).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut JournalState, &Path) -> Result<T, BrokerError> + Send + 'static,
    ) -> Result<T, BrokerError> {
        let state = Arc::clone(&self.state);
        let path = Arc::clone(&self.path);
        tokio::task::spawn_blocking(move || {
            // Every mutation appends (and syncs) before it touches the table, so a panic under the
            // lock cannot leave the table ahead of the file; a poisoned lock is safe to reuse.
            let mut guard = state.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard, &path)
        })
        .await
        .map_err(|e| BrokerError::Task(e.to_string()))?
    }

    fn read<T>(&self, f: impl FnOnce(&RecordTable) -> T) -> T {
        let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&guard.table)
    }
}

fn append(
    state: &mut JournalState,
    path: &Path,
    stored: &StoredApproval,
) -> Result<(), BrokerError> {
    let mut line = serde_json::to_vec(&LineOut {
        revision: stored.revision,
        record: &stored.record,
    })
    .map_err(|e| BrokerError::CorruptRecord {
        id: stored.record.id.0.clone(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    let io = |source| BrokerError::JournalIo {
        path: path.display().to_string(),
        source,
    };
    state.file.write_all(&line).map_err(io)?;
    state.file.sync_data().map_err(io)?;
    Ok(())
}

/// Replays journal bytes. Returns the table, the report and the length of the good prefix.
fn replay(path: &Path, bytes: &[u8]) -> Result<(RecordTable, JournalReload, u64), BrokerError> {
    let mut table = RecordTable::default();
    let mut lines = 0usize;
    let mut offset = 0usize;
    let mut line_no = 0usize;
    let finish = |table: RecordTable, lines: usize, good_len: usize| {
        let report = JournalReload {
            requests: table.len(),
            lines,
            torn_bytes_dropped: (bytes.len() - good_len) as u64,
        };
        Ok((table, report, good_len as u64))
    };
    while offset < bytes.len() {
        line_no += 1;
        let rest = bytes.get(offset..).unwrap_or_default();
        let (line, next, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or_default(), offset + i + 1, true),
            None => (rest, bytes.len(), false),
        };
        if !terminated {
            // An unterminated line was never acknowledged (its newline goes out in the same write,
            // synced before acknowledging), so it is a torn append: drop it even if it parses.
            return finish(table, lines, offset);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            offset = next;
            continue;
        }
        match serde_json::from_slice::<LineIn>(line) {
            Ok(parsed) => {
                lines += 1;
                let newer = table
                    .revision(&parsed.record.id)
                    .is_none_or(|r| parsed.revision > r);
                if newer {
                    table.put(StoredApproval {
                        record: parsed.record,
                        revision: parsed.revision,
                    });
                }
                offset = next;
            }
            // A damaged final line (e.g. a block of zeros after a crash) is a torn append too.
            Err(_) if next >= bytes.len() => return finish(table, lines, offset),
            Err(e) => {
                return Err(BrokerError::JournalCorrupt {
                    path: path.display().to_string(),
                    line: line_no,
                    detail: e.to_string(),
                });
            }
        }
    }
    finish(table, lines, bytes.len())
}

impl ApprovalStore for JournalStore {
    fn insert(&self, record: ApprovalRecord) -> BoxFuture<'_, Result<StoredApproval, BrokerError>> {
        Box::pin(async move {
            let id = record.id.clone();
            let stored = self
                .blocking(move |state, path| {
                    state.table.check_insert(&record)?;
                    let stored = StoredApproval {
                        record,
                        revision: 1,
                    };
                    append(state, path, &stored)?;
                    state.table.put(stored.clone());
                    Ok(stored)
                })
                .await?;
            let _ = self.changes.send(id);
            Ok(stored)
        })
    }

    fn get<'a>(&'a self, id: &'a ApprovalId) -> BoxFuture<'a, Result<StoredApproval, BrokerError>> {
        Box::pin(async move { self.read(|t| t.get(id)) })
    }

    fn list<'a>(
        &'a self,
        filter: &'a ApprovalFilter,
    ) -> BoxFuture<'a, Result<Vec<ApprovalRecord>, BrokerError>> {
        Box::pin(async move { Ok(self.read(|t| t.list(filter))) })
    }

    fn replace(
        &self,
        record: ApprovalRecord,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<Option<StoredApproval>, BrokerError>> {
        Box::pin(async move {
            let id = record.id.clone();
            let stored = self
                .blocking(move |state, path| {
                    let Some(revision) = state.table.check_replace(&record, expected_revision)?
                    else {
                        return Ok(None);
                    };
                    let stored = StoredApproval { record, revision };
                    append(state, path, &stored)?;
                    state.table.put(stored.clone());
                    Ok(Some(stored))
                })
                .await?;
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
        Box::pin(async move { Ok(self.read(|t| t.grants(principal, target, operation_hash, now))) })
    }

    fn subscribe(&self) -> broadcast::Receiver<ApprovalId> {
        self.changes.subscribe()
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::{
        ApprovalRequest, ApprovalState, AuthMethod, Identity, Operation, Protocol,
        ReviewRequirement, SessionId, SqlOperation, Target,
    };
    use proptest::prelude::*;

    fn record(n: u32, state: ApprovalState) -> ApprovalRecord {
        ApprovalRecord {
            id: ApprovalId(format!("req-{n}")),
            request: ApprovalRequest {
                requester: Identity::new("agent", "https://idp", AuthMethod::Test),
                session: SessionId("s".into()),
                target: Target::new("db", Protocol::Postgres),
                operation: Operation::Sql(SqlOperation::simple(format!("DELETE FROM t{n}"))),
                rule_id: "r".into(),
                reason: "why".into(),
                requirement: ReviewRequirement {
                    approver_groups: vec!["dba".into()],
                    approvals_required: 1,
                    timeout_ms: 1000,
                    grant_window_ms: None,
                },
                index: 0,
                shown: None,
            },
            operation_hash: "00".into(),
            state,
            votes: Vec::new(),
            opened_at: gatehouse_core::now(),
            closed_at: None,
        }
    }

    fn journal_bytes() -> Vec<u8> {
        let mut out = Vec::new();
        for (n, rev, state) in [
            (1, 1, ApprovalState::Pending),
            (2, 1, ApprovalState::Pending),
            (1, 2, ApprovalState::Approved),
        ] {
            out.extend(
                serde_json::to_vec(&LineOut {
                    revision: rev,
                    record: &record(n, state),
                })
                .unwrap_or_default(),
            );
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn later_revision_wins() {
        let bytes = journal_bytes();
        let (table, report, len) = replay(Path::new("j"), &bytes).unwrap();
        assert_eq!(report.lines, 3);
        assert_eq!(report.requests, 2);
        assert_eq!(len as usize, bytes.len());
        let one = table.get(&ApprovalId("req-1".into())).unwrap();
        assert_eq!(one.revision, 2);
        assert_eq!(one.record.state, ApprovalState::Approved);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A crash can cut the file anywhere: every prefix reopens, keeps every complete line and
        /// never invents a state.
        #[test]
        fn every_prefix_reopens(cut in 0usize..2000) {
            let bytes = journal_bytes();
            let cut = cut.min(bytes.len());
            let prefix = &bytes[..cut];
            let (table, report, good) = replay(Path::new("j"), prefix).unwrap();
            let complete_lines = prefix.iter().filter(|&&b| b == b'\n').count();
            prop_assert_eq!(report.lines, complete_lines);
            prop_assert_eq!(good as usize + report.torn_bytes_dropped as usize, cut);
            if complete_lines < 3
                && let Ok(one) = table.get(&ApprovalId("req-1".into()))
            {
                prop_assert_eq!(one.record.state, ApprovalState::Pending);
            }
        }

        /// Hostile bytes never panic the replay: it loads or refuses with an error.
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = replay(Path::new("j"), &bytes);
        }

        /// Hostile lines that look like JSON never panic either.
        #[test]
        fn hostile_json_lines_never_panic(lines in proptest::collection::vec(r#"\{"revision":[0-9]{0,20},"record":.{0,40}\}?"#, 0..6)) {
            let text = lines.join("\n");
            let _ = replay(Path::new("j"), text.as_bytes());
        }
    }
}

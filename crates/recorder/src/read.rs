//! Reading logs back for people: loading local logs, listing sessions, one session's events, and
//! exporting the exact stored lines (which stay verifiable one by one).
//!
//! These helpers read, they do not judge: run [`verify`](fn@crate::verify) first; records that do not parse
//! are skipped here.

use std::collections::BTreeMap;
use std::path::Path;

use gatehouse_core::{Event, EventBody, RecordingSeal, SessionId, Verdict};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::RecorderError;
use crate::format::{RecordKind, hex32, parse_line};
use crate::storage::{LocalSegmentStore, SegmentStore as _};
use crate::verify::{LogData, SegmentData};

/// Loads every segment of the log in `dir` (named `log`).
pub fn load_local_log(dir: &Path, log: &str) -> Result<LogData, RecorderError> {
    let store = LocalSegmentStore::new(dir)
        .map_err(|e| RecorderError::io(format!("open {}", dir.display()), e))?;
    let names = store
        .list()
        .map_err(|e| RecorderError::io(format!("list {}", dir.display()), e))?;
    let mut segments = Vec::with_capacity(names.len());
    for name in names {
        let bytes = store
            .read(&name)
            .map_err(|e| RecorderError::io(format!("read {name}"), e))?;
        segments.push(SegmentData { name, bytes });
    }
    Ok(LogData {
        log: log.to_owned(),
        segments,
    })
}

/// Loads every log under an audit root (one sub-directory per log id).
pub fn load_local_logs(audit_root: &Path) -> Result<Vec<LogData>, RecorderError> {
    let mut logs = Vec::new();
    let entries = std::fs::read_dir(audit_root)
        .map_err(|e| RecorderError::io(format!("read {}", audit_root.display()), e))?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| crate::format::valid_log_id(n))
        .collect();
    names.sort();
    for name in names {
        logs.push(load_local_log(&audit_root.join(&name), &name)?);
    }
    Ok(logs)
}

/// One stored record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    /// Log id.
    pub log: String,
    /// Sequence.
    pub sequence: u64,
    /// Kind.
    pub kind: RecordKind,
    /// Hex hash.
    pub hash: String,
    /// The event, for event records.
    pub event: Option<Event>,
    /// The exact stored line (without `\n`).
    pub line: Vec<u8>,
}

/// Decodes the records of a log, in order.
pub fn records(log: &LogData) -> Vec<StoredRecord> {
    let mut order: Vec<&SegmentData> = log.segments.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for seg in order {
        for line in seg.bytes.split(|b| *b == b'\n') {
            let Ok(p) = parse_line(line) else { continue };
            let event = (p.kind == RecordKind::Event)
                .then(|| serde_json::from_slice::<Event>(&p.payload_object()).ok())
                .flatten();
            out.push(StoredRecord {
                log: p.log.to_owned(),
                sequence: p.sequence,
                kind: p.kind,
                hash: hex32(&p.stored_hash),
                event,
                line: line.to_vec(),
            });
        }
    }
    out
}

/// What the log says about one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// Session id.
    pub session: SessionId,
    /// Log that recorded it.
    pub log: String,
    /// Identity principal (`issuer|subject`), once authenticated.
    pub principal: Option<String>,
    /// Target name.
    pub target: Option<String>,
    /// First event time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_event: Option<OffsetDateTime>,
    /// Session end time, if it ended.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended: Option<OffsetDateTime>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Operations recorded.
    pub operations: u64,
    /// Operations denied.
    pub denied: u64,
    /// Operations sent to review.
    pub reviewed: u64,
    /// Failed logins.
    pub login_failures: u64,
    /// The recording seal from `SessionEnd`.
    pub recording: Option<RecordingSeal>,
    /// Every recording seal of the session: the one in `SessionEnd`, and those recorded on their
    /// own (one per SSH channel); see [`recording_seals`].
    #[serde(default)]
    pub recordings: Vec<RecordingSeal>,
}

/// Lists sessions across logs, ordered by first event.
pub fn list_sessions(logs: &[LogData]) -> Vec<SessionSummary> {
    let mut by: BTreeMap<(String, String), SessionSummary> = BTreeMap::new();
    for log in logs {
        for r in records(log) {
            let Some(e) = r.event else { continue };
            let s = by
                .entry((log.log.clone(), e.session.0.clone()))
                .or_insert_with(|| SessionSummary {
                    session: e.session.clone(),
                    log: log.log.clone(),
                    principal: None,
                    target: None,
                    first_event: Some(e.time),
                    ended: None,
                    end_reason: None,
                    operations: 0,
                    denied: 0,
                    reviewed: 0,
                    login_failures: 0,
                    recording: None,
                    recordings: Vec::new(),
                });
            if s.principal.is_none() {
                s.principal = e.identity.as_ref().map(|i| i.principal());
            }
            if s.target.is_none() {
                s.target = e.target.as_ref().map(|t| t.name.clone());
            }
            match &e.body {
                EventBody::Operation { decision, .. } => {
                    s.operations += 1;
                    match decision.verdict {
                        Verdict::Deny => s.denied += 1,
                        Verdict::Review => s.reviewed += 1,
                        Verdict::Allow => {}
                    }
                }
                EventBody::LoginFailed { .. } => s.login_failures += 1,
                EventBody::SessionEnd {
                    reason, recording, ..
                } => {
                    s.ended = Some(e.time);
                    s.end_reason = Some(reason.clone());
                    s.recording = recording.clone();
                }
                _ => {}
            }
        }
    }
    let mut seals: std::collections::HashMap<String, Vec<RecordingSeal>> = Default::default();
    for sealed in recording_seals(logs) {
        seals.entry(sealed.session.0).or_default().push(sealed.seal);
    }
    for ((_, session), s) in by.iter_mut() {
        if let Some(v) = seals.get(session) {
            s.recordings = v.clone();
        }
    }
    let mut out: Vec<_> = by.into_values().collect();
    out.sort_by(|a, b| {
        a.first_event
            .cmp(&b.first_event)
            .then(a.session.cmp(&b.session))
    });
    out
}

/// The events of one session, in log order.
pub fn session_events(logs: &[LogData], session: &SessionId) -> Vec<Event> {
    logs.iter()
        .flat_map(records)
        .filter_map(|r| r.event)
        .filter(|e| e.session == *session)
        .collect()
}

/// Which records to export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only this session's events.
    pub session: Option<SessionId>,
    /// Only events at or after.
    pub since: Option<OffsetDateTime>,
    /// Only events before.
    pub until: Option<OffsetDateTime>,
    /// Also export checkpoints and cuts (recommended: they let an auditor check the signatures).
    pub include_signed_records: bool,
}

/// The exact stored lines (each with `\n`) of the records that match.
pub fn export_lines(logs: &[LogData], filter: &ExportFilter) -> Vec<u8> {
    let mut out = Vec::new();
    for log in logs {
        for r in records(log) {
            let keep = match &r.event {
                Some(e) => {
                    filter.session.as_ref().is_none_or(|s| *s == e.session)
                        && filter.since.is_none_or(|t| e.time >= t)
                        && filter.until.is_none_or(|t| e.time < t)
                }
                None => filter.include_signed_records && r.kind != RecordKind::Event,
            };
            if keep {
                out.extend_from_slice(&r.line);
                out.push(b'\n');
            }
        }
    }
    out
}

/// One recording seal found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecording {
    /// The session the recording belongs to.
    pub session: SessionId,
    /// The seal (location, hash, size).
    pub seal: RecordingSeal,
}

/// Every recording seal the logs hold: the one a `SessionEnd` carries, and those recorded on their
/// own while the session goes on (an `other` event whose details carry a `seal`, as the SSH proxy
/// writes one per channel: a session with several channels carries none in its `SessionEnd`).
/// The same seal recorded twice is listed once.
pub fn recording_seals(logs: &[LogData]) -> Vec<SealedRecording> {
    let mut out: Vec<SealedRecording> = Vec::new();
    for log in logs {
        for r in records(log) {
            let Some(e) = r.event else { continue };
            let seal = match e.body {
                EventBody::SessionEnd {
                    recording: Some(seal),
                    ..
                } => seal,
                EventBody::Other { details, .. } => {
                    match details
                        .get("seal")
                        .map(|s| serde_json::from_value::<RecordingSeal>(s.clone()))
                    {
                        Some(Ok(seal)) => seal,
                        _ => continue,
                    }
                }
                _ => continue,
            };
            let found = SealedRecording {
                session: e.session,
                seal,
            };
            if !out.contains(&found) {
                out.push(found);
            }
        }
    }
    out
}

//! [`AuditRecorder`]: the `gatehouse_core::Recorder` the binary wires in. Control events go to
//! the audit log (after the egress guard), recordings go to per-session sinks.
//!
//! Local layout under the root directory:
//!
//! ```text
//! <root>/audit/<log id>/seg-<first sequence>.jsonl   the chain
//! <root>/audit/<log id>/checkpoint-key.pub            public key (hex), for convenience only:
//!                                                      verifiers should get it from config
//! <root>/recordings/<session>/<recording id>.jsonl    recordings (unless in object storage)
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gatehouse_core::{
    BoxFuture, EgressGuard, EgressSite, Event, EventBody, EventReceipt, RecordError, Recorder,
    RecordingKind, RecordingSink, SessionId,
};
use object_store::ObjectStore;

use crate::RecorderError;
use crate::checkpoint::CheckpointSigner;
use crate::log::{AuditLog, AuditLogConfig, LogHooks, event_payload};
use crate::objstore::SegmentShipper;
use crate::recording::{RecordingConfig, RecordingStore, SessionRecording};
use crate::storage::LocalSegmentStore;
use crate::witness::Witness;

/// Everything an [`AuditRecorder`] needs.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// The audit log.
    pub log: AuditLogConfig,
    /// Witnesses for checkpoints.
    pub witnesses: Vec<Arc<dyn Witness>>,
    /// Object storage for shipped segments and recordings (`None`: local only).
    pub object_store: Option<Arc<dyn ObjectStore>>,
    /// Recording limits.
    pub recording: RecordingConfig,
}

impl RecorderConfig {
    /// Local-only defaults for log `log_id`.
    pub fn new(log_id: impl Into<String>) -> Self {
        Self {
            log: AuditLogConfig::new(log_id),
            witnesses: Vec::new(),
            object_store: None,
            recording: RecordingConfig::default(),
        }
    }
}

/// The audit recorder: one audit log plus the recording store.
pub struct AuditRecorder {
    log: AuditLog,
    recordings: RecordingStore,
    recording: RecordingConfig,
    egress: Option<Arc<dyn EgressGuard + Send + Sync>>,
    root: PathBuf,
}

impl std::fmt::Debug for AuditRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditRecorder")
            .field("log", &self.log)
            .field("recordings", &self.recordings)
            .field("egress", &self.egress.is_some())
            .finish_non_exhaustive()
    }
}

impl AuditRecorder {
    /// Opens the recorder rooted at `root` (see the module docs for the layout).
    pub async fn open(
        root: &Path,
        config: RecorderConfig,
        signer: CheckpointSigner,
        egress: Option<Arc<dyn EgressGuard + Send + Sync>>,
    ) -> Result<Self, RecorderError> {
        if !crate::format::valid_log_id(&config.log.log_id) {
            return Err(RecorderError::Config(format!(
                "invalid log id {:?}",
                config.log.log_id
            )));
        }
        let log_dir = root.join("audit").join(&config.log.log_id);
        let store = LocalSegmentStore::new(&log_dir)
            .map_err(|e| RecorderError::io(format!("create {}", log_dir.display()), e))?;
        let key_path = log_dir.join("checkpoint-key.pub");
        std::fs::write(&key_path, hex::encode(signer.verifying_key().as_bytes()))
            .map_err(|e| RecorderError::io(format!("write {}", key_path.display()), e))?;
        let shipper = config
            .object_store
            .as_ref()
            .map(|s| SegmentShipper::new(s.clone(), format!("audit/{}", config.log.log_id)));
        let recordings = match &config.object_store {
            Some(s) => RecordingStore::Object {
                store: s.clone(),
                prefix: "recordings".into(),
            },
            None => RecordingStore::Local(root.join("recordings")),
        };
        let hooks = LogHooks {
            witnesses: config.witnesses.clone(),
            shipper,
        };
        let log = AuditLog::open(Arc::new(store), config.log, signer, hooks).await?;
        Ok(Self {
            log,
            recordings,
            recording: config.recording,
            egress,
            root: root.to_owned(),
        })
    }

    /// The audit log (checkpoints, retention, close).
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Where recordings go.
    pub fn recording_store(&self) -> &RecordingStore {
        &self.recordings
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn record_event(&self, event: Event) -> Result<EventReceipt, RecordError> {
        match self.payload_or_note(&event) {
            (Some(payload), None) => self.log.append_payload(payload).await,
            (note, Some(refused)) => {
                // The record itself is refused; the block is recorded without the offending bytes.
                if let Some(note) = note {
                    let _ = self.log.append_payload(note).await;
                }
                Err(refused)
            }
            (None, None) => Err(RecordError::Store("event not serialised".into())),
        }
    }

    /// The payload to append for `event`: its own, or, when the egress guard blocks it, the
    /// note recording the block (the event itself is then answered `EgressBlocked`).
    fn payload_or_note(&self, event: &Event) -> (Option<Vec<u8>>, Option<RecordError>) {
        let payload = match event_payload(event) {
            Ok(p) => p,
            Err(e) => return (None, Some(e)),
        };
        let Some(guard) = &self.egress else {
            return (Some(payload), None);
        };
        match guard.check(EgressSite::Audit, &payload) {
            Ok(()) => (Some(payload), None),
            Err(blocked) => {
                let note = Event::now(
                    event.session.clone(),
                    event.identity.clone(),
                    event.target.clone(),
                    EventBody::EgressBlocked {
                        site: "audit".into(),
                        hits: blocked.hits,
                    },
                );
                (event_payload(&note).ok(), Some(RecordError::EgressBlocked))
            }
        }
    }

    async fn record_events(&self, events: Vec<Event>) -> Vec<Result<EventReceipt, RecordError>> {
        let mut payloads = Vec::with_capacity(events.len());
        // Per event: `Ok(position in payloads)` or its error.
        let mut slots = Vec::with_capacity(events.len());
        for event in &events {
            let (payload, refused) = self.payload_or_note(event);
            let position = payload.map(|p| {
                payloads.push(p);
                payloads.len() - 1
            });
            slots.push(match (refused, position) {
                (Some(e), _) => Err(e),
                (None, Some(at)) => Ok(at),
                (None, None) => Err(RecordError::Store("event not serialised".into())),
            });
        }
        let mut appended: Vec<Option<Result<EventReceipt, RecordError>>> = self
            .log
            .append_payloads(payloads)
            .await
            .into_iter()
            .map(Some)
            .collect();
        slots
            .into_iter()
            .map(|slot| {
                let at = slot?;
                appended
                    .get_mut(at)
                    .and_then(Option::take)
                    .unwrap_or(Err(RecordError::Closed))
            })
            .collect()
    }
}

impl Recorder for AuditRecorder {
    fn record(&self, event: Event) -> BoxFuture<'_, Result<EventReceipt, RecordError>> {
        Box::pin(self.record_event(event))
    }

    fn record_all(
        &self,
        events: Vec<Event>,
    ) -> BoxFuture<'_, Vec<Result<EventReceipt, RecordError>>> {
        Box::pin(self.record_events(events))
    }

    fn open_recording<'a>(
        &'a self,
        session: &'a SessionId,
        kind: RecordingKind,
    ) -> BoxFuture<'a, Result<Box<dyn RecordingSink>, RecordError>> {
        Box::pin(async move {
            let sink = SessionRecording::open(
                &self.recordings,
                session,
                kind,
                &self.recording,
                self.egress.clone(),
            )
            .await?;
            Ok(Box::new(sink) as Box<dyn RecordingSink>)
        })
    }
}

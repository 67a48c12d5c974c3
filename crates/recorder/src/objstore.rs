//! Object storage (S3-compatible, through `object_store`): closed audit segments are shipped
//! there asynchronously with a bounded backlog, recordings can be written there directly, and
//! logs can be read back from there for verification.
//!
//! The local segment directory stays the durability point: `append` never waits for a shipment,
//! but it fails with `BacklogFull` once too many closed segments wait to be shipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use tokio::sync::mpsc;

use crate::RecorderError;
use crate::storage::{SegmentStore, is_segment_name};
use crate::verify::{LogData, SegmentData};

/// Ships closed segments of one log to `<prefix>/<segment name>`.
#[derive(Debug, Clone)]
pub struct SegmentShipper {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl SegmentShipper {
    /// Ships into `store` under `prefix` (e.g. `audit/gw-a`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        Self {
            store,
            prefix: prefix.into().trim_end_matches('/').to_owned(),
        }
    }

    fn key(&self, name: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{}", self.prefix, name))
    }

    /// Starts the shipping task. Segments already closed but missing from the bucket (a restart)
    /// are shipped first.
    pub(crate) fn start(
        &self,
        segments: Arc<dyn SegmentStore>,
        backlog: Arc<AtomicUsize>,
    ) -> mpsc::UnboundedSender<String> {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(names) = segments.list() {
                // All but the last (still open) segment.
                for name in names.iter().rev().skip(1).rev() {
                    if this.store.head(&this.key(name)).await.is_err() {
                        backlog.fetch_add(1, Ordering::AcqRel);
                        this.ship(&segments, name).await;
                        backlog.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
            while let Some(name) = rx.recv().await {
                this.ship(&segments, &name).await;
                backlog.fetch_sub(1, Ordering::AcqRel);
            }
        });
        tx
    }

    /// Uploads one segment, retrying with backoff until it succeeds or the segment is gone.
    async fn ship(&self, segments: &Arc<dyn SegmentStore>, name: &str) {
        let mut delay = Duration::from_millis(100);
        loop {
            let store = segments.clone();
            let n = name.to_owned();
            let bytes = match tokio::task::spawn_blocking(move || store.read(&n)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return,
                Ok(Err(e)) => {
                    tracing::warn!(segment = name, error = %e, "cannot read segment to ship");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
                Err(_) => return,
            };
            match self
                .store
                .put(&self.key(name), PutPayload::from(bytes))
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(segment = name, error = %e, "segment shipment failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Reads the segments of log `log` stored under `prefix` (as written by [`SegmentShipper`]).
pub async fn load_log(
    store: &dyn ObjectStore,
    prefix: &str,
    log: &str,
) -> Result<LogData, RecorderError> {
    let prefix_path = ObjectPath::from(prefix.trim_end_matches('/'));
    let metas: Vec<_> = store.list(Some(&prefix_path)).try_collect().await?;
    let mut segments = Vec::new();
    for meta in metas {
        let Some(name) = meta.location.filename().map(str::to_owned) else {
            continue;
        };
        if !is_segment_name(&name) {
            continue;
        }
        let bytes = store.get(&meta.location).await?.bytes().await?;
        segments.push(SegmentData {
            name,
            bytes: bytes.to_vec(),
        });
    }
    segments.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(LogData {
        log: log.to_owned(),
        segments,
    })
}

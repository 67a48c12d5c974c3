//! Witnesses: places outside the log's own storage that hold the latest signed checkpoint, so that
//! deleting a whole tail of segments (checkpoints included) is still detected by `verify`.
//!
//! Pushes happen on a background task, latest wins, and never delay `append`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_core::BoxFuture;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::RecorderError;
use crate::checkpoint::Checkpoint;

/// Somewhere to push checkpoints.
pub trait Witness: Send + Sync + Debug {
    /// Stores `checkpoint` as the latest for its log.
    fn push<'a>(&'a self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), RecorderError>>;
}

/// A directory (ideally on other storage) holding `<log>.checkpoint.json` per log.
#[derive(Debug, Clone)]
pub struct FileWitness {
    dir: PathBuf,
}

impl FileWitness {
    /// A witness writing into `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, RecorderError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(|e| RecorderError::io(format!("create {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    /// Reads every checkpoint a file witness directory holds.
    pub fn read_all(dir: &Path) -> Result<Vec<Checkpoint>, RecorderError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| RecorderError::io(format!("read {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| RecorderError::io("read witness directory", e))?;
            let path = entry.path();
            if path
                .to_str()
                .is_some_and(|p| p.ends_with(".checkpoint.json"))
            {
                let bytes = std::fs::read(&path)
                    .map_err(|e| RecorderError::io(format!("read {}", path.display()), e))?;
                let cp = serde_json::from_slice(&bytes).map_err(|e| {
                    RecorderError::Config(format!("{}: not a checkpoint: {e}", path.display()))
                })?;
                out.push(cp);
            }
        }
        Ok(out)
    }
}

impl Witness for FileWitness {
    fn push<'a>(&'a self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), RecorderError>> {
        let dir = self.dir.clone();
        let cp = checkpoint.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || write_atomically(&dir, &cp))
                .await
                .map_err(|e| RecorderError::Config(format!("witness task: {e}")))?
        })
    }
}

fn write_atomically(dir: &Path, cp: &Checkpoint) -> Result<(), RecorderError> {
    use std::io::Write as _;
    if !crate::format::valid_log_id(&cp.log) {
        return Err(RecorderError::Config("invalid log id in checkpoint".into()));
    }
    let path = dir.join(format!("{}.checkpoint.json", cp.log));
    let tmp = dir.join(format!(".{}.checkpoint.json.tmp", cp.log));
    let body = serde_json::to_vec_pretty(cp).map_err(|e| RecorderError::Config(e.to_string()))?;
    let io = |e| RecorderError::io(format!("write {}", path.display()), e);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    Ok(())
}

/// An HTTP endpoint that receives each checkpoint as a JSON `POST` (plain `http://`; put a TLS
/// terminator or the witness service itself on loopback or a private network).
#[derive(Debug, Clone)]
pub struct WebhookWitness {
    uri: http::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl WebhookWitness {
    /// A webhook witness at `url`.
    pub fn new(url: &str) -> Result<Self, RecorderError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| RecorderError::Config(format!("witness url {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(RecorderError::Config(
                "webhook witness urls are http:// only".into(),
            ));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self {
            uri,
            client,
            timeout: Duration::from_secs(5),
        })
    }
}

impl Witness for WebhookWitness {
    fn push<'a>(&'a self, checkpoint: &'a Checkpoint) -> BoxFuture<'a, Result<(), RecorderError>> {
        Box::pin(async move {
            let body =
                serde_json::to_vec(checkpoint).map_err(|e| RecorderError::Config(e.to_string()))?;
            let req = http::Request::post(self.uri.clone())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| RecorderError::Witness(e.to_string()))?;
            let resp = tokio::time::timeout(self.timeout, self.client.request(req))
                .await
                .map_err(|_| RecorderError::Witness("webhook timed out".into()))?
                .map_err(|e| RecorderError::Witness(e.to_string()))?;
            let status = resp.status();
            // Drain the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(RecorderError::Witness(format!("webhook answered {status}")))
            }
        })
    }
}

/// Pushes each new checkpoint to every witness until the log closes.
pub(crate) fn spawn_pusher(
    witnesses: Vec<Arc<dyn Witness>>,
    mut latest: watch::Receiver<Option<Checkpoint>>,
) {
    tokio::spawn(async move {
        while latest.changed().await.is_ok() {
            let Some(cp) = latest.borrow_and_update().clone() else {
                continue;
            };
            for w in &witnesses {
                let mut delay = Duration::from_millis(50);
                for attempt in 0..4 {
                    match w.push(&cp).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(witness = ?w, attempt, error = %e, "checkpoint push failed");
                            tokio::time::sleep(delay).await;
                            delay *= 4;
                        }
                    }
                }
            }
        }
    });
}

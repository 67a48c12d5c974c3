//! Result summaries of every connection, recorded together: one audit write per batch instead of
//! one per exchange.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatehouse_core::{Event, Recorder};
use tokio::sync::{mpsc, oneshot};

/// A queued summary and who waits for its outcome.
type Queued = (Event, oneshot::Sender<bool>);

/// Most summaries recorded together.
const BATCH: usize = 256;
/// How long the first summary of a batch waits for others. The exchange's response is already
/// on its way: this delays only the connection's background recording.
const LINGER: Duration = Duration::from_millis(2);

/// The proxy's result queue; its task starts with the first summary.
#[derive(Default)]
pub(crate) struct ResultQueue {
    tx: OnceLock<mpsc::UnboundedSender<Queued>>,
}

impl ResultQueue {
    /// Records `event` in the next batch; resolves when it is stored. `false`: not recorded (the
    /// caller fails the connection closed).
    pub(crate) async fn record(
        &self,
        recorder: &Arc<dyn Recorder + Send + Sync>,
        event: Event,
    ) -> bool {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(recorder.clone(), rx));
            tx
        });
        let (reply, outcome) = oneshot::channel();
        if tx.send((event, reply)).is_err() {
            return false;
        }
        outcome.await.unwrap_or(false)
    }
}

async fn run(recorder: Arc<dyn Recorder + Send + Sync>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        if batch.len() < BATCH {
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(queued) => batch.push(queued),
                    Err(_) => break,
                }
            }
        }
        let (events, replies): (Vec<Event>, Vec<oneshot::Sender<bool>>) = batch.drain(..).unzip();
        let outcomes = recorder.record_all(events).await;
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            if let Err(e) = &outcome {
                tracing::warn!(error = %e, "could not record an operation result");
            }
            let _ = reply.send(outcome.is_ok());
        }
    }
}

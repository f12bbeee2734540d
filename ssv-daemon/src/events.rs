//! The event stream: growth, lease and volume changes, as JSON lines to
//! every API client that follows `/v1/events`.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Event {
    /// Increases by one per event of this ssvd.
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// e.g. `volume.created`, `volume.grown`, `session.opened`, `job.done`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    pub message: String,
}

pub struct Events {
    tx: broadcast::Sender<Event>,
    seq: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(1024).0,
            seq: AtomicU64::new(0),
        }
    }
}

impl Events {
    pub fn emit(
        &self,
        kind: &str,
        pool: Option<&str>,
        volume: Option<&str>,
        message: impl Into<String>,
    ) {
        let e = Event {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            kind: kind.into(),
            pool: pool.map(Into::into),
            volume: volume.map(Into::into),
            message: message.into(),
        };
        log::info!("event {}: {}", e.kind, e.message);
        // No subscriber is not an error.
        let _ = self.tx.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

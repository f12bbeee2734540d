//! The VM's events: every subscriber of the control API gets each one as a
//! JSON line. Emitting never blocks on a subscriber (each has an unbounded
//! channel drained by its own connection thread); a subscriber that went
//! away is dropped at the next event.

use serde_json::{Map, Value};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, PoisonError};

/// Kinds of events, as they appear in the `event` field.
pub mod kind {
    pub const PAUSED: &str = "paused";
    pub const RESUMED: &str = "resumed";
    pub const DISK_GROWN: &str = "disk.grown";
    pub const DISK_NO_SPACE: &str = "disk.no_space";
    pub const DISK_SPACE_BACK: &str = "disk.space_back";
    pub const LEASE_LOST: &str = "lease.lost";
    pub const SNAPSHOT_CREATED: &str = "snapshot.created";
    pub const SHUTDOWN: &str = "shutdown";
}

#[derive(Default)]
pub struct EventHub {
    subscribers: Mutex<Vec<Sender<Value>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventHub {
    /// Sends `{"event": kind, "time_ms": …, …fields}` to every subscriber;
    /// `fields` that are not an object are put under `data`.
    pub fn emit(&self, kind: &str, fields: Value) {
        let mut e = Map::new();
        e.insert("event".into(), Value::from(kind));
        e.insert("time_ms".into(), Value::from(now_ms()));
        match fields {
            Value::Object(m) => {
                for (k, v) in m {
                    if k != "event" && k != "time_ms" {
                        e.insert(k, v);
                    }
                }
            }
            Value::Null => {}
            other => {
                e.insert("data".into(), other);
            }
        }
        let e = Value::Object(e);
        log::info!("vm event {e}");
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|tx| tx.send(e.clone()).is_ok());
    }

    /// Events from now on, until the receiver is dropped.
    pub fn subscribe(&self) -> Receiver<Value> {
        let (tx, rx) = channel();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_subscriber_gets_each_event_and_gone_ones_are_dropped() {
        let hub = EventHub::default();
        let a = hub.subscribe();
        let b = hub.subscribe();
        hub.emit(kind::PAUSED, json!({"reason": "user", "event": "forged"}));
        for rx in [&a, &b] {
            let e = rx.try_recv().unwrap();
            assert_eq!(e["event"], "paused");
            assert_eq!(e["reason"], "user");
            assert!(e["time_ms"].as_u64().unwrap() > 0);
        }
        drop(b);
        hub.emit(kind::SHUTDOWN, json!(null));
        assert_eq!(a.try_recv().unwrap()["event"], "shutdown");
        assert_eq!(hub.subscribers.lock().unwrap().len(), 1);
    }
}

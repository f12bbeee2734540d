//! The VM's disk leases, held by this process: the VMM registers with lockd
//! itself (its own pid), so lockd's fencing acts on the VMM, not on ssvd,
//! and takes each writable disk's lease exclusively (read-only disks take
//! it shared) for as long as the disk is open.
//!
//! If the leases can no longer be trusted (lockd reports the lockspace
//! failed, the renewal deadline passes, or the connection to lockd drops
//! while leases are held), every disk's fence trips at once, so no further
//! guest I/O reaches the disks, and the VM hears `lease.lost`.

use crate::api::{kind, EventHub};
use lockd::client::{Client, ClientError, FenceReason};
use lockd::proto::ResourceSpec;
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long past the lease deadline the client's own watch waits before it
/// fences (lockd's kill comes at the same time).
const KILL_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lockd at {socket}: {source}")]
    Lockd {
        socket: String,
        #[source]
        source: ClientError,
    },
    #[error("lease {lease} of disk {disk} is held elsewhere: {source} (is the volume open on another host?)")]
    Busy {
        disk: String,
        lease: String,
        #[source]
        source: ClientError,
    },
    #[error("lease {lease} of disk {disk}: {source}")]
    Acquire {
        disk: String,
        lease: String,
        #[source]
        source: ClientError,
    },
}

/// Called when a disk's lease is lost: trips its fence.
pub type Trip = Box<dyn Fn() + Send + Sync>;

struct Held {
    disk: String,
    spec: ResourceSpec,
    trip: Trip,
}

/// This process's lockd connection and the leases it holds.
pub struct Leases {
    client: Client,
    socket: String,
    held: Arc<Mutex<Vec<Held>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Leases {
    /// Registers this process with lockd at `socket`.
    pub fn connect(socket: &Path, events: Arc<EventHub>) -> Result<Leases, LeaseError> {
        let name = socket.display().to_string();
        let err = |source| LeaseError::Lockd {
            socket: name.clone(),
            source,
        };
        let client = Client::connect(socket).map_err(err)?;
        let held: Arc<Mutex<Vec<Held>>> = Arc::default();
        let h = held.clone();
        client.on_fence(move |why| {
            let reason = match &why {
                FenceReason::DaemonGone => "the connection to lockd closed".to_string(),
                FenceReason::Expired => "the lease was not renewed in time".to_string(),
                FenceReason::LockspaceFailed(r) => format!("the lockspace failed: {r}"),
            };
            for l in lock(&h).iter() {
                (l.trip)();
                log::error!(
                    "disk {}: lease {} lost ({reason}); its I/O is stopped",
                    l.disk,
                    l.spec
                );
                events.emit(
                    kind::LEASE_LOST,
                    json!({"disk": l.disk, "lease": l.spec.to_string(), "reason": reason}),
                );
            }
        });
        client.register(KILL_GRACE).map_err(err)?;
        Ok(Leases {
            client,
            socket: name,
            held,
        })
    }

    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// Takes `disk`'s lease (shared for a read-only disk) for this process;
    /// `trip` stops the disk's I/O if the lease is lost.
    pub fn acquire(
        &self,
        disk: &str,
        spec: &ResourceSpec,
        shared: bool,
        trip: Trip,
    ) -> Result<(), LeaseError> {
        match self.client.acquire(spec, shared, false, None) {
            Ok(_) => {
                lock(&self.held).push(Held {
                    disk: disk.to_string(),
                    spec: spec.clone(),
                    trip,
                });
                Ok(())
            }
            Err(source) if source.is_busy() => Err(LeaseError::Busy {
                disk: disk.to_string(),
                lease: spec.to_string(),
                source,
            }),
            Err(source) => Err(LeaseError::Acquire {
                disk: disk.to_string(),
                lease: spec.to_string(),
                source,
            }),
        }
    }

    /// Gives `disk`'s lease back (the disk is closed and flushed).
    pub fn release(&self, disk: &str) {
        let mine: Vec<Held> = {
            let mut held = lock(&self.held);
            let (mine, rest) = std::mem::take(&mut *held)
                .into_iter()
                .partition(|l| l.disk == disk);
            *held = rest;
            mine
        };
        for l in mine {
            if let Err(e) = self.client.release(&l.spec, None) {
                log::warn!("disk {disk}: releasing lease {}: {e}", l.spec);
            }
        }
    }

    /// Whether lease-protected I/O may still be issued.
    pub fn valid(&self) -> bool {
        self.client.lease_valid()
    }
}

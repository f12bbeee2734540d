//! The pool's leases, kept by lockd in the reserved LV `ssv_leases`
//! (DESIGN.md, "The pool on disk"): slot 0 the lockspace (one delta lease
//! per host id), slot 1 the pool lease that serialises metadata changes,
//! slot 2 the growth mailbox (`mailbox.rs`, not lockd's), slots 3… one
//! Paxos lease per volume. lockd reaches a slot by device path
//! and byte offset, so a slot is mapped through the LV's segments to the PV
//! that holds it.

use crate::names::LEASES_LV;
use crate::{Error, Result};
use lockd::client::{Client, ClientError};
use lockd::leaseio::LeaseDev;
use lockd::proto::{LockspaceSpec, ResourceSpec};
use lockd::record::Geometry;
use lvm::{SegmentKind, Vg};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const LOCKSPACE_SLOT: u64 = 0;
pub const POOL_SLOT: u64 = 1;
/// Hosts' pending LV extensions, served by the pool-lease holder
/// (`mailbox.rs`); a pool records it in its VG tag `ssv.mailbox=2`.
pub const MAILBOX_SLOT: u64 = 2;
pub const FIRST_VOLUME_SLOT: u64 = 3;
/// Resource name of the pool lease.
pub const POOL_RESOURCE: &str = "pool";
/// Hosts a resource lease serves: the lockspace's maximum at 512-byte
/// sectors and 1 MiB slots, so any host id may take any lease.
pub const NUM_HOSTS: u64 = 2000;

/// Longest pause between tries of a busy lease. Shorter pauses were
/// measured slower with 8 hosts contending (`ssvd_growth`): more hosts
/// find the lease free at once and their ballots collide, each costing
/// synchronous writes.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Slot size: lockd's align size at 512-byte sectors.
pub const SLOT: u64 = 1 << 20;

/// Where slot `slot` of the leases LV lies: the PV's path and the byte
/// offset on it.
pub fn slot_location(vg: &Vg, slot: u64) -> Result<(String, u64)> {
    let lv = vg.lv(LEASES_LV).ok_or_else(|| {
        Error::Storage(format!(
            "pool {} has no {LEASES_LV} LV: it was not made by ssv, or the LV was removed (restore it from a metadata backup)",
            vg.name
        ))
    })?;
    let ext = vg.extent_bytes();
    let at = slot * SLOT;
    for seg in &lv.segments {
        let (start, end) = (
            seg.start_extent * ext,
            (seg.start_extent + seg.extent_count) * ext,
        );
        if at < start || at >= end {
            continue;
        }
        let SegmentKind::Striped { stripes, .. } = &seg.kind else {
            break;
        };
        let [stripe] = stripes.as_slice() else {
            break;
        };
        let (pv, first) = vg
            .stripe_start(stripe)
            .map_err(|e| Error::Storage(format!("{LEASES_LV}: {e}")))?;
        let path = pv.device.clone().ok_or_else(|| {
            Error::Storage(format!(
                "PV {} of {LEASES_LV} has no device path",
                stripe.pv
            ))
        })?;
        let offset = first + (at - start);
        return Ok((path, offset));
    }
    Err(Error::Storage(format!(
        "lease slot {slot} is not on a linear segment of {LEASES_LV}"
    )))
}

/// Slots the leases LV holds now.
pub fn slots(vg: &Vg) -> u64 {
    vg.lv(LEASES_LV)
        .map_or(0, |lv| lv.extent_count() * vg.extent_bytes() / SLOT)
}

/// Writes an empty lockspace in slot 0 and an empty pool lease in slot 1.
pub fn init_pool_leases(dev: Arc<dyn san::BlockDev>, pool: &str, io_timeout: u16) -> Result<()> {
    let ld = LeaseDev::new(
        dev,
        LEASES_LV,
        Duration::from_secs(u64::from(io_timeout.max(1))),
    );
    lockd::direct::init_lockspace(
        &ld,
        Geometry::DEFAULT,
        LOCKSPACE_SLOT * SLOT,
        pool,
        io_timeout,
    )?;
    lockd::direct::init_resource(
        &ld,
        Geometry::DEFAULT,
        POOL_SLOT * SLOT,
        pool,
        POOL_RESOURCE,
        NUM_HOSTS,
    )?;
    ld.device().flush()?;
    Ok(())
}

/// Writes an empty volume lease in `slot`.
pub fn init_volume_lease(
    dev: Arc<dyn san::BlockDev>,
    pool: &str,
    volume: &str,
    slot: u64,
) -> Result<()> {
    let ld = LeaseDev::new(dev, LEASES_LV, Duration::from_secs(10));
    lockd::direct::init_resource(&ld, Geometry::DEFAULT, slot * SLOT, pool, volume, NUM_HOSTS)?;
    ld.device().flush()?;
    Ok(())
}

/// ssvd's connection to lockd: it registers as the lease holder, so its
/// leases go when ssvd does.
pub struct Locks {
    client: Client,
    host_id: u64,
    wait: Duration,
}

fn lockd_err(what: &str, e: ClientError) -> Error {
    match e {
        ClientError::Connect { .. } | ClientError::Disconnected(_) => {
            Error::Unavailable(format!("{what}: {e}"))
        }
        e if e.is_busy() => Error::Conflict(format!("{what}: {e}")),
        e => Error::Unavailable(format!("{what}: {e}")),
    }
}

impl Locks {
    pub fn connect(socket: &std::path::Path, host_id: u64, wait: Duration) -> Result<Locks> {
        let client = Client::connect(socket).map_err(|e| lockd_err("lockd", e))?;
        // A lease we hold and cannot renew must stop us: lockd's fence is
        // the default SIGKILL, which also ends our exports' I/O.
        client
            .register(Duration::from_secs(1))
            .map_err(|e| lockd_err("registering with lockd", e))?;
        Ok(Locks {
            client,
            host_id,
            wait,
        })
    }

    pub fn host_id(&self) -> u64 {
        self.host_id
    }

    /// How long a change waits for a busy lease.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    pub fn status(&self) -> Result<lockd::proto::Status> {
        self.client
            .status()
            .map_err(|e| lockd_err("lockd status", e))
    }

    /// Joins the pool's lockspace (takes lockd about two io_timeouts);
    /// already joined is fine.
    pub fn join(&self, vg: &Vg) -> Result<()> {
        let (path, offset) = slot_location(vg, LOCKSPACE_SLOT)?;
        let spec = LockspaceSpec {
            lockspace: vg.name.clone(),
            host_id: self.host_id,
            path,
            offset,
        };
        if self.joined(&vg.name)? {
            return Ok(());
        }
        self.client.add_lockspace(&spec).map(drop).map_err(|e| {
            lockd_err(
                &format!(
                    "joining the lockspace of pool {} as host {}",
                    vg.name, self.host_id
                ),
                e,
            )
        })
    }

    pub fn joined(&self, pool: &str) -> Result<bool> {
        Ok(self
            .status()?
            .lockspaces
            .iter()
            .any(|l| l.lockspace == pool && l.state == "joined"))
    }

    fn spec(vg: &Vg, resource: &str, slot: u64) -> Result<ResourceSpec> {
        let (path, offset) = slot_location(vg, slot)?;
        Ok(ResourceSpec {
            lockspace: vg.name.clone(),
            resource: resource.to_string(),
            path,
            offset,
        })
    }

    /// Takes a lease, retrying while another live host holds it, for up to
    /// the configured wait (`patient`) or once.
    pub fn acquire(
        &self,
        vg: &Vg,
        resource: &str,
        slot: u64,
        shared: bool,
        patient: bool,
    ) -> Result<Lease<'_>> {
        let spec = Self::spec(vg, resource, slot)?;
        let until = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(2);
        loop {
            match self.client.acquire(&spec, shared, false, None) {
                Ok(_) => {
                    return Ok(Lease {
                        locks: self,
                        spec: Some(spec),
                    })
                }
                Err(e) if e.is_busy() && patient && Instant::now() < until => {
                    std::thread::sleep(pause + jitter(pause));
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                Err(e) if e.is_busy() => {
                    return Err(Error::Conflict(format!(
                        "lease {resource} of pool {} is held by another host ({e}); {}",
                        vg.name,
                        if patient {
                            format!("waited {:?}", self.wait)
                        } else {
                            "close it there first".into()
                        }
                    )))
                }
                Err(e) => {
                    return Err(lockd_err(
                        &format!("lease {resource} of pool {}", vg.name),
                        e,
                    ))
                }
            }
        }
    }

    /// The pool lease, held while metadata changes (milliseconds).
    pub fn pool_lease(&self, vg: &Vg) -> Result<Lease<'_>> {
        self.acquire(vg, POOL_RESOURCE, POOL_SLOT, false, true)
    }

    /// The pool lease if it is free now; `None` while another host holds it.
    pub fn try_pool_lease(&self, vg: &Vg) -> Result<Option<Lease<'_>>> {
        match self.acquire(vg, POOL_RESOURCE, POOL_SLOT, false, false) {
            Ok(l) => Ok(Some(l)),
            Err(Error::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

pub(crate) fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    d.mul_f64(f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX))
}

/// A held lease, released on drop.
pub struct Lease<'a> {
    locks: &'a Locks,
    spec: Option<ResourceSpec>,
}

impl Lease<'_> {
    /// Gives up the guard without releasing: the caller keeps the lease
    /// until it calls [`Locks::release`].
    pub fn keep(mut self) -> ResourceSpec {
        self.spec
            .take()
            .expect("a guard holds its spec until dropped")
    }
}

impl Locks {
    pub fn release(&self, spec: &ResourceSpec) {
        if let Err(e) = self.client.release(spec, None) {
            log::warn!("releasing lease {}: {e}", spec.resource);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(spec) = &self.spec {
            self.locks.release(spec);
        }
    }
}

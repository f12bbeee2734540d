//! A volume open for writing on this host: it holds the volume's lease for
//! as long as it is open, and its I/O passes a gate that snapshot, revert
//! and resize close while they switch the volume's layers under it.

use crate::host::{lock, Host, VolumeDetail};
use crate::{Error, Result};
use san::{BlockDev, DevId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use thin::Volume;

pub struct Session {
    pub volume: String,
    pub lease: lockd::proto::ResourceSpec,
    gate: RwLock<Option<Arc<Volume>>>,
    id: DevId,
}

impl Session {
    pub fn new(volume: &str, pool: &str, lease: lockd::proto::ResourceSpec, v: Volume) -> Session {
        Session {
            volume: volume.into(),
            lease,
            id: DevId(format!("ssv:{pool}/{volume}")),
            gate: RwLock::new(Some(Arc::new(v))),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Option<Arc<Volume>>> {
        self.gate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops I/O (callers wait at the gate), hands the volume to `f`, which
    /// returns the volume to go on with (reopened on a new top, say).
    pub fn quiesce<T>(
        &self,
        f: impl FnOnce(Option<Arc<Volume>>) -> (Option<Volume>, Result<T>),
    ) -> Result<T> {
        let mut g: RwLockWriteGuard<'_, _> = self
            .gate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (next, out) = f(g.take());
        *g = next.map(Arc::new);
        out
    }

    /// Runs `f` on the open volume (I/O goes on meanwhile).
    pub fn with_volume<T>(&self, f: impl FnOnce(&Volume) -> Result<T>) -> Result<T> {
        match self.read().as_ref() {
            Some(v) => f(v),
            None => Err(crate::Error::Unavailable(format!(
                "volume {} is being switched to a new layer; retry",
                self.volume
            ))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Volume) -> thin::Result<T>) -> san::Result<T> {
        let g = self.read();
        let io_err = |source| san::Error::Io {
            op: "volume I/O",
            dev: self.id.0.clone(),
            offset: 0,
            len: 0,
            source,
        };
        let v = g.as_ref().ok_or_else(|| {
            io_err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("volume {} is closed", self.volume),
            ))
        })?;
        f(v).map_err(|e| io_err(std::io::Error::other(e.to_string())))
    }
}

/// The session as a block device, for the NBD and iSCSI exports.
impl BlockDev for Session {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> san::Result<()> {
        self.with(|v| v.read(buf, offset))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> san::Result<()> {
        self.with(|v| v.write(buf, offset))
    }
    fn flush(&self) -> san::Result<()> {
        self.with(|v| v.flush())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> san::Result<()> {
        self.with(|v| v.write_zeroes(offset, len))
    }
    fn discard(&self, offset: u64, len: u64) -> san::Result<()> {
        self.with(|v| v.discard(offset, len))
    }
    /// The open volume's size (a resize shows at once); 0 once closed.
    fn size(&self) -> u64 {
        self.read().as_ref().map_or(0, |v| v.virtual_size())
    }
    fn logical_sector_size(&self) -> u32 {
        512
    }
    fn physical_sector_size(&self) -> u32 {
        4096
    }
    fn identity(&self) -> &DevId {
        &self.id
    }
}

/// Flushes the volume and takes it out of the session: later I/O fails.
fn shut(s: &Session) -> Result<()> {
    s.quiesce(|v| {
        let r = v.map_or(Ok(()), |v| v.flush().map_err(Error::from));
        (None, r)
    })
}

impl Host {
    /// Opens the volume for writing on this host, holding its lease, and
    /// exports it; returns where.
    /// With `wait`, a lease held by a host that stopped renewing is taken
    /// over once that host is surely dead (lockd's host_dead timeout);
    /// without, a held lease fails at once.
    pub fn open_session(&self, volume: &str, wait: bool) -> Result<VolumeDetail> {
        let (pool, rec) = self.resolve(volume)?;
        if lock(&self.sessions).contains_key(&rec.id) {
            return self.detail(&pool, rec);
        }
        let _busy = self.mark_busy(&rec.id)?;
        if self.is_attached(&rec.id) {
            return Err(Error::Conflict(format!(
                "volume {} is attached to a VMM on this host (`ssvctl vm list`); stop the VM first",
                rec.id
            )));
        }
        let lease = self.volume_lease(&pool, &rec, wait)?;
        let v = self.open_volume(&pool, &rec.top)?;
        let s = Arc::new(Session::new(&rec.id, pool.name(), lease.keep(), v));
        // Every transport or none: a failed export undoes the others and
        // closes the volume, which is then not open anywhere.
        let exporters = lock(&self.exporters).clone();
        let mut uris = HashMap::new();
        for (i, x) in exporters.iter().enumerate() {
            match x.export(&rec.id, s.clone()) {
                Ok(uri) => {
                    uris.insert(x.transport(), uri);
                }
                Err(e) => {
                    for done in &exporters[..i] {
                        done.unexport(&rec.id);
                    }
                    if let Err(f) = shut(&s) {
                        log::warn!("closing volume {} after a failed export: {f}", rec.id);
                    }
                    self.locks.release(&s.lease);
                    return Err(e);
                }
            }
        }
        lock(&self.exports).insert(rec.id.clone(), uris);
        lock(&self.sessions).insert(rec.id.clone(), s);
        self.metrics.sessions.inc();
        self.events.emit(
            "session.opened",
            Some(pool.name()),
            Some(&rec.id),
            format!(
                "volume {} open for writing on host {}",
                rec.id,
                self.locks.host_id()
            ),
        );
        self.detail(&pool, rec)
    }

    pub fn close_session(&self, volume: &str) -> Result<()> {
        let (pool, rec) = self.resolve(volume)?;
        let Some(s) = lock(&self.sessions).remove(&rec.id) else {
            return Err(Error::NotFound(format!(
                "volume {} is not open on this host",
                rec.id
            )));
        };
        // Clients first: none of their I/O runs once the volume is shut.
        let exporters = lock(&self.exporters).clone();
        for x in &exporters {
            x.unexport(&rec.id);
        }
        lock(&self.exports).remove(&rec.id);
        let flushed = shut(&s);
        self.locks.release(&s.lease);
        self.metrics.sessions.dec();
        self.events.emit(
            "session.closed",
            Some(pool.name()),
            Some(&rec.id),
            format!("volume {} closed", rec.id),
        );
        flushed
    }

    pub fn sessions(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        v.sort();
        v
    }

    /// Closes every session (shutdown). VMs keep running, to be adopted by
    /// the next ssvd (`restart.rs`), unless `[vm] stop_with_ssvd`.
    pub fn close_all(&self) {
        if self.config.vm.stop_with_ssvd {
            self.stop_all_vms();
        } else {
            let running = self.vms().iter().filter(|v| v.exit.is_none()).count();
            if running > 0 {
                log::info!("{running} VMs keep running; the next ssvd adopts them");
            }
        }
        for id in self.sessions() {
            if let Err(e) = self.close_session(&id) {
                log::warn!("closing volume {id}: {e}");
            }
        }
    }
}

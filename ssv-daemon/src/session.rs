//! A volume open for writing on this host: it holds the volume's lease for
//! as long as it is open, and its I/O passes a gate that snapshot, revert
//! and resize close while they switch the volume's layers under it.

use crate::Result;
use san::{BlockDev, DevId};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use thin::Volume;

pub struct Session {
    pub volume: String,
    pub pool: String,
    pub lease: lockd::proto::ResourceSpec,
    gate: RwLock<Option<Arc<Volume>>>,
    id: DevId,
    size: std::sync::atomic::AtomicU64,
}

impl Session {
    pub fn new(volume: &str, pool: &str, lease: lockd::proto::ResourceSpec, v: Volume) -> Session {
        let size = v.virtual_size();
        Session {
            volume: volume.into(),
            pool: pool.into(),
            lease,
            id: DevId(format!("ssv:{pool}/{volume}")),
            size: size.into(),
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
        if let Some(v) = next {
            self.size
                .store(v.virtual_size(), std::sync::atomic::Ordering::Release);
            *g = Some(Arc::new(v));
        }
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
        let v = g
            .as_ref()
            .ok_or_else(|| san::Error::Injected(format!("volume {} is closed", self.volume)))?;
        f(v).map_err(|e| san::Error::Io {
            op: "volume I/O",
            dev: self.id.0.clone(),
            offset: 0,
            len: 0,
            source: std::io::Error::other(e.to_string()),
        })
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
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
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

impl Session {
    pub fn arc_dev(self: &Arc<Self>) -> Arc<dyn BlockDev> {
        self.clone()
    }
}

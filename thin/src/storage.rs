//! One layer's LV as an imago storage object. Every read and write of the
//! engine, data and metadata alike, comes through here, which is where ssv
//! keeps the highest allocated host offset, parks writes that need space past
//! the LV's end, and bounds all I/O to the LV.

use crate::growth::{Grower, LvMap};
use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::drivers::CommonStorageHelper;
use imago::Storage;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Memory alignment asked of the engine's buffers (O_DIRECT needs at most a page).
const MEM_ALIGN: usize = 4096;

/// Bytes zeroed at once ahead of allocation (see [`ZeroAhead`]), at least,
/// and this many allocating writes of the size last asked, up to
/// [`ZERO_AHEAD_MAX`]. One size does not fit both: 4 KiB allocating writes
/// into a 16 MiB zeroed (unwritten) range of ext4 ran at half the rate of
/// 1 MiB ranges, while 1 MiB writes at depth 32 ran 1.3× faster with
/// 16 MiB (each zeroing waits for every direct write in flight to finish).
pub(crate) const ZERO_AHEAD: u64 = 1 << 20;
const ZERO_AHEAD_WRITES: u64 = 16;
const ZERO_AHEAD_MAX: u64 = 16 << 20;

pub(crate) struct Backend {
    pub name: String,
    pub map: Arc<LvMap>,
    pub grower: Option<Arc<Grower>>,
    /// Highest allocated host offset (cluster-rounded end).
    pub end: AtomicU64,
    pub cluster_size: u64,
    /// The LV's logical sector size (a VG's PVs share one), asked on every
    /// request, so kept here rather than fetched from the device.
    sector: usize,
    zero_ahead: ZeroAhead,
    helper: CommonStorageHelper,
}

/// Zeroing ahead of allocation. The engine zeroes every newly allocated
/// cluster before mapping it; one fallocate or BLKZEROOUT per cluster, under
/// the engine's L2-table lock, was the largest cost of allocating writes.
/// Instead, the first zeroing request past everything written zeroes
/// [`ZERO_AHEAD`] bytes or more at once, and later requests inside that
/// range skip their I/O.
///
/// Only space past the frontier is zeroed ahead: this handle has written
/// nothing there, and nothing allocated when it opened lies there (it starts
/// at the allocated end). Writes that reach past the frontier move it under
/// the lock before their I/O, so they never overlap a zeroing in flight,
/// which holds the lock until it completes.
struct ZeroAhead {
    /// Bytes of the last allocating write (see [`LayerStorage::allocating`]).
    write_size: AtomicU64,
    /// Mirror of `known.frontier`, so writes below it skip the lock.
    frontier: AtomicU64,
    known: Mutex<KnownZero>,
}

/// `[frontier, zeroed_end)` is zero on the device and unwritten since.
struct KnownZero {
    frontier: u64,
    zeroed_end: u64,
}

impl Backend {
    pub fn new(
        name: &str,
        map: Arc<LvMap>,
        grower: Option<Arc<Grower>>,
        end: u64,
        cluster_size: u64,
    ) -> Arc<Backend> {
        let sector = map.dev().logical_sector_size() as usize;
        Arc::new(Backend {
            name: name.to_string(),
            sector,
            map,
            grower,
            end: AtomicU64::new(end),
            cluster_size,
            zero_ahead: ZeroAhead {
                write_size: AtomicU64::new(0),
                frontier: AtomicU64::new(end),
                known: Mutex::new(KnownZero {
                    frontier: end,
                    zeroed_end: end,
                }),
            },
            helper: CommonStorageHelper::default(),
        })
    }

    fn written(&self, end: u64) {
        let end = end.div_ceil(self.cluster_size) * self.cluster_size;
        let prev = self.end.fetch_max(end, Ordering::AcqRel);
        if let (true, Some(g)) = (end > prev, &self.grower) {
            g.note_end(&self.map, end);
        }
    }
}

impl LayerStorage {
    fn known_zero(&self) -> std::sync::MutexGuard<'_, KnownZero> {
        self.0
            .zero_ahead
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Says that a write of `len` bytes is about to allocate, so zeroing
    /// ahead fits the writes that come (a hint: racing writers only move
    /// how far ahead it zeroes).
    pub fn allocating(&self, len: u64) {
        self.0.zero_ahead.write_size.store(len, Ordering::Relaxed);
    }

    /// Moves the frontier past a write to `[.., end)` before its I/O.
    fn passing(&self, end: u64) {
        let z = &self.0.zero_ahead;
        if end <= z.frontier.load(Ordering::Acquire) {
            return;
        }
        let mut k = self.known_zero();
        k.frontier = k.frontier.max(end);
        z.frontier.store(k.frontier, Ordering::Release);
    }

    /// Zeroes `[offset, end)`, ahead of allocation when it lies past the
    /// frontier, and not at all when it is known zero.
    fn zero(&self, offset: u64, end: u64) -> io::Result<()> {
        let dev = self.0.map.dev();
        let mut k = self.known_zero();
        if offset < k.frontier {
            k.frontier = k.frontier.max(end);
            self.0
                .zero_ahead
                .frontier
                .store(k.frontier, Ordering::Release);
            drop(k);
            return dev.write_zeroes(offset, end - offset).map_err(io_err);
        }
        if end > k.zeroed_end {
            let writes = self.0.zero_ahead.write_size.load(Ordering::Relaxed);
            let ahead = writes
                .saturating_mul(ZERO_AHEAD_WRITES)
                .clamp(ZERO_AHEAD, ZERO_AHEAD_MAX);
            let to = offset.saturating_add(ahead).min(dev.size()).max(end);
            // The lock is held across the I/O: see `ZeroAhead`.
            dev.write_zeroes(offset, to - offset).map_err(io_err)?;
            k.zeroed_end = to;
        }
        k.frontier = end;
        self.0.zero_ahead.frontier.store(end, Ordering::Release);
        Ok(())
    }

    /// Waits until the LV holds `[offset, offset + len)`; returns the end.
    fn reserve(&self, offset: u64, len: u64) -> io::Result<u64> {
        let b = &self.0;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::other("write offset overflows"))?;
        if end > b.map.size() {
            let Some(g) = &b.grower else {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!("LV {} ends at {} bytes", b.name, b.map.size()),
                ));
            };
            g.wait_for(&b.map, end)
                .map_err(|e| io::Error::new(io::ErrorKind::StorageFull, e))?;
        }
        Ok(end)
    }
}

/// The handle imago holds; clones share the backend.
#[derive(Clone)]
pub(crate) struct LayerStorage(pub Arc<Backend>);

impl fmt::Debug for LayerStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LayerStorage({})", self.0.name)
    }
}

impl fmt::Display for LayerStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lv:{}", self.0.name)
    }
}

fn io_err(e: san::Error) -> io::Error {
    io::Error::other(e)
}

impl Storage for LayerStorage {
    fn mem_align(&self) -> usize {
        MEM_ALIGN
    }

    fn req_align(&self) -> usize {
        self.0.sector
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.map.size())
    }

    /// Reads past the LV's end return zeroes (the storage contract); they
    /// never reach the device.
    unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let dev = self.0.map.dev();
        let size = dev.size();
        let mut at = offset;
        for mut slice in bufv.into_inner() {
            let buf: &mut [u8] = &mut slice;
            let inside = size.saturating_sub(at).min(buf.len() as u64) as usize;
            if inside > 0 {
                dev.read_at(&mut buf[..inside], at).map_err(io_err)?;
            }
            buf[inside..].fill(0);
            at += buf.len() as u64;
        }
        Ok(())
    }

    /// Writes past the LV's end wait for an extension (writable layers) or
    /// fail with `StorageFull`.
    unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        let end = self.reserve(offset, bufv.len())?;
        self.passing(end);
        let dev = self.0.map.dev();
        let mut at = offset;
        for slice in bufv.into_inner() {
            dev.write_at(&slice, at).map_err(io_err)?;
            at += slice.len() as u64;
        }
        self.0.written(end);
        Ok(())
    }

    /// Zeroes through the device's own primitive (fallocate, BLKZEROOUT);
    /// the same bounds and parking as writes.
    unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        let end = self.reserve(offset, length)?;
        self.zero(offset, end)?;
        self.0.written(end);
        Ok(())
    }

    unsafe fn pure_write_allocated_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        // SAFETY: same contract as ours, passed through.
        unsafe { self.pure_write_zeroes(offset, length) }
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.0.map.dev().flush().map_err(io_err)
    }

    unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.0.helper
    }
}

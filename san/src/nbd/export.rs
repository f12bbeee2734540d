//! Named exports: a device, whether it is read-only, and what the server
//! tells clients about it (size, transmission flags, block sizes).

use super::proto::{self, BlockSizes};
use crate::BlockDev;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Largest minimum block size the protocol allows (64 KiB).
const MAX_MIN_BLOCK: u32 = 1 << 16;
/// Smallest preferred block size we advertise: a page, so clients issue
/// page-sized, page-aligned I/O even on 512-byte devices.
const MIN_PREFERRED: u32 = 4096;

pub(crate) struct Export {
    /// Unique for the life of the server (a name removed and added again
    /// is another export), so removal finds exactly its connections.
    pub id: u64,
    pub name: String,
    pub dev: Arc<dyn BlockDev>,
    pub read_only: bool,
    removed: AtomicBool,
    /// Writes take it shared; a write that must read-modify-write edge
    /// sectors takes it exclusively, so no other write to those sectors
    /// (from any connection) slips between its read and its write.
    pub rmw: RwLock<()>,
}

impl Export {
    pub fn new(id: u64, name: String, dev: Arc<dyn BlockDev>, read_only: bool) -> Export {
        Export {
            id,
            name,
            dev,
            read_only,
            removed: AtomicBool::new(false),
            rmw: RwLock::new(()),
        }
    }

    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
    }

    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// The device's logical sector size (a power of two; 512 if a device
    /// reports nonsense, which the I/O path then fails on with EIO).
    pub fn sector(&self) -> u64 {
        let s = self.dev.logical_sector_size();
        if s.is_power_of_two() {
            u64::from(s)
        } else {
            512
        }
    }

    /// The size clients see: the device's, in whole sectors.
    pub fn size(&self) -> u64 {
        let size = self.dev.size();
        size - size % self.sector()
    }

    pub fn transmission_flags(&self) -> u16 {
        // The device is one shared object and its flush is device-wide, so
        // a flush on any connection covers writes done on every other one.
        let mut f = proto::FLAG_HAS_FLAGS | proto::FLAG_SEND_FLUSH | proto::FLAG_CAN_MULTI_CONN;
        if self.read_only {
            f |= proto::FLAG_READ_ONLY;
        } else {
            f |= proto::FLAG_SEND_FUA | proto::FLAG_SEND_TRIM | proto::FLAG_SEND_WRITE_ZEROES;
        }
        f
    }

    /// Minimum: the logical sector (we read-modify-write smaller requests,
    /// but they cost two extra reads and serialise writers); preferred: the
    /// physical sector, at least a page; maximum: the largest request.
    pub fn block_sizes(&self) -> BlockSizes {
        let min = (self.sector() as u32).min(MAX_MIN_BLOCK);
        let phys = self.dev.physical_sector_size();
        let phys = if phys.is_power_of_two() { phys } else { 0 };
        BlockSizes {
            min,
            preferred: phys.max(MIN_PREFERRED).max(min),
            max: proto::MAX_REQUEST,
        }
    }
}

/// Export names are protocol strings: at most 4096 bytes, no NUL.
pub(crate) fn valid_name(name: &str) -> bool {
    name.len() <= proto::MAX_STRING && !name.contains('\0')
}

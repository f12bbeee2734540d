//! Reaching LUNs. The [`BlockDev`] trait is the seam every storage user goes
//! through: the LVM engine, thin volumes, leases and the VMM all read and write
//! a `BlockDev`, never a path, so a local file, a window of an LV, a faulty test
//! device or (later) an iSCSI LUN can stand behind any of them.

mod align;
mod budget;
pub mod discovery;
mod error;
mod fault;
mod file;
pub mod ioprio;
pub mod iscsi;
pub mod nbd;
pub mod scsi;
pub mod target;
mod vectored;
mod window;

pub use align::{is_zero, AlignedBuf};
pub use budget::{Budgeted, IoBudget};
pub use error::{Error, Result};
pub use fault::{Fault, FaultControl, FaultDev};
pub use file::{FileDev, OpenOptions};
pub use window::WindowDev;

use std::sync::Arc;

/// A device of fixed-size logical sectors with positional I/O.
///
/// Contract (all implementations, all callers):
/// - `offset` and `buf.len()` of `read_at`/`write_at` are multiples of
///   [`BlockDev::logical_sector_size`]; anything else is [`Error::Misaligned`].
///   Buffers need no memory alignment: implementations that need it (O_DIRECT)
///   bounce through an [`AlignedBuf`] when given an unaligned one.
/// - I/O is all-or-error: a short transfer is reported as an error, never as a
///   partial success. I/O past [`BlockDev::size`] is [`Error::OutOfRange`].
/// - A write is durable only after a successful [`BlockDev::flush`].
/// - Methods take `&self`: one device is shared by threads (I/O queues).
pub trait BlockDev: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;
    fn flush(&self) -> Result<()>;
    /// Makes `len` bytes at `offset` read as zeroes; alignment and range as
    /// for writes. Devices with a cheap primitive (fallocate, BLKZEROOUT,
    /// WRITE SAME) override this; the default writes zero buffers.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        write_zero_buffers(self, offset, len)
    }
    /// Whether [`BlockDev::write_zeroes`] moves no zero buffers to the
    /// device (fallocate, an offloaded BLKZEROOUT, WRITE SAME), so zeroing a
    /// range ahead of writing it costs little. Callers choose between
    /// zero-then-write and other orderings on this.
    fn zeroes_cheaply(&self) -> bool {
        false
    }
    /// Says the range's data is no longer needed, so the device may free
    /// its space. Advisory: afterwards the range reads either as before or
    /// as zeroes. Alignment and range as for writes; the default does
    /// nothing.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }
    /// Current size in bytes.
    fn size(&self) -> u64;
    fn logical_sector_size(&self) -> u32;
    fn physical_sector_size(&self) -> u32;
    /// A stable identity: the same device reached twice (two opens, two
    /// paths) has the same identity; two different devices never do.
    fn identity(&self) -> &DevId;
}

/// Stable identity of a device, e.g. `file:<st_dev>:<st_ino>`, `blk:<major>:<minor>`,
/// or a SCSI VPD 0x83 designator; windows append their offset and length.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevId(pub String);

impl std::fmt::Display for DevId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<T: BlockDev + ?Sized> BlockDev for Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        (**self).flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        (**self).write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        (**self).discard(offset, len)
    }
    fn zeroes_cheaply(&self) -> bool {
        (**self).zeroes_cheaply()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn logical_sector_size(&self) -> u32 {
        (**self).logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        (**self).physical_sector_size()
    }
    fn identity(&self) -> &DevId {
        (**self).identity()
    }
}

/// Writes zeroes with ordinary writes of up to 1 MiB (checked up front, so
/// a request past the end writes nothing).
pub fn write_zero_buffers<D: BlockDev + ?Sized>(dev: &D, offset: u64, len: u64) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    check_range(dev.logical_sector_size(), dev.size(), offset, len)?;
    let zeroes = AlignedBuf::new(len.min(CHUNK) as usize, 4096);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        dev.write_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Checks the [`BlockDev`] contract for one request; implementations call it first.
pub fn check_io(dev: &dyn BlockDev, offset: u64, len: usize) -> Result<()> {
    check_range(dev.logical_sector_size(), dev.size(), offset, len as u64)
}

fn check_range(sector: u32, size: u64, offset: u64, len: u64) -> Result<()> {
    let sector = u64::from(sector);
    if offset % sector != 0 || len % sector != 0 {
        return Err(Error::Misaligned {
            offset,
            len,
            sector: sector as u32,
        });
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfRange { offset, len, size }),
    }
}

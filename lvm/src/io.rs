//! Byte-span I/O on a `BlockDev` whose logical sector may be larger than the
//! 512-byte units LVM's format is written in (4 KiB-sector LUNs).

use crate::{Error, Result};
use san::BlockDev;

fn span(dev: &dyn BlockDev, offset: u64, len: u64) -> (u64, u64) {
    let lss = u64::from(dev.logical_sector_size().max(1));
    let start = offset / lss * lss;
    let end = (offset + len).div_ceil(lss) * lss;
    (start, end)
}

/// Reads `len` bytes at `offset`, whatever the device's sector alignment.
pub fn read(dev: &dyn BlockDev, what: &'static str, offset: u64, len: u64) -> Result<Vec<u8>> {
    let (start, end) = span(dev, offset, len);
    let mut buf = vec![0u8; usize_of(end - start)?];
    dev.read_at(&mut buf, start)
        .map_err(|e| Error::io(what, dev, e))?;
    let skip = usize_of(offset - start)?;
    buf.drain(..skip);
    buf.truncate(usize_of(len)?);
    Ok(buf)
}

/// Writes `data` at `offset`; a span not aligned to the device's sector is
/// read-modify-written (one sector write each end, still one write call).
pub fn write(dev: &dyn BlockDev, what: &'static str, offset: u64, data: &[u8]) -> Result<()> {
    let (start, end) = span(dev, offset, data.len() as u64);
    if start == offset && end == offset + data.len() as u64 {
        return dev
            .write_at(data, offset)
            .map_err(|e| Error::io(what, dev, e));
    }
    let mut buf = read(dev, what, start, end - start)?;
    let at = usize_of(offset - start)?;
    buf[at..at + data.len()].copy_from_slice(data);
    dev.write_at(&buf, start)
        .map_err(|e| Error::io(what, dev, e))
}

pub fn flush(dev: &dyn BlockDev, what: &'static str) -> Result<()> {
    dev.flush().map_err(|e| Error::io(what, dev, e))
}

pub fn usize_of(n: u64) -> Result<usize> {
    usize::try_from(n)
        .map_err(|_| Error::InvalidArgument(format!("{n} bytes do not fit in memory")))
}

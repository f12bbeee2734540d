//! Requests against the device: any byte range from the client becomes
//! I/O on whole logical sectors in aligned buffers, with a
//! read-modify-write of the edge sectors for unaligned writes. Ranges were
//! checked against the export size before they get here.

use super::export::Export;
use super::proto;
use crate::{AlignedBuf, Error};
use std::io;
use std::sync::PoisonError;

/// Memory alignment of I/O buffers: enough for O_DIRECT on any device.
pub(crate) const BUF_ALIGN: usize = 4096;

/// A byte range widened to whole sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    /// First byte of the first sector.
    pub start: u64,
    /// Bytes in the widened range.
    pub len: usize,
    /// Where the client's bytes begin inside it.
    pub head: usize,
}

impl Span {
    /// `offset + len` must not overflow and `sector` is a power of two
    /// (both hold for checked requests).
    pub fn new(offset: u64, len: u32, sector: u64) -> Span {
        let start = offset - offset % sector;
        let end = offset + u64::from(len);
        let end = end.div_ceil(sector) * sector;
        Span {
            start,
            len: (end - start) as usize,
            head: (offset - start) as usize,
        }
    }

    pub fn aligned(&self, len: u32) -> bool {
        self.head == 0 && self.len == len as usize
    }
}

/// The protocol error for a device error.
pub(crate) fn errno(e: &Error) -> u32 {
    match e {
        Error::OutOfRange { .. } | Error::Misaligned { .. } | Error::BadWindow { .. } => {
            proto::EINVAL
        }
        Error::Io { source, .. } | Error::Open { source, .. } => io_errno(source),
        Error::Injected(_) => proto::EIO,
    }
}

fn io_errno(e: &io::Error) -> u32 {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => proto::ENOSPC,
        Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::EACCES) => proto::EPERM,
        _ if e.kind() == io::ErrorKind::PermissionDenied => proto::EPERM,
        _ => proto::EIO,
    }
}

fn log_err(export: &Export, what: &str, offset: u64, len: u64, e: &Error) -> u32 {
    log::warn!(
        "NBD export {:?}: {what} of {len} bytes at {offset} failed: {e}",
        export.name
    );
    errno(e)
}

/// Reads a checked range; the client's bytes are `buf[head..head + len]`.
pub(crate) fn read(export: &Export, offset: u64, len: u32) -> Result<(AlignedBuf, usize), u32> {
    let span = Span::new(offset, len, export.sector());
    let mut buf = AlignedBuf::new(span.len, BUF_ALIGN);
    export
        .dev
        .read_at(&mut buf, span.start)
        .map_err(|e| log_err(export, "read", offset, u64::from(len), &e))?;
    Ok((buf, span.head))
}

/// Writes `buf` (laid out as `Span::new(offset, len)`: the client's bytes at
/// `head`), filling the edges from the device first when unaligned.
pub(crate) fn write(
    export: &Export,
    buf: &mut AlignedBuf,
    offset: u64,
    len: u32,
    fua: bool,
) -> Result<(), u32> {
    let sector = export.sector();
    let span = Span::new(offset, len, sector);
    let fail = |e: Error| log_err(export, "write", offset, u64::from(len), &e);
    if span.aligned(len) {
        let _shared = export.rmw.read().unwrap_or_else(PoisonError::into_inner);
        export.dev.write_at(buf, span.start).map_err(fail)?;
    } else {
        let _excl = export.rmw.write().unwrap_or_else(PoisonError::into_inner);
        let s = sector as usize;
        let mut edge = AlignedBuf::new(s, BUF_ALIGN);
        if span.head != 0 {
            export.dev.read_at(&mut edge, span.start).map_err(fail)?;
            buf[..span.head].copy_from_slice(&edge[..span.head]);
        }
        let end = span.head + len as usize;
        if end < span.len {
            let last = span.len - s;
            export
                .dev
                .read_at(&mut edge, span.start + last as u64)
                .map_err(fail)?;
            buf[end..].copy_from_slice(&edge[end - last..]);
        }
        export.dev.write_at(buf, span.start).map_err(fail)?;
    }
    if fua {
        export.dev.flush().map_err(fail)?;
    }
    Ok(())
}

/// Zeroes a checked range. Whole sectors go to the device's `write_zeroes`
/// (which may deallocate) or, with `no_hole`, to ordinary writes of zeroes
/// (which allocate); partial edge sectors are read-modify-written.
pub(crate) fn write_zeroes(
    export: &Export,
    offset: u64,
    len: u32,
    no_hole: bool,
    fua: bool,
) -> Result<(), u32> {
    if len == 0 {
        return Ok(());
    }
    let sector = export.sector();
    let fail = |e: Error| log_err(export, "write zeroes", offset, u64::from(len), &e);
    let end = offset + u64::from(len);
    // Whole sectors inside the range.
    let first = offset.div_ceil(sector) * sector;
    let last = end - end % sector;
    let zero = |at: u64, n: u64| {
        if no_hole {
            crate::write_zero_buffers(&*export.dev, at, n)
        } else {
            export.dev.write_zeroes(at, n)
        }
    };
    if offset % sector == 0 && end % sector == 0 {
        let _shared = export.rmw.read().unwrap_or_else(PoisonError::into_inner);
        zero(offset, u64::from(len)).map_err(fail)?;
    } else {
        let _excl = export.rmw.write().unwrap_or_else(PoisonError::into_inner);
        let s = sector as usize;
        let mut edge = AlignedBuf::new(s, BUF_ALIGN);
        // Zeroes bytes [from, to) of the sector at `at` by read-modify-write.
        let mut patch = |at: u64, from: usize, to: usize| -> Result<(), Error> {
            export.dev.read_at(&mut edge, at)?;
            edge[from..to].fill(0);
            export.dev.write_at(&edge, at)
        };
        let head_sector = offset - offset % sector;
        if first > last {
            // Inside one sector.
            let from = (offset - head_sector) as usize;
            patch(head_sector, from, from + len as usize).map_err(fail)?;
        } else {
            if first != offset {
                patch(head_sector, (offset - head_sector) as usize, s).map_err(fail)?;
            }
            if last > first {
                zero(first, last - first).map_err(fail)?;
            }
            if last != end {
                patch(last, 0, (end - last) as usize).map_err(fail)?;
            }
        }
    }
    if fua {
        export.dev.flush().map_err(fail)?;
    }
    Ok(())
}

/// Discards the whole sectors inside the range: a trim is advisory, so
/// partial sectors at its edges keep their data.
pub(crate) fn trim(export: &Export, offset: u64, len: u32, fua: bool) -> Result<(), u32> {
    let sector = export.sector();
    let end = offset + u64::from(len);
    let (first, last) = (offset.div_ceil(sector) * sector, end - end % sector);
    let fail = |e: Error| log_err(export, "trim", offset, u64::from(len), &e);
    if last > first {
        let _shared = export.rmw.read().unwrap_or_else(PoisonError::into_inner);
        export.dev.discard(first, last - first).map_err(fail)?;
    }
    if fua {
        export.dev.flush().map_err(fail)?;
    }
    Ok(())
}

pub(crate) fn flush(export: &Export) -> Result<(), u32> {
    export
        .dev
        .flush()
        .map_err(|e| log_err(export, "flush", 0, 0, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(
            Span::new(0, 4096, 512),
            Span {
                start: 0,
                len: 4096,
                head: 0
            }
        );
        assert!(Span::new(0, 4096, 512).aligned(4096));
        assert_eq!(
            Span::new(1000, 3000, 512),
            Span {
                start: 512,
                len: 3584,
                head: 488
            }
        );
        assert!(!Span::new(1000, 3000, 512).aligned(3000));
        assert_eq!(
            Span::new(513, 1, 512),
            Span {
                start: 512,
                len: 512,
                head: 1
            }
        );
        assert_eq!(
            Span::new(512, 0, 512),
            Span {
                start: 512,
                len: 0,
                head: 0
            }
        );
    }
}

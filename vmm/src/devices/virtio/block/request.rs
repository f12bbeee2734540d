//! A checked chain read as a virtio-blk request (virtio 1.2 §5.2.6). Every
//! range is checked against the disk here, with overflow caught, so what
//! reaches the disk is in range by construction.

use super::chain::Chain;
use super::spec::*;
use crate::memory::GuestMemory;

/// A disk range in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `offset` into the writable buffers.
    In {
        offset: u64,
        len: u64,
    },
    /// Write the `len` bytes after the header to `offset`.
    Out {
        offset: u64,
        len: u64,
    },
    Flush,
    /// The serial, into at most `len` bytes.
    GetId {
        len: u64,
    },
    Discard(Vec<Range>),
    WriteZeroes(Vec<Range>),
}

/// What a request may ask, from the device's setup and negotiation.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes, a multiple of 512.
    pub capacity: u64,
    pub read_only: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
}

/// Why a request is refused, and the status it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u8,
    pub why: String,
}

fn ioerr(why: impl Into<String>) -> Refused {
    Refused {
        status: S_IOERR,
        why: why.into(),
    }
}

fn unsupp(why: impl Into<String>) -> Refused {
    Refused {
        status: S_UNSUPP,
        why: why.into(),
    }
}

/// `sector` and `len` bytes as a byte range inside the disk.
fn disk_range(sector: u64, len: u64, capacity: u64) -> Result<u64, Refused> {
    let offset = sector
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| ioerr(format!("sector {sector} overflows")))?;
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(offset),
        _ => Err(ioerr(format!(
            "{len} bytes at sector {sector} are past the disk's end ({capacity} bytes)"
        ))),
    }
}

pub fn parse(mem: &GuestMemory, chain: &Chain, lim: &Limits) -> Result<Request, Refused> {
    let mut hdr = [0u8; HEADER_LEN as usize];
    if chain.readable.len() < HEADER_LEN {
        return Err(ioerr(format!(
            "header of {} bytes, {HEADER_LEN} needed",
            chain.readable.len()
        )));
    }
    chain
        .readable
        .read_at(mem, 0, &mut hdr)
        .map_err(|e| ioerr(format!("reading the header: {e}")))?;
    let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let sector = u64::from_le_bytes([
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
    ]);
    let readable_data = chain.readable.len() - HEADER_LEN;
    let writable_data = chain.writable.len();
    match kind {
        T_IN => {
            if readable_data != 0 {
                return Err(ioerr("a read with device-readable data"));
            }
            if writable_data % SECTOR_SIZE != 0 {
                return Err(ioerr(format!(
                    "a read of {writable_data} bytes, not whole sectors"
                )));
            }
            let offset = disk_range(sector, writable_data, lim.capacity)?;
            Ok(Request::In {
                offset,
                len: writable_data,
            })
        }
        T_OUT => {
            if lim.read_only {
                return Err(ioerr("a write to a read-only disk"));
            }
            if writable_data != 0 {
                return Err(ioerr("a write with device-writable data"));
            }
            if readable_data % SECTOR_SIZE != 0 {
                return Err(ioerr(format!(
                    "a write of {readable_data} bytes, not whole sectors"
                )));
            }
            let offset = disk_range(sector, readable_data, lim.capacity)?;
            Ok(Request::Out {
                offset,
                len: readable_data,
            })
        }
        T_FLUSH => Ok(Request::Flush),
        T_GET_ID => {
            if writable_data == 0 {
                return Err(ioerr("GET_ID without a buffer"));
            }
            Ok(Request::GetId { len: writable_data })
        }
        T_DISCARD | T_WRITE_ZEROES => {
            let discard = kind == T_DISCARD;
            let (offered, max_sectors, max_seg) = if discard {
                (lim.discard, lim.max_discard_sectors, lim.max_discard_seg)
            } else {
                (
                    lim.write_zeroes,
                    lim.max_write_zeroes_sectors,
                    lim.max_write_zeroes_seg,
                )
            };
            if !offered {
                return Err(unsupp(format!("request type {kind} was not negotiated")));
            }
            if lim.read_only {
                return Err(ioerr("discard or write zeroes on a read-only disk"));
            }
            let ranges = parse_ranges(mem, chain, readable_data, max_seg, max_sectors, lim)?;
            if discard {
                if ranges.iter().any(|r| r.unmap) {
                    return Err(unsupp("the unmap flag on a discard"));
                }
                Ok(Request::Discard(ranges))
            } else {
                Ok(Request::WriteZeroes(ranges))
            }
        }
        _ => Err(unsupp(format!("request type {kind}"))),
    }
}

fn parse_ranges(
    mem: &GuestMemory,
    chain: &Chain,
    bytes: u64,
    max_seg: u32,
    max_sectors: u32,
    lim: &Limits,
) -> Result<Vec<Range>, Refused> {
    if bytes == 0 || bytes % RANGE_LEN != 0 {
        return Err(ioerr(format!(
            "{bytes} bytes of ranges, not a whole number of {RANGE_LEN}-byte ranges"
        )));
    }
    let count = bytes / RANGE_LEN;
    if count > u64::from(max_seg) {
        return Err(ioerr(format!("{count} ranges, at most {max_seg}")));
    }
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut raw = [0u8; RANGE_LEN as usize];
        chain
            .readable
            .read_at(mem, HEADER_LEN + i * RANGE_LEN, &mut raw)
            .map_err(|e| ioerr(format!("reading range {i}: {e}")))?;
        let sector = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let num = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        if flags & !RANGE_F_UNMAP != 0 {
            return Err(unsupp(format!("range flags {flags:#x}")));
        }
        if num > max_sectors {
            return Err(ioerr(format!(
                "{num} sectors in a range, at most {max_sectors}"
            )));
        }
        let len = u64::from(num) * SECTOR_SIZE;
        let offset = disk_range(sector, len, lim.capacity)?;
        out.push(Range {
            offset,
            len,
            unmap: flags & RANGE_F_UNMAP != 0,
        });
    }
    Ok(out)
}

//! A request's descriptor chain, walked and checked before anything is
//! read from it. The walk is ours rather than the queue crate's iterator
//! because a hostile chain must be told apart from a short one: a loop, an
//! index past the table, an indirect table (not offered) or a chain longer
//! than the queue all end the walk with an error, and such a chain gets no
//! status byte at all, since its last descriptor is unknown.

use super::spec::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_LEN};
use crate::memory::GuestMemory;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError};

/// One buffer of a chain, inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Buffers read (or written) as one stream of bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgList {
    segs: Vec<Segment>,
    len: u64,
}

impl SgList {
    fn push(&mut self, seg: Segment) {
        if seg.len > 0 {
            self.len += u64::from(seg.len);
            self.segs.push(seg);
        }
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Calls `f(guest address, range of buf)` for each piece of
    /// `[offset, offset + len)` of the stream; fails past its end.
    fn pieces(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), GuestMemoryError>,
    ) -> Result<(), GuestMemoryError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(GuestMemoryError::InvalidBackendAddress);
        }
        let mut skip = offset;
        let mut done = 0usize;
        for s in &self.segs {
            if done == len {
                break;
            }
            let seg_len = u64::from(s.len);
            if skip >= seg_len {
                skip -= seg_len;
                continue;
            }
            let n = ((seg_len - skip) as usize).min(len - done);
            // Inside the segment, which was checked to lie in guest memory.
            f(s.addr.unchecked_add(skip), done..done + n)?;
            done += n;
            skip = 0;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes of the stream from `offset`.
    pub fn read_at(
        &self,
        mem: &GuestMemory,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        self.pieces(offset, buf.len(), |addr, r| {
            mem.read_slice(&mut buf[r], addr)
        })
    }

    /// Writes `buf` into the stream at `offset`.
    pub fn write_at(
        &self,
        mem: &GuestMemory,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), GuestMemoryError> {
        self.pieces(offset, buf.len(), |addr, r| mem.write_slice(&buf[r], addr))
    }
}

/// A well-formed chain: device-readable buffers, then device-writable ones
/// whose last byte is the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub head: u16,
    pub readable: SgList,
    /// The writable buffers without the status byte.
    pub writable: SgList,
    pub status: GuestAddress,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor index {index} is past the queue's {size} entries")]
    IndexOutOfRange { index: u16, size: u16 },
    #[error("the chain is longer than {max} descriptors (or loops)")]
    TooLong { max: usize },
    #[error("indirect descriptors were not offered")]
    Indirect,
    #[error("descriptor table entry {index} is not in guest memory")]
    TableOutsideMemory { index: u16 },
    #[error("a buffer of {len} bytes at {addr:#x} is not in guest memory")]
    BufferOutsideMemory { addr: u64, len: u32 },
    #[error("a device-readable buffer follows a device-writable one")]
    ReadableAfterWritable,
    #[error("the chain has no device-writable status byte at its end")]
    NoStatus,
}

/// A chain that is not well-formed, and where its status byte goes if its
/// last descriptor is known and can hold one.
#[derive(Debug)]
pub struct Malformed {
    pub error: ChainError,
    pub status: Option<GuestAddress>,
}

/// One descriptor as read from the table (once: the guest may change the
/// table meanwhile, the copy is what counts).
#[derive(Clone, Copy, Debug)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMemory, table: GuestAddress, index: u16) -> Option<Desc> {
    let at = table.checked_add(u64::from(index) * DESC_LEN)?;
    let mut raw = [0u8; DESC_LEN as usize];
    mem.read_slice(&mut raw, at).ok()?;
    let le16 = |i: usize| u16::from_le_bytes([raw[i], raw[i + 1]]);
    Some(Desc {
        addr: u64::from_le_bytes(raw[0..8].try_into().ok()?),
        len: u32::from_le_bytes(raw[8..12].try_into().ok()?),
        flags: le16(12),
        next: le16(14),
    })
}

fn in_memory(mem: &GuestMemory, addr: u64, len: u32) -> bool {
    let addr = GuestAddress(addr);
    len == 0
        || (addr.checked_add(u64::from(len)).is_some()
            && GuestMemoryBackend::check_range(mem, addr, len as usize))
}

/// Where the status byte of a chain ending in `last` goes, if it can.
fn status_of(mem: &GuestMemory, last: &Desc) -> Option<GuestAddress> {
    if last.flags & DESC_F_WRITE == 0 || last.len == 0 {
        return None;
    }
    let at = GuestAddress(last.addr).checked_add(u64::from(last.len) - 1)?;
    GuestMemoryBackend::check_range(mem, at, 1).then_some(at)
}

/// Walks the chain starting at `head` of a split queue of `size` entries
/// whose descriptor table is at `table`; at most `size` descriptors.
pub fn walk(
    mem: &GuestMemory,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<Chain, Malformed> {
    let incomplete = |error| Malformed {
        error,
        status: None,
    };
    let max = usize::from(size);
    let mut descs: Vec<Desc> = Vec::new();
    let mut index = head;
    loop {
        if index >= size {
            return Err(incomplete(ChainError::IndexOutOfRange { index, size }));
        }
        if descs.len() >= max {
            return Err(incomplete(ChainError::TooLong { max }));
        }
        let d = read_desc(mem, table, index)
            .ok_or_else(|| incomplete(ChainError::TableOutsideMemory { index }))?;
        if d.flags & DESC_F_INDIRECT != 0 {
            return Err(incomplete(ChainError::Indirect));
        }
        descs.push(d);
        if d.flags & DESC_F_NEXT == 0 {
            break;
        }
        index = d.next;
    }
    // The walk is complete: from here on the status byte can be reported.
    let Some(last) = descs.last().copied() else {
        return Err(incomplete(ChainError::NoStatus));
    };
    let status = status_of(mem, &last);
    let malformed = |error| Malformed { error, status };
    let mut readable = SgList::default();
    let mut writable = SgList::default();
    let mut seen_writable = false;
    for d in &descs {
        if !in_memory(mem, d.addr, d.len) {
            return Err(malformed(ChainError::BufferOutsideMemory {
                addr: d.addr,
                len: d.len,
            }));
        }
        let seg = Segment {
            addr: GuestAddress(d.addr),
            len: d.len,
        };
        if d.flags & DESC_F_WRITE != 0 {
            seen_writable = true;
            writable.push(seg);
        } else if !seen_writable {
            readable.push(seg);
        } else {
            return Err(malformed(ChainError::ReadableAfterWritable));
        }
    }
    let Some(status_at) = status else {
        return Err(malformed(ChainError::NoStatus));
    };
    // The status byte is the stream's last byte; the data stops before it.
    if let Some(s) = writable.segs.last_mut() {
        s.len -= 1;
        writable.len -= 1;
        if s.len == 0 {
            writable.segs.pop();
        }
    }
    Ok(Chain {
        head,
        readable,
        writable,
        status: status_at,
    })
}

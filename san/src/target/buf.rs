//! The data of one command's data phase (Data-Out gathered, Data-In read),
//! page aligned so an O_DIRECT `BlockDev` reads and writes it in place
//! instead of bouncing it through a buffer of its own. Workers keep one for
//! the next read, so a steady stream of reads allocates nothing.

use crate::AlignedBuf;
use std::ops::{Deref, DerefMut};

/// Memory alignment of the buffers: the largest logical block size an
/// O_DIRECT device asks of user memory (4Kn disks).
const ALIGN: usize = 4096;

/// A page-aligned byte buffer with a length below its capacity.
pub(crate) struct IoBuf {
    mem: AlignedBuf,
    len: usize,
}

impl IoBuf {
    /// An empty buffer that holds no memory.
    pub fn new() -> IoBuf {
        IoBuf::with_capacity(0)
    }

    /// An empty buffer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> IoBuf {
        IoBuf {
            mem: AlignedBuf::new(cap, ALIGN),
            len: 0,
        }
    }

    /// A buffer of `len` bytes to read into: `spare` when it is large
    /// enough, else a new one. The bytes are whatever `spare` held last;
    /// the caller overwrites all of them (or sends none of them).
    pub fn reuse(spare: Option<IoBuf>, len: usize) -> IoBuf {
        let mut b = match spare {
            Some(b) if b.capacity() >= len => b,
            _ => IoBuf::with_capacity(len),
        };
        b.len = len;
        b
    }

    pub fn capacity(&self) -> usize {
        self.mem.len()
    }

    /// Appends `data`, growing (by copying into a larger buffer) when needed.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        let end = self.len + data.len();
        if end > self.capacity() {
            let mut grown = AlignedBuf::new(end.max(2 * self.capacity()), ALIGN);
            grown[..self.len].copy_from_slice(&self.mem[..self.len]);
            self.mem = grown;
        }
        self.mem[self.len..end].copy_from_slice(data);
        self.len = end;
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl Deref for IoBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[..self.len]
    }
}

impl DerefMut for IoBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_keeps_data_and_stays_aligned() {
        let mut b = IoBuf::new();
        assert!(b.is_empty());
        b.extend_from_slice(&[1; 100]);
        b.extend_from_slice(&[2; 5000]);
        assert_eq!(b.len(), 5100);
        assert!(b[..100].iter().all(|&x| x == 1) && b[100..].iter().all(|&x| x == 2));
        assert!(AlignedBuf::is_aligned(b.as_ptr(), ALIGN));
        b.truncate(10);
        assert_eq!(&b[..], &[1; 10]);
    }

    #[test]
    fn reuse_takes_a_large_enough_spare() {
        let mut spare = IoBuf::with_capacity(8192);
        spare.extend_from_slice(&[7; 10]);
        let p = spare.as_ptr();
        let b = IoBuf::reuse(Some(spare), 4096);
        assert_eq!((b.len(), b.as_ptr()), (4096, p));
        let c = IoBuf::reuse(Some(b), 1 << 20);
        assert_eq!((c.len(), c.capacity()), (1 << 20, 1 << 20));
    }
}

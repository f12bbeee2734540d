//! A heap buffer with a chosen memory alignment, for O_DIRECT I/O, which the
//! kernel refuses (EINVAL) when the user buffer is not suitably aligned.

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A zero-initialised, heap-allocated byte buffer whose start is aligned to a
/// power of two chosen at creation.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    align: usize,
    /// What was allocated: `len` and `align`, or rounded up to huge pages.
    layout: Layout,
}

/// Buffers this large or larger go in transparent huge pages. A direct I/O
/// of 1 MiB from 4 KiB pages has 256 segments, more than a virtio-blk
/// queue takes (254 here), so the kernel sends it as two requests; from one
/// huge page it is one segment. The thin bench's 1 MiB write rows went
/// from 0.68–0.76× QEMU to 0.91–1.09× at depth 32 and on loop devices
/// (BENCHMARKS.md).
const HUGE_MIN: usize = 1 << 20;
const HUGE_PAGE: usize = 2 << 20;
/// Freed huge-page buffers are kept (up to this many bytes per process) for
/// the next of the same size: an NBD export allocates one per write, and
/// mapping, faulting in (the kernel zeroes 2 MiB) and unmapping each one
/// took ssvd's growth bench from 70 ms to over 1 s at p99.
const HUGE_CACHE_BYTES: usize = 64 << 20;

/// A freed huge-page allocation, owned by the cache.
struct Region(NonNull<u8>, Layout);

// SAFETY: a Region uniquely owns its allocation (nothing else points into
// it once its AlignedBuf is dropped), and memory has no thread affinity.
unsafe impl Send for Region {}

struct HugeCache {
    free: Vec<Region>,
    bytes: usize,
}

static HUGE_CACHE: Mutex<HugeCache> = Mutex::new(HugeCache {
    free: Vec::new(),
    bytes: 0,
});

fn huge_cache() -> MutexGuard<'static, HugeCache> {
    HUGE_CACHE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new allocation of `layout` (non-zero size), advised into huge pages;
/// null if the allocator failed.
fn alloc_huge(layout: Layout) -> *mut u8 {
    // SAFETY: `layout` has a non-zero size (the caller's contract).
    let raw = unsafe { alloc::alloc(layout) };
    if !raw.is_null() {
        // Advice only: without huge pages the buffer works the same.
        // SAFETY: `raw` starts `layout.size()` bytes we own, and
        // MADV_HUGEPAGE changes how they are backed, not their contents.
        unsafe { libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE) };
    }
    raw
}

/// A cached allocation of exactly `layout`, if one is free.
fn take_cached(layout: Layout) -> Option<NonNull<u8>> {
    let mut c = huge_cache();
    let i = c.free.iter().position(|r| r.1 == layout)?;
    let r = c.free.swap_remove(i);
    c.bytes -= layout.size();
    Some(r.0)
}

// SAFETY: AlignedBuf uniquely owns its allocation (like a Box<[u8]>); moving
// it to another thread moves that ownership, and u8 has no thread affinity.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out `&[u8]`, which is Sync; mutation needs
// `&mut AlignedBuf`, so there is no interior mutability to race on.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes starting at a multiple of `align`.
    ///
    /// # Panics
    /// If `align` is not a power of two or `len` rounded up to `align`
    /// overflows `isize` (programming errors, like an absurd `Vec` capacity).
    /// Allocation failure aborts through [`alloc::handle_alloc_error`].
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        let huge = len >= HUGE_MIN;
        let layout = if huge {
            Layout::from_size_align(len.next_multiple_of(HUGE_PAGE), align.max(HUGE_PAGE))
        } else {
            Layout::from_size_align(len, align)
        };
        let layout = match layout {
            Ok(layout) => layout,
            Err(_) => panic!("AlignedBuf: invalid size {len} / alignment {align}"),
        };
        if len == 0 {
            // The global allocator must not be asked for zero bytes; an empty
            // slice only needs a non-null pointer with the right alignment.
            let ptr = std::ptr::without_provenance_mut::<u8>(align);
            // `align` is a power of two (checked by Layout), hence non-zero.
            let ptr = NonNull::new(ptr).unwrap_or(NonNull::dangling());
            return AlignedBuf {
                ptr,
                len,
                align,
                layout,
            };
        }
        let raw = if huge {
            let raw = take_cached(layout).map_or_else(|| alloc_huge(layout), NonNull::as_ptr);
            if !raw.is_null() {
                // SAFETY: `raw` starts `layout.size()` >= `len` bytes we own.
                unsafe { raw.write_bytes(0, len) };
            }
            raw
        } else {
            // SAFETY: `layout` has a non-zero size (len > 0 checked above).
            unsafe { alloc::alloc_zeroed(layout) }
        };
        match NonNull::new(raw) {
            Some(ptr) => AlignedBuf {
                ptr,
                len,
                align,
                layout,
            },
            None => alloc::handle_alloc_error(layout),
        }
    }

    /// The alignment the buffer was created with.
    pub fn align(&self) -> usize {
        self.align
    }

    /// True if `ptr` is a multiple of `align`; false if `align` is not a
    /// power of two.
    pub fn is_aligned(ptr: *const u8, align: usize) -> bool {
        align.is_power_of_two() && (ptr as usize) & (align - 1) == 0
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is non-null and aligned; for len > 0 it points to
        // `len` initialised (zeroed) bytes that we own and that live until
        // drop; for len == 0 a dangling aligned pointer is a valid empty slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` guarantees the returned
        // slice is the only live reference to the buffer.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return; // nothing was allocated
        }
        if self.len >= HUGE_MIN {
            let mut c = huge_cache();
            if c.bytes + self.layout.size() <= HUGE_CACHE_BYTES {
                c.bytes += self.layout.size();
                c.free.push(Region(self.ptr, self.layout));
                return;
            }
        }
        // SAFETY: `ptr` came from the global allocator with exactly this
        // layout, and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.align)
            .finish()
    }
}

/// Whether `b` holds only zeroes. Folding whole blocks (no early exit
/// inside one) lets the compiler use vector instructions: a byte-at-a-time
/// test scans about 3 GB/s, a sixth of the time of a full clone's copy.
pub fn is_zero(b: &[u8]) -> bool {
    b.chunks(512).all(|c| c.iter().fold(0, |a, &x| a | x) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_nonzero_byte_anywhere_is_seen() {
        let len = 3 * 512 + 7;
        assert!(is_zero(&vec![0; len]));
        assert!(is_zero(&[]));
        for at in [0, 1, 511, 512, 1000, len - 1] {
            let mut b = vec![0; len];
            b[at] = 0x80;
            assert!(!is_zero(&b), "byte {at}");
        }
    }

    #[test]
    fn aligned_and_zeroed() {
        for &align in &[1usize, 512, 4096, 1 << 16] {
            for &len in &[1usize, 511, 4096, 100_000, HUGE_MIN, HUGE_PAGE + 1] {
                let mut b = AlignedBuf::new(len, align);
                assert_eq!(b.len(), len);
                assert_eq!(b.align(), align);
                assert!(AlignedBuf::is_aligned(b.as_ptr(), align));
                assert!(b.iter().all(|&x| x == 0));
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
    }

    #[test]
    fn a_reused_huge_buffer_is_zeroed() {
        for _ in 0..3 {
            let mut b = AlignedBuf::new(HUGE_MIN, 4096);
            assert!(b.iter().all(|&x| x == 0));
            b.fill(0xa5);
        }
    }

    #[test]
    fn zero_length() {
        let mut b = AlignedBuf::new(0, 4096);
        assert!(b.is_empty());
        assert!(AlignedBuf::is_aligned(b.as_ptr(), 4096));
        assert_eq!(&mut b[..], &mut [] as &mut [u8]);
    }

    #[test]
    #[should_panic]
    fn bad_alignment_panics() {
        let _ = AlignedBuf::new(16, 3);
    }

    #[test]
    fn send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AlignedBuf>();
    }
}

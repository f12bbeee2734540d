//! Devices the guest sees.

pub mod exit_port;
pub mod pci;
pub mod serial;
pub mod virtio;

/// Copies `src` from `offset` into `out`, as a guest read of a register
/// image: bytes past the end read as zero, and no offset overflows.
pub fn read_image(src: &[u8], offset: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| src.get(at).copied())
            .unwrap_or(0);
    }
}

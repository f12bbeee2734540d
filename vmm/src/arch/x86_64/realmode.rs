//! Real mode, for the test guest: a flat binary loaded at 0x7c00 (as a boot
//! sector is) and started there with every segment at 0 and interrupts off.
//! The guest's source is `vmm/guest/`; `build.rs` assembles it.

use super::layout::{HIGH_RAM_START, MMIO_HOLE_START, RAM_ABOVE_4G_START};
use crate::memory::GuestMemory;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

pub const LOAD_ADDR: u64 = 0x7c00;
/// RAM below the legacy video and ROM area.
pub const LOW_RAM_END: u64 = 0xa_0000;
/// The first virtio-mmio window of a real-mode guest: in the legacy ROM
/// area, so the guest reaches it from real mode (segment 0xd000).
pub const VIRTIO_MMIO_BASE: u64 = 0xd_0000;

/// Guest RAM for `bytes` of memory with the legacy area free for devices:
/// `[0, 640 KiB)`, then from 1 MiB up to the 32-bit hole, then the rest
/// from 4 GiB (the 384 KiB in between are not RAM).
pub fn ram_ranges(bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = bytes.min(LOW_RAM_END);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    let rest = bytes - low;
    let below_hole = rest.min(MMIO_HOLE_START - HIGH_RAM_START);
    if below_hole > 0 {
        ranges.push((GuestAddress(HIGH_RAM_START), below_hole as usize));
    }
    if rest > below_hole {
        ranges.push((
            GuestAddress(RAM_ABOVE_4G_START),
            (rest - below_hole) as usize,
        ));
    }
    ranges
}

/// The virtio-blk test guest (`vmm/guest/blk_test.S`).
pub const BLK_TEST_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/blk_test.bin"));

#[derive(Debug, thiserror::Error)]
pub enum RealModeError {
    #[error("the real-mode image is empty")]
    Empty,
    #[error("the real-mode image ({0} bytes) does not fit between 0x7c00 and 640 KiB")]
    TooBig(usize),
    #[error("cannot write the image into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

pub fn load(mem: &GuestMemory, image: &[u8]) -> Result<(), RealModeError> {
    if image.is_empty() {
        return Err(RealModeError::Empty);
    }
    if image.len() as u64 > LOW_RAM_END - LOAD_ADDR {
        return Err(RealModeError::TooBig(image.len()));
    }
    mem.write_slice(image, GuestAddress(LOAD_ADDR))?;
    Ok(())
}

/// Starts `vcpu` at 0:0x7c00, stack below the image, interrupts off.
pub fn setup_vcpu(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut sregs = vcpu.get_sregs()?;
    for seg in [
        &mut sregs.cs,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        seg.base = 0;
        seg.selector = 0;
    }
    vcpu.set_sregs(&sregs)?;
    let regs = kvm_bindings::kvm_regs {
        rip: LOAD_ADDR,
        rsp: LOAD_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_leaves_the_legacy_area_and_the_hole_to_devices() {
        let mib = 1 << 20;
        assert_eq!(
            ram_ranges(64 * mib),
            vec![
                (GuestAddress(0), 0xa_0000),
                (GuestAddress(HIGH_RAM_START), (64 * mib - 0xa_0000) as usize)
            ]
        );
        let total = 4096 * mib;
        let r = ram_ranges(total);
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].0 .0 + r[1].1 as u64, MMIO_HOLE_START);
        assert_eq!(r[2].0, GuestAddress(RAM_ABOVE_4G_START));
        assert_eq!(r.iter().map(|x| x.1 as u64).sum::<u64>(), total);
        assert_eq!(ram_ranges(0x8_0000), vec![(GuestAddress(0), 0x8_0000)]);
        assert!(!r
            .iter()
            .any(|(a, l)| a.0 <= VIRTIO_MMIO_BASE && VIRTIO_MMIO_BASE < a.0 + *l as u64));
    }
}

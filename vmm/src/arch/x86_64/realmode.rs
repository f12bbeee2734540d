//! Real mode, for the test guest: a flat binary loaded at 0x7c00 (as a boot
//! sector is) and started there with every segment at 0 and interrupts off.
//! The guest's source is `vmm/guest/`; `build.rs` assembles it.

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::machine::LOW_RAM_END;
use crate::memory::GuestMemory;

pub const LOAD_ADDR: u64 = 0x7c00;

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

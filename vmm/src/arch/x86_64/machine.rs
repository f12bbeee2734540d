//! The x86_64 machine: where RAM and device windows are below 4 GiB, and
//! the in-kernel interrupt controllers and timer every VM gets.

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::GuestAddress;

/// RAM below the legacy video and ROM area.
pub const LOW_RAM_END: u64 = 0xa_0000;
/// RAM resumes at 1 MiB.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// The hole for 32-bit device windows below 4 GiB.
pub const HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 1 << 32;
/// Where the first virtio-mmio window goes: in the legacy ROM area, so a
/// real-mode guest reaches it (segment 0xd000).
pub const VIRTIO_MMIO_BASE: u64 = 0xd_0000;
/// KVM needs three pages of guest address space for the TSS when it
/// emulates real mode; put them just under the BIOS at the top of 4 GiB.
const TSS_ADDR: usize = 0xfffb_d000;

/// The interrupt line (IOAPIC GSI) of the `index`th virtio-mmio device:
/// 5, 6, … up to 23, after the ISA lines the serial port uses.
pub fn virtio_irq(index: usize) -> Option<u32> {
    let irq = 5 + u32::try_from(index).ok()?;
    (irq <= 23).then_some(irq)
}

/// Guest RAM ranges for `bytes` of memory: `[0, 640 KiB)`, then from 1 MiB
/// up to the 3 GiB hole, then the rest above 4 GiB. The 384 KiB between
/// 640 KiB and 1 MiB are not RAM (the device windows live there).
pub fn ram_ranges(bytes: u64) -> Vec<(GuestAddress, usize)> {
    let mut ranges = Vec::new();
    let low = bytes.min(LOW_RAM_END);
    ranges.push((GuestAddress(0), low as usize));
    let rest = bytes - low;
    let below_hole = rest.min(HOLE_START - HIGH_RAM_START);
    if below_hole > 0 {
        ranges.push((GuestAddress(HIGH_RAM_START), below_hole as usize));
    }
    let above = rest - below_hole;
    if above > 0 {
        ranges.push((GuestAddress(FOUR_GIB), above as usize));
    }
    ranges
}

/// What every x86_64 VM gets before its vCPUs: the real-mode TSS, the
/// in-kernel PIC/IOAPIC/LAPIC (needed for irqfds), and the PIT.
pub fn setup_vm(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    vm.set_tss_address(TSS_ADDR)?;
    vm.create_irq_chip()?;
    vm.create_pit2(kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })?;
    Ok(())
}

/// The CPUID a vCPU reports: what KVM supports on this host.
pub fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    vcpu.set_cpuid2(&cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_legacy_area_and_the_hole_below_4_gib() {
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
        assert_eq!(r[1].0 .0 + r[1].1 as u64, HOLE_START);
        assert_eq!(r[2].0, GuestAddress(FOUR_GIB));
        assert_eq!(r.iter().map(|x| x.1 as u64).sum::<u64>(), total);
        assert_eq!(ram_ranges(0x8_0000), vec![(GuestAddress(0), 0x8_0000)]);
    }

    #[test]
    fn virtio_lines_stay_on_the_ioapic() {
        assert_eq!(virtio_irq(0), Some(5));
        assert_eq!(virtio_irq(18), Some(23));
        assert_eq!(virtio_irq(19), None);
    }
}

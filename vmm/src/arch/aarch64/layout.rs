//! The guest physical address map of an aarch64 VM.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x0900_0000  ns16550a UART (4 KiB)
//! 0x0a00_0000  GICv3 redistributors, 128 KiB per vCPU (up to 32 MiB)
//! 0x0c00_0000  virtio-mmio windows, 4 KiB each
//! 0x4000_0000  RAM: the kernel at its start (2 MiB aligned); the initrd and
//!              then the device tree at the top
//! ```
//! Interrupt numbers here are SPI numbers: the FDT's `<0 n flags>` and the
//! GSI given to KVM's irqfd; the GIC INTID is 32 + n.

use vm_memory::GuestAddress;

pub const GIC_DIST_ADDR: u64 = 0x0800_0000;
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// Two 64 KiB frames (RD and SGI) per vCPU.
pub const GIC_REDIST_SIZE_PER_VCPU: u64 = 0x2_0000;
pub const GIC_REDIST_ADDR: u64 = 0x0a00_0000;
/// Interrupts the distributor implements: 32 private (SGI, PPI) + 96 SPIs.
pub const GIC_NR_IRQS: u32 = 128;
/// The GIC maintenance interrupt (a PPI).
pub const GIC_MAINTENANCE_PPI: u32 = 9;

/// Architected timer PPIs: secure physical, non-secure physical, virtual,
/// hypervisor.
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

pub const SERIAL_ADDR: u64 = 0x0900_0000;
pub const SERIAL_SIZE: u64 = 0x1000;
pub const SERIAL_SPI: u32 = 1;
/// The UART's input clock as the guest driver is told (the usual 1.8432
/// MHz × 2); only baud divisors depend on it.
pub const SERIAL_CLOCK_HZ: u32 = 3_686_400;

pub const VIRTIO_MMIO_BASE: u64 = 0x0c00_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_MMIO_FIRST_SPI: u32 = 16;
/// SPIs 16..96 are free for virtio-mmio.
pub const VIRTIO_MMIO_MAX_DEVICES: usize = (GIC_NR_IRQS - 32 - VIRTIO_MMIO_FIRST_SPI) as usize;

pub const DRAM_START: u64 = 0x4000_0000;
/// The kernel's base (plus its `text_offset`) must be 2 MiB aligned.
pub const KERNEL_ALIGN: u64 = 2 << 20;
/// The kernel maps the device tree in 2 MiB blocks and refuses larger ones.
pub const FDT_MAX_SIZE: usize = 2 << 20;

/// The redistributor region ends where the virtio-mmio windows begin.
pub const MAX_VCPUS: usize =
    ((VIRTIO_MMIO_BASE - GIC_REDIST_ADDR) / GIC_REDIST_SIZE_PER_VCPU) as usize;

// The regions above do not overlap.
const _: () = assert!(GIC_DIST_ADDR + GIC_DIST_SIZE <= SERIAL_ADDR);
const _: () = assert!(SERIAL_ADDR + SERIAL_SIZE <= GIC_REDIST_ADDR);
const _: () =
    assert!(VIRTIO_MMIO_BASE + VIRTIO_MMIO_MAX_DEVICES as u64 * VIRTIO_MMIO_SIZE <= DRAM_START);
const _: () = assert!(SERIAL_SPI < VIRTIO_MMIO_FIRST_SPI);

/// A virtio-mmio device's window and SPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub addr: u64,
    pub size: u64,
    pub spi: u32,
}

/// The `index`th virtio-mmio device, or `None` past the last that fits.
pub fn virtio_mmio_device(index: usize) -> Option<MmioDevice> {
    if index >= VIRTIO_MMIO_MAX_DEVICES {
        return None;
    }
    Some(MmioDevice {
        addr: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        size: VIRTIO_MMIO_SIZE,
        spi: VIRTIO_MMIO_FIRST_SPI + index as u32,
    })
}

/// Size of the redistributor region for `vcpus`.
pub fn gic_redist_size(vcpus: usize) -> u64 {
    vcpus as u64 * GIC_REDIST_SIZE_PER_VCPU
}

/// The MPIDR_EL1 KVM gives vCPU `index` at reset: Aff0 holds the low 4
/// bits of the id (16 CPUs per cluster), Aff1 the next 8, Aff2 the next 8.
/// The device tree's `reg` of each CPU must match it (affinity bits only).
pub fn vcpu_mpidr(index: usize) -> u64 {
    let id = index as u64;
    (id & 0xf) | (((id >> 4) & 0xff) << 8) | (((id >> 12) & 0xff) << 16)
}

/// The affinity fields of an MPIDR (what the device tree and PSCI use).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// The single RAM region of `mem_size` bytes.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    vec![(GuestAddress(DRAM_START), mem_size as usize)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_redistributors_fit() {
        let last = virtio_mmio_device(VIRTIO_MMIO_MAX_DEVICES - 1).unwrap();
        assert!(last.spi + 32 < GIC_NR_IRQS);
        assert_eq!(virtio_mmio_device(VIRTIO_MMIO_MAX_DEVICES), None);
        assert!(GIC_REDIST_ADDR + gic_redist_size(MAX_VCPUS) <= VIRTIO_MMIO_BASE);
        assert_eq!(MAX_VCPUS, 256);
    }

    #[test]
    fn mpidr_follows_kvm_reset_value() {
        assert_eq!(vcpu_mpidr(0), 0);
        assert_eq!(vcpu_mpidr(15), 0xf);
        assert_eq!(vcpu_mpidr(16), 0x100);
        assert_eq!(vcpu_mpidr(0x1234), 0x1_2304);
    }
}

//! The guest physical address map of an x86_64 VM.
//!
//! ```text
//! 0x0000_0500  GDT; 0x540 the IDT                 (RAM)
//! 0x0000_7000  boot_params (the zero page)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  page tables: PML4, PDPT, 4 PDs     (identity map of 4 GiB)
//! 0x0002_0000  kernel command line (64 KiB)
//! 0x0009_fc00  EBDA .. 1 MiB: reserved; ACPI tables at 0xe_0000
//! 0x0010_0000  kernel (bzImage at 1 MiB; an ELF vmlinux at its own address)
//!  ...         initrd at the top of RAM below the hole
//! 0xc000_0000  MMIO hole up to 4 GiB: virtio-mmio, PCI BARs, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM beyond the first 3 GiB
//! ```
//! The serial console is COM1 on port I/O (0x3f8, IRQ 4); PCI configuration
//! mechanism #1 is at ports 0xcf8..0xd00.

use vm_memory::GuestAddress;

/// Global descriptor table; its entries are in [`super::gdt`].
pub const GDT_ADDR: u64 = 0x500;
/// An empty interrupt descriptor table: the kernel installs its own.
pub const IDT_ADDR: u64 = 0x540;
/// `struct boot_params`, handed to the kernel in `rsi`.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Stack pointer at entry (the 64-bit protocol does not use it; a valid one
/// helps when debugging an early fault).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_ADDR: u64 = 0x9000;
/// The one page-directory-pointer table PML4[0] points to.
pub const PDPT_ADDR: u64 = 0xa000;
/// Four page directories of 2 MiB pages follow.
pub const PD_ADDR: u64 = 0xb000;
/// How much the boot page tables identity-map: the kernel, the zero page,
/// the command line and the initrd all lie below it.
pub const IDENTITY_MAPPED: u64 = 4 << 30;
/// The kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Room for the command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Where usable low RAM ends: the extended BIOS data area starts here.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables; Linux looks for the RSDP in 0xe_0000..0x10_0000.
pub const ACPI_START: u64 = 0xe_0000;
/// End of the legacy BIOS area.
pub const BIOS_END: u64 = 0x10_0000;
/// RAM above 1 MiB starts here; a bzImage is loaded here.
pub const HIGH_RAM_START: u64 = BIOS_END;
/// 32-bit MMIO hole: RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End of the MMIO hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Where RAM beyond [`MMIO_HOLE_START`] bytes is mapped.
pub const RAM_ABOVE_4G_START: u64 = MMIO_HOLE_END;

/// First virtio-mmio device window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Each virtio-mmio device's window (the `4K` of `virtio_mmio.device=`).
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// GSI (IOAPIC pin) of the first virtio-mmio device; the next ones follow.
pub const VIRTIO_MMIO_FIRST_GSI: u32 = 5;
/// KVM's in-kernel IOAPIC has 24 pins; virtio-mmio uses 5..=23.
pub const IOAPIC_PINS: u32 = 24;
/// How many virtio-mmio devices fit on the IOAPIC.
pub const VIRTIO_MMIO_MAX_DEVICES: usize = (IOAPIC_PINS - VIRTIO_MMIO_FIRST_GSI) as usize;

/// The PCI MMIO window the VMM places BARs in (declared in the DSDT).
pub const PCI_WINDOW_BASE: u64 = 0xe000_0000;
pub const PCI_WINDOW_SIZE: u64 = 0x1000_0000;

/// KVM's in-kernel IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// The local APICs.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// COM1: the serial console.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1's ISA IRQ (and IOAPIC pin).
pub const SERIAL_GSI: u32 = 4;

/// xAPIC ids are 8 bits and 0xff is the broadcast id.
pub const MAX_VCPUS: usize = 254;

// The stack lies between the zero page and the page tables; the devices in
// the hole.
const _: () = assert!(BOOT_STACK_TOP < PML4_ADDR && BOOT_STACK_TOP > ZERO_PAGE_ADDR + 0x1000);
const _: () = assert!(VIRTIO_MMIO_BASE >= MMIO_HOLE_START);
const _: () = assert!(
    VIRTIO_MMIO_BASE + VIRTIO_MMIO_MAX_DEVICES as u64 * VIRTIO_MMIO_SIZE <= PCI_WINDOW_BASE
        && PCI_WINDOW_BASE + PCI_WINDOW_SIZE <= IOAPIC_ADDR
);

/// Where the VMM places slot `slot`'s BAR of `size` bytes (a power of two
/// up to 8 MiB, so 32 slots fit the window); None past the window.
pub fn pci_bar(slot: usize, size: u64) -> Option<u64> {
    let addr = PCI_WINDOW_BASE.checked_add((slot as u64).checked_mul(size)?)?;
    (size.is_power_of_two() && addr + size <= PCI_WINDOW_BASE + PCI_WINDOW_SIZE).then_some(addr)
}

/// A virtio-mmio device's window and interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    pub addr: u64,
    pub size: u64,
    pub gsi: u32,
}

/// The `index`th virtio-mmio device's window and GSI, or `None` past the
/// last one that fits.
pub fn virtio_mmio_device(index: usize) -> Option<MmioDevice> {
    if index >= VIRTIO_MMIO_MAX_DEVICES {
        return None;
    }
    Some(MmioDevice {
        addr: VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE,
        size: VIRTIO_MMIO_SIZE,
        gsi: VIRTIO_MMIO_FIRST_GSI + index as u32,
    })
}

/// The guest RAM regions for `mem_size` bytes of RAM: from 0 up to the MMIO
/// hole, the rest from 4 GiB. Pass them to `GuestMemoryMmap::from_ranges`.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if mem_size > MMIO_HOLE_START {
        ranges.push((
            GuestAddress(RAM_ABOVE_4G_START),
            (mem_size - MMIO_HOLE_START) as usize,
        ));
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap() {
        let regions = [
            (GDT_ADDR, 8 * crate::arch::x86_64::gdt::TABLE.len() as u64),
            (IDT_ADDR, 8),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 4 * 0x1000),
            (CMDLINE_ADDR, CMDLINE_MAX_SIZE as u64),
        ];
        for (i, &(a, alen)) in regions.iter().enumerate() {
            assert!(a + alen <= EBDA_START);
            for &(b, blen) in &regions[i + 1..] {
                assert!(a + alen <= b || b + blen <= a, "{a:#x} overlaps {b:#x}");
            }
        }
    }

    #[test]
    fn virtio_devices_fit_in_the_hole_and_on_the_ioapic() {
        let last = virtio_mmio_device(VIRTIO_MMIO_MAX_DEVICES - 1).unwrap();
        assert_eq!(last.gsi, IOAPIC_PINS - 1);
        assert!(last.addr + last.size <= IOAPIC_ADDR);
        assert_eq!(virtio_mmio_device(VIRTIO_MMIO_MAX_DEVICES), None);
        assert_ne!(virtio_mmio_device(0).unwrap().gsi, SERIAL_GSI);
    }

    #[test]
    fn pci_bars_are_aligned_and_stay_in_the_window() {
        let size = 0x8000;
        assert_eq!(pci_bar(1, size), Some(PCI_WINDOW_BASE + size));
        for slot in 0..32 {
            let bar = pci_bar(slot, size).unwrap();
            assert_eq!(bar % size, 0);
            assert!(bar + size <= PCI_WINDOW_BASE + PCI_WINDOW_SIZE);
        }
        assert_eq!(pci_bar(usize::MAX, size), None);
        assert_eq!(pci_bar(1, PCI_WINDOW_SIZE), None);
        assert_eq!(pci_bar(1, 0x3000), None, "not a power of two");
    }

    #[test]
    fn ram_skips_the_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1], (GuestAddress(1 << 32), 1 << 30));
    }
}

//! The e820 memory map the kernel reads from the zero page: which guest
//! physical ranges are RAM and which it must leave alone.

use super::layout::{
    BIOS_END, EBDA_START, HIGH_RAM_START, MMIO_HOLE_END, MMIO_HOLE_START, RAM_ABOVE_4G_START,
};
use linux_loader::loader::bootparam::boot_e820_entry;

/// Usable RAM.
pub const E820_RAM: u32 = 1;
/// Not RAM: firmware areas, the MMIO hole.
pub const E820_RESERVED: u32 = 2;

/// The map for `mem_size` bytes of RAM laid out by
/// [`super::layout::ram_ranges`]. The EBDA/BIOS area (where the ACPI tables
/// live) and the MMIO hole are reserved.
pub fn entries(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, ty: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type: ty,
    };
    let mut map = vec![
        entry(0, EBDA_START.min(mem_size), E820_RAM),
        entry(EBDA_START, BIOS_END, E820_RESERVED),
    ];
    let low_end = mem_size.min(MMIO_HOLE_START);
    if low_end > HIGH_RAM_START {
        map.push(entry(HIGH_RAM_START, low_end, E820_RAM));
    }
    map.push(entry(MMIO_HOLE_START, MMIO_HOLE_END, E820_RESERVED));
    if mem_size > MMIO_HOLE_START {
        map.push(entry(
            RAM_ABOVE_4G_START,
            RAM_ABOVE_4G_START + (mem_size - MMIO_HOLE_START),
            E820_RAM,
        ));
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::ram_ranges;

    fn ram_total(map: &[boot_e820_entry]) -> u64 {
        map.iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_vm_has_low_ram_bios_hole_and_high_ram() {
        let map = entries(256 << 20);
        let got: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x10_0000 - 0x9_fc00, E820_RESERVED),
                (0x10_0000, (256 << 20) - 0x10_0000, E820_RAM),
                (0xc000_0000, 0x4000_0000, E820_RESERVED),
            ]
        );
    }

    #[test]
    fn entries_are_sorted_disjoint_and_ram_is_backed() {
        for mem in [64u64 << 20, 3 << 30, (3 << 30) + 4096, 6 << 30] {
            let map = entries(mem);
            for pair in map.windows(2) {
                assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{mem:#x}");
            }
            // Every RAM byte the kernel is told of is backed by guest memory.
            let ranges = ram_ranges(mem);
            for e in map.iter().filter(|e| e.r#type == E820_RAM) {
                assert!(
                    ranges
                        .iter()
                        .any(|(a, len)| e.addr >= a.0 && e.addr + e.size <= a.0 + *len as u64),
                    "{:#x}+{:#x} not backed",
                    { e.addr },
                    { e.size }
                );
            }
            // Only the EBDA/BIOS area is withheld from RAM.
            assert_eq!(ram_total(&map), mem - (BIOS_END - EBDA_START), "{mem:#x}");
        }
    }
}

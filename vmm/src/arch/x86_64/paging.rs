//! Boot page tables: the 64-bit boot protocol enters the kernel with paging
//! on and wants the kernel, the zero page and the command line identity
//! mapped. We map the whole first 4 GiB with 2 MiB pages (every CPU with
//! long mode has them), which covers those, the initrd and the MMIO hole.

use super::layout::{IDENTITY_MAPPED, PDPT_ADDR, PD_ADDR, PML4_ADDR};
use super::Error;
use crate::memory::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
/// In a page directory entry: maps a 2 MiB page instead of a table.
const HUGE: u64 = 1 << 7;
const PAGE_2M: u64 = 2 << 20;
const PAGE_DIRECTORIES: u64 = IDENTITY_MAPPED >> 30;

/// Writes PML4 → PDPT → 4 page directories; CR3 is [`PML4_ADDR`].
pub fn write(mem: &GuestMemory) -> Result<(), Error> {
    let w = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|e| Error::GuestWrite("page tables", e))
    };
    w(PDPT_ADDR | PRESENT | WRITABLE, PML4_ADDR)?;
    for i in 1..512 {
        w(0, PML4_ADDR + i * 8)?;
    }
    for i in 0..512 {
        let entry = if i < PAGE_DIRECTORIES {
            (PD_ADDR + i * 0x1000) | PRESENT | WRITABLE
        } else {
            0
        };
        w(entry, PDPT_ADDR + i * 8)?;
    }
    for i in 0..PAGE_DIRECTORIES * 512 {
        w((i * PAGE_2M) | PRESENT | WRITABLE | HUGE, PD_ADDR + i * 8)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    /// Walks the tables in guest memory the way the MMU does.
    fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        let entry = |table: u64, index: u64| -> u64 {
            mem.read_obj(GuestAddress((table & 0x000f_ffff_ffff_f000) + index * 8))
                .unwrap()
        };
        let pml4e = entry(cr3, (va >> 39) & 0x1ff);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = entry(pml4e, (va >> 30) & 0x1ff);
        if pdpte & PRESENT == 0 || pdpte & HUGE != 0 {
            return None;
        }
        let pde = entry(pdpte, (va >> 21) & 0x1ff);
        if pde & PRESENT == 0 || pde & HUGE == 0 || pde & WRITABLE == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & (PAGE_2M - 1)))
    }

    #[test]
    fn first_4_gib_are_identity_mapped_and_nothing_else() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        // Garbage first: the tables must not depend on zeroed memory.
        mem.write_slice(&[0xa5; 0x10000], GuestAddress(0)).unwrap();
        write(&mem).unwrap();
        for va in [
            0u64,
            0x7000,
            0x10_0000,
            0x100_0000 + 0x1234,
            0xbfff_ffff,
            0xd000_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, PML4_ADDR, va), Some(va), "{va:#x}");
        }
        // Every 2 MiB page in the range maps to itself.
        for page in 0..(IDENTITY_MAPPED / PAGE_2M) {
            let va = page * PAGE_2M + 0x1f_fff8;
            assert_eq!(translate(&mem, PML4_ADDR, va), Some(va));
        }
        assert_eq!(translate(&mem, PML4_ADDR, 1 << 32), None);
        assert_eq!(translate(&mem, PML4_ADDR, 1 << 39), None);
    }
}

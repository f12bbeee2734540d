//! The boot GDT. The 64-bit boot protocol wants a flat 64-bit code segment
//! at selector 0x10 (`__BOOT_CS`) and a flat data segment at 0x18
//! (`__BOOT_DS`); the kernel replaces the table early on.

use super::layout::{GDT_ADDR, IDT_ADDR};
use super::Error;
use crate::memory::GuestMemory;
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

/// Selector of the 64-bit code segment.
pub const BOOT_CS: u16 = 0x10;
/// Selector of the data segment.
pub const BOOT_DS: u16 = 0x18;
/// Selector of the task state segment (VMX wants a usable TR).
pub const BOOT_TSS: u16 = 0x20;

/// Builds a descriptor from its flags (the 12 bits of access byte and
/// granularity nibble, as `0xG_AA` with the limit's high nibble between
/// them), base and limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The table: null, unused, code64, data, TSS.
pub const TABLE: [u64; 5] = [
    0,
    0,
    // Present, ring 0, code, execute/read, L=1 (64-bit), 4 KiB granularity.
    descriptor(0xa09b, 0, 0xfffff),
    // Present, ring 0, data, read/write, D/B=1, 4 KiB granularity.
    descriptor(0xc093, 0, 0xfffff),
    // Present, busy 32-bit TSS.
    descriptor(0x808b, 0, 0xfffff),
];

/// Decodes a descriptor into the segment register state KVM takes.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With 4 KiB granularity the limit counts pages.
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The segment a selector names in [`TABLE`].
pub fn boot_segment(selector: u16) -> kvm_segment {
    segment(TABLE[usize::from(selector >> 3)], selector)
}

/// Writes the GDT and an empty IDT to guest memory.
pub fn write(mem: &GuestMemory) -> Result<(), Error> {
    for (i, entry) in TABLE.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(|e| Error::GuestWrite("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(|e| Error::GuestWrite("IDT", e))?;
    Ok(())
}

/// GDT limit as loaded in GDTR.
pub const GDT_LIMIT: u16 = (TABLE.len() * 8 - 1) as u16;
/// IDT limit: one empty gate.
pub const IDT_LIMIT: u16 = 7;

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn descriptors_have_the_architectural_encoding() {
        // The well-known encodings of flat 64-bit code, flat data and a TSS.
        assert_eq!(TABLE[2], 0x00af_9b00_0000_ffff);
        assert_eq!(TABLE[3], 0x00cf_9300_0000_ffff);
        assert_eq!(TABLE[4], 0x008f_8b00_0000_ffff);
        assert_eq!(
            descriptor(0x4092, 0x1234_5678, 0xabcde),
            0x124a_9234_5678_bcde
        );
    }

    #[test]
    fn boot_segments_are_flat_long_mode() {
        let cs = boot_segment(BOOT_CS);
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x10));
        assert_eq!(
            (cs.l, cs.db, cs.s, cs.present, cs.type_, cs.dpl),
            (1, 0, 1, 1, 0xb, 0)
        );
        let ds = boot_segment(BOOT_DS);
        assert_eq!(
            (ds.base, ds.limit, ds.l, ds.db, ds.type_),
            (0, 0xffff_ffff, 0, 1, 3)
        );
        let tr = boot_segment(BOOT_TSS);
        assert_eq!((tr.s, tr.type_, tr.present), (0, 0xb, 1));
        assert_eq!(segment(0, 0).unusable, 1);
    }

    #[test]
    fn table_lands_in_guest_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        write(&mem).unwrap();
        for (i, want) in TABLE.iter().enumerate() {
            let got: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8 * i as u64)).unwrap();
            assert_eq!(got, *want);
        }
        assert!(GDT_ADDR + u64::from(GDT_LIMIT) < IDT_ADDR);
    }
}

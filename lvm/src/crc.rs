//! LVM2's checksum: reflected CRC-32 (the zlib table) seeded with
//! 0xF597A6CF and no final XOR (spec §2). crc32fast computes zlib's CRC, which
//! inverts the register before and after, so `lvm = !zlib(data, seed = !INIT)`.

pub const INITIAL_CRC: u32 = 0xF597_A6CF;

/// LVM2 checksum of `data` continuing from `crc` (use [`INITIAL_CRC`] to start).
/// Chaining: `calc(b, calc(a, INITIAL_CRC)) == calc(a‖b, INITIAL_CRC)`.
pub fn calc(data: &[u8], crc: u32) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!crc);
    h.update(data);
    !h.finalize()
}

pub fn lvm_crc(data: &[u8]) -> u32 {
    calc(data, INITIAL_CRC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_vectors() {
        assert_eq!(lvm_crc(b""), 0xF597_A6CF);
        assert_eq!(lvm_crc(b"123456789"), 0x4991_CF02);
        assert_eq!(lvm_crc(&[0u8; 492]), 0x02C8_1F10);
        assert_eq!(lvm_crc(&[0u8; 508]), 0x6702_D122);
    }

    #[test]
    fn chaining_equals_concatenation() {
        let a = b"first part of a wrapped copy";
        let b = b" and the rest";
        let whole = [&a[..], &b[..]].concat();
        assert_eq!(calc(b, lvm_crc(a)), lvm_crc(&whole));
    }
}

//! CRC-32C (Castagnoli) as sanlock uses it: reflected polynomial 0x82F63B78,
//! seed 0xFFFFFFFE, no final XOR. Records are at most 168 bytes, so a
//! byte-wise table is fast enough and keeps the recipe visible.

const POLY: u32 = 0x82F6_3B78;
/// sanlock seeds with `~1`, not the usual `~0`.
pub const SEED: u32 = 0xFFFF_FFFE;

const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// sanlock's record checksum of `data`.
pub fn checksum(data: &[u8]) -> u32 {
    data.iter().fold(SEED, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_crc32c_check_value() {
        // The standard CRC-32C of "123456789" is 0xE3069283 (seed ~0, final
        // XOR); the same table with those conventions must give it.
        let raw = b"123456789".iter().fold(0xFFFF_FFFFu32, |crc, &b| {
            TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
        });
        assert_eq!(!raw, 0xE306_9283);
    }
}

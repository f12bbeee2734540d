//! The device's configuration space, `struct virtio_blk_config` (virtio 1.2
//! §5.2.4), laid out little-endian field by field.

/// Byte offsets of the fields the device fills in.
pub mod offset {
    pub const CAPACITY: usize = 0;
    pub const SIZE_MAX: usize = 8;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// Up to the write-zeroes fields; the secure-erase and zoned fields after
/// them are not offered, so they read as zero like anything past the end.
pub const CONFIG_LEN: usize = 60;

/// The values the device reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockConfig {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub size_max: u32,
    pub seg_max: u32,
    pub blk_size: u32,
    pub num_queues: u16,
    pub max_discard_sectors: u32,
    pub max_discard_seg: u32,
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    pub write_zeroes_may_unmap: bool,
}

impl BlockConfig {
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(offset::CAPACITY, &self.capacity.to_le_bytes());
        put(offset::SIZE_MAX, &self.size_max.to_le_bytes());
        put(offset::SEG_MAX, &self.seg_max.to_le_bytes());
        put(offset::BLK_SIZE, &self.blk_size.to_le_bytes());
        put(offset::NUM_QUEUES, &self.num_queues.to_le_bytes());
        put(
            offset::MAX_DISCARD_SECTORS,
            &self.max_discard_sectors.to_le_bytes(),
        );
        put(offset::MAX_DISCARD_SEG, &self.max_discard_seg.to_le_bytes());
        put(
            offset::DISCARD_SECTOR_ALIGNMENT,
            &self.discard_sector_alignment.to_le_bytes(),
        );
        put(
            offset::MAX_WRITE_ZEROES_SECTORS,
            &self.max_write_zeroes_sectors.to_le_bytes(),
        );
        put(
            offset::MAX_WRITE_ZEROES_SEG,
            &self.max_write_zeroes_seg.to_le_bytes(),
        );
        put(
            offset::WRITE_ZEROES_MAY_UNMAP,
            &[u8::from(self.write_zeroes_may_unmap)],
        );
        b
    }

    /// Any offset and length the driver asks: bytes past the end read as
    /// zero, and no offset overflows.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        crate::devices::read_image(&self.to_bytes(), offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_sit_where_the_spec_puts_them() {
        let c = BlockConfig {
            capacity: 0x0102_0304_0506_0708,
            seg_max: 254,
            blk_size: 4096,
            num_queues: 3,
            max_discard_sectors: 77,
            write_zeroes_may_unmap: true,
            ..Default::default()
        };
        let b = c.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(b[36..40].try_into().unwrap()), 77);
        assert_eq!(b[56], 1);
    }

    #[test]
    fn reads_past_the_end_and_at_huge_offsets_are_zero() {
        let c = BlockConfig {
            capacity: u64::MAX,
            ..Default::default()
        };
        let mut d = [0xaau8; 12];
        c.read(4, &mut d);
        assert_eq!(&d[..4], &[0xff; 4]);
        assert_eq!(&d[4..], &[0; 8]);
        let mut d = [0xaau8; 8];
        c.read(u64::MAX - 3, &mut d);
        assert_eq!(d, [0; 8]);
        c.read(CONFIG_LEN as u64 - 2, &mut d);
        assert_eq!(d, [0; 8]);
    }
}

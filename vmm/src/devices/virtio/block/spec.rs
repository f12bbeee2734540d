//! Numbers of the virtio-blk device as the virtio 1.2 specification fixes
//! them (§5.2): feature bits, request types, status values, sizes.

/// Feature bits (§5.2.3).
pub const F_SIZE_MAX: u64 = 1 << 1;
pub const F_SEG_MAX: u64 = 1 << 2;
pub const F_RO: u64 = 1 << 5;
pub const F_BLK_SIZE: u64 = 1 << 6;
pub const F_FLUSH: u64 = 1 << 9;
pub const F_MQ: u64 = 1 << 12;
pub const F_DISCARD: u64 = 1 << 13;
pub const F_WRITE_ZEROES: u64 = 1 << 14;
/// `VIRTIO_F_RING_EVENT_IDX` (§6): interrupt suppression by index.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;

/// Request types (§5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

/// Status values written in the request's last byte.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Sectors in requests are 512 bytes whatever the block size.
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

/// `struct virtio_blk_outhdr`: le32 type, le32 reserved, le64 sector.
pub const HEADER_LEN: u64 = 16;
/// `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags.
pub const RANGE_LEN: u64 = 16;
/// The only flag of a write-zeroes range: the device may unmap.
pub const RANGE_F_UNMAP: u32 = 1;
/// Bytes of the GET_ID answer; shorter ids end with a NUL.
pub const ID_BYTES: usize = 20;

/// Descriptor flags (§2.7.5).
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
pub const DESC_F_INDIRECT: u16 = 4;
/// Bytes of one split-ring descriptor.
pub const DESC_LEN: u64 = 16;

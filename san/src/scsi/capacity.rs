//! READ CAPACITY(16) parameter data (SBC-3 §5.16.2): the LU's size and
//! block geometry, and whether it is thin (LBPME) and reads zeros where
//! deallocated (LBPRZ).

use super::{be32, be64, put32, put64, ScsiError};

/// The parameter data as sent; initiators ask for this many bytes.
pub const READ_CAPACITY16_LEN: usize = 32;
const LAST_LBA: usize = 0;
const BLOCK_LEN: usize = 8;
/// Byte 13, low nibble: log2 of logical blocks per physical block.
const EXPONENT: usize = 13;
const EXPONENT_MASK: u8 = 0x0F;
const PROVISIONING: usize = 14;
const LBPME: u8 = 0x80;
const LBPRZ: u8 = 0x40;
/// Every field decoded here lies in the first 15 bytes.
const DECODED_LEN: usize = PROVISIONING + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CapacityData {
    /// The address of the last logical block (size in blocks minus one).
    pub last_lba: u64,
    /// Logical block length in bytes.
    pub block_len: u32,
    /// log2(logical blocks per physical block), 4 bits: tgtd says 3 for
    /// 512-byte blocks on 4 KiB.
    pub physical_exponent: u8,
    /// Logical block provisioning management enabled: the LU is thin.
    pub lbpme: bool,
    /// Deallocated blocks read as zeros.
    pub lbprz: bool,
}

impl CapacityData {
    const WHAT: &'static str = "READ CAPACITY(16) data";

    pub fn encode(&self) -> [u8; READ_CAPACITY16_LEN] {
        let mut b = [0u8; READ_CAPACITY16_LEN];
        put64(&mut b, LAST_LBA, self.last_lba);
        put32(&mut b, BLOCK_LEN, self.block_len);
        b[EXPONENT] = self.physical_exponent & EXPONENT_MASK;
        b[PROVISIONING] =
            (if self.lbpme { LBPME } else { 0 }) | (if self.lbprz { LBPRZ } else { 0 });
        b
    }

    pub fn decode(data: &[u8]) -> Result<CapacityData, ScsiError> {
        if data.len() < DECODED_LEN {
            return Err(ScsiError::Truncated {
                what: Self::WHAT,
                len: data.len(),
                need: READ_CAPACITY16_LEN,
            });
        }
        Ok(CapacityData {
            last_lba: be64(data, LAST_LBA),
            block_len: be32(data, BLOCK_LEN),
            physical_exponent: data[EXPONENT] & EXPONENT_MASK,
            lbpme: data[PROVISIONING] & LBPME != 0,
            lbprz: data[PROVISIONING] & LBPRZ != 0,
        })
    }

    /// The LU's size in bytes, `(last_lba + 1) * block_len`, or an error if
    /// that does not fit 64 bits.
    pub fn size_bytes(&self) -> Result<u64, ScsiError> {
        self.last_lba
            .checked_add(1)
            .and_then(|blocks| blocks.checked_mul(u64::from(self.block_len)))
            .ok_or(ScsiError::InvalidData {
                what: Self::WHAT,
                field: "capacity (last LBA, times block length, overflows 64 bits)",
                value: self.last_lba,
            })
    }
}

//! The UNMAP parameter list (SBC-3 §5.28.2): the ranges to deallocate.
//!
//! Decoding follows the Linux target (`sbc_execute_unmap`): an empty list
//! unmaps nothing, a list shorter than its 8-byte header is a parameter list
//! length error, a block-descriptor length past the data is cut to the data,
//! and a trailing partial descriptor is ignored (SBC-3 says so).

use super::{be16, be32, be64, len16, put16, put32, put64, ScsiError};

const DATA_LEN: usize = 0;
const DESCRIPTORS_LEN: usize = 2;
const HEADER_LEN: usize = 8;
const DESC_LBA: usize = 0;
const DESC_BLOCKS: usize = 8;
const DESC_LEN: usize = 16;
/// The most descriptors whose list length fits the CDB's 16-bit field.
pub const MAX_UNMAP_DESCRIPTORS: usize = (u16::MAX as usize - HEADER_LEN) / DESC_LEN;

/// One range to deallocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnmapDescriptor {
    pub lba: u64,
    pub blocks: u32,
}

/// The Data-Out of UNMAP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UnmapParams {
    pub descriptors: Vec<UnmapDescriptor>,
}

impl UnmapParams {
    const WHAT: &'static str = "UNMAP";

    /// The list; its length is the CDB's parameter list length.
    pub fn encode(&self) -> Result<Vec<u8>, ScsiError> {
        let body = self.descriptors.len().saturating_mul(DESC_LEN);
        let total = len16(
            HEADER_LEN.saturating_add(body),
            Self::WHAT,
            "parameter list",
        )?;
        let mut b = vec![0u8; usize::from(total)];
        // Both lengths count the bytes after their own field.
        put16(&mut b, DATA_LEN, total - 2);
        put16(&mut b, DESCRIPTORS_LEN, total - HEADER_LEN as u16);
        for (d, out) in self
            .descriptors
            .iter()
            .zip(b[HEADER_LEN..].chunks_exact_mut(DESC_LEN))
        {
            put64(out, DESC_LBA, d.lba);
            put32(out, DESC_BLOCKS, d.blocks);
        }
        Ok(b)
    }

    pub fn decode(data: &[u8]) -> Result<UnmapParams, ScsiError> {
        if data.is_empty() {
            return Ok(UnmapParams::default());
        }
        if data.len() < HEADER_LEN {
            return Err(ScsiError::ParameterListLength {
                what: Self::WHAT,
                len: data.len(),
                need: HEADER_LEN,
            });
        }
        let claimed = usize::from(be16(data, DESCRIPTORS_LEN));
        let body = &data[HEADER_LEN..];
        let body = &body[..claimed.min(body.len())];
        Ok(UnmapParams {
            descriptors: body
                .chunks_exact(DESC_LEN)
                .map(|d| UnmapDescriptor {
                    lba: be64(d, DESC_LBA),
                    blocks: be32(d, DESC_BLOCKS),
                })
                .collect(),
        })
    }
}

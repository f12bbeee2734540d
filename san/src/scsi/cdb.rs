//! Command descriptor blocks of the commands ssv sends and serves (spec §2).
//!
//! [`Cdb::encode`] fills the 16-byte CDB field of an iSCSI SCSI Command PDU:
//! the command in its first [`Cdb::len`] bytes, zeros after. [`Cdb::decode`]
//! reads one and refuses what a target built on it could not honour (data
//! protection, ACA, obsolete bits), with the error the target turns into
//! sense data ([`ScsiError::sense`]).

use super::pr::{PrInAction, PrOutAction, PrType};
use super::{be16, be32, be64, put16, put32, put64, ScsiError};

/// Operation codes.
pub const OP_TEST_UNIT_READY: u8 = 0x00;
pub const OP_INQUIRY: u8 = 0x12;
pub const OP_MODE_SENSE_6: u8 = 0x1A;
pub const OP_READ_10: u8 = 0x28;
pub const OP_WRITE_10: u8 = 0x2A;
pub const OP_UNMAP: u8 = 0x42;
pub const OP_MODE_SENSE_10: u8 = 0x5A;
pub const OP_PERSISTENT_RESERVE_IN: u8 = 0x5E;
pub const OP_PERSISTENT_RESERVE_OUT: u8 = 0x5F;
pub const OP_READ_16: u8 = 0x88;
pub const OP_COMPARE_AND_WRITE: u8 = 0x89;
pub const OP_WRITE_16: u8 = 0x8A;
pub const OP_SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const OP_WRITE_SAME_16: u8 = 0x93;
/// SERVICE ACTION IN(16); READ CAPACITY(16) is its service action 0x10.
pub const OP_SERVICE_ACTION_IN_16: u8 = 0x9E;
pub const SA_READ_CAPACITY_16: u8 = 0x10;
pub const OP_REPORT_LUNS: u8 = 0xA0;

/// The largest CDB: the size of the iSCSI BHS CDB field.
pub const CDB_MAX: usize = 16;

/// Byte 1 of READ/WRITE/COMPARE AND WRITE/WRITE SAME: RDPROTECT or
/// WRPROTECT (protection information, which we do not support), DPO, FUA.
const PROTECT_MASK: u8 = 0xE0;
const DPO: u8 = 0x10;
const FUA: u8 = 0x08;
/// Byte 1 of WRITE SAME(16).
const WS_ANCHOR: u8 = 0x10;
const WS_UNMAP: u8 = 0x08;
/// PBDATA and LBDATA, obsolete in SBC-3.
const WS_OBSOLETE: u8 = 0x06;
const WS_NDOB: u8 = 0x01;
/// Byte 1 of UNMAP.
const UNMAP_ANCHOR: u8 = 0x01;
/// Byte 1 of SYNCHRONIZE CACHE(16).
const IMMED: u8 = 0x02;
/// Byte 1 of INQUIRY: EVPD, and CMDDT (obsolete; must be zero).
const EVPD: u8 = 0x01;
const CMDDT: u8 = 0x02;
/// Byte 1 of MODE SENSE: disable block descriptors.
const DBD: u8 = 0x08;
/// Byte 2 of MODE SENSE: page control (bits 6-7) and page code (bits 0-5).
const PC_SHIFT: u8 = 6;
const PAGE_CODE_MASK: u8 = 0x3F;
/// Byte 1 of service-action commands.
const SERVICE_ACTION_MASK: u8 = 0x1F;
/// Byte 2 of PERSISTENT RESERVE OUT: scope (bits 4-7) and type (bits 0-3);
/// LU_SCOPE (0) is the only scope SPC-4 defines.
const PR_SCOPE_SHIFT: u8 = 4;
const PR_TYPE_MASK: u8 = 0x0F;
/// Control byte (the last one): NACA asks for ACA, which we do not support.
const NACA: u8 = 0x04;

/// Field offsets shared by the 10- and 16-byte block commands.
const FLAGS: usize = 1;
const LBA: usize = 2;
const BLOCKS_10: usize = 7;
const BLOCKS_16: usize = 10;
const CAW_BLOCKS: usize = 13;
const INQUIRY_PAGE: usize = 2;
const INQUIRY_ALLOC: usize = 3;
const READ_CAPACITY_ALLOC: usize = 10;
const PARAM_LEN_10: usize = 7;
const PR_TYPE_BYTE: usize = 2;
const PR_OUT_PARAM_LEN: usize = 5;
const REPORT_LUNS_SELECT: usize = 2;
const REPORT_LUNS_ALLOC: usize = 6;
const MODE_PAGE: usize = 2;
const MODE_SUBPAGE: usize = 3;
const MODE_SENSE_6_ALLOC: usize = 4;

/// A decoded CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cdb {
    TestUnitReady,
    /// Standard INQUIRY data when `page` is `None`, else that VPD page (EVPD).
    Inquiry {
        page: Option<u8>,
        alloc_len: u16,
    },
    ReadCapacity16 {
        alloc_len: u32,
    },
    Read10 {
        lba: u32,
        blocks: u16,
        fua: bool,
        dpo: bool,
    },
    Write10 {
        lba: u32,
        blocks: u16,
        fua: bool,
        dpo: bool,
    },
    Read16 {
        lba: u64,
        blocks: u32,
        fua: bool,
        dpo: bool,
    },
    Write16 {
        lba: u64,
        blocks: u32,
        fua: bool,
        dpo: bool,
    },
    /// `blocks` 0 means to the end of the LU.
    SynchronizeCache16 {
        immed: bool,
        lba: u64,
        blocks: u32,
    },
    /// Data-Out: an UNMAP parameter list ([`super::UnmapParams`]).
    Unmap {
        anchor: bool,
        param_len: u16,
    },
    /// Data-Out: one block, or none with NDOB (write zeroes).
    WriteSame16 {
        lba: u64,
        blocks: u32,
        unmap: bool,
        anchor: bool,
        ndob: bool,
    },
    /// Data-Out: `2 * blocks` blocks, the verify data then the write data.
    CompareAndWrite {
        lba: u64,
        blocks: u8,
        fua: bool,
        dpo: bool,
    },
    PersistentReserveIn {
        action: PrInAction,
        alloc_len: u16,
    },
    /// `pr_type` is `None` for service actions that ignore it (REGISTER,
    /// CLEAR, ...), encoded as 0. Data-Out: [`super::PrOutParams`].
    PersistentReserveOut {
        action: PrOutAction,
        pr_type: Option<PrType>,
        param_len: u32,
    },
    ReportLuns {
        select: u8,
        alloc_len: u32,
    },
    /// `page` is 6 bits.
    ModeSense6 {
        dbd: bool,
        pc: PageControl,
        page: u8,
        subpage: u8,
        alloc_len: u8,
    },
    /// As MODE SENSE(6). LLBAA is accepted and ignored: it only permits
    /// long LBA block descriptors.
    ModeSense10 {
        dbd: bool,
        pc: PageControl,
        page: u8,
        subpage: u8,
        alloc_len: u16,
    },
}

/// MODE SENSE page control: which values of a mode page to return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageControl {
    Current = 0,
    Changeable = 1,
    Default = 2,
    Saved = 3,
}

impl PageControl {
    fn from_bits(bits: u8) -> PageControl {
        match bits & 0x03 {
            0 => PageControl::Current,
            1 => PageControl::Changeable,
            2 => PageControl::Default,
            _ => PageControl::Saved,
        }
    }
}

/// Which way a command's data moves, as seen from the initiator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataDirection {
    None,
    /// Target to initiator (Data-In, iSCSI R bit).
    In,
    /// Initiator to target (Data-Out, iSCSI W bit).
    Out,
}

/// The name of a command this module implements.
fn known_command(opcode: u8) -> Option<&'static str> {
    Some(match opcode {
        OP_TEST_UNIT_READY => "TEST UNIT READY",
        OP_INQUIRY => "INQUIRY",
        OP_MODE_SENSE_6 => "MODE SENSE(6)",
        OP_READ_10 => "READ(10)",
        OP_WRITE_10 => "WRITE(10)",
        OP_UNMAP => "UNMAP",
        OP_MODE_SENSE_10 => "MODE SENSE(10)",
        OP_PERSISTENT_RESERVE_IN => "PERSISTENT RESERVE IN",
        OP_PERSISTENT_RESERVE_OUT => "PERSISTENT RESERVE OUT",
        OP_READ_16 => "READ(16)",
        OP_COMPARE_AND_WRITE => "COMPARE AND WRITE",
        OP_WRITE_16 => "WRITE(16)",
        OP_SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE CACHE(16)",
        OP_WRITE_SAME_16 => "WRITE SAME(16)",
        OP_SERVICE_ACTION_IN_16 => "READ CAPACITY(16)",
        OP_REPORT_LUNS => "REPORT LUNS",
        _ => return None,
    })
}

/// CDB length by the opcode's group code (SAM-5): group 0 is 6 bytes,
/// 1 and 2 are 10, 5 is 12, 4 is 16. Every opcode here has a fixed length.
fn group_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        5 => 12,
        _ => 16,
    }
}

fn rw_flags(fua: bool, dpo: bool) -> u8 {
    (if fua { FUA } else { 0 }) | (if dpo { DPO } else { 0 })
}

impl Cdb {
    pub fn opcode(&self) -> u8 {
        match self {
            Cdb::TestUnitReady => OP_TEST_UNIT_READY,
            Cdb::Inquiry { .. } => OP_INQUIRY,
            Cdb::ReadCapacity16 { .. } => OP_SERVICE_ACTION_IN_16,
            Cdb::Read10 { .. } => OP_READ_10,
            Cdb::Write10 { .. } => OP_WRITE_10,
            Cdb::Read16 { .. } => OP_READ_16,
            Cdb::Write16 { .. } => OP_WRITE_16,
            Cdb::SynchronizeCache16 { .. } => OP_SYNCHRONIZE_CACHE_16,
            Cdb::Unmap { .. } => OP_UNMAP,
            Cdb::WriteSame16 { .. } => OP_WRITE_SAME_16,
            Cdb::CompareAndWrite { .. } => OP_COMPARE_AND_WRITE,
            Cdb::PersistentReserveIn { .. } => OP_PERSISTENT_RESERVE_IN,
            Cdb::PersistentReserveOut { .. } => OP_PERSISTENT_RESERVE_OUT,
            Cdb::ReportLuns { .. } => OP_REPORT_LUNS,
            Cdb::ModeSense6 { .. } => OP_MODE_SENSE_6,
            Cdb::ModeSense10 { .. } => OP_MODE_SENSE_10,
        }
    }

    pub fn name(&self) -> &'static str {
        known_command(self.opcode()).unwrap_or("unknown command")
    }

    /// The command's real length: 6, 10, 12 (REPORT LUNS) or 16 bytes.
    #[allow(clippy::len_without_is_empty, reason = "a CDB is never empty")]
    pub fn len(&self) -> usize {
        group_len(self.opcode())
    }

    /// The CDB in the first [`Cdb::len`] bytes, zeros after (control byte 0).
    pub fn encode(&self) -> [u8; CDB_MAX] {
        let mut c = [0u8; CDB_MAX];
        c[0] = self.opcode();
        match *self {
            Cdb::TestUnitReady => {}
            Cdb::Inquiry { page, alloc_len } => {
                if let Some(page) = page {
                    c[FLAGS] = EVPD;
                    c[INQUIRY_PAGE] = page;
                }
                put16(&mut c, INQUIRY_ALLOC, alloc_len);
            }
            Cdb::ReadCapacity16 { alloc_len } => {
                c[FLAGS] = SA_READ_CAPACITY_16;
                put32(&mut c, READ_CAPACITY_ALLOC, alloc_len);
            }
            Cdb::Read10 {
                lba,
                blocks,
                fua,
                dpo,
            }
            | Cdb::Write10 {
                lba,
                blocks,
                fua,
                dpo,
            } => {
                c[FLAGS] = rw_flags(fua, dpo);
                put32(&mut c, LBA, lba);
                put16(&mut c, BLOCKS_10, blocks);
            }
            Cdb::Read16 {
                lba,
                blocks,
                fua,
                dpo,
            }
            | Cdb::Write16 {
                lba,
                blocks,
                fua,
                dpo,
            } => {
                c[FLAGS] = rw_flags(fua, dpo);
                put64(&mut c, LBA, lba);
                put32(&mut c, BLOCKS_16, blocks);
            }
            Cdb::SynchronizeCache16 { immed, lba, blocks } => {
                c[FLAGS] = if immed { IMMED } else { 0 };
                put64(&mut c, LBA, lba);
                put32(&mut c, BLOCKS_16, blocks);
            }
            Cdb::Unmap { anchor, param_len } => {
                c[FLAGS] = if anchor { UNMAP_ANCHOR } else { 0 };
                put16(&mut c, PARAM_LEN_10, param_len);
            }
            Cdb::WriteSame16 {
                lba,
                blocks,
                unmap,
                anchor,
                ndob,
            } => {
                c[FLAGS] = (if anchor { WS_ANCHOR } else { 0 })
                    | (if unmap { WS_UNMAP } else { 0 })
                    | (if ndob { WS_NDOB } else { 0 });
                put64(&mut c, LBA, lba);
                put32(&mut c, BLOCKS_16, blocks);
            }
            Cdb::CompareAndWrite {
                lba,
                blocks,
                fua,
                dpo,
            } => {
                c[FLAGS] = rw_flags(fua, dpo);
                put64(&mut c, LBA, lba);
                c[CAW_BLOCKS] = blocks;
            }
            Cdb::PersistentReserveIn { action, alloc_len } => {
                c[FLAGS] = action as u8;
                put16(&mut c, PARAM_LEN_10, alloc_len);
            }
            Cdb::PersistentReserveOut {
                action,
                pr_type,
                param_len,
            } => {
                c[FLAGS] = action as u8;
                c[PR_TYPE_BYTE] = pr_type.map_or(0, |t| t as u8);
                put32(&mut c, PR_OUT_PARAM_LEN, param_len);
            }
            Cdb::ReportLuns { select, alloc_len } => {
                c[REPORT_LUNS_SELECT] = select;
                put32(&mut c, REPORT_LUNS_ALLOC, alloc_len);
            }
            Cdb::ModeSense6 {
                dbd,
                pc,
                page,
                subpage,
                alloc_len,
            } => {
                encode_mode_sense(&mut c, dbd, pc, page, subpage);
                c[MODE_SENSE_6_ALLOC] = alloc_len;
            }
            Cdb::ModeSense10 {
                dbd,
                pc,
                page,
                subpage,
                alloc_len,
            } => {
                encode_mode_sense(&mut c, dbd, pc, page, subpage);
                put16(&mut c, PARAM_LEN_10, alloc_len);
            }
        }
        c
    }

    /// Decodes a CDB; `cdb` may be longer than the command (the 16-byte BHS
    /// field). Unknown opcodes are [`ScsiError::UnsupportedOpcode`] (05/20/00),
    /// anything else wrong [`ScsiError::InvalidCdbField`] (05/24/00).
    pub fn decode(cdb: &[u8]) -> Result<Cdb, ScsiError> {
        let Some(&op) = cdb.first() else {
            return Err(ScsiError::InvalidCdbField {
                command: "CDB",
                field: "length",
                value: 0,
            });
        };
        let command = known_command(op).ok_or(ScsiError::UnsupportedOpcode { opcode: op })?;
        let bad = |field: &'static str, value: u64| ScsiError::InvalidCdbField {
            command,
            field,
            value,
        };
        let len = group_len(op);
        let Some(c) = cdb.get(..len) else {
            return Err(bad("CDB length", cdb.len() as u64));
        };
        if c[len - 1] & NACA != 0 {
            return Err(bad("control byte (NACA)", c[len - 1].into()));
        }
        let flags = c[FLAGS];
        let no_protect = || match flags & PROTECT_MASK {
            0 => Ok(()),
            p => Err(bad("RDPROTECT/WRPROTECT", (p >> 5).into())),
        };
        let (fua, dpo) = (flags & FUA != 0, flags & DPO != 0);
        Ok(match op {
            OP_TEST_UNIT_READY => Cdb::TestUnitReady,
            OP_INQUIRY => {
                if flags & CMDDT != 0 {
                    return Err(bad("CMDDT", flags.into()));
                }
                let page = if flags & EVPD != 0 {
                    Some(c[INQUIRY_PAGE])
                } else if c[INQUIRY_PAGE] != 0 {
                    return Err(bad("page code without EVPD", c[INQUIRY_PAGE].into()));
                } else {
                    None
                };
                Cdb::Inquiry {
                    page,
                    alloc_len: be16(c, INQUIRY_ALLOC),
                }
            }
            OP_SERVICE_ACTION_IN_16 => match flags & SERVICE_ACTION_MASK {
                SA_READ_CAPACITY_16 => Cdb::ReadCapacity16 {
                    alloc_len: be32(c, READ_CAPACITY_ALLOC),
                },
                sa => return Err(bad("service action", sa.into())),
            },
            OP_READ_10 | OP_WRITE_10 => {
                no_protect()?;
                let (lba, blocks) = (be32(c, LBA), be16(c, BLOCKS_10));
                if op == OP_READ_10 {
                    Cdb::Read10 {
                        lba,
                        blocks,
                        fua,
                        dpo,
                    }
                } else {
                    Cdb::Write10 {
                        lba,
                        blocks,
                        fua,
                        dpo,
                    }
                }
            }
            OP_READ_16 | OP_WRITE_16 => {
                no_protect()?;
                let (lba, blocks) = (be64(c, LBA), be32(c, BLOCKS_16));
                if op == OP_READ_16 {
                    Cdb::Read16 {
                        lba,
                        blocks,
                        fua,
                        dpo,
                    }
                } else {
                    Cdb::Write16 {
                        lba,
                        blocks,
                        fua,
                        dpo,
                    }
                }
            }
            OP_SYNCHRONIZE_CACHE_16 => Cdb::SynchronizeCache16 {
                immed: flags & IMMED != 0,
                lba: be64(c, LBA),
                blocks: be32(c, BLOCKS_16),
            },
            OP_UNMAP => Cdb::Unmap {
                anchor: flags & UNMAP_ANCHOR != 0,
                param_len: be16(c, PARAM_LEN_10),
            },
            OP_WRITE_SAME_16 => {
                no_protect()?;
                if flags & WS_OBSOLETE != 0 {
                    return Err(bad("PBDATA/LBDATA", flags.into()));
                }
                Cdb::WriteSame16 {
                    lba: be64(c, LBA),
                    blocks: be32(c, BLOCKS_16),
                    unmap: flags & WS_UNMAP != 0,
                    anchor: flags & WS_ANCHOR != 0,
                    ndob: flags & WS_NDOB != 0,
                }
            }
            OP_COMPARE_AND_WRITE => {
                no_protect()?;
                Cdb::CompareAndWrite {
                    lba: be64(c, LBA),
                    blocks: c[CAW_BLOCKS],
                    fua,
                    dpo,
                }
            }
            OP_PERSISTENT_RESERVE_IN => {
                let sa = flags & SERVICE_ACTION_MASK;
                Cdb::PersistentReserveIn {
                    action: PrInAction::from_u8(sa)
                        .ok_or_else(|| bad("service action", sa.into()))?,
                    alloc_len: be16(c, PARAM_LEN_10),
                }
            }
            OP_PERSISTENT_RESERVE_OUT => {
                let sa = flags & SERVICE_ACTION_MASK;
                let action =
                    PrOutAction::from_u8(sa).ok_or_else(|| bad("service action", sa.into()))?;
                let scope_type = c[PR_TYPE_BYTE];
                if scope_type >> PR_SCOPE_SHIFT != 0 {
                    return Err(bad("scope", (scope_type >> PR_SCOPE_SHIFT).into()));
                }
                let pr_type = match scope_type & PR_TYPE_MASK {
                    0 => None,
                    t => Some(PrType::from_u8(t).ok_or_else(|| bad("type", t.into()))?),
                };
                Cdb::PersistentReserveOut {
                    action,
                    pr_type,
                    param_len: be32(c, PR_OUT_PARAM_LEN),
                }
            }
            OP_REPORT_LUNS => Cdb::ReportLuns {
                select: c[REPORT_LUNS_SELECT],
                alloc_len: be32(c, REPORT_LUNS_ALLOC),
            },
            OP_MODE_SENSE_6 => Cdb::ModeSense6 {
                dbd: flags & DBD != 0,
                pc: PageControl::from_bits(c[MODE_PAGE] >> PC_SHIFT),
                page: c[MODE_PAGE] & PAGE_CODE_MASK,
                subpage: c[MODE_SUBPAGE],
                alloc_len: c[MODE_SENSE_6_ALLOC],
            },
            OP_MODE_SENSE_10 => Cdb::ModeSense10 {
                dbd: flags & DBD != 0,
                pc: PageControl::from_bits(c[MODE_PAGE] >> PC_SHIFT),
                page: c[MODE_PAGE] & PAGE_CODE_MASK,
                subpage: c[MODE_SUBPAGE],
                alloc_len: be16(c, PARAM_LEN_10),
            },
            _ => return Err(ScsiError::UnsupportedOpcode { opcode: op }),
        })
    }

    /// Which way the command moves data.
    pub fn data_direction(&self) -> DataDirection {
        match self {
            Cdb::TestUnitReady | Cdb::SynchronizeCache16 { .. } => DataDirection::None,
            Cdb::WriteSame16 { ndob: true, .. } => DataDirection::None,
            Cdb::Inquiry { .. }
            | Cdb::ReadCapacity16 { .. }
            | Cdb::Read10 { .. }
            | Cdb::Read16 { .. }
            | Cdb::PersistentReserveIn { .. }
            | Cdb::ReportLuns { .. }
            | Cdb::ModeSense6 { .. }
            | Cdb::ModeSense10 { .. } => DataDirection::In,
            Cdb::Write10 { .. }
            | Cdb::Write16 { .. }
            | Cdb::Unmap { .. }
            | Cdb::WriteSame16 { .. }
            | Cdb::CompareAndWrite { .. }
            | Cdb::PersistentReserveOut { .. } => DataDirection::Out,
        }
    }

    /// The bytes the command moves in its [`Cdb::data_direction`]: the iSCSI
    /// Expected Data Transfer Length. For Data-In commands with an allocation
    /// length that is the most the target may send.
    pub fn transfer_len(&self, block_size: u32) -> u64 {
        let bs = u64::from(block_size);
        match *self {
            Cdb::TestUnitReady | Cdb::SynchronizeCache16 { .. } => 0,
            Cdb::Inquiry { alloc_len, .. }
            | Cdb::PersistentReserveIn { alloc_len, .. }
            | Cdb::ModeSense10 { alloc_len, .. } => alloc_len.into(),
            Cdb::ModeSense6 { alloc_len, .. } => alloc_len.into(),
            Cdb::ReadCapacity16 { alloc_len } | Cdb::ReportLuns { alloc_len, .. } => {
                alloc_len.into()
            }
            Cdb::Read10 { blocks, .. } | Cdb::Write10 { blocks, .. } => u64::from(blocks) * bs,
            Cdb::Read16 { blocks, .. } | Cdb::Write16 { blocks, .. } => u64::from(blocks) * bs,
            Cdb::Unmap { param_len, .. } => param_len.into(),
            Cdb::WriteSame16 { ndob, .. } => {
                if ndob {
                    0
                } else {
                    bs
                }
            }
            Cdb::CompareAndWrite { blocks, .. } => 2 * u64::from(blocks) * bs,
            Cdb::PersistentReserveOut { param_len, .. } => param_len.into(),
        }
    }
}

fn encode_mode_sense(c: &mut [u8], dbd: bool, pc: PageControl, page: u8, subpage: u8) {
    c[FLAGS] = if dbd { DBD } else { 0 };
    c[MODE_PAGE] = ((pc as u8) << PC_SHIFT) | (page & PAGE_CODE_MASK);
    c[MODE_SUBPAGE] = subpage;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_codes_give_the_real_lengths() {
        for (op, len) in [
            (OP_TEST_UNIT_READY, 6),
            (OP_INQUIRY, 6),
            (OP_MODE_SENSE_6, 6),
            (OP_READ_10, 10),
            (OP_UNMAP, 10),
            (OP_PERSISTENT_RESERVE_OUT, 10),
            (OP_REPORT_LUNS, 12),
            (OP_READ_16, 16),
            (OP_SERVICE_ACTION_IN_16, 16),
        ] {
            assert_eq!(group_len(op), len, "{op:#04x}");
        }
    }

    #[test]
    fn naca_is_refused_in_the_commands_own_last_byte() {
        let mut c = Cdb::TestUnitReady.encode();
        c[5] = NACA;
        assert!(matches!(
            Cdb::decode(&c),
            Err(ScsiError::InvalidCdbField {
                field: "control byte (NACA)",
                ..
            })
        ));
        // Byte 15 is padding for a 6-byte command: not looked at.
        let mut c = Cdb::TestUnitReady.encode();
        c[15] = NACA;
        assert_eq!(Cdb::decode(&c), Ok(Cdb::TestUnitReady));
    }
}

//! SCSI command execution (SPC-4, SBC-3) over a [`BlockDev`]: decoding,
//! unit attentions, reservation conflicts, then the command itself. The
//! answer is status, sense and Data-In; the connection turns it into PDUs.
//! Commands of one connection run here concurrently, on its workers; the
//! LU's lock makes COMPARE AND WRITE and PR OUT atomic against the rest.

use super::buf::IoBuf;
use super::lu::{Epoch, LogicalUnit};
use super::nexus::Nexus;
use super::pages::{self, ModeSense, VPD_BLOCK_CHARACTERISTICS};
use super::pr::{Access, PrError, PrState};
use super::server::Target;
use crate::scsi::cdb::{
    OP_COMPARE_AND_WRITE, OP_INQUIRY, OP_PERSISTENT_RESERVE_OUT, OP_REPORT_LUNS,
};
use crate::scsi::inquiry::{
    PROVISIONING_FULL, PROVISIONING_THIN, VPD_BLOCK_LIMITS, VPD_DEVICE_IDENTIFICATION,
    VPD_PROVISIONING, VPD_SUPPORTED_PAGES, VPD_UNIT_SERIAL,
};
use crate::scsi::sense::{DATA_PROTECT, HARDWARE_ERROR, NO_SENSE};
use crate::scsi::{
    BlockLimits, CapacityData, Cdb, PrInAction, PrOutAction, PrOutParams, Provisioning, ScsiError,
    Sense, Status, SupportedPages, UnitSerial, UnmapParams,
};
use crate::BlockDev;
use std::ops::Deref;

/// The largest READ or WRITE in bytes (VPD 0xB0); Data-Out buffers are
/// bounded by it too.
pub(crate) const MAX_TRANSFER_BYTES: u64 = 8 << 20;
pub(crate) const OPTIMAL_TRANSFER_BYTES: u64 = 1 << 20;
/// COMPARE AND WRITE moves twice its length; at most this many blocks
/// (the most its one-byte length can say), within the transfer limit.
const MAX_CAW_BLOCKS: u64 = 255;
/// libiscsi holds targets to at most 2^20 blocks per UNMAP descriptor.
const MAX_UNMAP_BYTES: u64 = 256 << 20;
const MAX_UNMAP_DESCRIPTORS: usize = 256;
/// WRITE SAME is bounded like a write: initiators (libiscsi's tests) write
/// the range they are about to zero in one command first.
const MAX_WRITE_SAME_BYTES: u64 = MAX_TRANSFER_BYTES;
/// WRITE SAME writes its pattern in buffers of about this size.
const PATTERN_BUFFER: u64 = 1 << 20;
/// VPD 0xB0 byte 4 bit 0: WRITE SAME with zero blocks is refused.
const B0_WSNZ_BYTE: usize = 4;
const WSNZ: u8 = 0x01;

/// Opcodes decoded here rather than by `Cdb::decode`.
const OP_REQUEST_SENSE: u8 = 0x03;
const OP_READ_CAPACITY_10: u8 = 0x25;
const OP_SYNCHRONIZE_CACHE_10: u8 = 0x35;
/// Control byte NACA bit (ACA is not supported).
const NACA: u8 = 0x04;

/// 07/27/00: WRITE PROTECTED.
const WRITE_PROTECTED: Sense = Sense::new(DATA_PROTECT, 0x27, 0x00);
/// 04/44/00: INTERNAL TARGET FAILURE.
const INTERNAL_FAILURE: Sense = Sense::new(HARDWARE_ERROR, 0x44, 0x00);

/// One command as the connection hands it over.
pub(crate) struct Command<'a> {
    pub lun: u16,
    pub cdb: &'a [u8; 16],
    /// The Data-Out received (the iSCSI expected length, or less).
    pub data_out: &'a [u8],
    pub nexus: &'a Nexus,
    /// When the task was accepted, for aborts and resets since.
    pub epoch: Epoch,
}

/// Data-In of an outcome: small answers are built in a `Vec`; READ data
/// is read into a page-aligned buffer (no bounce through O_DIRECT), which
/// the worker keeps for its next read.
pub(crate) enum DataIn {
    Bytes(Vec<u8>),
    Buf(IoBuf),
}

impl DataIn {
    fn truncate(&mut self, n: usize) {
        match self {
            DataIn::Bytes(v) => v.truncate(n),
            DataIn::Buf(b) => b.truncate(n),
        }
    }
}

impl Deref for DataIn {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            DataIn::Bytes(v) => v,
            DataIn::Buf(b) => b,
        }
    }
}

/// How a command ended.
pub(crate) struct Outcome {
    pub status: u8,
    pub sense: Option<Sense>,
    pub data: DataIn,
    /// Data-Out bytes the CDB asked for, for the residual count.
    pub wanted_out: usize,
}

impl Outcome {
    fn good(data: Vec<u8>) -> Outcome {
        Outcome {
            status: Status::GOOD,
            sense: None,
            data: DataIn::Bytes(data),
            wanted_out: 0,
        }
    }

    pub fn check(sense: Sense) -> Outcome {
        Outcome {
            status: Status::CHECK_CONDITION,
            sense: Some(sense),
            data: DataIn::Bytes(Vec::new()),
            wanted_out: 0,
        }
    }

    pub fn status(status: u8) -> Outcome {
        Outcome {
            status,
            sense: None,
            data: DataIn::Bytes(Vec::new()),
            wanted_out: 0,
        }
    }

    fn wants(mut self, n: u64) -> Outcome {
        self.wanted_out = usize::try_from(n).unwrap_or(usize::MAX);
        self
    }

    fn alloc(mut self, alloc_len: u64) -> Outcome {
        self.data
            .truncate(usize::try_from(alloc_len).unwrap_or(usize::MAX));
        self
    }
}

impl From<Result<Vec<u8>, Sense>> for Outcome {
    fn from(r: Result<Vec<u8>, Sense>) -> Outcome {
        match r {
            Ok(d) => Outcome::good(d),
            Err(s) => Outcome::check(s),
        }
    }
}

/// What a CDB decodes to: the shared codec's commands plus a few more.
enum Op {
    Std(Cdb),
    RequestSense { alloc_len: u8 },
    ReadCapacity10,
    SynchronizeCache10 { lba: u64, blocks: u32 },
}

fn decode(c: &[u8; 16]) -> Result<Op, ScsiError> {
    let bad = |command, field, value: u8| ScsiError::InvalidCdbField {
        command,
        field,
        value: value.into(),
    };
    match c[0] {
        OP_REQUEST_SENSE => {
            if c[5] & NACA != 0 {
                return Err(bad("REQUEST SENSE", "control byte (NACA)", c[5]));
            }
            Ok(Op::RequestSense { alloc_len: c[4] })
        }
        OP_READ_CAPACITY_10 => {
            // Without PMI the (obsolete) LBA field must be zero.
            if c[9] & NACA != 0 || (c[8] & 1 == 0 && c[2..6] != [0; 4]) {
                return Err(bad("READ CAPACITY(10)", "LBA/PMI/control", c[8]));
            }
            Ok(Op::ReadCapacity10)
        }
        OP_SYNCHRONIZE_CACHE_10 => {
            if c[9] & NACA != 0 {
                return Err(bad("SYNCHRONIZE CACHE(10)", "control byte (NACA)", c[9]));
            }
            Ok(Op::SynchronizeCache10 {
                lba: u64::from(u32::from_be_bytes([c[2], c[3], c[4], c[5]])),
                blocks: u32::from(u16::from_be_bytes([c[7], c[8]])),
            })
        }
        _ => Cdb::decode(c).map(Op::Std),
    }
}

impl Op {
    /// The reservation class of the command (None: always allowed).
    fn access(&self) -> Option<Access> {
        match self {
            Op::Std(
                Cdb::Read10 { .. }
                | Cdb::Read16 { .. }
                | Cdb::ModeSense6 { .. }
                | Cdb::ModeSense10 { .. },
            ) => Some(Access::Read),
            Op::Std(
                Cdb::Write10 { .. }
                | Cdb::Write16 { .. }
                | Cdb::SynchronizeCache16 { .. }
                | Cdb::Unmap { .. }
                | Cdb::WriteSame16 { .. }
                | Cdb::CompareAndWrite { .. },
            )
            | Op::SynchronizeCache10 { .. } => Some(Access::Write),
            _ => None,
        }
    }
}

/// Runs one command on `tpgt`'s port; a READ takes `spare` as its buffer
/// when it is large enough.
pub(crate) fn execute(
    t: &Target,
    tpgt: u16,
    cmd: &Command<'_>,
    spare: &mut Option<IoBuf>,
) -> Outcome {
    let opcode = cmd.cdb[0];
    let Some(lu) = t.lus.get(&cmd.lun) else {
        return no_lu(t, cmd);
    };
    // CAW and PR OUT exclude every other command on the LU while they run.
    let exclusive = matches!(opcode, OP_COMPARE_AND_WRITE | OP_PERSISTENT_RESERVE_OUT);
    let _exclusive = exclusive.then(|| lu.exclusive());
    let _shared = (!exclusive).then(|| lu.shared());
    {
        let mut st = lu.state();
        if st.epoch(cmd.nexus) != cmd.epoch {
            return Outcome::status(Status::TASK_ABORTED);
        }
        // INQUIRY, REPORT LUNS and REQUEST SENSE do not report unit attentions.
        if !matches!(opcode, OP_INQUIRY | OP_REPORT_LUNS | OP_REQUEST_SENSE) {
            if let Some(ua) = st.take_ua(cmd.nexus) {
                return Outcome::check(ua);
            }
        }
    }
    let op = match decode(cmd.cdb) {
        Ok(op) => op,
        Err(e) => return Outcome::check(e.sense().unwrap_or(Sense::INVALID_FIELD_IN_CDB)),
    };
    if let Some(a) = op.access() {
        if !lu.state().pr.allows(cmd.nexus, a) {
            return Outcome::status(Status::RESERVATION_CONFLICT);
        }
    }
    Exec { t, lu, tpgt, cmd }.run(op, spare)
}

/// A command to a LUN with no LU: INQUIRY and REPORT LUNS still answer.
fn no_lu(t: &Target, cmd: &Command<'_>) -> Outcome {
    match decode(cmd.cdb) {
        Ok(Op::Std(Cdb::Inquiry {
            page: None,
            alloc_len,
        })) => Outcome::good(pages::standard_inquiry(false)).alloc(alloc_len.into()),
        Ok(Op::Std(Cdb::ReportLuns { select, alloc_len })) => report_luns(t, select, alloc_len),
        Ok(Op::RequestSense { alloc_len }) => {
            Outcome::good(Sense::LUN_NOT_SUPPORTED.encode()).alloc(alloc_len.into())
        }
        _ => Outcome::check(Sense::LUN_NOT_SUPPORTED),
    }
}

fn report_luns(t: &Target, select: u8, alloc_len: u32) -> Outcome {
    // SPC-4 §6.33: select 0-2 report the LUNs we have (no well-known ones),
    // and an allocation length under 16 is refused.
    if select > 2 || alloc_len < 16 {
        return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
    }
    Outcome::good(pages::report_luns(t.lus.keys().copied())).alloc(alloc_len.into())
}

/// A BlockDev failure as sense data (logged: the initiator only sees a code).
fn medium_error(lu: &LogicalUnit, e: crate::Error, write: bool) -> Sense {
    match e {
        crate::Error::OutOfRange { .. } => Sense::LBA_OUT_OF_RANGE,
        e => {
            log::warn!("LUN {}: {e}", lu.lun);
            if write {
                Sense::WRITE_ERROR
            } else {
                Sense::READ_ERROR
            }
        }
    }
}

struct Exec<'a> {
    t: &'a Target,
    lu: &'a LogicalUnit,
    tpgt: u16,
    cmd: &'a Command<'a>,
}

impl Exec<'_> {
    fn bs(&self) -> u64 {
        u64::from(self.lu.block_size())
    }

    fn dev(&self) -> &dyn BlockDev {
        &*self.lu.dev
    }

    fn run(&self, op: Op, spare: &mut Option<IoBuf>) -> Outcome {
        let c = match op {
            Op::RequestSense { alloc_len } => {
                let s = self.lu.state().take_ua(self.cmd.nexus);
                let s = s.unwrap_or(Sense::new(NO_SENSE, 0, 0));
                return Outcome::good(s.encode()).alloc(alloc_len.into());
            }
            Op::ReadCapacity10 => return Outcome::good(pages::read_capacity10(self.lu)),
            Op::SynchronizeCache10 { lba, blocks } => return self.sync(lba, blocks),
            Op::Std(c) => c,
        };
        match c {
            Cdb::TestUnitReady => Outcome::good(Vec::new()),
            Cdb::Inquiry { page, alloc_len } => {
                Outcome::from(self.inquiry(page)).alloc(alloc_len.into())
            }
            Cdb::ReadCapacity16 { alloc_len } => {
                Outcome::good(self.capacity().encode().to_vec()).alloc(alloc_len.into())
            }
            Cdb::Read10 { lba, blocks, .. } => self.read(lba.into(), blocks.into(), spare),
            Cdb::Read16 { lba, blocks, .. } => self.read(lba, blocks, spare),
            Cdb::Write10 {
                lba, blocks, fua, ..
            } => self.write(lba.into(), blocks.into(), fua),
            Cdb::Write16 {
                lba, blocks, fua, ..
            } => self.write(lba, blocks, fua),
            Cdb::SynchronizeCache16 { lba, blocks, .. } => self.sync(lba, blocks),
            Cdb::Unmap { anchor, param_len } => {
                self.unmap(anchor, param_len.into()).wants(param_len.into())
            }
            Cdb::WriteSame16 {
                lba,
                blocks,
                unmap: _,
                anchor,
                ndob,
            } => {
                let want = if ndob { 0 } else { self.bs() };
                self.write_same(lba, blocks, anchor, ndob).wants(want)
            }
            Cdb::CompareAndWrite {
                lba, blocks, fua, ..
            } => {
                let want = 2 * u64::from(blocks) * self.bs();
                self.compare_and_write(lba, blocks.into(), fua).wants(want)
            }
            Cdb::PersistentReserveIn { action, alloc_len } => {
                Outcome::from(self.pr_in(action)).alloc(alloc_len.into())
            }
            Cdb::PersistentReserveOut {
                action,
                pr_type,
                param_len,
            } => self
                .pr_out(action, pr_type, param_len.into())
                .wants(param_len.into()),
            Cdb::ReportLuns { select, alloc_len } => report_luns(self.t, select, alloc_len),
            Cdb::ModeSense6 {
                dbd,
                pc,
                page,
                subpage,
                alloc_len,
            } => {
                let r = ModeSense {
                    ten: false,
                    dbd,
                    pc,
                    page,
                    subpage,
                };
                Outcome::from(pages::mode_sense(self.lu, &r)).alloc(alloc_len.into())
            }
            Cdb::ModeSense10 {
                dbd,
                pc,
                page,
                subpage,
                alloc_len,
            } => {
                let r = ModeSense {
                    ten: true,
                    dbd,
                    pc,
                    page,
                    subpage,
                };
                Outcome::from(pages::mode_sense(self.lu, &r)).alloc(alloc_len.into())
            }
        }
    }

    /// `blocks` at `lba` lie inside the LU.
    fn range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.lu.blocks() => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    fn writable(&self) -> Result<(), Sense> {
        if self.lu.read_only {
            return Err(WRITE_PROTECTED);
        }
        Ok(())
    }

    fn physical_ratio(&self) -> u32 {
        (self.dev().physical_sector_size() / self.lu.block_size()).max(1)
    }

    fn capacity(&self) -> CapacityData {
        CapacityData {
            last_lba: self.lu.blocks().saturating_sub(1),
            block_len: self.lu.block_size(),
            physical_exponent: self.physical_ratio().trailing_zeros() as u8,
            lbpme: self.lu.thin,
            lbprz: self.lu.thin,
        }
    }

    fn max_caw_blocks(&self) -> u64 {
        MAX_CAW_BLOCKS.min(MAX_TRANSFER_BYTES / (2 * self.bs()))
    }

    fn inquiry(&self, page: Option<u8>) -> Result<Vec<u8>, Sense> {
        let encoded = |r: Result<Vec<u8>, ScsiError>| r.map_err(|_| INTERNAL_FAILURE);
        let bs = self.bs();
        let thin = self.lu.thin;
        match page {
            None => Ok(pages::standard_inquiry(true)),
            Some(VPD_SUPPORTED_PAGES) => encoded(
                SupportedPages {
                    pages: vec![
                        VPD_SUPPORTED_PAGES,
                        VPD_UNIT_SERIAL,
                        VPD_DEVICE_IDENTIFICATION,
                        VPD_BLOCK_LIMITS,
                        VPD_BLOCK_CHARACTERISTICS,
                        VPD_PROVISIONING,
                    ],
                }
                .encode(),
            ),
            Some(VPD_UNIT_SERIAL) => encoded(
                UnitSerial {
                    serial: self.lu.serial.as_bytes().to_vec(),
                }
                .encode(),
            ),
            Some(VPD_DEVICE_IDENTIFICATION) => encoded(pages::device_identification(
                self.lu,
                &self.t.iqn,
                self.tpgt,
            )),
            Some(VPD_BLOCK_LIMITS) => {
                let ratio = self.physical_ratio();
                let mut b = BlockLimits {
                    max_compare_write_len: self.max_caw_blocks() as u8,
                    opt_transfer_granularity: u16::try_from(ratio).unwrap_or(u16::MAX),
                    max_transfer_len: (MAX_TRANSFER_BYTES / bs) as u32,
                    opt_transfer_len: (OPTIMAL_TRANSFER_BYTES / bs) as u32,
                    max_unmap_lba_count: if thin {
                        (MAX_UNMAP_BYTES / bs) as u32
                    } else {
                        0
                    },
                    max_unmap_descriptors: if thin {
                        MAX_UNMAP_DESCRIPTORS as u32
                    } else {
                        0
                    },
                    unmap_granularity: if thin { ratio } else { 0 },
                    unmap_alignment: thin.then_some(0),
                    max_write_same_len: MAX_WRITE_SAME_BYTES / bs,
                }
                .encode();
                b[B0_WSNZ_BYTE] |= WSNZ;
                Ok(b.to_vec())
            }
            Some(VPD_BLOCK_CHARACTERISTICS) => Ok(pages::block_characteristics()),
            Some(VPD_PROVISIONING) => Ok(Provisioning {
                threshold_exponent: 0,
                lbpu: thin,
                lbpws: thin,
                lbpws10: false,
                lbprz: thin,
                provisioning_type: if thin {
                    PROVISIONING_THIN
                } else {
                    PROVISIONING_FULL
                },
            }
            .encode()
            .to_vec()),
            Some(_) => Err(Sense::INVALID_FIELD_IN_CDB),
        }
    }

    fn read(&self, lba: u64, blocks: u32, spare: &mut Option<IoBuf>) -> Outcome {
        let bs = self.bs();
        let len = u64::from(blocks) * bs;
        if let Err(s) = self.range(lba, blocks.into()) {
            return Outcome::check(s);
        }
        if len > MAX_TRANSFER_BYTES {
            return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut buf = IoBuf::reuse(spare.take(), len as usize);
        if let Err(e) = self.dev().read_at(&mut buf, lba * bs) {
            *spare = Some(buf);
            return Outcome::check(medium_error(self.lu, e, false));
        }
        Outcome {
            status: Status::GOOD,
            sense: None,
            data: DataIn::Buf(buf),
            wanted_out: 0,
        }
    }

    /// Writes what arrived of the data, in whole blocks: an initiator that
    /// sends less than the CDB asks for gets that much written (and an
    /// overflow residual), as libiscsi's residual tests expect.
    fn write(&self, lba: u64, blocks: u32, fua: bool) -> Outcome {
        let bs = self.bs();
        let want = u64::from(blocks) * bs;
        let r = (|| {
            self.range(lba, blocks.into())?;
            if want > MAX_TRANSFER_BYTES {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            self.writable()?;
            let got = (want.min(self.cmd.data_out.len() as u64) / bs * bs) as usize;
            self.dev()
                .write_at(&self.cmd.data_out[..got], lba * bs)
                .map_err(|e| medium_error(self.lu, e, true))?;
            if fua {
                self.dev()
                    .flush()
                    .map_err(|e| medium_error(self.lu, e, true))?;
            }
            Ok(Vec::new())
        })();
        Outcome::from(r).wants(want)
    }

    /// SYNCHRONIZE CACHE: the range is checked, the whole device flushed.
    fn sync(&self, lba: u64, blocks: u32) -> Outcome {
        let r = (|| {
            self.range(lba, blocks.into())?;
            self.dev()
                .flush()
                .map_err(|e| medium_error(self.lu, e, true))?;
            Ok(Vec::new())
        })();
        Outcome::from(r)
    }

    fn param_list(&self, param_len: u64) -> &[u8] {
        let n = usize::try_from(param_len).unwrap_or(usize::MAX);
        &self.cmd.data_out[..n.min(self.cmd.data_out.len())]
    }

    /// UNMAP: each range is zeroed with `write_zeroes` (reads return zeros
    /// afterwards, which is what LBPRZ promises).
    fn unmap(&self, anchor: bool, param_len: u64) -> Outcome {
        let r = (|| {
            if !self.lu.thin {
                return Err(Sense::INVALID_COMMAND_OPCODE);
            }
            if anchor {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            self.writable()?;
            let params = UnmapParams::decode(self.param_list(param_len))
                .map_err(|e| e.sense().unwrap_or(Sense::PARAMETER_LIST_LENGTH_ERROR))?;
            if params.descriptors.len() > MAX_UNMAP_DESCRIPTORS {
                return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
            }
            let bs = self.bs();
            for d in &params.descriptors {
                self.range(d.lba, d.blocks.into())?;
                if u64::from(d.blocks) * bs > MAX_UNMAP_BYTES {
                    return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
                }
            }
            for d in params.descriptors.iter().filter(|d| d.blocks > 0) {
                self.dev()
                    .write_zeroes(d.lba * bs, u64::from(d.blocks) * bs)
                    .map_err(|e| medium_error(self.lu, e, true))?;
            }
            Ok(Vec::new())
        })();
        Outcome::from(r)
    }

    /// WRITE SAME(16): a zero block (or NDOB) becomes `write_zeroes`, which
    /// also serves the UNMAP bit; any other block is written repeatedly.
    fn write_same(&self, lba: u64, blocks: u32, anchor: bool, ndob: bool) -> Outcome {
        let bs = self.bs();
        let total = u64::from(blocks) * bs;
        let r = (|| {
            if anchor || blocks == 0 || total > MAX_WRITE_SAME_BYTES {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            self.range(lba, blocks.into())?;
            self.writable()?;
            let block = if ndob {
                None
            } else {
                let b = self.cmd.data_out.get(..bs as usize);
                Some(b.ok_or(Sense::INVALID_FIELD_IN_CDB)?)
            };
            let err = |e| medium_error(self.lu, e, true);
            match block {
                Some(b) if b.iter().any(|&x| x != 0) => {
                    let per = (PATTERN_BUFFER / bs).max(1);
                    let pattern = b.repeat(per.min(blocks.into()) as usize);
                    let mut at = 0u64;
                    while at < total {
                        let n = (total - at).min(pattern.len() as u64) as usize;
                        self.dev()
                            .write_at(&pattern[..n], lba * bs + at)
                            .map_err(err)?;
                        at += n as u64;
                    }
                }
                _ => self.dev().write_zeroes(lba * bs, total).map_err(err)?,
            }
            Ok(Vec::new())
        })();
        Outcome::from(r)
    }

    /// COMPARE AND WRITE; the caller holds the LU exclusively, so nothing
    /// runs between the compare and the write. The Data-Out must be exactly
    /// the verify and write blocks: anything else is a malformed command.
    fn compare_and_write(&self, lba: u64, blocks: u64, fua: bool) -> Outcome {
        let bs = self.bs();
        let len = (blocks * bs) as usize;
        let r = (|| {
            if blocks > self.max_caw_blocks() || self.cmd.data_out.len() != 2 * len {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            if blocks == 0 {
                return Ok(Vec::new());
            }
            self.range(lba, blocks)?;
            self.writable()?;
            let (verify, write) = self.cmd.data_out.split_at(len);
            let mut current = IoBuf::reuse(None, len);
            self.dev()
                .read_at(&mut current, lba * bs)
                .map_err(|e| medium_error(self.lu, e, false))?;
            if let Some(at) = current.iter().zip(verify).position(|(a, b)| a != b) {
                return Err(Sense::MISCOMPARE_DURING_VERIFY.with_info(at as u64));
            }
            let err = |e| medium_error(self.lu, e, true);
            self.dev().write_at(write, lba * bs).map_err(err)?;
            if fua {
                self.dev().flush().map_err(err)?;
            }
            Ok(Vec::new())
        })();
        Outcome::from(r)
    }

    fn pr_in(&self, action: PrInAction) -> Result<Vec<u8>, Sense> {
        let st = self.lu.state();
        let r = match action {
            PrInAction::ReadKeys => st.pr.read_keys().encode(),
            PrInAction::ReadReservation => Ok(st.pr.read_reservation().encode()),
            PrInAction::ReportCapabilities => Ok(PrState::capabilities().encode().to_vec()),
            PrInAction::ReadFullStatus => st.pr.full_status().encode(),
        };
        r.map_err(|_| INTERNAL_FAILURE)
    }

    fn pr_out(
        &self,
        action: PrOutAction,
        pr_type: Option<crate::scsi::PrType>,
        param_len: u64,
    ) -> Outcome {
        if action == PrOutAction::RegisterAndMove {
            return Outcome::check(Sense::INVALID_FIELD_IN_CDB);
        }
        let params = match PrOutParams::decode(self.param_list(param_len)) {
            Ok(p) => p,
            Err(e) => {
                return Outcome::check(e.sense().unwrap_or(Sense::PARAMETER_LIST_LENGTH_ERROR))
            }
        };
        let tpgts = self.t.tpgts();
        let mut st = self.lu.state();
        match st.pr.out(self.cmd.nexus, action, pr_type, &params, &tpgts) {
            Ok(fx) => {
                st.add_uas(&fx.unit_attentions);
                for n in &fx.aborted {
                    log::info!(
                        "LUN {}: PREEMPT AND ABORT by {} aborts the tasks of {n}",
                        self.lu.lun,
                        self.cmd.nexus
                    );
                    st.abort(n);
                }
                Outcome::good(Vec::new())
            }
            Err(PrError::Conflict) => Outcome::status(Status::RESERVATION_CONFLICT),
            Err(PrError::Check(s)) => Outcome::check(s),
        }
    }
}

//! One LUN over one session as a [`BlockDev`]: identity from VPD 0x83,
//! geometry from READ CAPACITY(16), I/O with READ/WRITE(16), flush with
//! SYNCHRONIZE CACHE(16). Unit attentions are retried here; everything a
//! path can fail with is reported for the multipath layer to act on.

use super::session::{Completion, DataPhase, Owned, Pending, Session};
use super::{pdu, IscsiError};
use crate::scsi::{
    Action, BlockLimits, CapacityData, Cdb, DeviceIdentification, Provisioning, Sense, Status,
    UnitSerial, UnmapDescriptor, UnmapParams,
};
use crate::{BlockDev, DevId, Error, Result};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Unit attentions in a row before a command is failed (each new nexus
/// and each LUN reset gives one; more means the LU keeps changing).
const MAX_UA_RETRIES: usize = 8;
/// Upper bound on one READ/WRITE when the LU does not report one (VPD B0).
const DEFAULT_MAX_TRANSFER: u64 = 8 << 20;
/// VPD pages we read.
const VPD_SERIAL: u8 = 0x80;
const VPD_DEVICE_ID: u8 = 0x83;
const VPD_BLOCK_LIMITS: u8 = 0xB0;
const VPD_PROVISIONING: u8 = 0xB2;
/// BUSY and TASK SET FULL: retried after a growing pause, up to about 5 s
/// in all (then the caller sees the error; the path is not failed).
const BUSY_RETRIES: u32 = 10;
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(10);
const BUSY_MAX_PAUSE: Duration = Duration::from_millis(1000);
/// WRITE SAME length when the LU reports none (VPD B0 0 = not reported).
const DEFAULT_WRITE_SAME_BLOCKS: u64 = 1 << 16;
const VPD_ALLOC: u16 = 4096;

pub struct IscsiLun {
    session: Arc<Session>,
    lun: [u8; 8],
    name: String,
    id: DevId,
    wwid: String,
    serial: String,
    cap: CapacityData,
    block: u32,
    size: u64,
    max_transfer: u64,
    limits: BlockLimits,
    /// Logical block provisioning (VPD B2), when the LU is thin (LBPME).
    provisioning: Option<Provisioning>,
    /// WRITE SAME was refused once: zero with buffers from then on.
    no_write_same: AtomicBool,
}

impl IscsiLun {
    /// Opens LUN `lun` of a logged-in session: clears the new nexus's unit
    /// attention, reads the identity and the geometry.
    /// Several LUNs of one target may share a session.
    pub fn open(session: impl Into<Arc<Session>>, lun: u16) -> Result<IscsiLun, IscsiError> {
        let session = session.into();
        let name = format!("iscsi:{}/lun{lun}", session.addr());
        let mut l = IscsiLun {
            session,
            lun: pdu::encode_lun(lun),
            name,
            id: DevId(String::new()),
            wwid: String::new(),
            serial: String::new(),
            cap: CapacityData {
                last_lba: 0,
                block_len: 512,
                physical_exponent: 0,
                lbpme: false,
                lbprz: false,
            },
            block: 512,
            size: 0,
            max_transfer: DEFAULT_MAX_TRANSFER,
            limits: BlockLimits::default(),
            provisioning: None,
            no_write_same: AtomicBool::new(false),
        };
        l.command(&Cdb::TestUnitReady, DataPhase::None)?;
        let ids = l.vpd(VPD_DEVICE_ID)?;
        let ids = DeviceIdentification::decode(&ids).map_err(IscsiError::Decode)?;
        l.wwid = ids.wwid().ok_or_else(|| {
            IscsiError::Protocol(format!(
                "{}: VPD 0x83 has no logical-unit designator, so paths cannot be matched",
                l.name
            ))
        })?;
        l.id = DevId(format!("wwid:{}", l.wwid));
        // Optional (VPD 0x80): compared across paths when present.
        if let Ok(sn) = l.vpd(VPD_SERIAL) {
            if let Ok(sn) = UnitSerial::decode(&sn) {
                l.serial = String::from_utf8_lossy(&sn.serial).trim().to_string();
            }
        }
        l.read_capacity()?;
        if let Ok(Ok(lim)) = l.vpd(VPD_BLOCK_LIMITS).map(|b| BlockLimits::decode(&b)) {
            if lim.max_transfer_len > 0 {
                l.max_transfer = (u64::from(lim.max_transfer_len) * u64::from(l.block))
                    .min(DEFAULT_MAX_TRANSFER);
            }
            l.limits = lim;
        }
        if l.cap.lbpme {
            if let Ok(Ok(p)) = l.vpd(VPD_PROVISIONING).map(|b| Provisioning::decode(&b)) {
                l.provisioning = Some(p);
            }
        }
        Ok(l)
    }

    /// The Linux-style WWID (e.g. `36…` for NAA-6): the same on every path.
    pub fn wwid(&self) -> &str {
        &self.wwid
    }

    /// The unit serial number (VPD 0x80), empty when the LU has none.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn capacity(&self) -> CapacityData {
        self.cap
    }

    fn read_capacity(&mut self) -> Result<(), IscsiError> {
        let mut buf = [0u8; 32];
        self.command(
            &Cdb::ReadCapacity16 { alloc_len: 32 },
            DataPhase::In(&mut buf),
        )?;
        let cap = CapacityData::decode(&buf).map_err(IscsiError::Decode)?;
        self.size = cap.size_bytes().map_err(IscsiError::Decode)?;
        if !(512..=65536).contains(&cap.block_len) || !cap.block_len.is_power_of_two() {
            return Err(IscsiError::Protocol(format!(
                "{}: logical block length {} is not a power of two in 512..65536",
                self.name, cap.block_len
            )));
        }
        self.block = cap.block_len;
        self.cap = cap;
        Ok(())
    }

    fn vpd(&self, page: u8) -> Result<Vec<u8>, IscsiError> {
        let mut buf = vec![0u8; VPD_ALLOC as usize];
        let done = self.command(
            &Cdb::Inquiry {
                page: Some(page),
                alloc_len: VPD_ALLOC,
            },
            DataPhase::In(&mut buf),
        )?;
        let got = (buf.len() as i64 - done.residual.max(0)) as usize;
        buf.truncate(got);
        Ok(buf)
    }

    /// Runs `cdb`, retrying unit attentions; any other non-GOOD end is an error.
    pub fn command(&self, cdb: &Cdb, mut data: DataPhase<'_>) -> Result<Completion, IscsiError> {
        let bytes = cdb.encode();
        let bytes = &bytes[..cdb.len()];
        let mut pause = BUSY_FIRST_PAUSE;
        let mut busy = 0;
        let mut attentions = 0;
        while attentions < MAX_UA_RETRIES {
            let phase = match &mut data {
                DataPhase::None => DataPhase::None,
                DataPhase::In(b) => DataPhase::In(b),
                DataPhase::Out(b) => DataPhase::Out(b),
            };
            let done = self.session.execute(self.lun, bytes, phase)?;
            match done.status {
                Status::GOOD | Status::CONDITION_MET => return Ok(done),
                Status::CHECK_CONDITION => {
                    let sense = Sense::decode(&done.sense).ok();
                    let retry = matches!(
                        sense.map(|x| x.classify()),
                        Some(
                            Action::Retry
                                | Action::RetryRescan
                                | Action::RetryPrLost
                                | Action::RetryRegroup
                        )
                    );
                    if !retry {
                        return Err(IscsiError::Scsi {
                            lun: self.name.clone(),
                            command: cdb.name(),
                            status: done.status,
                            sense,
                        });
                    }
                    attentions += 1;
                }
                Status::BUSY | Status::TASK_SET_FULL if busy < BUSY_RETRIES => {
                    busy += 1;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(BUSY_MAX_PAUSE);
                }
                status => {
                    return Err(IscsiError::Scsi {
                        lun: self.name.clone(),
                        command: cdb.name(),
                        status,
                        sense: None,
                    })
                }
            }
        }
        Err(IscsiError::Protocol(format!(
            "{}: {} kept getting unit attentions ({MAX_UA_RETRIES} in a row)",
            self.name,
            cdb.name()
        )))
    }

    fn io_err(&self, op: &'static str, offset: u64, len: usize, e: IscsiError) -> Error {
        Error::Io {
            op,
            dev: self.name.clone(),
            offset,
            len: len as u64,
            source: io::Error::other(e),
        }
    }
}

impl IscsiLun {
    /// Reads `buf` at `offset` (aligned, in range), split at the LU's
    /// transfer limit.
    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), IscsiError> {
        let mut at = offset;
        for chunk in buf.chunks_mut(self.max_transfer as usize) {
            let n = chunk.len();
            let cdb = Cdb::Read16 {
                lba: at / u64::from(self.block),
                blocks: (n / self.block as usize) as u32,
                fua: false,
                dpo: false,
            };
            self.command(&cdb, DataPhase::In(chunk))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Starts reading `buf.len()` bytes at `offset` and returns at once,
    /// so that one thread keeps several reads in flight (see
    /// [`Session::start`]); [`PendingRead::wait`] gives the buffer back
    /// filled. Alignment and range as for [`BlockDev::read_at`].
    pub fn start_read(&self, buf: Vec<u8>, offset: u64) -> Result<PendingRead<'_>> {
        crate::check_range(self.block, self.size, offset, buf.len() as u64)?;
        let read = if buf.len() as u64 > self.max_transfer {
            Started::Later(buf)
        } else {
            let cdb = Cdb::Read16 {
                lba: offset / u64::from(self.block),
                blocks: (buf.len() / self.block as usize) as u32,
                fua: false,
                dpo: false,
            };
            let n = buf.len();
            let bytes = cdb.encode();
            let started = self
                .session
                .start(self.lun, &bytes[..cdb.len()], Owned::In(buf));
            Started::Now(started.map_err(|e| self.io_err("read", offset, n, e))?)
        };
        Ok(PendingRead {
            lun: self,
            offset,
            read,
        })
    }

    /// Waits until one of `reads`, all started on this LUN's session, can
    /// be waited for without waiting on the target; returns its index,
    /// `None` when `reads` is empty (see [`Session::wait_any`]).
    pub fn wait_any(&self, reads: &[PendingRead<'_>]) -> Result<Option<usize>> {
        let mut started = Vec::with_capacity(reads.len());
        for (i, r) in reads.iter().enumerate() {
            match &r.read {
                Started::Now(p) => started.push(p),
                Started::Later(_) => return Ok(Some(i)),
            }
        }
        self.session
            .wait_any(&started)
            .map_err(|e| self.io_err("read", 0, 0, e))
    }

    pub fn write(&self, buf: &[u8], offset: u64) -> Result<(), IscsiError> {
        let mut at = offset;
        for chunk in buf.chunks(self.max_transfer as usize) {
            let cdb = Cdb::Write16 {
                lba: at / u64::from(self.block),
                blocks: (chunk.len() / self.block as usize) as u32,
                fua: false,
                dpo: false,
            };
            self.command(&cdb, DataPhase::Out(chunk))?;
            at += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<(), IscsiError> {
        let cdb = Cdb::SynchronizeCache16 {
            immed: false,
            lba: 0,
            blocks: 0,
        };
        self.command(&cdb, DataPhase::None).map(drop)
    }

    /// COMPARE AND WRITE at `offset`: if the blocks there equal `verify`,
    /// they become `write`, atomically against every other command.
    /// `Ok(None)` when written, `Ok(Some(i))` on a miscompare at byte `i`.
    pub fn compare_and_write(
        &self,
        offset: u64,
        verify: &[u8],
        write: &[u8],
    ) -> Result<Option<u64>, IscsiError> {
        let blocks = verify.len() / self.block as usize;
        let max = usize::from(self.limits.max_compare_write_len);
        if verify.len() != write.len() || verify.len() % self.block as usize != 0 || blocks == 0 {
            return Err(IscsiError::Protocol(format!(
                "{}: COMPARE AND WRITE takes two equal runs of whole {}-byte blocks",
                self.name, self.block
            )));
        }
        if blocks > max {
            return Err(IscsiError::Protocol(format!(
                "{}: COMPARE AND WRITE of {blocks} blocks; the LU allows {max} (VPD B0)",
                self.name
            )));
        }
        let mut data = Vec::with_capacity(2 * verify.len());
        data.extend_from_slice(verify);
        data.extend_from_slice(write);
        let cdb = Cdb::CompareAndWrite {
            lba: offset / u64::from(self.block),
            blocks: blocks as u8,
            fua: false,
            dpo: false,
        };
        match self.command(&cdb, DataPhase::Out(&data)) {
            Ok(_) => Ok(None),
            Err(IscsiError::Scsi { sense: Some(s), .. })
                if s.is(Sense::MISCOMPARE_DURING_VERIFY) =>
            {
                Ok(Some(s.info.unwrap_or(0)))
            }
            Err(e) => Err(e),
        }
    }

    /// Deallocates whole blocks (UNMAP), split at the LU's limits. They
    /// read as zeroes afterwards only where the LU says so (LBPRZ).
    pub fn unmap(&self, offset: u64, len: u64) -> Result<(), IscsiError> {
        if self.provisioning.is_none_or(|p| !p.lbpu) {
            return Err(IscsiError::Protocol(format!(
                "{}: the LU does not support UNMAP (VPD B2)",
                self.name
            )));
        }
        let block = u64::from(self.block);
        let per_desc = match self.limits.max_unmap_lba_count {
            0 => u64::from(u32::MAX),
            n => u64::from(n),
        };
        let per_cmd = match self.limits.max_unmap_descriptors {
            0 => 64,
            n => n.min(64) as usize,
        };
        let (mut lba, end) = (offset / block, (offset + len) / block);
        while lba < end {
            let mut descriptors = Vec::new();
            while lba < end && descriptors.len() < per_cmd {
                let n = (end - lba).min(per_desc);
                descriptors.push(UnmapDescriptor {
                    lba,
                    blocks: n as u32,
                });
                lba += n;
            }
            let params = UnmapParams { descriptors }
                .encode()
                .map_err(IscsiError::Decode)?;
            let cdb = Cdb::Unmap {
                anchor: false,
                param_len: params.len() as u16,
            };
            self.command(&cdb, DataPhase::Out(&params))?;
        }
        Ok(())
    }

    /// Zeroes with WRITE SAME(16) of one zero block, deallocating where the
    /// LU guarantees deallocated blocks read as zeroes (LBPWS and LBPRZ).
    pub(crate) fn write_same_zeroes(&self, offset: u64, len: u64) -> Result<(), IscsiError> {
        let unmap = self.provisioning.is_some_and(|p| p.lbpws && p.lbprz);
        let block = u64::from(self.block);
        let step = match self.limits.max_write_same_len {
            0 => DEFAULT_WRITE_SAME_BLOCKS,
            n => n.min(u64::from(u32::MAX)),
        };
        let zero = vec![0u8; self.block as usize];
        let (mut lba, end) = (offset / block, (offset + len) / block);
        while lba < end {
            let n = (end - lba).min(step);
            let cdb = Cdb::WriteSame16 {
                lba,
                blocks: n as u32,
                unmap,
                anchor: false,
                ndob: false,
            };
            self.command(&cdb, DataPhase::Out(&zero))?;
            lba += n;
        }
        Ok(())
    }

    /// TEST UNIT READY: the path checker's probe.
    pub fn test_unit_ready(&self) -> Result<(), IscsiError> {
        self.command(&Cdb::TestUnitReady, DataPhase::None).map(drop)
    }
}

/// `write_zeroes` of an LU reached one way or another (one session, a
/// multipath map): WRITE SAME through `write_same` until the LU refuses it
/// (remembered in `refused`; `label` names the LU in the log), zero-buffer
/// writes to `dev` from then on.
pub(crate) fn zero_range<D: BlockDev + ?Sized>(
    dev: &D,
    label: &dyn std::fmt::Display,
    refused: &AtomicBool,
    (offset, len): (u64, u64),
    write_same: impl FnOnce() -> Result<(), IscsiError>,
    io_err: impl FnOnce(IscsiError) -> Error,
) -> Result<()> {
    if !refused.load(Ordering::Relaxed) {
        match write_same() {
            Ok(()) => return Ok(()),
            // Not taken (or not in the form we send): zero with writes.
            Err(IscsiError::Scsi { sense: Some(s), .. })
                if s.is(Sense::INVALID_COMMAND_OPCODE) || s.is(Sense::INVALID_FIELD_IN_CDB) =>
            {
                log::info!("{label}: WRITE SAME refused ({s}); zeroing with writes");
                refused.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    crate::write_zero_buffers(dev, offset, len)
}

/// A read started by [`IscsiLun::start_read`].
#[must_use = "a started read is waited for, or dropped to give it up"]
pub struct PendingRead<'l> {
    lun: &'l IscsiLun,
    offset: u64,
    read: Started<'l>,
}

enum Started<'l> {
    Now(Pending<'l>),
    /// Over the LU's transfer limit: read in pieces when waited for.
    Later(Vec<u8>),
}

impl PendingRead<'_> {
    /// Waits for the read; gives the buffer back filled.
    pub fn wait(self) -> Result<Vec<u8>> {
        let lun = self.lun;
        let (ended, mut buf) = match self.read {
            Started::Now(p) => {
                let (r, data) = p.wait();
                (Some(r), data.into_buf())
            }
            Started::Later(b) => (None, b),
        };
        let n = buf.len();
        match ended {
            Some(Ok(c)) if matches!(c.status, Status::GOOD | Status::CONDITION_MET) => {
                return Ok(buf)
            }
            Some(Err(e)) => return Err(lun.io_err("read", self.offset, n, e)),
            // A unit attention, BUSY, an error status: the read again on
            // the waiting path, which retries what can be retried and
            // reports the rest.
            Some(Ok(_)) | None => {}
        }
        lun.read(&mut buf, self.offset)
            .map_err(|e| lun.io_err("read", self.offset, n, e))?;
        Ok(buf)
    }
}

impl BlockDev for IscsiLun {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::check_range(self.block, self.size, offset, buf.len() as u64)?;
        let n = buf.len();
        self.read(buf, offset)
            .map_err(|e| self.io_err("read", offset, n, e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        crate::check_range(self.block, self.size, offset, buf.len() as u64)?;
        self.write(buf, offset)
            .map_err(|e| self.io_err("write", offset, buf.len(), e))
    }

    fn flush(&self) -> Result<()> {
        self.sync().map_err(|e| self.io_err("flush", 0, 0, e))
    }

    /// WRITE SAME(16) where the LU takes it; zero buffers where it refuses
    /// (tgtd refuses WRITE SAME on LUs that are not thin).
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(self.block, self.size, offset, len)?;
        zero_range(
            self,
            &self.name,
            &self.no_write_same,
            (offset, len),
            || self.write_same_zeroes(offset, len),
            |e| self.io_err("write zeroes", offset, len as usize, e),
        )
    }

    fn zeroes_cheaply(&self) -> bool {
        !self.no_write_same.load(Ordering::Relaxed)
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn logical_sector_size(&self) -> u32 {
        self.block
    }

    fn physical_sector_size(&self) -> u32 {
        self.block << self.cap.physical_exponent.min(8)
    }

    fn identity(&self) -> &DevId {
        &self.id
    }
}

//! Fault injection for crash tests. A test first runs an operation to count
//! its writes ([`FaultControl::writes`]), then replays it once per write index
//! with [`Fault::CrashAtWrite`] (or a torn write) and checks that recovery sees
//! either the old or the new state. One [`FaultControl`] is shared by all the
//! devices of a test, so the write index spans them (a VG on several PVs).

use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::{check_io, BlockDev, DevId, Error, Result};

/// What happens at the first write whose global index is at least `index`.
/// From that write on the devices are crashed: writes and flushes fail with
/// [`Error::Injected`] without being applied; reads still work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// No crash; writes are only counted.
    #[default]
    None,
    /// The write is not applied.
    CrashAtWrite(u64),
    /// Only the first `keep_bytes` bytes of the write are applied (possibly
    /// part of a sector: a device without atomic sector writes).
    TearWrite { index: u64, keep_bytes: usize },
    /// Only the first `keep_sectors` logical sectors of the write are applied.
    TearWriteSectors { index: u64, keep_sectors: usize },
}

#[derive(Debug, Default)]
struct State {
    fault: Fault,
    writes: u64,
    crashed: bool,
    fail_reads: Option<Range<u64>>,
    fail_writes: Option<Range<u64>>,
    read_delay: Duration,
    write_delay: Duration,
}

/// Shared fault settings and write counter; clones are handles to the same state.
#[derive(Clone, Debug, Default)]
pub struct FaultControl {
    state: Arc<Mutex<State>>,
}

impl FaultControl {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the crash mode and clears an earlier crash (a "reboot"); the
    /// write counter keeps running, [`FaultControl::reset`] restarts it.
    pub fn set(&self, fault: Fault) {
        let mut st = self.lock();
        st.fault = fault;
        st.crashed = false;
    }

    pub fn fault(&self) -> Fault {
        self.lock().fault
    }

    /// Writes attempted so far (including failed ones): the next write's index.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// True once a crash fault has fired.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Reads overlapping this byte range (on any device) fail; `None` clears.
    pub fn fail_reads(&self, range: Option<Range<u64>>) {
        self.lock().fail_reads = range;
    }

    /// Writes overlapping this byte range (on any device) fail without being
    /// applied and without crashing; `None` clears.
    pub fn fail_writes(&self, range: Option<Range<u64>>) {
        self.lock().fail_writes = range;
    }

    /// Sleeps before every read and every write (slow-LUN tests).
    pub fn set_delay(&self, read: Duration, write: Duration) {
        let mut st = self.lock();
        st.read_delay = read;
        st.write_delay = write;
    }

    /// Clears faults, failing ranges, delays, the crash and the write counter.
    pub fn reset(&self) {
        *self.lock() = State::default();
    }
}

/// What one write does, decided under the lock.
enum Action {
    Apply,
    Fail(String),
    Tear(usize),
}

fn overlaps(range: &Option<Range<u64>>, offset: u64, len: usize) -> bool {
    let end = offset.saturating_add(len as u64);
    range
        .as_ref()
        .is_some_and(|r| len > 0 && offset < r.end && r.start < end)
}

/// A device whose I/O obeys a [`FaultControl`].
pub struct FaultDev {
    inner: Arc<dyn BlockDev>,
    ctl: FaultControl,
}

impl FaultDev {
    pub fn new(inner: Arc<dyn BlockDev>, ctl: FaultControl) -> FaultDev {
        FaultDev { inner, ctl }
    }

    pub fn control(&self) -> &FaultControl {
        &self.ctl
    }

    pub fn inner(&self) -> &Arc<dyn BlockDev> {
        &self.inner
    }

    /// Counts a write, decides what happens to it, then waits out the
    /// configured write delay (with the control unlocked).
    fn decide_write(&self, offset: u64, len: usize) -> Action {
        let (action, delay) = self.decide(offset, len);
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        action
    }

    fn decide(&self, offset: u64, len: usize) -> (Action, Duration) {
        let mut st = self.ctl.lock();
        let index = st.writes;
        st.writes += 1;
        let what = || {
            format!(
                "write #{index} of {len} bytes at {offset} on {}",
                self.inner.identity()
            )
        };
        let action = if st.crashed {
            Action::Fail(format!("{}: device crashed", what()))
        } else {
            let sector = self.inner.logical_sector_size() as usize;
            let tear = match st.fault {
                Fault::None => None,
                Fault::CrashAtWrite(n) => (index >= n).then_some(0),
                Fault::TearWrite {
                    index: n,
                    keep_bytes,
                } => (index >= n).then_some(keep_bytes),
                Fault::TearWriteSectors {
                    index: n,
                    keep_sectors,
                } => (index >= n).then_some(keep_sectors.saturating_mul(sector)),
            };
            match tear {
                Some(keep) => {
                    st.crashed = true;
                    Action::Tear(keep.min(len))
                }
                None if overlaps(&st.fail_writes, offset, len) => {
                    Action::Fail(format!("{}: EIO (failing range)", what()))
                }
                None => Action::Apply,
            }
        };
        (action, st.write_delay)
    }

    /// Applies the first `keep` bytes of a write; a partial sector is merged
    /// with the sector's current contents, since the inner device only takes
    /// whole sectors.
    fn apply_prefix(&self, buf: &[u8], offset: u64, keep: usize) -> Result<()> {
        let sector = self.inner.logical_sector_size() as usize;
        let full = keep - keep % sector;
        if full > 0 {
            self.inner.write_at(&buf[..full], offset)?;
        }
        if keep > full {
            let mut tmp = vec![0u8; sector];
            let at = offset + full as u64;
            self.inner.read_at(&mut tmp, at)?;
            tmp[..keep - full].copy_from_slice(&buf[full..keep]);
            self.inner.write_at(&tmp, at)?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for FaultDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultDev")
            .field("inner", self.inner.identity())
            .field("ctl", &self.ctl)
            .finish()
    }
}

impl BlockDev for FaultDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        let (fail, delay) = {
            let st = self.ctl.lock();
            (overlaps(&st.fail_reads, offset, buf.len()), st.read_delay)
        };
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if fail {
            let len = buf.len();
            return Err(Error::Injected(format!(
                "read of {len} bytes at {offset} on {}: EIO (failing range)",
                self.inner.identity()
            )));
        }
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        match self.decide_write(offset, buf.len()) {
            Action::Apply => self.inner.write_at(buf, offset),
            Action::Fail(msg) => Err(Error::Injected(msg)),
            Action::Tear(keep) => {
                self.apply_prefix(buf, offset, keep)?;
                Err(Error::Injected(format!(
                    "write of {} bytes at {offset} on {}: crashed after {keep} bytes",
                    buf.len(),
                    self.inner.identity()
                )))
            }
        }
    }

    /// One write index like any write, zeroed through the inner device's
    /// own primitive; a tear keeps whole sectors of it.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(self.logical_sector_size(), self.size(), offset, len)?;
        match self.decide_write(offset, len as usize) {
            Action::Apply => self.inner.write_zeroes(offset, len),
            Action::Fail(msg) => Err(Error::Injected(msg)),
            Action::Tear(keep) => {
                let sector = self.inner.logical_sector_size() as usize;
                let full = (keep - keep % sector) as u64;
                if full > 0 {
                    self.inner.write_zeroes(offset, full)?;
                }
                Err(Error::Injected(format!(
                    "write zeroes of {len} bytes at {offset} on {}: crashed after {full} bytes",
                    self.inner.identity()
                )))
            }
        }
    }

    fn zeroes_cheaply(&self) -> bool {
        self.inner.zeroes_cheaply()
    }

    fn flush(&self) -> Result<()> {
        if self.ctl.crashed() {
            return Err(Error::Injected(format!(
                "flush of {}: device crashed",
                self.inner.identity()
            )));
        }
        self.inner.flush()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }

    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }

    fn identity(&self) -> &DevId {
        self.inner.identity()
    }
}

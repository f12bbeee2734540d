//! One logical unit: the device, its identity, the lock that makes COMPARE
//! AND WRITE and PR OUT atomic against every other command, and the state
//! shared by all nexuses: persistent reservations, pending unit attentions
//! and task-abort epochs.

use super::config::LunConfig;
use super::nexus::Nexus;
use super::pr::PrState;
use crate::scsi::Sense;
use crate::BlockDev;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// IEEE company ID in NAA-6 designators: a CID (the "X" bit set, low nibble
/// 0xA of the first octet), spelling "ZSV"; the rest is a hash of the LU id.
const COMPANY_ID: u32 = 0x5A_53_56;
const NAA_IEEE_REGISTERED_EXTENDED: u8 = 0x6;
/// Unit attentions kept per nexus; older ones are dropped (a nexus that
/// never sends commands must not grow the queue without bound).
const MAX_UNIT_ATTENTIONS: usize = 8;

/// When a task was accepted: a later reset or abort of its nexus makes it stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Epoch {
    resets: u64,
    nexus: u64,
}

#[derive(Default)]
pub(crate) struct LuState {
    pub pr: PrState,
    unit_attentions: HashMap<Nexus, VecDeque<Sense>>,
    aborts: HashMap<Nexus, u64>,
    resets: u64,
}

impl LuState {
    fn add_ua(&mut self, n: &Nexus, s: Sense) {
        let q = self.unit_attentions.entry(n.clone()).or_default();
        if q.iter().any(|x| x.is(s)) {
            return;
        }
        if q.len() == MAX_UNIT_ATTENTIONS {
            q.pop_back();
        }
        // A reset outranks every other condition (SAM-5 §5.14).
        if s.is(Sense::POWER_ON_RESET) {
            q.push_front(s);
        } else {
            q.push_back(s);
        }
    }

    /// A login of `n`: its first command sees POWER ON/RESET.
    pub fn nexus_login(&mut self, n: &Nexus) {
        self.add_ua(n, Sense::POWER_ON_RESET);
    }

    pub fn take_ua(&mut self, n: &Nexus) -> Option<Sense> {
        self.unit_attentions.get_mut(n)?.pop_front()
    }

    pub fn add_uas(&mut self, uas: &[(Nexus, Sense)]) {
        for (n, s) in uas {
            self.add_ua(n, *s);
        }
    }

    /// LUN RESET: every task accepted so far is aborted and every nexus
    /// that ever logged in sees POWER ON/RESET.
    pub fn reset(&mut self) {
        self.resets += 1;
        let all: Vec<Nexus> = self.unit_attentions.keys().cloned().collect();
        for n in all {
            self.add_ua(&n, Sense::POWER_ON_RESET);
        }
    }

    /// Aborts the tasks `n` has accepted so far (PREEMPT AND ABORT).
    pub fn abort(&mut self, n: &Nexus) {
        *self.aborts.entry(n.clone()).or_default() += 1;
    }

    pub fn epoch(&self, n: &Nexus) -> Epoch {
        Epoch {
            resets: self.resets,
            nexus: self.aborts.get(n).copied().unwrap_or(0),
        }
    }
}

pub(crate) struct LogicalUnit {
    pub lun: u16,
    pub dev: Arc<dyn BlockDev>,
    pub thin: bool,
    pub read_only: bool,
    /// The NAA-6 designator value (16 bytes) and the unit serial number.
    pub naa: [u8; 16],
    pub serial: String,
    /// Shared by ordinary commands; exclusive for COMPARE AND WRITE, PR OUT
    /// and LUN RESET, so they see no command half done.
    io: RwLock<()>,
    state: Mutex<LuState>,
}

impl LogicalUnit {
    pub fn new(c: &LunConfig) -> LogicalUnit {
        let mut h = md5::Context::new();
        h.consume(b"ssv-target-lu:");
        h.consume(c.id.as_bytes());
        let digest = h.finalize().0;
        let mut naa = digest;
        naa[0] = (NAA_IEEE_REGISTERED_EXTENDED << 4) | ((COMPANY_ID >> 20) as u8 & 0x0f);
        naa[1] = (COMPANY_ID >> 12) as u8;
        naa[2] = (COMPANY_ID >> 4) as u8;
        naa[3] = ((COMPANY_ID as u8 & 0x0f) << 4) | (digest[3] & 0x0f);
        let serial = digest.iter().map(|b| format!("{b:02x}")).collect();
        LogicalUnit {
            lun: c.lun,
            dev: c.dev.clone(),
            thin: c.thin,
            read_only: c.read_only,
            naa,
            serial,
            io: RwLock::new(()),
            state: Mutex::new(LuState::default()),
        }
    }

    pub fn shared(&self) -> RwLockReadGuard<'_, ()> {
        self.io.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.io.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn state(&self) -> MutexGuard<'_, LuState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn block_size(&self) -> u32 {
        self.dev.logical_sector_size()
    }

    /// Capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.dev.size() / u64::from(self.block_size())
    }
}

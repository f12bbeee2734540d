//! Fault hooks for tests: per-portal delay, dropped connections, refused
//! connections, a blackholed portal (connections stay open but nothing is
//! read or answered, like an iptables DROP rule), and injected SCSI errors.
//! A [`Faults`] handle is cloneable and takes effect on running connections.

use super::registry::Registry;
use crate::scsi::Sense;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Answers the next `count` SCSI commands (of `opcode` only, when set) with
/// `status` and, for CHECK CONDITION, `sense`, instead of running them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    pub status: u8,
    pub sense: Option<Sense>,
    pub count: u32,
    pub opcode: Option<u8>,
}

impl Injection {
    /// CHECK CONDITION with `sense` for the next `count` commands.
    pub fn sense(sense: Sense, count: u32) -> Injection {
        Injection {
            status: crate::scsi::Status::CHECK_CONDITION,
            sense: Some(sense),
            count,
            opcode: None,
        }
    }

    /// A bare status (BUSY, TASK SET FULL, RESERVATION CONFLICT…).
    pub fn status(status: u8, count: u32) -> Injection {
        Injection {
            status,
            sense: None,
            count,
            opcode: None,
        }
    }

    /// Only commands with this operation code count.
    pub fn only(mut self, opcode: u8) -> Injection {
        self.opcode = Some(opcode);
        self
    }
}

#[derive(Default)]
struct PortalFaults {
    delay_us: AtomicU64,
    refuse: AtomicBool,
    blackhole: AtomicBool,
}

struct FaultState {
    portals: Vec<PortalFaults>,
    injections: Mutex<Vec<Injection>>,
    registry: Arc<Registry>,
}

/// The fault controls of one running target. Portals are numbered as in
/// `TargetConfig::portals`.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<FaultState>,
}

impl Faults {
    pub(crate) fn new(portals: usize, registry: Arc<Registry>) -> Faults {
        Faults {
            inner: Arc::new(FaultState {
                portals: (0..portals).map(|_| PortalFaults::default()).collect(),
                injections: Mutex::new(Vec::new()),
                registry,
            }),
        }
    }

    fn portal(&self, p: usize) -> Option<&PortalFaults> {
        let f = self.inner.portals.get(p);
        if f.is_none() {
            log::warn!("fault hook for portal {p}, which does not exist: ignored");
        }
        f
    }

    /// Waits `d` before each answer on portal `p` (zero: no delay).
    pub fn set_delay(&self, p: usize, d: Duration) {
        if let Some(f) = self.portal(p) {
            let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            f.delay_us.store(us, Ordering::SeqCst);
        }
    }

    /// Closes every connection of portal `p` now (the initiator sees EOF or RST).
    pub fn drop_connections(&self, p: usize) {
        if self.portal(p).is_some() {
            self.inner.registry.close_portal(p);
        }
    }

    /// While on, new connections to portal `p` are closed as soon as accepted.
    pub fn refuse_connections(&self, p: usize, on: bool) {
        if let Some(f) = self.portal(p) {
            f.refuse.store(on, Ordering::SeqCst);
        }
    }

    /// While on, portal `p` neither reads nor answers: existing connections
    /// hang, new ones connect but get no login answer.
    pub fn blackhole(&self, p: usize, on: bool) {
        if let Some(f) = self.portal(p) {
            f.blackhole.store(on, Ordering::SeqCst);
        }
    }

    /// Queues an injected answer; injections are used in the order added.
    pub fn inject(&self, i: Injection) {
        self.injections().push(i);
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        for f in &self.inner.portals {
            f.delay_us.store(0, Ordering::SeqCst);
            f.refuse.store(false, Ordering::SeqCst);
            f.blackhole.store(false, Ordering::SeqCst);
        }
        self.injections().clear();
    }

    fn injections(&self) -> std::sync::MutexGuard<'_, Vec<Injection>> {
        self.inner
            .injections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn delay(&self, p: usize) -> Duration {
        self.inner.portals.get(p).map_or(Duration::ZERO, |f| {
            Duration::from_micros(f.delay_us.load(Ordering::SeqCst))
        })
    }

    pub(crate) fn refusing(&self, p: usize) -> bool {
        self.inner
            .portals
            .get(p)
            .is_some_and(|f| f.refuse.load(Ordering::SeqCst))
    }

    pub(crate) fn blackholed(&self, p: usize) -> bool {
        self.inner
            .portals
            .get(p)
            .is_some_and(|f| f.blackhole.load(Ordering::SeqCst))
    }

    /// The injected answer for a command with `opcode`, if one is due.
    pub(crate) fn take(&self, opcode: u8) -> Option<(u8, Option<Sense>)> {
        let mut q = self.injections();
        let i = q
            .iter()
            .position(|i| i.count > 0 && i.opcode.is_none_or(|o| o == opcode))?;
        let inj = &mut q[i];
        inj.count -= 1;
        let out = (inj.status, inj.sense);
        if inj.count == 0 {
            q.remove(i);
        }
        Some(out)
    }
}

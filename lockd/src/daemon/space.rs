//! A joined lockspace: our host id lease, its renewal thread, the resource
//! leases held through it, and what happens when renewal fails.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::clock::instant_ns;
use crate::delta::HostId;
use crate::leaseio::LeaseDev;
use crate::paxos::{Held, Resource};
use crate::proto::{Event, LeaseInfo, LockspaceSpec, ResourceSpec};
use crate::record::FORCE_KILL;

use super::fence;

/// Who holds a lease on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A registered client connection (released when it closes).
    Conn(u64),
    /// A process named by pid (released when it exits).
    Pid(u32),
}

#[derive(Debug)]
pub struct LocalLease {
    pub spec: ResourceSpec,
    pub res: Arc<Resource>,
    pub held: Held,
    /// Holders and their pids; several only for a shared lease.
    pub holders: Vec<(Holder, u32)>,
}

/// Notifications from a lockspace to the connections that care.
pub trait Notify: Send + Sync {
    fn event(&self, holder: Holder, ev: &Event);
}

pub struct Space {
    pub spec: LockspaceSpec,
    pub host: Arc<HostId>,
    pub dev: Arc<LeaseDev>,
    leases: Mutex<HashMap<String, LocalLease>>,
    /// Resources being acquired now (a second local acquire is busy).
    pub acquiring: Mutex<HashSet<String>>,
    /// Leases whose release failed (I/O error); retried after renewals.
    release_retry: Mutex<Vec<(Arc<Resource>, Held)>>,
    failed: Mutex<Option<String>>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Space {
    pub fn new(spec: LockspaceSpec, host: Arc<HostId>, dev: Arc<LeaseDev>) -> Arc<Space> {
        Arc::new(Space {
            spec,
            host,
            dev,
            leases: Mutex::new(HashMap::new()),
            acquiring: Mutex::new(HashSet::new()),
            release_retry: Mutex::new(Vec::new()),
            failed: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    pub fn leases(&self) -> MutexGuard<'_, HashMap<String, LocalLease>> {
        lock(&self.leases)
    }

    pub fn failed(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    pub fn valid_until_ns(&self) -> u64 {
        instant_ns(self.host.valid_until())
    }

    pub fn info(&self, l: &LocalLease, pid: u32) -> LeaseInfo {
        LeaseInfo {
            spec: l.spec.clone(),
            shared: l.held.shared,
            lver: l.held.leader.lver,
            pid,
            valid_until_ns: self.valid_until_ns(),
        }
    }

    /// Releases on disk, or queues the release for retry if the I/O fails.
    pub fn release_on_disk(&self, res: Arc<Resource>, held: Held) -> crate::Result<()> {
        match res.release(&self.host, &held) {
            Ok(()) => Ok(()),
            Err(e @ (crate::Error::Io { .. } | crate::Error::Timeout { .. })) => {
                log::warn!(
                    "release of {}:{} failed ({e}); retrying after the next renewal",
                    res.space,
                    res.name
                );
                lock(&self.release_retry).push((res, held));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes `holder` from every lease it holds; frees the disk lease when
    /// no local holder is left.
    pub fn drop_holder(&self, holder: Holder) {
        let mut freed = Vec::new();
        {
            let mut leases = self.leases();
            leases.retain(|_, l| {
                l.holders.retain(|(h, _)| *h != holder);
                if l.holders.is_empty() {
                    freed.push((l.res.clone(), l.held.clone()));
                    false
                } else {
                    true
                }
            });
        }
        if self.failed().is_some() {
            return;
        }
        for (res, held) in freed {
            let _ = self.release_on_disk(res, held);
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The renewal loop: renew every id_renewal (every io_timeout after a
    /// failure), and fail the lockspace when renewals have failed for
    /// id_renewal_fail.
    pub fn run_renewal(self: Arc<Self>, notify: Arc<dyn Notify>) {
        let t = self.host.timeouts;
        let mut next = Instant::now() + t.id_renewal();
        let mut warned = false;
        while !self.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
                continue;
            }
            let attempt = Instant::now();
            match self.host.renew() {
                Ok(r) => {
                    warned = false;
                    next = attempt + t.id_renewal();
                    self.after_renewal(&r.requested_by, &*notify);
                }
                Err(e) => {
                    next = attempt + t.io();
                    let age = self.host.renewal_age();
                    if age >= t.id_renewal_fail() || matches!(e, crate::Error::RenewCorrupt { .. })
                    {
                        self.fail(&format!("renewal failing for {age:?}: {e}"), &*notify);
                        return;
                    }
                    if age >= t.id_renewal_warn() && !warned {
                        warned = true;
                        log::warn!(
                            "lockspace {}: no renewal for {age:?}: {e}",
                            self.spec.lockspace
                        );
                    } else {
                        log::info!("lockspace {}: renewal failed: {e}", self.spec.lockspace);
                    }
                }
            }
        }
    }

    fn after_renewal(&self, requested_by: &[u64], notify: &dyn Notify) {
        let until = self.valid_until_ns();
        let holders: Vec<Holder> = self
            .leases()
            .values()
            .flat_map(|l| l.holders.iter().map(|(h, _)| *h))
            .collect();
        let ev = Event::Renewed {
            lockspace: self.spec.lockspace.clone(),
            valid_until_ns: until,
        };
        for h in holders.iter().collect::<HashSet<_>>() {
            notify.event(*h, &ev);
        }
        let retry = std::mem::take(&mut *lock(&self.release_retry));
        for (res, held) in retry {
            let _ = self.release_on_disk(res, held);
        }
        if !requested_by.is_empty() {
            self.examine_requests(notify);
        }
    }

    /// Another host set our bit: look at the request record of each lease
    /// we hold; a request for a newer version is passed to the holders, and
    /// FORCE_KILL stops them.
    fn examine_requests(&self, notify: &dyn Notify) {
        let held: Vec<(String, Arc<Resource>, u64, Vec<(Holder, u32)>)> = self
            .leases()
            .iter()
            .map(|(k, l)| {
                (
                    k.clone(),
                    l.res.clone(),
                    l.held.leader.lver,
                    l.holders.clone(),
                )
            })
            .collect();
        for (name, res, lver, holders) in held {
            let Ok(req) = res.read_request() else {
                continue;
            };
            if req.lver <= lver || req.force_mode == 0 {
                continue;
            }
            log::warn!(
                "lockspace {} resource {name}: another host requests it (force mode {})",
                self.spec.lockspace,
                req.force_mode
            );
            let ev = Event::Requested {
                lockspace: self.spec.lockspace.clone(),
                resource: name.clone(),
                force_mode: req.force_mode,
            };
            for (h, _) in &holders {
                notify.event(*h, &ev);
            }
            if req.force_mode == FORCE_KILL {
                let pids: Vec<u32> = holders.iter().map(|(_, p)| *p).collect();
                fence::stop_holders(&pids, Duration::ZERO);
            }
        }
    }

    /// Renewal failed for good: no more lease writes; stop every holder
    /// before other hosts may take the leases over.
    fn fail(&self, reason: &str, notify: &dyn Notify) {
        log::error!(
            "lockspace {} host id {}: {reason}; its leases are lost, stopping their holders",
            self.spec.lockspace,
            self.host.host_id
        );
        self.host.kill();
        *lock(&self.failed) = Some(reason.to_string());
        let holders: Vec<(Holder, u32)> = self
            .leases()
            .values()
            .flat_map(|l| l.holders.iter().copied())
            .collect();
        let ev = Event::LockspaceFailed {
            lockspace: self.spec.lockspace.clone(),
            reason: reason.to_string(),
        };
        for (h, _) in &holders {
            notify.event(*h, &ev);
        }
        let pids: Vec<u32> = holders
            .iter()
            .map(|(_, p)| *p)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let left = fence::stop_holders(&pids, self.host.timeouts.kill_grace());
        if left.is_empty() {
            self.leases().clear();
        } else {
            // Kept, so the watchdog stops being pinged.
            log::error!("lease holders {left:?} survived SIGKILL; only a watchdog reset can fence this host now");
        }
    }

    /// Pids holding leases that are no longer running.
    pub fn dead_pid_holders(&self) -> Vec<u32> {
        let pids: HashSet<u32> = self
            .leases()
            .values()
            .flat_map(|l| l.holders.iter())
            .filter_map(|(h, _)| match h {
                Holder::Pid(p) => Some(*p),
                Holder::Conn(_) => None,
            })
            .collect();
        pids.into_iter().filter(|&p| !fence::alive(p)).collect()
    }

    /// Whether this lockspace lets the watchdog be pinged: healthy, or
    /// failed with every holder gone.
    pub fn watchdog_ok(&self) -> bool {
        if self.failed().is_some() {
            return self.leases().is_empty();
        }
        Instant::now() < self.host.valid_until()
    }
}

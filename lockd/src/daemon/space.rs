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
use crate::sync::lock;

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
    /// Resources being acquired or released on disk now: a local acquire
    /// waits for them to settle.
    acquiring: Mutex<HashSet<String>>,
    /// Leases whose release failed (I/O error); retried after renewals.
    release_retry: Mutex<Vec<(Arc<Resource>, Held)>>,
    failed: Mutex<Option<String>>,
    /// Why the last renewal attempt failed (cleared by a success).
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
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
            last_error: Mutex::new(None),
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

    /// Marks a resource busy for local acquirers (see `release_on_disk`).
    /// Call with the lease table locked, as the lease leaves it.
    pub fn mark_busy(&self, key: &str) {
        self.try_mark_busy(key);
    }

    /// Marks a resource busy unless it already is; true if we marked it.
    pub fn try_mark_busy(&self, key: &str) -> bool {
        lock(&self.acquiring).insert(key.to_string())
    }

    pub fn unmark_busy(&self, key: &str) {
        lock(&self.acquiring).remove(key);
    }

    /// Releases on disk, or queues the release for retry if the I/O fails.
    ///
    /// The resource was marked busy (`mark_busy`) when its lease left the
    /// table, and stays busy until this release is on disk. Otherwise a
    /// local acquire could start meanwhile: the leader still names this
    /// host, so it ballots for the next lease version at once, and this
    /// release then writes our dblock and leader back over that ballot
    /// (an older lver, RELEASED; a free leader of the old version). Another
    /// host would no longer see our phase-2 value, and could win the same
    /// version while the local acquirer believes it holds it.
    pub fn release_on_disk(&self, res: Arc<Resource>, held: Held) -> crate::Result<()> {
        let key = res.name.to_string();
        match res.release(&self.host, &held) {
            Ok(()) => {
                self.unmark_busy(&key);
                Ok(())
            }
            Err(e @ (crate::Error::Io { .. } | crate::Error::Timeout { .. })) => {
                // Stays busy until the retry is on disk.
                log::warn!(
                    "release of {}:{} failed ({e}); retrying after the next renewal",
                    res.space,
                    res.name
                );
                lock(&self.release_retry).push((res, held));
                Err(e)
            }
            Err(e) => {
                self.unmark_busy(&key);
                Err(e)
            }
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
            // Busy for local acquirers until released on disk.
            for (res, _) in &freed {
                self.mark_busy(&res.name.to_string());
            }
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
        {
            let me = self.clone();
            let notify = notify.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("deadline-{}", self.spec.lockspace))
                .spawn(move || me.watch_deadline(&*notify));
            if let Err(e) = spawned {
                log::error!("cannot start the renewal deadline thread: {e}");
            }
        }
        let mut next = Instant::now() + t.id_renewal();
        let mut warned = false;
        while !self.stop.load(Ordering::SeqCst) && self.failed().is_none() {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
                continue;
            }
            let attempt = Instant::now();
            match self.host.renew() {
                Ok(r) => {
                    warned = false;
                    *lock(&self.last_error) = None;
                    next = attempt + t.id_renewal();
                    self.after_renewal(&r.requested_by, &*notify);
                }
                Err(e) => {
                    *lock(&self.last_error) = Some(e.to_string());
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

    /// Fails the lockspace as soon as id_renewal_fail has passed since the
    /// last successful renewal.
    ///
    /// Fix: the renewal loop used to be the only judge, and it looks at the
    /// age only when an attempt returns; an attempt stuck in slow I/O takes
    /// up to io_timeout for the read and again for the write. The failure
    /// (and so the SIGKILL of holders, kill_grace later) could come up to
    /// 2·io_timeout late, past host_dead, when other hosts take the leases
    /// over: `check_fencing` leaves only io_timeout of margin.
    fn watch_deadline(&self, notify: &dyn Notify) {
        let fail_after = self.host.timeouts.id_renewal_fail();
        while !self.stop.load(Ordering::SeqCst) && self.failed().is_none() {
            let age = self.host.renewal_age();
            if age >= fail_after {
                let why = lock(&self.last_error)
                    .clone()
                    .unwrap_or_else(|| "no renewal attempt finished in time".into());
                self.fail(&format!("renewal failing for {age:?}: {why}"), notify);
                return;
            }
            std::thread::sleep((fail_after - age).min(Duration::from_millis(50)));
        }
    }

    fn after_renewal(&self, requested_by: &[u64], notify: &dyn Notify) {
        let until = self.valid_until_ns();
        let holders: HashSet<Holder> = self
            .leases()
            .values()
            .flat_map(|l| l.holders.iter().map(|(h, _)| *h))
            .collect();
        let ev = Event::Renewed {
            lockspace: self.spec.lockspace.clone(),
            valid_until_ns: until,
        };
        if self.failed().is_some() {
            return;
        }
        for h in &holders {
            notify.event(*h, &ev);
        }
        // A renewal can complete just as the deadline thread fails the
        // lockspace. Holders must not be left believing the Renewed event:
        // `fail` sets the flag before it sends LockspaceFailed, so if it is
        // set now, say it again after ours.
        if let Some(reason) = self.failed() {
            let ev = Event::LockspaceFailed {
                lockspace: self.spec.lockspace.clone(),
                reason,
            };
            for h in &holders {
                notify.event(*h, &ev);
            }
            return;
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
        type Entry = (String, Arc<Resource>, u64, Vec<(Holder, u32)>);
        let held: Vec<Entry> = self
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
    /// Runs once: the renewal loop and the deadline thread may both call it.
    fn fail(&self, reason: &str, notify: &dyn Notify) {
        {
            let mut failed = lock(&self.failed);
            if failed.is_some() {
                return;
            }
            self.host.kill();
            *failed = Some(reason.to_string());
        }
        log::error!(
            "lockspace {} host id {}: {reason}; its leases are lost, stopping their holders",
            self.spec.lockspace,
            self.host.host_id
        );
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

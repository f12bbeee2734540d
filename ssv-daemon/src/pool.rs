//! A pool: one LVM2 VG on shared LUNs. Every metadata change is made under
//! the pool lease (acquire, re-read, change, commit, release: DESIGN.md,
//! "Locking and fencing"); reads use the last view and re-read when a name
//! is missing, since another host may have just made it. Writers'
//! extensions are combined across hosts through the growth mailbox
//! ([`Pool::extend_combined`]).

use crate::leases::{self, Locks, MAILBOX_SLOT, SLOT};
use crate::mailbox::{Mailbox, Request};
use crate::names::{self, LEASES_LV, TAG_MAILBOX, TAG_POOL, TAG_SSV};
use crate::{Error, Result};
use lockd::proto::ResourceSpec;
use lvm::names::Uuid;
use lvm::{format_pv, OpenVg, PvDev, PvFormat, Stamp, Vg};
use san::BlockDev;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use thin::{Extender, GrowthRequest, LvStore};

/// Metadata area per PV: room for about 200,000 one-segment LVs (the stock
/// 1 MiB holds about 1,800).
pub const DEFAULT_MDA_SIZE: u64 = 128 << 20;
pub const DEFAULT_EXTENT_SIZE: u64 = 128 << 20;

/// LVs one combined commit extends at most, so the pool lease stays short;
/// requests beyond wait for the next holder.
pub const MAX_COMBINED: usize = 16;
/// Commits one holder makes before it releases the pool lease.
pub const MAX_ROUNDS: usize = 3;
/// How often a waiting extension checks whether the VG changed (one
/// header read per metadata area): a holder's commit shows at once.
const POLL: Duration = Duration::from_millis(5);
/// First and longest pause between tries of a busy pool lease while
/// waiting to be served; a VG change makes the next try immediate.
const FIRST_TRY_PAUSE: Duration = Duration::from_millis(20);
const MAX_TRY_PAUSE: Duration = Duration::from_millis(100);
/// A host leaves the lease to the lowest host id with a pending request
/// (whose commit will serve it too), so hosts crossing their thresholds
/// together do not collide in ballots (each collision costs lockd a
/// backed-off retry: up to 0.5 s measured with 8 hosts). For at most this
/// long without a VG change, in case that host is gone or slow.
const DEFER_MAX: Duration = Duration::from_millis(150);
/// A holder keeps the pool lease this long after its last growth commit,
/// serving the requests that follow without a ballot each (the ballot is
/// the largest part of an extension), checking the mailbox every
/// [`LINGER_POLL`]. It releases at once when a host says in the mailbox
/// that it waits for the lease for another change, and after [`MAX_HOLD`]
/// in one go in any case.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_POLL: Duration = Duration::from_millis(10);
const MAX_HOLD: Duration = Duration::from_secs(30);
/// After a VG change by another host (a holder, likely lingering), how long
/// a waiting extension only watches for its LV to be served before it tries
/// the lease itself: a try of a held lease costs lockd I/O, during which the
/// waiter does not see the commit that serves it.
const HOLDER_GRACE: Duration = Duration::from_millis(100);

/// Whether one of `requests` names an LV of `vg` smaller than `bound` of
/// the request: its minimum (pending) or its wanted size (pending or a
/// notice). An LV not in `vg` counts if `unknown`.
fn short_of(
    vg: &Vg,
    requests: &[(u64, Request)],
    unknown: bool,
    bound: fn(&Request) -> u64,
) -> bool {
    requests.iter().any(|(_, q)| match lv_bytes(vg, q.lv) {
        Some(size) => size < bound(q),
        None => unknown,
    })
}

/// Size of the LV `id` in `vg`, if it is there.
fn lv_bytes(vg: &Vg, id: Uuid) -> Option<u64> {
    let l = vg.lvs.iter().find(|l| l.id == id)?;
    Some(l.extent_count() * vg.extent_bytes())
}

/// A combined growth commit: the VG it makes, the LVs it grows, for which
/// other hosts.
struct Plan {
    new: Vg,
    grown: Vec<String>,
    hosts: Vec<u64>,
    for_others: u64,
}

impl Plan {
    fn description(&self) -> String {
        let mut d = format!("ssvd: extend {}", self.grown.join(", "));
        if !self.hosts.is_empty() {
            let hosts: Vec<String> = self.hosts.iter().map(u64::to_string).collect();
            d.push_str(&format!(" (for hosts {})", hosts.join(", ")));
        }
        d
    }
}

/// Grows every LV of `vg` whose pending request it falls short of, up to
/// [`MAX_COMBINED`]; then, in the same commit, notices (LVs at their
/// minimum that want more): their writers will ask soon, and this commit
/// is made anyway. With `ahead` the notices are grown even with no request
/// pending. A request that does not fit is recorded in `served`.
fn plan(vg: &Vg, requests: &[(Option<u64>, Request)], served: &mut Served, ahead: bool) -> Plan {
    let ext = vg.extent_bytes();
    let mut p = Plan {
        new: vg.clone(),
        grown: Vec::new(),
        hosts: Vec::new(),
        for_others: 0,
    };
    for notices in [false, true] {
        if notices && p.grown.is_empty() && !ahead {
            break;
        }
        for (host, q) in requests {
            if p.grown.len() >= MAX_COMBINED {
                break;
            }
            let Some(lv) = p.new.lvs.iter().find(|l| l.id == q.lv) else {
                continue; // gone: a stale request
            };
            if served.failed.iter().any(|(u, _)| *u == q.lv) || p.grown.contains(&lv.name) {
                continue; // did not fit in an earlier round, or grown
            }
            let have = lv.extent_count();
            let pending = have * ext < q.min_size;
            if pending == notices || notices && have * ext >= q.want_size {
                continue;
            }
            let name = lv.name.clone();
            // extend_lv changes nothing when it fails (it allocates
            // first), so a failure leaves the others' extensions intact.
            let want = q.want_size.div_ceil(ext).saturating_sub(have);
            let r = p.new.extend_lv(&name, want).or_else(|e| {
                if notices {
                    Err(e)
                } else {
                    p.new.extend_lv(&name, q.min_size.div_ceil(ext) - have)
                }
            });
            match r {
                Ok(()) => {
                    if let Some(h) = *host {
                        p.for_others += 1;
                        if !p.hosts.contains(&h) {
                            p.hosts.push(h);
                        }
                    }
                    p.grown.push(name);
                }
                // A notice that does not fit waits for its request.
                Err(e) if notices => {
                    log::debug!("combined extension: noticed LV {name} does not fit: {e}")
                }
                Err(e) => {
                    log::debug!("combined extension: LV {name} does not fit: {e}");
                    served.failed.push((q.lv, Error::from(e)));
                }
            }
        }
    }
    p.hosts.sort_unstable();
    p
}

/// How a new pool is laid out.
#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub mda_size: u64,
    pub extent_size: u64,
    /// io_timeout written in the lockspace (lockd's must match).
    pub io_timeout: u16,
    /// Growth policy of the pool's volumes (VG tags); `None` leaves each
    /// host's configured default.
    pub initial_lv_size: Option<u64>,
    pub chunk: Option<u64>,
    pub threshold_percent: Option<u8>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            mda_size: DEFAULT_MDA_SIZE,
            extent_size: DEFAULT_EXTENT_SIZE,
            io_timeout: lockd::timing::DEFAULT_IO_TIMEOUT as u16,
            initial_lv_size: None,
            chunk: None,
            threshold_percent: None,
        }
    }
}

pub struct Pool {
    name: String,
    /// Lock order: `vg`, then `parked`.
    vg: Mutex<OpenVg>,
    locks: Arc<Locks>,
    mailbox: Mailbox,
    /// The pool lease kept after a growth commit ([`LINGER`]).
    parked: Mutex<Option<Parked>>,
    /// A thread serves other hosts' requests under the parked lease.
    lingering: AtomicBool,
    /// When a waiting extension last saw another host's commit.
    foreign_change: Mutex<Option<Instant>>,
    /// Bounds the volume data this host has in flight to the LUNs, so the
    /// pool's own small I/O does not queue behind much of it.
    data_budget: Option<Arc<san::IoBudget>>,
}

/// A pool lease held between commits. While it is held no other host
/// commits, so the VG as we last committed it is current.
struct Parked {
    spec: ResourceSpec,
    since: Instant,
    used: Instant,
}

/// What [`Pool::extend_combined`] did.
#[derive(Clone)]
pub struct Extended {
    /// The LV over its new segments.
    pub dev: Arc<dyn BlockDev>,
    /// Whether this call's own commit grew it (else another commit did,
    /// usually another host's).
    pub own_commit: bool,
}

/// Who hears of a combined extension's progress: `served` as soon as the
/// LV is grown (a holder then still serves others and releases the lease),
/// `for_others` with the other hosts' LVs each commit grew.
pub struct Progress<'a> {
    pub served: &'a dyn Fn(&Extended),
    pub for_others: &'a dyn Fn(u64),
}

/// The pool lease in a growth commit; `fresh` if just acquired (the VG
/// may have changed since we read it), not if kept from our last commit.
struct Held {
    spec: ResourceSpec,
    since: Instant,
    fresh: bool,
}

/// A combined commit's outcome: failures by LV uuid, and how many LVs of
/// other hosts it grew.
#[derive(Default)]
struct Served {
    failed: Vec<(Uuid, Error)>,
    for_others: u64,
}

/// Capacity figures of a pool, in bytes.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    pub name: String,
    pub uuid: String,
    pub seqno: u32,
    pub luns: Vec<PoolLun>,
    pub extent_size: u64,
    /// All PV data areas together.
    pub capacity: u64,
    /// Extents given to LVs (volumes' layers and the leases LV).
    pub allocated: u64,
    pub free: u64,
    /// Sum of the volumes' virtual sizes.
    pub provisioned: u64,
    pub volumes: usize,
    pub lvs: usize,
    /// Lease slots the leases LV holds, and how many volumes use.
    pub lease_slots: u64,
    /// "joined" when this host may change the pool; else why not.
    pub lockspace: String,
    /// The growth policy volumes follow: a new LV's size, the bytes added
    /// per extension, and when (percent of the LV allocated).
    pub initial_lv_size: u64,
    pub chunk: u64,
    pub threshold_percent: u8,
    /// Metadata copies that are stale or damaged, if any.
    pub health: Vec<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PoolLun {
    pub path: String,
    pub pv: String,
    pub size: u64,
    pub free: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn format_lun(dev: &PvDev, mda_size: u64) -> Result<()> {
    // Small LUNs (tests, demos) get the largest area that leaves them room.
    let mda = mda_size.min(dev.dev.size() / 8).max(1 << 20);
    format_pv(
        &*dev.dev,
        &PvFormat {
            mda_size: mda,
            ..PvFormat::default()
        },
    )
    .map_err(|e| Error::from(e).context(format!("formatting LUN {}", dev.path)))?;
    Ok(())
}

impl Pool {
    /// Makes a new pool on unused LUNs: PVs, the VG, the leases LV with an
    /// empty lockspace and pool lease. Then joins the lockspace.
    pub fn create(
        name: &str,
        luns: &[PvDev],
        opts: &PoolOptions,
        locks: Arc<Locks>,
        data_in_flight: Option<u64>,
    ) -> Result<Pool> {
        names::check_pool_name(name)?;
        if luns.is_empty() {
            return Err(Error::Invalid("a pool needs at least one LUN".into()));
        }
        for l in luns {
            format_lun(l, opts.mda_size)?;
        }
        let mut vg = OpenVg::create(name, luns, opts.extent_size)?;
        let mut tags = vec![TAG_SSV.to_string(), TAG_POOL.to_string()];
        tags.extend(
            opts.initial_lv_size
                .map(|v| format!("{}{v}", names::TAG_POOL_INITIAL)),
        );
        tags.extend(opts.chunk.map(|v| format!("{}{v}", names::TAG_POOL_CHUNK)));
        tags.extend(
            opts.threshold_percent
                .map(|v| format!("{}{v}", names::TAG_POOL_THRESHOLD)),
        );
        tags.push(format!("{TAG_MAILBOX}{MAILBOX_SLOT}"));
        // Room for the lockspace, the pool lease and the mailbox at least.
        let extents = (leases::FIRST_VOLUME_SLOT * SLOT)
            .div_ceil(vg.vg().extent_bytes())
            .max(1);
        vg.change(&format!("ssvd: pool create {name}"), |v| {
            v.change_tags(None, &tags, &[])?;
            v.create_lv(LEASES_LV, extents, &[TAG_SSV.to_string()], &Stamp::now())
                .map(drop)
        })?;
        let dev: Arc<dyn BlockDev> = Arc::new(vg.lv_dev(LEASES_LV)?);
        leases::init_pool_leases(dev.clone(), name, opts.io_timeout)?;
        Mailbox::init(&*dev)?;
        let mailbox = Mailbox::open(dev, locks.host_id())?;
        Pool::joined(name, vg, locks, mailbox, data_in_flight)
    }

    /// Attaches an existing pool found on `luns`.
    pub fn attach(
        name: &str,
        luns: &[PvDev],
        locks: Arc<Locks>,
        data_in_flight: Option<u64>,
    ) -> Result<Pool> {
        let vg = OpenVg::open(luns, Some(name))?;
        if !names::has_tag(&vg.vg().tags, TAG_POOL) {
            return Err(Error::Invalid(format!(
                "VG {name} is not an ssv pool (no {TAG_POOL} tag); ssv does not take over VGs it did not make"
            )));
        }
        let has_mailbox = names::tag_value(&vg.vg().tags, TAG_MAILBOX)
            .is_some_and(|v| v == MAILBOX_SLOT.to_string())
            && leases::slots(vg.vg()) > MAILBOX_SLOT;
        if !has_mailbox {
            return Err(Error::Invalid(format!(
                "pool {name} has no growth mailbox (VG tag {TAG_MAILBOX}{MAILBOX_SLOT}): it was made by an older ssvd whose volume leases use slot {MAILBOX_SLOT} of {LEASES_LV}; this ssvd cannot use it (recreate the pool)"
            )));
        }
        let mailbox = Mailbox::open(Arc::new(vg.lv_dev(LEASES_LV)?), locks.host_id())?;
        Pool::joined(name, vg, locks, mailbox, data_in_flight)
    }

    /// The pool, once this host has joined its lockspace.
    fn joined(
        name: &str,
        vg: OpenVg,
        locks: Arc<Locks>,
        mailbox: Mailbox,
        data_in_flight: Option<u64>,
    ) -> Result<Pool> {
        locks.join(vg.vg())?;
        Ok(Pool {
            name: name.to_string(),
            vg: Mutex::new(vg),
            locks,
            mailbox,
            parked: Mutex::new(None),
            lingering: AtomicBool::new(false),
            foreign_change: Mutex::new(None),
            data_budget: data_in_flight.map(san::IoBudget::new),
        })
    }

    /// An LV that holds volume data, as the volume's writer uses it.
    fn data_dev(&self, vg: &OpenVg, name: &str) -> Result<Arc<dyn BlockDev>> {
        let dev: Arc<dyn BlockDev> = Arc::new(vg.lv_dev(name)?);
        Ok(match &self.data_budget {
            Some(b) => Arc::new(san::Budgeted::new(dev, b.clone())),
            None => dev,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn locks(&self) -> &Arc<Locks> {
        &self.locks
    }

    /// The VG as last read or committed.
    pub fn vg(&self) -> Vg {
        lock(&self.vg).vg().clone()
    }

    /// The pool's growth policy and initial LV size, where its VG tags set
    /// them, else `default`'s.
    pub fn growth(&self, default: (thin::GrowthPolicy, u64)) -> (thin::GrowthPolicy, u64) {
        let vg = self.vg();
        let get = |prefix| names::tag_value(&vg.tags, prefix).and_then(|v| v.parse::<u64>().ok());
        let (mut policy, mut initial) = default;
        if let Some(v) = get(names::TAG_POOL_INITIAL) {
            initial = v;
        }
        if let Some(v) = get(names::TAG_POOL_CHUNK) {
            policy.chunk = v.max(1);
        }
        if let Some(v) = get(names::TAG_POOL_THRESHOLD) {
            policy.threshold_percent = v.clamp(1, 99) as u8;
        }
        (policy, initial)
    }

    /// Re-reads the VG (another host may have changed it) and returns it.
    pub fn refresh(&self) -> Result<Vg> {
        let mut vg = lock(&self.vg);
        vg.refresh()?;
        Ok(vg.vg().clone())
    }

    /// Changes the metadata under the pool lease: re-read, apply `f`, commit.
    pub fn change<T>(
        &self,
        description: &str,
        f: impl FnOnce(&mut OpenVg) -> Result<T>,
    ) -> Result<T> {
        let t0 = std::time::Instant::now();
        let _urgent = UrgentIo::new();
        let mut vg = lock(&self.vg);
        let t1 = std::time::Instant::now();
        let spec = match lock(&self.parked).take() {
            Some(p) => p.spec,
            None => match self.locks.try_pool_lease(vg.vg())? {
                Some(l) => l.keep(),
                None => {
                    // Held, maybe kept for growth: ask for it in the mailbox.
                    if let Err(e) = self.mailbox.want_lease(true) {
                        log::warn!("asking for the pool lease in the growth mailbox: {e}");
                    }
                    let r = self.locks.pool_lease(vg.vg());
                    if let Err(e) = self.mailbox.want_lease(false) {
                        log::warn!("clearing the lease wish in the growth mailbox: {e}");
                    }
                    r?.keep()
                }
            },
        };
        let t2 = std::time::Instant::now();
        let r = vg
            .refresh()
            .map(drop)
            .map_err(Error::from)
            .and_then(|()| f(&mut vg).map_err(|e| e.context(description)));
        let t3 = std::time::Instant::now();
        self.locks.release(&spec);
        log::debug!(
            "{description}: waited {:?} here, {:?} for the pool lease; changed {:?}, released {:?}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t3.elapsed()
        );
        r
    }

    /// Extends LV `name` to at least `min` bytes, `want` where that fits,
    /// combined with every other pending extension (DESIGN.md, "Thin
    /// growth"): post the request in our mailbox record, then until served
    /// either take the pool lease (never waiting for it) and serve all
    /// pending requests in one commit, or see in the VG that another holder
    /// served ours. Gives up after the configured lease wait.
    pub fn extend_combined(
        &self,
        name: &str,
        min: u64,
        want: u64,
        progress: &Progress<'_>,
    ) -> Result<Extended> {
        let _urgent = UrgentIo::new();
        let mut trace = Trace::new();
        let ticket;
        let uuid = {
            let mut vg = lock(&self.vg);
            trace.mark("locked");
            // Unknown here, or noticed: another host's commit may have
            // grown it (or made it) already, unless this host keeps the
            // lease (then no other host commits).
            let kept = lock(&self.parked).is_some();
            let stale = vg.vg().lv(name).is_none_or(|l| self.mailbox.noticed(l.id));
            let mut changed = false;
            if stale && !kept {
                changed = vg.refresh()?;
                trace.mark("reread");
            }
            if let Some(dev) = self.served(&vg, name, None, min)? {
                // Another host's commit since our last read grew it: that
                // holder likely lingers, so our next request waits for it
                // rather than trying the lease (see `wait_served`).
                if changed {
                    *lock(&self.foreign_change) = Some(Instant::now());
                }
                return Ok(Extended {
                    dev,
                    own_commit: false,
                });
            }
            let uuid = self.lv(&vg, name)?.id;
            let req = Request {
                lv: uuid,
                min_size: min,
                want_size: want.max(min),
            };
            // This host keeps the lease: commit at once, telling no one.
            if let Some(held) = self.take_parked() {
                ticket = self.mailbox.post_local(req);
                trace.mark("held");
                match self.serve_held(&mut vg, held, name, uuid, min, progress, &mut trace) {
                    Ok(Some(done)) => {
                        self.mailbox.withdraw(ticket, true);
                        log::debug!("extension of {name}: {}", trace.steps);
                        return Ok(done);
                    }
                    Ok(None) => {
                        if let Err(e) = self.mailbox.publish() {
                            self.mailbox.withdraw(ticket, false);
                            return Err(e);
                        }
                    }
                    Err(e) => {
                        self.mailbox.withdraw(ticket, false);
                        return Err(e);
                    }
                }
            } else {
                ticket = self.mailbox.post(req)?;
            }
            uuid
        };
        trace.mark("posted");
        let r = self.wait_served(name, uuid, min, progress, &mut trace);
        self.mailbox.withdraw(ticket, r.is_ok());
        log::debug!("extension of {name}: {}", trace.steps);
        r
    }

    /// Posts a notice for LV `name` (it will want `want` bytes soon) in
    /// our mailbox record: a holder grows it in a commit it makes anyway.
    pub fn notice(&self, name: &str, size: u64, want: u64) -> Result<()> {
        let uuid = self.lv(&lock(&self.vg), name)?.id;
        self.mailbox.notice(Request {
            lv: uuid,
            min_size: size,
            want_size: want.max(size),
        })
    }

    /// Takes the pool lease ahead of the growth a notice announced and
    /// parks it as after a growth commit, so the first request of the
    /// burst finds a holder instead of paying a ballot (the slowest
    /// extensions were those: a ballot under load took 100-200 ms). Only
    /// when this host does not hold it, no holder committed lately (one
    /// likely keeps it and serves us), and no lower host announced growth
    /// (that one takes it, as for requests). Returns whether it parked one.
    pub fn warm_lease(&self) -> bool {
        if lock(&self.foreign_change).is_some_and(|t| t.elapsed() < LINGER) {
            return false;
        }
        let _urgent = UrgentIo::new();
        // Under the VG lock, as every taker of the lease: a lease parked by
        // another thread meanwhile is seen, not taken twice.
        let mut vg = lock(&self.vg);
        if lock(&self.parked).is_some() {
            return false;
        }
        match self.mailbox.read_lower() {
            Ok(lower) if !short_of(vg.vg(), &lower, true, |q| q.want_size) => {}
            Ok(_) => return false,
            Err(e) => {
                log::debug!("reading the growth mailbox: {e}");
                return false;
            }
        }
        let lease = match self.locks.try_pool_lease(vg.vg()) {
            Ok(Some(l)) => l,
            Ok(None) => return false,
            Err(e) => {
                log::debug!("taking the pool lease ahead of growth: {e}");
                return false;
            }
        };
        let held = Held {
            spec: lease.keep(),
            since: Instant::now(),
            fresh: true,
        };
        if let Err(e) = vg.refresh() {
            log::warn!("pool {}: re-reading the VG: {e}", self.name);
            self.locks.release(&held.spec);
            return false;
        }
        log::debug!("pool lease taken ahead of announced growth");
        self.park(held);
        true
    }

    fn lv<'a>(&self, vg: &'a OpenVg, name: &str) -> Result<&'a lvm::Lv> {
        vg.vg()
            .lv(name)
            .ok_or_else(|| Error::NotFound(format!("LV {name} is not in pool {}", self.name)))
    }

    /// The LV over its segments if it has `min` bytes, in the VG as read.
    /// An LV of that name with another uuid is not the one asked for.
    fn served(
        &self,
        vg: &OpenVg,
        name: &str,
        uuid: Option<Uuid>,
        min: u64,
    ) -> Result<Option<Arc<dyn BlockDev>>> {
        let lv = self.lv(vg, name)?;
        if uuid.is_some_and(|u| u != lv.id) {
            return Err(Error::NotFound(format!(
                "LV {name} of pool {} was replaced while it waited to grow",
                self.name
            )));
        }
        if lv.extent_count() * vg.vg().extent_bytes() < min {
            return Ok(None);
        }
        Ok(Some(self.data_dev(vg, name)?))
    }

    fn wait_served(
        &self,
        name: &str,
        uuid: Uuid,
        min: u64,
        progress: &Progress<'_>,
        trace: &mut Trace,
    ) -> Result<Extended> {
        let until = Instant::now() + self.locks.wait();
        // A holder that committed lately likely lingers and will serve us.
        let mut next_try = match *lock(&self.foreign_change) {
            Some(t) if t.elapsed() < LINGER => Instant::now() + HOLDER_GRACE,
            _ => Instant::now(),
        };
        let mut pause = FIRST_TRY_PAUSE;
        let mut deferring: Option<Instant> = None;
        loop {
            if Instant::now() >= until {
                return Err(Error::Conflict(format!(
                    "LV {name} of pool {}: the pool lease stayed busy for {:?} and no holder served the extension",
                    self.name,
                    self.locks.wait()
                )));
            }
            if Instant::now() >= next_try {
                let mut vg = lock(&self.vg);
                if let Some(dev) = self.served(&vg, name, Some(uuid), min)? {
                    return Ok(Extended {
                        dev,
                        own_commit: false,
                    });
                }
                let window = deferring.get_or_insert_with(Instant::now);
                // A parked lease serves that host too, at once.
                let parked = lock(&self.parked).is_some();
                if !parked && window.elapsed() < DEFER_MAX && self.lower_host_waits(&vg) {
                    trace.mark("deferred");
                    next_try = *window + DEFER_MAX;
                } else if let Some(held) = self.take_lease(&vg)? {
                    trace.mark(if held.fresh { "leased" } else { "held" });
                    match self.serve_held(&mut vg, held, name, uuid, min, progress, trace)? {
                        Some(done) => return Ok(done),
                        // Past the commit's cap (many local requests): again.
                        None => continue,
                    }
                } else {
                    trace.mark("busy");
                    next_try = Instant::now() + pause + leases::jitter(pause);
                    pause = (pause * 2).min(MAX_TRY_PAUSE);
                }
            }
            std::thread::sleep(POLL);
            // A holder's commit shows in the metadata headers.
            let mut vg = lock(&self.vg);
            if vg.refresh()? {
                trace.mark("changed");
                *lock(&self.foreign_change) = Some(Instant::now());
                if let Some(dev) = self.served(&vg, name, Some(uuid), min)? {
                    return Ok(Extended {
                        dev,
                        own_commit: false,
                    });
                }
                // Changed, not for us: the holder is done, try at once
                // (or see whom to leave it to, in a fresh window).
                next_try = Instant::now() + HOLDER_GRACE;
                deferring = None;
            }
        }
    }

    /// With the pool lease `held`: serves the pending requests (ours and
    /// the mailbox's), answering our writer at the first commit that grows
    /// LV `name`, then keeps the lease (or releases it on failure). `None`:
    /// past the commit's cap, not served yet.
    #[allow(clippy::too_many_arguments)]
    fn serve_held(
        &self,
        vg: &mut OpenVg,
        held: Held,
        name: &str,
        uuid: Uuid,
        min: u64,
        progress: &Progress<'_>,
        trace: &mut Trace,
    ) -> Result<Option<Extended>> {
        let mut told = false;
        let r = self.serve_all(vg, held.fresh, None, trace, &mut |vg, for_others| {
            (progress.for_others)(for_others);
            if !told {
                if let Ok(Some(dev)) = self.served(vg, name, Some(uuid), min) {
                    (progress.served)(&Extended {
                        dev,
                        own_commit: true,
                    });
                    told = true;
                }
            }
        });
        match &r {
            Ok(_) => self.park(held),
            Err(_) => self.locks.release(&held.spec),
        }
        let mut served = r?;
        if let Some(dev) = self.served(vg, name, Some(uuid), min)? {
            return Ok(Some(Extended {
                dev,
                own_commit: true,
            }));
        }
        if let Some(i) = served.failed.iter().position(|(u, _)| *u == uuid) {
            return Err(served.failed.swap_remove(i).1);
        }
        Ok(None)
    }

    /// Whether a host with a lower id has a request pending in `vg` (an
    /// LV it names is smaller than asked, or not known to us yet).
    fn lower_host_waits(&self, vg: &OpenVg) -> bool {
        let lower = match self.mailbox.read_lower() {
            Ok(l) => l,
            Err(e) => {
                log::debug!("reading the growth mailbox: {e}");
                return false;
            }
        };
        // An LV we do not know yet was likely made since we read the VG.
        short_of(vg.vg(), &lower, true, |q| q.min_size)
    }

    /// The pool lease for a growth commit: the parked one, else a new one
    /// if it is free now. Call with the VG locked.
    fn take_lease(&self, vg: &OpenVg) -> Result<Option<Held>> {
        if let Some(held) = self.take_parked() {
            return Ok(Some(held));
        }
        Ok(self.locks.try_pool_lease(vg.vg())?.map(|l| Held {
            spec: l.keep(),
            since: Instant::now(),
            fresh: true,
        }))
    }

    /// The parked lease, for another commit.
    fn take_parked(&self) -> Option<Held> {
        lock(&self.parked).take().map(|p| Held {
            spec: p.spec,
            since: p.since,
            fresh: false,
        })
    }

    /// Keeps the lease after a growth commit for the requests that follow,
    /// unless it was held long enough; [`Pool::linger`] releases it.
    fn park(&self, held: Held) {
        if held.since.elapsed() >= MAX_HOLD {
            self.locks.release(&held.spec);
            return;
        }
        *lock(&self.parked) = Some(Parked {
            spec: held.spec,
            since: held.since,
            used: Instant::now(),
        });
    }

    /// While this host keeps the pool lease after a growth commit, serves
    /// other hosts' requests as they are posted, then releases it. Returns
    /// at once if another thread does this already.
    pub fn linger(&self, for_others: &dyn Fn(u64)) {
        while lock(&self.parked).is_some() {
            if self.lingering.swap(true, Ordering::SeqCst) {
                return;
            }
            self.linger_while_parked(for_others);
            // A lease parked after the loop ended and before this store
            // is seen by the `while` above.
            self.lingering.store(false, Ordering::SeqCst);
        }
    }

    fn linger_while_parked(&self, for_others: &dyn Fn(u64)) {
        loop {
            std::thread::sleep(LINGER_POLL);
            {
                let mut parked = lock(&self.parked);
                let Some(p) = parked.as_ref() else { return };
                if p.used.elapsed() >= LINGER || p.since.elapsed() >= MAX_HOLD {
                    if let Some(p) = parked.take() {
                        self.locks.release(&p.spec);
                    }
                    return;
                }
            }
            let mut trace = Trace::new();
            let board = match self.mailbox.read_board() {
                Ok(b) => b,
                Err(e) => {
                    log::debug!("reading the growth mailbox: {e}");
                    continue;
                }
            };
            if !board.wanting_lease.is_empty() {
                if let Some(p) = lock(&self.parked).take() {
                    log::info!(
                        "pool lease kept for growth released: hosts {:?} wait for it",
                        board.wanting_lease
                    );
                    self.locks.release(&p.spec);
                }
                return;
            }
            let others = board.requests;
            if others.is_empty() && self.mailbox.local().is_empty() {
                continue;
            }
            trace.mark("board");
            let mut vg = lock(&self.vg);
            trace.mark("locked");
            if !short_of(vg.vg(), &others, false, |q| q.min_size) {
                // Notices only: their commit is written ahead, so the
                // request that follows costs a header write. Only under
                // the lease: the text goes where another holder's would.
                // (Other threads take or release a parked lease only
                // under the VG lock, which we hold.)
                if lock(&self.parked).is_some() {
                    self.prepare_ahead(&mut vg, others, &mut trace);
                }
                continue;
            }
            let Some(held) = self.take_parked() else {
                return;
            };
            let r = self.serve_all(&mut vg, false, Some(others), &mut trace, &mut |_, n| {
                for_others(n)
            });
            log::debug!("lingering holder served: {}", trace.steps);
            match r {
                Ok(_) => self.park(held),
                Err(e) => {
                    log::warn!("serving growth requests of pool {}: {e}", self.name);
                    self.locks.release(&held.spec);
                    return;
                }
            }
        }
    }

    /// Under the pool lease: re-reads the VG if needed, then grows every
    /// LV whose pending request (ours from memory, others' from the
    /// mailbox) it still falls short of, up to [`MAX_COMBINED`], in one
    /// commit. An LV that does not fit is skipped; its requester sees the
    /// failure when it holds the lease itself.
    /// `after` hears after each commit, with the other hosts' LVs it grew.
    /// `read`: the mailbox as the caller just read it, if it did.
    fn serve_all(
        &self,
        vg: &mut OpenVg,
        fresh: bool,
        mut read: Option<Vec<(u64, Request)>>,
        trace: &mut Trace,
        after: &mut dyn FnMut(&OpenVg, u64),
    ) -> Result<Served> {
        if fresh && vg.refresh()? {
            trace.mark("reread");
        }
        let mut served = Served::default();
        // Requests posted while we balloted or committed are served before
        // the release: one more commit costs less than their own ballot.
        for _ in 0..MAX_ROUNDS {
            let before = served.for_others;
            if self.serve_round(vg, &mut served, read.take(), trace)? == 0 {
                break;
            }
            after(vg, served.for_others - before);
        }
        Ok(served)
    }

    /// Our requests and notices, then `others` (hosts after us first, so
    /// no host id is always served last).
    fn all_requests(&self, mut others: Vec<(u64, Request)>) -> Vec<(Option<u64>, Request)> {
        let me = self.mailbox.host_id();
        others.sort_by_key(|(h, _)| (*h <= me, *h));
        self.mailbox
            .local()
            .into_iter()
            .map(|q| (None, q))
            .chain(others.into_iter().map(|(h, q)| (Some(h), q)))
            .collect()
    }

    /// One combined commit of the pending requests; returns the LVs grown.
    fn serve_round(
        &self,
        vg: &mut OpenVg,
        served: &mut Served,
        read: Option<Vec<(u64, Request)>>,
        trace: &mut Trace,
    ) -> Result<usize> {
        // Our own pending requests served by the commit written ahead: no
        // need to read the mailbox first (the next round does).
        if read.is_none() {
            let ours = self.all_requests(Vec::new());
            if let Some(n) = self.commit_ahead(vg, &ours, served)? {
                trace.mark(&format!("committed ahead {n}"));
                return Ok(n);
            }
        }
        let others = read.unwrap_or_else(|| {
            let others = self.mailbox.read_others().unwrap_or_else(|e| {
                log::warn!("reading the growth mailbox of pool {}: {e}", self.name);
                Vec::new()
            });
            trace.mark("mailbox");
            others
        });
        let requests = self.all_requests(others);
        if let Some(n) = self.commit_ahead(vg, &requests, served)? {
            trace.mark(&format!("committed ahead {n}"));
            return Ok(n);
        }
        let plan = plan(vg.vg(), &requests, served, false);
        if plan.grown.is_empty() {
            return Ok(0);
        }
        vg.change(&plan.description(), |v| {
            *v = plan.new;
            Ok(())
        })?;
        served.for_others += plan.for_others;
        trace.mark(&format!("committed {}", plan.grown.len()));
        Ok(plan.grown.len())
    }

    /// Writes ahead the commit that grows the noticed LVs (`others` and
    /// ours), unless the one written ahead grows them all already.
    fn prepare_ahead(&self, vg: &mut OpenVg, others: Vec<(u64, Request)>, trace: &mut Trace) {
        let requests = self.all_requests(others);
        let next = vg.prepared().unwrap_or(vg.vg());
        let covered = requests
            .iter()
            .all(|(_, q)| lv_bytes(next, q.lv).is_none_or(|size| size >= q.want_size));
        if covered {
            return;
        }
        let plan = plan(vg.vg(), &requests, &mut Served::default(), true);
        if plan.grown.is_empty() {
            return;
        }
        let n = plan.grown.len();
        match vg.prepare(&plan.description(), |v| {
            *v = plan.new;
            Ok(())
        }) {
            Ok(()) => {
                trace.mark(&format!("prepared {n}"));
                log::debug!("growth commit written ahead: {}", trace.steps);
            }
            Err(e) => log::debug!("writing a growth commit ahead: {e}"),
        }
    }

    /// Commits the commit written ahead if it serves every pending
    /// request in `requests`; the LVs it grew, or `None` (nothing done).
    fn commit_ahead(
        &self,
        vg: &mut OpenVg,
        requests: &[(Option<u64>, Request)],
        served: &mut Served,
    ) -> Result<Option<usize>> {
        let Some(ahead) = vg.prepared() else {
            return Ok(None);
        };
        let now = vg.vg();
        let mut pending = requests
            .iter()
            .filter(|(_, q)| lv_bytes(now, q.lv).is_some_and(|size| size < q.min_size))
            .peekable();
        if pending.peek().is_none()
            || !pending.all(|(_, q)| lv_bytes(ahead, q.lv).is_some_and(|size| size >= q.min_size))
        {
            return Ok(None);
        }
        let ours = |id: Uuid| requests.iter().any(|(h, q)| h.is_none() && q.lv == id);
        // One pass over each VG's LVs: a pool has thousands.
        let before: HashMap<Uuid, u64> = now.lvs.iter().map(|l| (l.id, l.extent_count())).collect();
        let grown: Vec<Uuid> = ahead
            .lvs
            .iter()
            .filter(|l| before.get(&l.id).is_none_or(|&c| l.extent_count() > c))
            .map(|l| l.id)
            .collect();
        let for_others = grown.iter().filter(|&&id| !ours(id)).count();
        if !vg.commit_prepared()? {
            return Ok(None);
        }
        served.for_others += for_others as u64;
        Ok(Some(grown.len()))
    }

    /// Changes tags of LVs in one commit.
    pub fn retag(
        &self,
        description: &str,
        changes: &[(&str, Vec<String>, Vec<String>)],
    ) -> Result<()> {
        self.change(description, |vg| {
            vg.change(&format!("ssvd: {description}"), |v| {
                for (lv, add, remove) in changes {
                    v.change_tags(Some(lv), add, remove)?;
                }
                Ok(())
            })
            .map_err(Error::from)
        })
    }

    /// Adds an unused LUN to the pool.
    pub fn add_lun(&self, lun: &PvDev) -> Result<()> {
        format_lun(lun, DEFAULT_MDA_SIZE)?;
        self.change(&format!("adding LUN {}", lun.path), |vg| {
            vg.add_pv(lun).map_err(Error::from)
        })
    }

    /// Picks a free volume lease slot, growing the leases LV when all are
    /// taken, and writes an empty lease for `volume` there. Call inside
    /// [`Pool::change`] and tag the slot in the same change.
    pub fn take_lease_slot(&self, vg: &mut OpenVg, volume: &str) -> Result<u64> {
        let used: std::collections::HashSet<u64> = vg
            .vg()
            .lvs
            .iter()
            .filter_map(|l| names::tag_value(&l.tags, names::TAG_LEASE))
            .filter_map(|v| v.parse().ok())
            .collect();
        let slot = (leases::FIRST_VOLUME_SLOT..)
            .find(|s| !used.contains(s))
            .unwrap_or(leases::FIRST_VOLUME_SLOT);
        if slot >= leases::slots(vg.vg()) {
            let per_extent = (vg.vg().extent_bytes() / SLOT).max(1);
            let extents = (slot + 1 - leases::slots(vg.vg())).div_ceil(per_extent);
            vg.change("ssvd: grow the leases LV", |v| {
                v.extend_lv(LEASES_LV, extents)
            })?;
        }
        let dev = Arc::new(vg.lv_dev(LEASES_LV)?);
        leases::init_volume_lease(dev, &self.name, volume, slot)?;
        Ok(slot)
    }

    /// The status of the pool as `vg`, read by [`Pool::refresh`] just before.
    pub fn status(
        &self,
        vg: &Vg,
        provisioned: u64,
        volumes: usize,
        growth: (thin::GrowthPolicy, u64),
    ) -> Result<PoolStatus> {
        let health = {
            let open = lock(&self.vg);
            let h = open.health();
            let tell = |what: &str, v: &[String]| {
                v.iter().map(|s| format!("{what}: {s}")).collect::<Vec<_>>()
            };
            [
                tell("stale metadata copy", &h.stale),
                tell("damaged (repair before changing the pool)", &h.corrupt),
                tell("missing PV", &h.missing),
            ]
            .concat()
        };
        let ext = vg.extent_bytes();
        let mut used_per_pv = std::collections::HashMap::<String, u64>::new();
        for lv in &vg.lvs {
            for seg in &lv.segments {
                if let lvm::SegmentKind::Striped { stripes, .. } = &seg.kind {
                    for s in stripes {
                        *used_per_pv.entry(s.pv.clone()).or_default() += seg.area_len();
                    }
                }
            }
        }
        let luns: Vec<PoolLun> = vg
            .pvs
            .iter()
            .map(|p| {
                let used = used_per_pv.get(&p.name).copied().unwrap_or(0);
                PoolLun {
                    path: p.device.clone().unwrap_or_default(),
                    pv: p.id.to_string(),
                    size: p.pe_count * ext,
                    free: p.pe_count.saturating_sub(used) * ext,
                }
            })
            .collect();
        let capacity: u64 = luns.iter().map(|l| l.size).sum();
        let free: u64 = luns.iter().map(|l| l.free).sum();
        let lockspace = match self.locks.joined(&self.name) {
            Ok(true) => "joined".to_string(),
            Ok(false) => "not joined (joining takes lockd two io_timeouts)".to_string(),
            Err(e) => e.to_string(),
        };
        Ok(PoolStatus {
            name: self.name.clone(),
            uuid: vg.id.to_string(),
            seqno: vg.seqno,
            extent_size: ext,
            capacity,
            allocated: capacity - free,
            free,
            provisioned,
            volumes,
            lvs: vg.lvs.len(),
            lease_slots: leases::slots(vg),
            lockspace,
            initial_lv_size: growth.1,
            chunk: growth.0.chunk,
            threshold_percent: growth.0.threshold_percent,
            health,
            luns,
        })
    }
}

impl LvStore for Pool {
    fn open(&self, name: &str) -> thin::Result<Arc<dyn BlockDev>> {
        let mut vg = lock(&self.vg);
        if vg.vg().lv(name).is_none() {
            vg.refresh()?;
        }
        self.data_dev(&vg, name).map_err(to_thin)
    }

    fn create(&self, name: &str, size: u64, tags: &[String]) -> thin::Result<Arc<dyn BlockDev>> {
        self.change(&format!("creating LV {name}"), |vg| {
            let n = size.div_ceil(vg.vg().extent_bytes()).max(1);
            vg.change(&format!("ssvd: create {name}"), |v| {
                v.create_lv(name, n, tags, &Stamp::now()).map(drop)
            })?;
            self.data_dev(vg, name)
        })
        .map_err(to_thin)
    }

    fn extend(&self, name: &str, size: u64) -> thin::Result<Arc<dyn BlockDev>> {
        self.change(&format!("extending LV {name}"), |vg| {
            let lv = vg.vg().lv(name).ok_or_else(|| {
                Error::NotFound(format!("LV {name} is not in pool {}", self.name))
            })?;
            let have = lv.extent_count();
            let want = size.div_ceil(vg.vg().extent_bytes());
            if want > have {
                vg.change(&format!("ssvd: extend {name}"), |v| {
                    v.extend_lv(name, want - have)
                })?;
            }
            self.data_dev(vg, name)
        })
        .map_err(to_thin)
    }

    fn remove(&self, name: &str) -> thin::Result<()> {
        self.change(&format!("removing LV {name}"), |vg| {
            vg.change(&format!("ssvd: remove {name}"), |v| {
                v.remove_lv(name).map(drop)
            })
            .map_err(Error::from)
        })
        .map_err(to_thin)
    }

    fn exists(&self, name: &str) -> thin::Result<bool> {
        let mut vg = lock(&self.vg);
        if vg.vg().lv(name).is_none() {
            vg.refresh()?;
        }
        Ok(vg.vg().lv(name).is_some())
    }

    fn list(&self) -> thin::Result<Option<Vec<String>>> {
        let mut vg = lock(&self.vg);
        vg.refresh()?;
        Ok(Some(vg.vg().lvs.iter().map(|l| l.name.clone()).collect()))
    }
}

/// The steps of one extension with their times, for the debug log.
struct Trace {
    t0: Instant,
    steps: String,
}

impl Trace {
    fn new() -> Trace {
        Trace {
            t0: Instant::now(),
            steps: String::new(),
        }
    }

    fn mark(&mut self, what: &str) {
        use std::fmt::Write;
        let _ = write!(self.steps, "{what} {}ms; ", self.t0.elapsed().as_millis());
    }
}

/// Metadata I/O of this thread goes ahead of data I/O while it lives.
struct UrgentIo;

impl UrgentIo {
    fn new() -> UrgentIo {
        san::ioprio::urgent();
        UrgentIo
    }
}

impl Drop for UrgentIo {
    fn drop(&mut self) {
        san::ioprio::normal();
    }
}

fn to_thin(e: Error) -> thin::Error {
    match e {
        Error::NoSpace(m) => thin::Error::NoSpace(m),
        Error::NotFound(m) => thin::Error::NotFound(m),
        Error::Invalid(m) => thin::Error::InvalidArgument(m),
        e => thin::Error::Lvm(e.to_string()),
    }
}

/// The growth service for writers in this process: extends under the pool
/// lease and hands back the LV over its new segments.
pub struct PoolExtender(pub Arc<Pool>);

impl PoolExtender {
    /// As [`Extender::extend`], saying whose commit grew the LV;
    /// `for_others` hears of other hosts' LVs grown by ours. The holder
    /// grows each LV to its target, or where a full pool does not fit that,
    /// to what the parked write needs. The work runs on a thread of its
    /// own that answers as soon as our LV has grown: a holder's further
    /// commits for others and its lease release stay off our writer's path.
    pub fn extend_combined(
        &self,
        req: &GrowthRequest,
        for_others: impl Fn(u64) + Send + 'static,
    ) -> Result<Extended> {
        let (tx, rx) = std::sync::mpsc::channel::<Result<Extended>>();
        let pool = self.0.clone();
        let (lv, min, want) = (req.lv.clone(), req.min_size, req.target_size);
        std::thread::Builder::new()
            .name("ssvd-extend".into())
            .spawn(move || {
                let early = tx.clone();
                let progress = Progress {
                    served: &|x| {
                        let _ = early.send(Ok(x.clone()));
                    },
                    for_others: &for_others,
                };
                let r = pool.extend_combined(&lv, min, want, &progress);
                // After an early answer this one goes unread.
                let _ = tx.send(r);
                pool.linger(&for_others);
            })
            .map_err(|e| Error::Storage(format!("starting an extension thread: {e}")))?;
        rx.recv().map_err(|_| {
            Error::Storage("the extension thread ended without an answer".to_string())
        })?
    }
}

impl Extender for PoolExtender {
    fn extend(&self, req: &GrowthRequest) -> std::result::Result<Arc<dyn BlockDev>, String> {
        self.extend_combined(req, |_| ())
            .map(|e| e.dev)
            .map_err(|e| e.to_string())
    }

    fn notice(&self, req: &GrowthRequest) {
        self.notice_combined(req, |_| ());
    }
}

impl PoolExtender {
    /// Posts the notice, then, on a thread of its own, takes the pool
    /// lease ahead of the growth ([`Pool::warm_lease`]) and keeps it while
    /// requests follow, as after a growth commit; `for_others` hears how
    /// many other hosts' LVs each of its commits grew.
    pub fn notice_combined(&self, req: &GrowthRequest, for_others: impl Fn(u64) + Send + 'static) {
        if let Err(e) = self.0.notice(&req.lv, req.current_size, req.target_size) {
            log::debug!("growth notice for LV {}: {e}", req.lv);
            return;
        }
        let pool = self.0.clone();
        let spawned = std::thread::Builder::new()
            .name("ssvd-warm".into())
            .spawn(move || {
                if pool.warm_lease() {
                    pool.linger(&for_others);
                }
            });
        if let Err(e) = spawned {
            log::debug!("starting a thread for the pool lease: {e}");
        }
    }
}

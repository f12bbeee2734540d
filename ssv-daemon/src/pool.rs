//! A pool: one LVM2 VG on shared LUNs. Every metadata change is made under
//! the pool lease (acquire, re-read, change, commit, release: DESIGN.md,
//! "Locking and fencing"); reads use the last view and re-read when a name
//! is missing, since another host may have just made it.

use crate::leases::{self, Locks, SLOT};
use crate::names::{self, LEASES_LV, TAG_POOL, TAG_SSV};
use crate::{Error, Result};
use lvm::{format_pv, OpenVg, PvDev, PvFormat, Stamp, Vg};
use san::BlockDev;
use serde::Serialize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use thin::{Extender, GrowthRequest, LvStore};

/// Metadata area per PV: room for about 200,000 one-segment LVs (the stock
/// 1 MiB holds about 1,800).
pub const DEFAULT_MDA_SIZE: u64 = 128 << 20;
pub const DEFAULT_EXTENT_SIZE: u64 = 128 << 20;

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
    vg: Mutex<OpenVg>,
    locks: Arc<Locks>,
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
        vg.change(&format!("ssvd: pool create {name}"), |v| {
            v.change_tags(None, &tags, &[])?;
            v.create_lv(LEASES_LV, 1, &[TAG_SSV.to_string()], &Stamp::now())
                .map(drop)
        })?;
        let dev = Arc::new(vg.lv_dev(LEASES_LV)?);
        leases::init_pool_leases(dev, name, opts.io_timeout)?;
        let pool = Pool {
            name: name.to_string(),
            vg: Mutex::new(vg),
            locks,
        };
        pool.join()?;
        Ok(pool)
    }

    /// Attaches an existing pool found on `luns`.
    pub fn attach(name: &str, luns: &[PvDev], locks: Arc<Locks>) -> Result<Pool> {
        let vg = OpenVg::open(luns, Some(name))?;
        if !names::has_tag(&vg.vg().tags, TAG_POOL) {
            return Err(Error::Invalid(format!(
                "VG {name} is not an ssv pool (no {TAG_POOL} tag); ssv does not take over VGs it did not make"
            )));
        }
        let pool = Pool {
            name: name.to_string(),
            vg: Mutex::new(vg),
            locks,
        };
        pool.join()?;
        Ok(pool)
    }

    fn join(&self) -> Result<()> {
        let vg = self.vg();
        self.locks.join(&vg)
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
        vg.reload()?;
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
        let lease = self.locks.pool_lease(vg.vg())?;
        let t2 = std::time::Instant::now();
        if !vg.is_current()? {
            vg.reload()?;
        }
        let t3 = std::time::Instant::now();
        let r = f(&mut vg).map_err(|e| e.context(description));
        let t4 = std::time::Instant::now();
        drop(lease);
        log::debug!(
            "{description}: waited {:?} here, {:?} for the pool lease; re-read {:?}, changed {:?}, released {:?}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3,
            t4.elapsed()
        );
        r
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

    pub fn status(
        &self,
        provisioned: u64,
        volumes: usize,
        growth: (thin::GrowthPolicy, u64),
    ) -> Result<PoolStatus> {
        let vg = self.refresh()?;
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
            lease_slots: leases::slots(&vg),
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
            vg.reload()?;
        }
        Ok(Arc::new(vg.lv_dev(name)?))
    }

    fn create(&self, name: &str, size: u64, tags: &[String]) -> thin::Result<Arc<dyn BlockDev>> {
        self.change(&format!("creating LV {name}"), |vg| {
            let n = size.div_ceil(vg.vg().extent_bytes()).max(1);
            vg.change(&format!("ssvd: create {name}"), |v| {
                v.create_lv(name, n, tags, &Stamp::now()).map(drop)
            })?;
            Ok(vg.lv_dev(name)?)
        })
        .map(|d| Arc::new(d) as Arc<dyn BlockDev>)
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
            Ok(vg.lv_dev(name)?)
        })
        .map(|d| Arc::new(d) as Arc<dyn BlockDev>)
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
            vg.reload()?;
        }
        Ok(vg.vg().lv(name).is_some())
    }

    fn list(&self) -> thin::Result<Option<Vec<String>>> {
        let mut vg = lock(&self.vg);
        vg.reload()?;
        Ok(Some(vg.vg().lvs.iter().map(|l| l.name.clone()).collect()))
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

impl Extender for PoolExtender {
    fn extend(&self, req: &GrowthRequest) -> std::result::Result<Arc<dyn BlockDev>, String> {
        self.0
            .extend(&req.lv, req.target_size.max(req.min_size))
            .or_else(|e| {
                // A full pool may still fit what the parked write needs.
                if req.target_size > req.min_size {
                    self.0.extend(&req.lv, req.min_size)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| e.to_string())
    }
}

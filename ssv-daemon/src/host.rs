//! One ssvd: this host's pools, the volumes in them, open sessions and
//! long-running jobs. Every method is blocking (storage and lease I/O); the
//! API runs them on blocking threads.

use crate::config::{parse_size, Config};
use crate::events::Events;
use crate::leases::Locks;
use crate::luns::{holds, open_lun, open_unused_lun, Holds};
use crate::metrics::{Metrics, PoolLabels};
use crate::model::{self, VolumeRecord};
use crate::names;
use crate::pool::{Pool, PoolOptions, PoolStatus};
use crate::session::Session;
use crate::{Error, Result};
use lvm::PvDev;
use san::BlockDev;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use thin::LvStore;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreatePool {
    pub name: String,
    /// LUN paths (see `GET /v1/luns`).
    pub luns: Vec<String>,
    /// Extent size, e.g. "128m" (default).
    #[serde(default)]
    pub extent_size: Option<String>,
    /// Growth policy of every volume in the pool, on every host: a new
    /// volume's LV size, e.g. "1g" (default: each host's configuration).
    #[serde(default)]
    pub initial: Option<String>,
    /// Bytes added per extension, e.g. "1g".
    #[serde(default)]
    pub chunk: Option<String>,
    /// Extend when the allocated end passes this percentage of the LV.
    #[serde(default)]
    pub threshold_percent: Option<u8>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VolumeDetail {
    #[serde(flatten)]
    pub record: VolumeRecord,
    /// Virtual size in bytes.
    pub size: u64,
    pub cluster_size: u64,
    /// Highest allocated byte of the top layer (what growth follows).
    pub allocated_end: u64,
    /// Open for writing on this host (`session`), attached to a VMM here
    /// (`attached`), or not here (`closed`).
    pub state: String,
    /// NBD URI while open here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
    /// iSCSI URI while open here and `[export] iscsi_portals` is set:
    /// `iscsi://PORTAL[,PORTAL…]/<prefix>:<volume id>/0` (every portal is a
    /// path to LUN 0 of the volume's target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<String>,
    /// How the LV grew while open here (since it was last opened or
    /// switched to a new top). Boxed: it is most of the detail's size,
    /// which enums carrying a detail (`CloneStarted`) would all pay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Box<GrowthInfo>>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct GrowthInfo {
    pub extensions: u64,
    pub failed_extensions: u64,
    /// Writes that waited for an extension (a write past the LV's end).
    pub parked_writes: u64,
    pub park_p50_ms: f64,
    pub park_p99_ms: f64,
    /// Threshold crossing to the grown LV mapped in the writer, per
    /// extension (the last 1000).
    pub extension_ms: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The `q` quantile of `v` (nearest rank), 0 for none.
fn quantile_ms(v: &[std::time::Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    match ms.len() {
        0 => 0.0,
        n => ms[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

impl From<thin::GrowthStats> for GrowthInfo {
    fn from(g: thin::GrowthStats) -> Self {
        let skip = g.extension_times.len().saturating_sub(1000);
        GrowthInfo {
            extensions: g.extensions,
            failed_extensions: g.failed_extensions,
            parked_writes: g.parked_writes,
            park_p50_ms: quantile_ms(&g.park_times, 0.5),
            park_p99_ms: quantile_ms(&g.park_times, 0.99),
            extension_ms: g.extension_times[skip..]
                .iter()
                .map(|d| d.as_secs_f64() * 1e3)
                .collect(),
            last_error: g.last_error,
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HostStatus {
    pub host_id: u64,
    pub version: String,
    pub pools: Vec<String>,
    pub sessions: Vec<String>,
    /// lockd's view: lockspaces and their hosts.
    pub lockd: serde_json::Value,
}

/// The transports an open volume is exported over; each is one field of
/// [`VolumeDetail`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Nbd,
    Iscsi,
}

/// Where exports of open volumes go: the NBD server, the iSCSI target.
pub trait Exporter: Send + Sync {
    fn transport(&self) -> Transport;
    /// Serves `dev` under `name`; returns the URI clients use.
    fn export(&self, name: &str, dev: Arc<dyn BlockDev>) -> Result<String>;
    /// Stops serving `name`; its clients' connections are closed and no
    /// I/O of theirs runs after this returns.
    fn unexport(&self, name: &str);
}

pub struct Host {
    pub config: Config,
    pub locks: Arc<Locks>,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    pub(crate) pools: Mutex<HashMap<String, Arc<Pool>>>,
    pub(crate) sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Volume ids with an operation running on this host.
    pub(crate) busy: Mutex<std::collections::HashSet<String>>,
    pub(crate) jobs: Mutex<HashMap<String, crate::clones::JobInfo>>,
    /// Every open volume is exported by each, in order.
    pub(crate) exporters: Mutex<Vec<Arc<dyn Exporter>>>,
    /// Open volume id → its URI per transport.
    pub(crate) exports: Mutex<HashMap<String, HashMap<Transport, String>>>,
    /// Volume id → the external writer (VMM) it is attached to.
    pub(crate) attachments: Mutex<HashMap<String, crate::vms::Attached>>,
    /// VMs this ssvd started, by name.
    pub(crate) vms: Mutex<HashMap<String, Arc<crate::vms::VmProc>>>,
    /// One scan for pools at a time (a pool is joined once).
    attaching: Mutex<()>,
}

/// Marks a volume busy on this host for the guard's life.
pub(crate) struct Busy<'a>(&'a Host, String);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(&self.0.busy).remove(&self.1);
    }
}

impl Host {
    pub fn new(config: Config, locks: Arc<Locks>) -> Host {
        Host {
            config,
            locks,
            events: Arc::new(Events::default()),
            metrics: Arc::new(Metrics::default()),
            pools: Mutex::default(),
            sessions: Mutex::default(),
            busy: Mutex::default(),
            jobs: Mutex::default(),
            exporters: Mutex::default(),
            exports: Mutex::default(),
            attachments: Mutex::default(),
            vms: Mutex::default(),
            attaching: Mutex::default(),
        }
    }

    /// Exports volumes opened from now on over one more transport.
    pub fn add_exporter(&self, e: Arc<dyn Exporter>) {
        lock(&self.exporters).push(e);
    }

    /// Attaches every ssv pool found on the configured LUNs.
    pub fn attach_all(&self) -> Vec<String> {
        let _one = lock(&self.attaching);
        let mut by_vg: HashMap<String, Vec<PvDev>> = HashMap::new();
        for path in self.lun_paths() {
            let Ok(pv) = open_lun(&path) else { continue };
            if let Ok(Holds::Vg(vg)) = holds(&pv) {
                by_vg.entry(vg).or_default().push(pv);
            }
        }
        let mut problems = Vec::new();
        for (vg, pvs) in by_vg {
            if lock(&self.pools).contains_key(&vg) {
                continue;
            }
            match Pool::attach(&vg, &pvs, self.locks.clone(), self.config.data_in_flight()) {
                Ok(p) => {
                    self.events.emit(
                        "pool.attached",
                        Some(&vg),
                        None,
                        format!("attached pool {vg}"),
                    );
                    lock(&self.pools).insert(vg, Arc::new(p));
                }
                Err(e) => problems.push(format!("pool {vg}: {e}")),
            }
        }
        problems
    }

    pub fn pool(&self, name: Option<&str>) -> Result<Arc<Pool>> {
        let mut why = Vec::new();
        if let Some(n) = name {
            // Another host may have made it since we looked.
            if !lock(&self.pools).contains_key(n) {
                why = self.attach_all();
            }
        }
        let pools = lock(&self.pools);
        match name {
            Some(n) => pools.get(n).cloned().ok_or_else(|| {
                // A pool on our LUNs that could not be attached says why.
                let prefix = format!("pool {n}: ");
                match why.iter().find(|w| w.starts_with(&prefix)) {
                    Some(w) => Error::Unavailable(w.clone()),
                    None => Error::NotFound(format!(
                        "no pool {n} on this host (pools: {}); create it or add its LUNs to the configuration",
                        pools.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                }
            }),
            None => match pools.len() {
                1 => Ok(pools.values().next().cloned().expect("one pool")),
                0 => Err(Error::NotFound(
                    "this host has no pool yet: create one with `ssvctl pool create NAME LUN…`".into(),
                )),
                _ => Err(Error::Invalid("this host has several pools: say which".into())),
            },
        }
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = lock(&self.pools).values().cloned().collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    pub fn create_pool(&self, req: &CreatePool) -> Result<PoolStatus> {
        names::check_pool_name(&req.name)?;
        if lock(&self.pools).contains_key(&req.name) {
            return Err(Error::Conflict(format!("pool {} exists already", req.name)));
        }
        let known = self.lun_paths();
        let mut devs = Vec::new();
        for l in &req.luns {
            if !known.contains(l) {
                return Err(Error::Invalid(format!(
                    "LUN {l} is not in this host's configuration ([[lun]] entries: {}); add it there first",
                    known.join(", ")
                )));
            }
            devs.push(open_unused_lun(l, &req.name)?);
        }
        let mut opts = PoolOptions::default();
        if let Some(e) = &req.extent_size {
            opts.extent_size = parse_size(e)?;
        }
        opts.initial_lv_size = req.initial.as_deref().map(parse_size).transpose()?;
        opts.chunk = req.chunk.as_deref().map(parse_size).transpose()?;
        if opts.chunk == Some(0) {
            return Err(Error::Invalid("chunk must not be 0".into()));
        }
        if let Some(t) = req.threshold_percent {
            if !(1..=99).contains(&t) {
                return Err(Error::Invalid(format!(
                    "threshold_percent {t}: use 1 to 99"
                )));
            }
            opts.threshold_percent = Some(t);
        }
        if let Ok(st) = self.locks.status() {
            opts.io_timeout = st.io_timeout.try_into().unwrap_or(u16::MAX);
        }
        let pool = Arc::new(Pool::create(
            &req.name,
            &devs,
            &opts,
            self.locks.clone(),
            self.config.data_in_flight(),
        )?);
        lock(&self.pools).insert(req.name.clone(), pool.clone());
        self.events.emit(
            "pool.created",
            Some(&req.name),
            None,
            format!("created pool {} on {}", req.name, req.luns.join(", ")),
        );
        self.pool_status(&pool)
    }

    pub fn add_lun(&self, pool: &str, path: &str) -> Result<PoolStatus> {
        let p = self.pool(Some(pool))?;
        if !self.lun_paths().iter().any(|l| l == path) {
            return Err(Error::Invalid(format!(
                "LUN {path} is not in this host's configuration; add a [[lun]] entry first"
            )));
        }
        p.add_lun(&open_unused_lun(path, pool)?)?;
        self.events.emit(
            "pool.lun_added",
            Some(pool),
            None,
            format!("added LUN {path} to pool {pool}"),
        );
        self.pool_status(&p)
    }

    pub fn pool_status(&self, pool: &Pool) -> Result<PoolStatus> {
        let vg = pool.refresh()?;
        let vols = model::volumes(&vg);
        let mut provisioned = 0;
        for v in &vols {
            provisioned += self.virtual_size(pool, &v.top).unwrap_or(0);
        }
        let st = pool.status(&vg, provisioned, vols.len(), self.growth(pool))?;
        let l = PoolLabels {
            pool: st.name.clone(),
        };
        self.metrics
            .pool_capacity
            .get_or_create(&l)
            .set(st.capacity as i64);
        self.metrics.pool_free.get_or_create(&l).set(st.free as i64);
        self.metrics
            .pool_provisioned
            .get_or_create(&l)
            .set(st.provisioned as i64);
        self.metrics
            .pool_volumes
            .get_or_create(&l)
            .set(st.volumes as i64);
        Ok(st)
    }

    pub(crate) fn virtual_size(&self, pool: &Pool, lv: &str) -> Result<u64> {
        Ok(thin::layer::read_header(&*pool.open(lv)?)?.size)
    }

    /// The volume `id` in whichever pool has it.
    pub fn find(&self, id: &str) -> Result<(Arc<Pool>, VolumeRecord)> {
        if lock(&self.pools).is_empty() {
            self.attach_all();
        }
        for p in self.pools() {
            let vg = p.refresh()?;
            if let Some(v) = model::find(&model::volumes(&vg), id) {
                return Ok((p.clone(), v.clone()));
            }
        }
        Err(Error::NotFound(format!(
            "no volume {id} (`ssvctl volume list` shows them)"
        )))
    }

    /// A volume by id, or by name when exactly one has it.
    pub fn resolve(&self, id_or_name: &str) -> Result<(Arc<Pool>, VolumeRecord)> {
        if let Ok(found) = self.find(id_or_name) {
            return Ok(found);
        }
        let mut hits = Vec::new();
        for p in self.pools() {
            for v in model::volumes(&p.vg()) {
                if v.name == id_or_name {
                    hits.push((p.clone(), v));
                }
            }
        }
        match hits.len() {
            1 => Ok(hits.remove(0)),
            0 => Err(Error::NotFound(format!(
                "no volume with id or name {id_or_name:?} (`ssvctl volume list` shows them)"
            ))),
            n => Err(Error::Invalid(format!(
                "{n} volumes are named {id_or_name:?}: use the id"
            ))),
        }
    }

    pub fn volumes(&self) -> Result<Vec<VolumeRecord>> {
        let mut out = Vec::new();
        for p in self.pools() {
            out.extend(model::volumes(&p.refresh()?));
        }
        Ok(out)
    }

    pub fn detail(&self, pool: &Pool, rec: VolumeRecord) -> Result<VolumeDetail> {
        let session = lock(&self.sessions).get(&rec.id).cloned();
        let dev = pool.open(&rec.top)?;
        let h = thin::layer::read_header(&*dev)?;
        let (allocated_end, growth) = match &session {
            Some(s) => {
                s.with_volume(|v| Ok((v.allocated_end(), Some(Box::new(v.growth().into())))))?
            }
            None => (thin::layer::allocated_end(&*dev, &h)?, None),
        };
        Ok(VolumeDetail {
            size: h.size,
            cluster_size: h.cluster_size(),
            allocated_end,
            state: if session.is_some() {
                "session"
            } else if self.is_attached(&rec.id) {
                "attached"
            } else {
                "closed"
            }
            .into(),
            nbd: self.export_uri(&rec.id, Transport::Nbd),
            iscsi: self.export_uri(&rec.id, Transport::Iscsi),
            growth,
            record: rec,
        })
    }

    fn export_uri(&self, id: &str, t: Transport) -> Option<String> {
        lock(&self.exports).get(id)?.get(&t).cloned()
    }

    /// The growth policy and initial LV size of volumes in `pool`.
    pub(crate) fn growth(&self, pool: &Pool) -> (thin::GrowthPolicy, u64) {
        pool.growth((self.config.growth_policy(), self.config.initial_lv_size()))
    }

    pub(crate) fn mark_busy(&self, id: &str) -> Result<Busy<'_>> {
        if !lock(&self.busy).insert(id.to_string()) {
            return Err(Error::Conflict(format!(
                "volume {id} has another operation running on this host; retry when it ends"
            )));
        }
        Ok(Busy(self, id.to_string()))
    }

    pub fn status(&self) -> HostStatus {
        HostStatus {
            host_id: self.locks.host_id(),
            version: env!("CARGO_PKG_VERSION").into(),
            pools: self.pools().iter().map(|p| p.name().to_string()).collect(),
            sessions: self.sessions(),
            lockd: self
                .locks
                .status()
                .ok()
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

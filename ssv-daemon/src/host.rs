//! One ssvd: this host's pools, the volumes in them, open sessions and
//! long-running jobs. Every method is blocking (storage and lease I/O); the
//! API runs them on blocking threads.

use crate::config::{parse_size, Config, LunSource};
use crate::events::Events;
use crate::leases::Locks;
use crate::metrics::{Metrics, PoolLabels};
use crate::model::{self, SnapshotInfo, VolumeRecord};
use crate::names::{self, *};
use crate::pool::{Pool, PoolExtender, PoolOptions, PoolStatus};
use crate::session::Session;
use crate::{Error, Result};
use lvm::PvDev;
use san::{BlockDev, FileDev};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use thin::chain::LayerOptions;
use thin::{CreateOptions, LvStore, OpenOptions, Volume};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A LUN this host can reach, and what is on it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LunInfo {
    pub path: String,
    pub identity: String,
    pub size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    /// The pool (VG) on it, if any.
    pub pool: Option<String>,
    /// "free", "pool", "other VG", or why it could not be read.
    pub state: String,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreatePool {
    pub name: String,
    /// LUN paths (see `GET /v1/luns`).
    pub luns: Vec<String>,
    /// Extent size, e.g. "128m" (default).
    #[serde(default)]
    pub extent_size: Option<String>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateVolume {
    /// Client-chosen id: repeating a create with the same id and the same
    /// name and size returns the volume instead of making a second one.
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// Virtual size: bytes, or e.g. "10g".
    pub size: String,
    /// Pool to create it in; may be left out when the host has one pool.
    #[serde(default)]
    pub pool: Option<String>,
    /// qcow2 cluster size, e.g. "64k" (default).
    #[serde(default)]
    pub cluster_size: Option<String>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateSnapshot {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloneMode {
    /// Copies the allocated data into an independent volume (a job).
    Full,
    /// A new volume over the snapshot, sharing its data read-only.
    Linked,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateClone {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    pub mode: CloneMode,
    /// Clone this snapshot of the volume; without it (full clones only)
    /// the volume itself, which must not be open for writing meanwhile.
    #[serde(default)]
    pub snapshot: Option<String>,
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
    /// Open for writing on this host (`session`), or not here (`closed`).
    pub state: String,
    /// NBD URI while open here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub id: String,
    pub kind: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

/// Where exports of open volumes go (the NBD server, later iSCSI).
pub trait Exporter: Send + Sync {
    /// Serves `dev` under `name`; returns the URI clients use.
    fn export(&self, name: &str, dev: Arc<dyn BlockDev>) -> Result<String>;
    fn unexport(&self, name: &str);
}

pub struct Host {
    pub config: Config,
    pub locks: Arc<Locks>,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Volume ids with an operation running on this host.
    busy: Mutex<std::collections::HashSet<String>>,
    jobs: Mutex<HashMap<String, JobInfo>>,
    exporter: Mutex<Option<Arc<dyn Exporter>>>,
    exports: Mutex<HashMap<String, String>>,
    /// One scan for pools at a time (a pool is joined once).
    attaching: Mutex<()>,
}

/// Marks a volume busy on this host for the guard's life.
struct Busy<'a>(&'a Host, String);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(&self.0.busy).remove(&self.1);
    }
}

fn open_lun(path: &str) -> Result<PvDev> {
    let dev = FileDev::open(std::path::Path::new(path), &san::OpenOptions::new())
        .map_err(|e| Error::NotFound(format!("LUN {path}: {e}")))?;
    Ok(PvDev::new(Arc::new(dev), path))
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
            exporter: Mutex::new(None),
            exports: Mutex::default(),
            attaching: Mutex::default(),
        }
    }

    pub fn set_exporter(&self, e: Arc<dyn Exporter>) {
        *lock(&self.exporter) = Some(e);
    }

    fn lun_paths(&self) -> Vec<String> {
        self.config
            .luns
            .iter()
            .map(|l| match l {
                LunSource::File(p) | LunSource::Device(p) => p.display().to_string(),
            })
            .collect()
    }

    /// The configured LUNs with what is on each.
    pub fn luns(&self) -> Vec<LunInfo> {
        self.lun_paths()
            .into_iter()
            .map(|path| match open_lun(&path) {
                Ok(pv) => {
                    let (pool, state) = match lvm::scan(std::slice::from_ref(&pv)) {
                        Ok(scan) => match scan.texts.first().map(|t| t.vg.name.clone()) {
                            Some(vg) => {
                                let ours = lock(&self.pools).contains_key(&vg);
                                (Some(vg), if ours { "pool" } else { "other VG" }.to_string())
                            }
                            None if scan.devs.first().is_some_and(|d| {
                                matches!(d.label, lvm::scan::LabelScan::Pv(_))
                            }) =>
                            {
                                (None, "PV without a VG".into())
                            }
                            None => (None, "free".into()),
                        },
                        Err(e) => (None, format!("unreadable: {e}")),
                    };
                    LunInfo {
                        identity: pv.dev.identity().to_string(),
                        size: pv.dev.size(),
                        logical_sector_size: pv.dev.logical_sector_size(),
                        physical_sector_size: pv.dev.physical_sector_size(),
                        path,
                        pool,
                        state,
                    }
                }
                Err(e) => LunInfo {
                    path,
                    identity: String::new(),
                    size: 0,
                    logical_sector_size: 0,
                    physical_sector_size: 0,
                    pool: None,
                    state: e.to_string(),
                },
            })
            .collect()
    }

    /// Attaches every ssv pool found on the configured LUNs.
    pub fn attach_all(&self) -> Vec<String> {
        let _one = lock(&self.attaching);
        let mut by_vg: HashMap<String, Vec<PvDev>> = HashMap::new();
        for path in self.lun_paths() {
            let Ok(pv) = open_lun(&path) else { continue };
            if let Ok(scan) = lvm::scan(std::slice::from_ref(&pv)) {
                if let Some(vg) = scan.texts.first().map(|t| t.vg.name.clone()) {
                    by_vg.entry(vg).or_default().push(pv);
                }
            }
        }
        let mut problems = Vec::new();
        for (vg, pvs) in by_vg {
            if lock(&self.pools).contains_key(&vg) {
                continue;
            }
            match Pool::attach(&vg, &pvs, self.locks.clone()) {
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
        if let Some(n) = name {
            // Another host may have made it since we looked.
            if !lock(&self.pools).contains_key(n) {
                self.attach_all();
            }
        }
        let pools = lock(&self.pools);
        match name {
            Some(n) => pools.get(n).cloned().ok_or_else(|| {
                Error::NotFound(format!(
                    "no pool {n} on this host (pools: {}); create it or add its LUNs to the configuration",
                    pools.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
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
            devs.push(open_lun(l)?);
        }
        let mut opts = PoolOptions::default();
        if let Some(e) = &req.extent_size {
            opts.extent_size = parse_size(e)?;
        }
        if let Ok(st) = self.locks.status() {
            opts.io_timeout = st.io_timeout.try_into().unwrap_or(u16::MAX);
        }
        let pool = Arc::new(Pool::create(&req.name, &devs, &opts, self.locks.clone())?);
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
        p.add_lun(&open_lun(path)?)?;
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
        let st = pool.status(provisioned, vols.len())?;
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

    fn virtual_size(&self, pool: &Pool, lv: &str) -> Result<u64> {
        Ok(thin::layer::read_header(&*pool.open(lv)?)?.size)
    }

    // ---- volumes ----

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
        let allocated_end = match &session {
            Some(s) => s.with_volume(|v| Ok(v.allocated_end()))?,
            None => thin::layer::allocated_end(&*dev, &h)?,
        };
        Ok(VolumeDetail {
            size: h.size,
            cluster_size: h.cluster_size(),
            allocated_end,
            state: if session.is_some() {
                "session"
            } else {
                "closed"
            }
            .into(),
            nbd: lock(&self.exports).get(&rec.id).cloned(),
            record: rec,
        })
    }

    fn mark_busy(&self, id: &str) -> Result<Busy<'_>> {
        if !lock(&self.busy).insert(id.to_string()) {
            return Err(Error::Conflict(format!(
                "volume {id} has another operation running on this host; retry when it ends"
            )));
        }
        Ok(Busy(self, id.to_string()))
    }

    fn layer_opts(&self, tags: Vec<String>) -> LayerOptions {
        LayerOptions {
            initial_lv_size: self.config.initial_lv_size(),
            tags,
            ..LayerOptions::default()
        }
    }

    fn pending_tags(id: &str, layer: u32) -> Vec<String> {
        vec![
            TAG_SSV.into(),
            format!("{TAG_VOLUME}{id}"),
            format!("{TAG_LAYER}{layer}"),
            TAG_PENDING.into(),
        ]
    }

    /// Makes pending layer `lv` the top of a new volume: its name, a lease
    /// slot, no longer pending; one commit under the pool lease.
    fn publish_volume(&self, pool: &Pool, id: &str, lv: &str, name: &str) -> Result<()> {
        pool.change(&format!("publishing volume {id}"), |vg| {
            let slot = pool.take_lease_slot(vg, id)?;
            vg.change(&format!("ssvd: volume {id} ready"), |v| {
                v.change_tags(
                    Some(lv),
                    &[
                        TAG_TOP.into(),
                        format!("{TAG_NAME}{}", names::encode(name)),
                        format!("{TAG_LEASE}{slot}"),
                        format!("{TAG_CREATED}{}", model::now()),
                    ],
                    &[TAG_PENDING.into()],
                )
            })?;
            Ok(())
        })
    }

    fn pick_id(&self, what: &str, id: &Option<String>) -> Result<String> {
        match id {
            Some(id) => {
                check_id(what, id)?;
                Ok(id.clone())
            }
            None => Ok(new_id()),
        }
    }

    /// Creates a thin volume; returns it and whether it is new.
    pub fn create_volume(&self, req: &CreateVolume) -> Result<(VolumeDetail, bool)> {
        check_name("volume", &req.name)?;
        let id = self.pick_id("volume", &req.id)?;
        let size = parse_size(&req.size)?;
        if let Ok((pool, rec)) = self.find(&id) {
            let d = self.detail(&pool, rec)?;
            if d.record.name == req.name && d.size == size {
                return Ok((d, false));
            }
            return Err(Error::Conflict(format!(
                "volume {id} exists already as {:?} of {} bytes; use another id",
                d.record.name, d.size
            )));
        }
        let pool = self.pool(req.pool.as_deref())?;
        let _busy = self.mark_busy(&id)?;
        let cluster_size = match &req.cluster_size {
            Some(c) => parse_size(c)?,
            None => thin::format::DEFAULT_CLUSTER_SIZE,
        };
        let lv = layer_lv(&id, 0);
        self.drop_pending(&pool, &lv)?;
        thin::create(
            &*pool,
            &lv,
            &CreateOptions {
                size: Some(size),
                cluster_size,
                initial_lv_size: self.config.initial_lv_size(),
                backing: None,
                tags: Self::pending_tags(&id, 0),
            },
        )?;
        self.publish_volume(&pool, &id, &lv, &req.name)?;
        self.events.emit(
            "volume.created",
            Some(pool.name()),
            Some(&id),
            format!("created volume {id} ({}, {size} bytes)", req.name),
        );
        let (pool, rec) = self.find(&id)?;
        Ok((self.detail(&pool, rec)?, true))
    }

    /// A pending LV left by a crash under this name goes first.
    fn drop_pending(&self, pool: &Pool, lv: &str) -> Result<()> {
        let vg = pool.refresh()?;
        if let Some(l) = vg.lv(lv) {
            if has_tag(&l.tags, TAG_PENDING) {
                log::warn!("removing {lv}, left pending by an interrupted operation");
                pool.remove(lv)?;
            } else {
                return Err(Error::Conflict(format!("LV {lv} exists already")));
            }
        }
        Ok(())
    }

    /// Runs `f` with nobody writing the volume: through this host's session
    /// (I/O held at its gate, the volume closed and reopened on the top `f`
    /// returns), or else holding the volume's lease, which fails at once if
    /// another host has it open.
    fn quiesced<T>(
        &self,
        pool: &Arc<Pool>,
        rec: &VolumeRecord,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let session = lock(&self.sessions).get(&rec.id).cloned();
        match session {
            Some(s) => s.quiesce(|old| {
                if let Some(v) = old {
                    if let Err(e) = v.flush() {
                        return (Arc::into_inner(v), Err(e.into()));
                    }
                    drop(v);
                }
                let out = f();
                let reopened = self
                    .find(&rec.id)
                    .and_then(|(p, r)| self.open_volume(&p, &r.top));
                match reopened {
                    Ok(v) => (Some(v), out),
                    Err(e) => {
                        log::error!("volume {}: reopening after a layer change: {e}", rec.id);
                        (None, out.and(Err(e)))
                    }
                }
            }),
            None => {
                let vg = pool.vg();
                let _lease = self
                    .locks
                    .acquire(&vg, &rec.id, rec.lease_slot, false, false)
                    .map_err(|e| match e {
                        Error::Conflict(m) => Error::Conflict(format!(
                            "volume {} is open for writing on another host: {m}",
                            rec.id
                        )),
                        e => e,
                    })?;
                f()
            }
        }
    }

    fn open_volume(&self, pool: &Arc<Pool>, top: &str) -> Result<Volume> {
        let opts = OpenOptions {
            policy: self.config.growth_policy(),
            ..OpenOptions::default()
        }
        .with_extender(Arc::new(self.extender(pool)));
        Ok(Volume::open(&**pool, top, &opts)?)
    }

    fn extender(&self, pool: &Arc<Pool>) -> MeteredExtender {
        MeteredExtender {
            inner: PoolExtender(pool.clone()),
            metrics: self.metrics.clone(),
            events: self.events.clone(),
            pool: pool.name().to_string(),
        }
    }

    pub fn resize_volume(&self, id: &str, size: &str) -> Result<VolumeDetail> {
        let new_size = parse_size(size)?;
        let (pool, rec) = self.resolve(id)?;
        let _busy = self.mark_busy(&rec.id)?;
        let session = lock(&self.sessions).get(&rec.id).cloned();
        match session {
            Some(s) => s.with_volume(|v| Ok(v.grow(new_size)?))?,
            None => self.quiesced(&pool, &rec, || {
                let v = self.open_volume(&pool, &rec.top)?;
                v.grow(new_size)?;
                Ok(())
            })?,
        }
        self.events.emit(
            "volume.resized",
            Some(pool.name()),
            Some(&rec.id),
            format!("volume {} now {new_size} bytes", rec.id),
        );
        let (pool, rec) = self.find(&rec.id)?;
        self.detail(&pool, rec)
    }

    /// LVs of other volumes whose chains use `lvs` (linked clones).
    fn dependents(&self, pool: &Pool, rec: &VolumeRecord, lvs: &[&str]) -> Result<Vec<String>> {
        let vg = pool.refresh()?;
        let mut out = Vec::new();
        for l in &vg.lvs {
            if tag_value(&l.tags, TAG_VOLUME) == Some(rec.id.as_str()) || l.name == LEASES_LV {
                continue;
            }
            let Ok(dev) = pool.open(&l.name) else {
                continue;
            };
            if let Ok(h) = thin::layer::read_header(&*dev) {
                if let Some(b) = h.backing.as_ref() {
                    if lvs.contains(&b.name.as_str()) {
                        let who = tag_value(&l.tags, TAG_VOLUME).unwrap_or(&l.name);
                        out.push(format!("{who} (over {})", b.name));
                    }
                }
            }
        }
        Ok(out)
    }

    pub fn delete_volume(&self, id: &str) -> Result<()> {
        let (pool, rec) = self.resolve(id)?;
        if lock(&self.sessions).contains_key(&rec.id) {
            return Err(Error::Conflict(format!(
                "volume {} is open on this host; close it first (`ssvctl volume close {}`)",
                rec.id, rec.id
            )));
        }
        let _busy = self.mark_busy(&rec.id)?;
        let lvs: Vec<&str> = rec.layers.iter().map(|l| l.lv.as_str()).collect();
        let deps = self.dependents(&pool, &rec, &lvs)?;
        if !deps.is_empty() {
            return Err(Error::Conflict(format!(
                "volume {} is the base of linked clones: {}; delete them or make them full clones first",
                rec.id,
                deps.join(", ")
            )));
        }
        self.quiesced(&pool, &rec, || {
            // One commit makes the volume disappear; the LVs go after.
            let changes: Vec<(&str, Vec<String>, Vec<String>)> = lvs
                .iter()
                .map(|lv| {
                    (
                        *lv,
                        vec![TAG_PENDING.to_string()],
                        vec![TAG_TOP.to_string()],
                    )
                })
                .collect();
            pool.retag(&format!("deleting volume {}", rec.id), &changes)?;
            Ok(())
        })?;
        for lv in &lvs {
            pool.remove(lv)?;
        }
        self.events.emit(
            "volume.deleted",
            Some(pool.name()),
            Some(&rec.id),
            format!("deleted volume {} ({})", rec.id, rec.name),
        );
        Ok(())
    }

    // ---- snapshots ----

    pub fn create_snapshot(
        &self,
        volume: &str,
        req: &CreateSnapshot,
    ) -> Result<(SnapshotInfo, bool)> {
        check_name("snapshot", &req.name)?;
        let sid = self.pick_id("snapshot", &req.id)?;
        let (pool, rec) = self.resolve(volume)?;
        if let Some(s) = rec.snapshots.iter().find(|s| s.id == sid) {
            if s.name == req.name {
                return Ok((s.clone(), false));
            }
            return Err(Error::Conflict(format!(
                "snapshot {sid} exists already as {:?}",
                s.name
            )));
        }
        let _busy = self.mark_busy(&rec.id)?;
        let vg = pool.refresh()?;
        let n = model::next_layer(&vg, &rec.id);
        let new_top = layer_lv(&rec.id, n);
        self.quiesced(&pool, &rec, || {
            thin::chain::snapshot(
                &*pool,
                &rec.top,
                &new_top,
                &self.layer_opts(Self::pending_tags(&rec.id, n)),
            )?;
            let moved = vec![
                TAG_TOP.to_string(),
                format!("{TAG_NAME}{}", names::encode(&rec.name)),
                format!("{TAG_LEASE}{}", rec.lease_slot),
                format!("{TAG_CREATED}{}", rec.created),
            ];
            let old_ctime = vg
                .lv(&rec.top)
                .and_then(|l| tag_value(&l.tags, TAG_CREATED))
                .map(|c| format!("{TAG_CREATED}{c}"));
            let mut dropped = moved.clone();
            dropped.extend(old_ctime);
            pool.retag(
                &format!("snapshot {sid} of volume {}", rec.id),
                &[
                    (&new_top, moved, vec![TAG_PENDING.into()]),
                    (
                        &rec.top,
                        vec![
                            format!("{TAG_SNAPSHOT}{sid}"),
                            format!("{TAG_SNAPSHOT_NAME}{}", names::encode(&req.name)),
                            format!("{TAG_CREATED}{}", model::now()),
                        ],
                        dropped,
                    ),
                ],
            )
        })?;
        self.events.emit(
            "snapshot.created",
            Some(pool.name()),
            Some(&rec.id),
            format!("snapshot {sid} ({}) of volume {}", req.name, rec.id),
        );
        let (_, rec) = self.find(&rec.id)?;
        let s = rec
            .snapshots
            .iter()
            .find(|s| s.id == sid)
            .cloned()
            .ok_or_else(|| Error::Storage(format!("snapshot {sid} vanished after it was made")))?;
        Ok((s, true))
    }

    fn snapshot_of<'a>(rec: &'a VolumeRecord, snap: &str) -> Result<&'a SnapshotInfo> {
        let hits: Vec<_> = rec
            .snapshots
            .iter()
            .filter(|s| s.id == snap || s.name == snap)
            .collect();
        match hits.as_slice() {
            [s] => Ok(s),
            [] => Err(Error::NotFound(format!(
                "volume {} has no snapshot {snap:?} (`ssvctl snapshot list {}`)",
                rec.id, rec.id
            ))),
            _ => Err(Error::Invalid(format!(
                "several snapshots of {} are named {snap:?}: use the id",
                rec.id
            ))),
        }
    }

    /// Makes the volume read as the snapshot again; the layers above the
    /// snapshot (newer snapshots and the current top) are dropped.
    pub fn revert(&self, volume: &str, snap: &str) -> Result<VolumeDetail> {
        let (pool, rec) = self.resolve(volume)?;
        let s = Self::snapshot_of(&rec, snap)?.clone();
        let _busy = self.mark_busy(&rec.id)?;
        let Some(pos) = rec.layers.iter().position(|l| l.lv == s.lv) else {
            return Err(Error::Storage(format!(
                "snapshot {} is not in volume {}'s chain",
                s.id, rec.id
            )));
        };
        let above: Vec<String> = rec.layers[..pos].iter().map(|l| l.lv.clone()).collect();
        let refs: Vec<&str> = above.iter().map(String::as_str).collect();
        let deps = self.dependents(&pool, &rec, &refs)?;
        if !deps.is_empty() {
            return Err(Error::Conflict(format!(
                "newer snapshots of {} are bases of linked clones: {}; delete those first",
                rec.id,
                deps.join(", ")
            )));
        }
        let n = model::next_layer(&pool.refresh()?, &rec.id);
        let new_top = layer_lv(&rec.id, n);
        self.quiesced(&pool, &rec, || {
            thin::chain::snapshot(
                &*pool,
                &s.lv,
                &new_top,
                &self.layer_opts(Self::pending_tags(&rec.id, n)),
            )?;
            let mut changes = vec![(
                new_top.as_str(),
                vec![
                    TAG_TOP.to_string(),
                    format!("{TAG_NAME}{}", names::encode(&rec.name)),
                    format!("{TAG_LEASE}{}", rec.lease_slot),
                    format!("{TAG_CREATED}{}", rec.created),
                ],
                vec![TAG_PENDING.to_string()],
            )];
            for lv in &above {
                changes.push((
                    lv.as_str(),
                    vec![TAG_PENDING.to_string()],
                    vec![TAG_TOP.to_string()],
                ));
            }
            pool.retag(
                &format!("reverting volume {} to {}", rec.id, s.id),
                &changes,
            )?;
            for lv in &above {
                pool.remove(lv)?;
            }
            Ok(())
        })?;
        self.events.emit(
            "volume.reverted",
            Some(pool.name()),
            Some(&rec.id),
            format!("volume {} reverted to snapshot {}", rec.id, s.id),
        );
        let (pool, rec) = self.find(&rec.id)?;
        self.detail(&pool, rec)
    }

    /// Deletes a snapshot by merging its data into the layer above it.
    pub fn delete_snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        let (pool, rec) = self.resolve(volume)?;
        let s = Self::snapshot_of(&rec, snap)?.clone();
        let deps = self.dependents(&pool, &rec, &[s.lv.as_str()])?;
        if !deps.is_empty() {
            return Err(Error::Conflict(format!(
                "snapshot {} is the base of linked clones: {}; delete them or make them full clones first",
                s.id,
                deps.join(", ")
            )));
        }
        let _busy = self.mark_busy(&rec.id)?;
        let ext: Arc<dyn thin::Extender> = Arc::new(self.extender(&pool));
        self.quiesced(&pool, &rec, || {
            thin::chain::delete_snapshot(
                &*pool,
                &rec.top,
                &s.lv,
                Some(ext),
                thin::volume::DEFAULT_MAX_DEPTH,
            )?;
            Ok(())
        })?;
        self.events.emit(
            "snapshot.deleted",
            Some(pool.name()),
            Some(&rec.id),
            format!("snapshot {} of volume {} merged and deleted", s.id, rec.id),
        );
        Ok(())
    }

    // ---- clones ----

    /// A linked clone now, or a full clone as a job (returned).
    pub fn clone_volume(self: &Arc<Self>, volume: &str, req: &CreateClone) -> Result<CloneStarted> {
        check_name("volume", &req.name)?;
        let id = self.pick_id("volume", &req.id)?;
        let (pool, rec) = self.resolve(volume)?;
        if let Ok((p, existing)) = self.find(&id) {
            if existing.name == req.name {
                return Ok(CloneStarted::Done(self.detail(&p, existing)?));
            }
            return Err(Error::Conflict(format!(
                "volume {id} exists already as {:?}",
                existing.name
            )));
        }
        let snap = req
            .snapshot
            .as_deref()
            .map(|s| Self::snapshot_of(&rec, s))
            .transpose()?
            .cloned();
        let lv = layer_lv(&id, 0);
        match req.mode {
            CloneMode::Linked => {
                let Some(s) = snap else {
                    return Err(Error::Invalid(
                        "a linked clone needs a snapshot as its base (the volume's top keeps changing); pass --snapshot".into(),
                    ));
                };
                let _busy = self.mark_busy(&id)?;
                self.drop_pending(&pool, &lv)?;
                thin::clone::linked_clone(
                    &*pool,
                    &s.lv,
                    &lv,
                    &CreateOptions {
                        initial_lv_size: self.config.initial_lv_size(),
                        tags: Self::pending_tags(&id, 0),
                        ..CreateOptions::default()
                    },
                )?;
                self.publish_volume(&pool, &id, &lv, &req.name)?;
                self.events.emit(
                    "volume.created",
                    Some(pool.name()),
                    Some(&id),
                    format!("linked clone {id} of {} at snapshot {}", rec.id, s.id),
                );
                let (p, r) = self.find(&id)?;
                Ok(CloneStarted::Done(self.detail(&p, r)?))
            }
            CloneMode::Full => {
                let job = new_id();
                lock(&self.jobs).insert(
                    job.clone(),
                    JobInfo {
                        id: job.clone(),
                        kind: "full_clone".into(),
                        state: "running".into(),
                        done_bytes: 0,
                        total_bytes: 0,
                        volume: Some(id.clone()),
                        error: None,
                    },
                );
                let me = self.clone();
                let (job2, name) = (job.clone(), req.name.clone());
                std::thread::Builder::new()
                    .name(format!("clone-{id}"))
                    .spawn(move || {
                        let r = me.full_clone(&pool, &rec, snap.as_ref(), &id, &name, &job2);
                        let mut jobs = lock(&me.jobs);
                        if let Some(j) = jobs.get_mut(&job2) {
                            match r {
                                Ok(()) => j.state = "done".into(),
                                Err(e) => {
                                    j.state = "failed".into();
                                    j.error = Some(e.to_string());
                                }
                            }
                        }
                        drop(jobs);
                        me.events.emit(
                            "job.finished",
                            Some(pool.name()),
                            Some(&id),
                            format!("full clone job {job2} finished"),
                        );
                    })
                    .map_err(|e| Error::Storage(format!("starting the clone job: {e}")))?;
                Ok(CloneStarted::Job(self.job(&job)?))
            }
        }
    }

    fn full_clone(
        &self,
        pool: &Arc<Pool>,
        rec: &VolumeRecord,
        snap: Option<&SnapshotInfo>,
        id: &str,
        name: &str,
        job: &str,
    ) -> Result<()> {
        let _busy = self.mark_busy(id)?;
        let lv = layer_lv(id, 0);
        self.drop_pending(pool, &lv)?;
        let copy = || -> Result<()> {
            let src = snap.map_or(rec.top.as_str(), |s| s.lv.as_str());
            let ext: Arc<dyn thin::Extender> = Arc::new(self.extender(pool));
            thin::clone::full_clone(
                &**pool,
                src,
                &lv,
                &CreateOptions {
                    initial_lv_size: self.config.initial_lv_size(),
                    tags: Self::pending_tags(id, 0),
                    ..CreateOptions::default()
                },
                Some(ext),
                &mut |p| {
                    if let Some(j) = lock(&self.jobs).get_mut(job) {
                        j.done_bytes = p.done;
                        j.total_bytes = p.total;
                    }
                },
            )?;
            Ok(())
        };
        match snap {
            // Snapshot layers never change: no lease needed to read them.
            Some(_) => copy()?,
            None => {
                if lock(&self.sessions).contains_key(&rec.id) {
                    return Err(Error::Conflict(format!(
                        "volume {} is open for writing here; clone a snapshot of it instead (`ssvctl snapshot create`)",
                        rec.id
                    )));
                }
                self.quiesced(pool, rec, copy)?;
            }
        }
        self.publish_volume(pool, id, &lv, name)?;
        self.events.emit(
            "volume.created",
            Some(pool.name()),
            Some(id),
            format!("full clone {id} of {}", rec.id),
        );
        Ok(())
    }

    pub fn job(&self, id: &str) -> Result<JobInfo> {
        lock(&self.jobs)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no job {id} on this host")))
    }

    pub fn jobs(&self) -> Vec<JobInfo> {
        lock(&self.jobs).values().cloned().collect()
    }

    // ---- sessions ----

    /// Opens the volume for writing on this host, holding its lease, and
    /// exports it; returns where.
    /// With `wait`, a lease held by a host that stopped renewing is taken
    /// over once that host is surely dead (lockd's host_dead timeout);
    /// without, a held lease fails at once.
    pub fn open_session(&self, volume: &str, wait: bool) -> Result<VolumeDetail> {
        let (pool, rec) = self.resolve(volume)?;
        if lock(&self.sessions).contains_key(&rec.id) {
            return self.detail(&pool, rec);
        }
        let _busy = self.mark_busy(&rec.id)?;
        let lease = self
            .locks
            .acquire(&pool.vg(), &rec.id, rec.lease_slot, false, wait)
            .map_err(|e| match e {
                Error::Conflict(m) => {
                    Error::Conflict(format!("volume {} is open on another host: {m}", rec.id))
                }
                e => e,
            })?;
        let v = self.open_volume(&pool, &rec.top)?;
        let s = Arc::new(Session::new(&rec.id, pool.name(), lease.keep(), v));
        let exporter = lock(&self.exporter).clone();
        if let Some(x) = exporter {
            match x.export(&rec.id, s.arc_dev()) {
                Ok(uri) => {
                    lock(&self.exports).insert(rec.id.clone(), uri);
                }
                Err(e) => {
                    self.locks.release(&s.lease);
                    return Err(e);
                }
            }
        }
        lock(&self.sessions).insert(rec.id.clone(), s);
        self.metrics.sessions.inc();
        self.events.emit(
            "session.opened",
            Some(pool.name()),
            Some(&rec.id),
            format!(
                "volume {} open for writing on host {}",
                rec.id,
                self.locks.host_id()
            ),
        );
        self.detail(&pool, rec)
    }

    pub fn close_session(&self, volume: &str) -> Result<()> {
        let (pool, rec) = self.resolve(volume)?;
        let Some(s) = lock(&self.sessions).remove(&rec.id) else {
            return Err(Error::NotFound(format!(
                "volume {} is not open on this host",
                rec.id
            )));
        };
        if let Some(x) = lock(&self.exporter).clone() {
            x.unexport(&rec.id);
        }
        lock(&self.exports).remove(&rec.id);
        let flushed = s.quiesce(|v| {
            let r = v.map_or(Ok(()), |v| v.flush().map_err(Error::from));
            (None, r)
        });
        self.locks.release(&s.lease);
        self.metrics.sessions.dec();
        self.events.emit(
            "session.closed",
            Some(pool.name()),
            Some(&rec.id),
            format!("volume {} closed", rec.id),
        );
        flushed
    }

    pub fn sessions(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.sessions).keys().cloned().collect();
        v.sort();
        v
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self) {
        for id in self.sessions() {
            if let Err(e) = self.close_session(&id) {
                log::warn!("closing volume {id}: {e}");
            }
        }
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

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CloneStarted {
    /// The clone exists (linked clones, or a repeated create).
    Done(VolumeDetail),
    /// A full clone is copying; follow the job.
    Job(JobInfo),
}

/// The pool's extender with metrics and events.
struct MeteredExtender {
    inner: PoolExtender,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
    pool: String,
}

impl thin::Extender for MeteredExtender {
    fn extend(&self, req: &thin::GrowthRequest) -> std::result::Result<Arc<dyn BlockDev>, String> {
        let t = std::time::Instant::now();
        let r = self.inner.extend(req);
        self.metrics
            .extension_seconds
            .observe(t.elapsed().as_secs_f64());
        match &r {
            Ok(d) => {
                self.metrics.extensions.inc();
                self.events.emit(
                    "volume.grown",
                    Some(&self.pool),
                    None,
                    format!(
                        "LV {} grown to {} bytes in {:?}{}",
                        req.lv,
                        d.size(),
                        t.elapsed(),
                        if req.urgent { " (a write waited)" } else { "" }
                    ),
                );
            }
            Err(e) => {
                self.metrics.extension_failures.inc();
                self.events.emit(
                    "volume.grow_failed",
                    Some(&self.pool),
                    None,
                    format!("LV {} could not grow: {e}", req.lv),
                );
            }
        }
        r
    }
}

pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

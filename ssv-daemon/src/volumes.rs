//! Volume operations: create, resize, delete, and the helpers every
//! layer change shares (pending layers, publishing, quiescing).

use crate::config::parse_size;
use crate::growth::MeteredExtender;
use crate::host::{lock, Host, VolumeDetail};
use crate::model::{self, VolumeRecord};
use crate::names::{self, *};
use crate::pool::{Pool, PoolExtender};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use thin::chain::LayerOptions;
use thin::{CreateOptions, LvStore, OpenOptions, Volume};

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

/// A writer outside ssvd (a VMM) asks for its volume's top LV to grow.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct GrowRequest {
    /// The LV the writer writes (the volume's top).
    pub lv: String,
    /// Smallest size that lets the writer go on, in bytes.
    pub min_size: u64,
    /// Size the writer's policy asks for (at least `min_size`).
    #[serde(default)]
    pub target_size: u64,
    /// Only say the LV will want `target_size` soon (a notice in the
    /// growth mailbox, served along with other hosts' extensions); nothing
    /// grows now, and the answer is the current mapping.
    #[serde(default)]
    pub notice: bool,
}

/// The LV's new mapping: where each segment lies on the pool's PVs.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LvMapping {
    pub lv: String,
    /// LV size in bytes.
    pub size: u64,
    /// VG metadata sequence number this mapping comes from.
    pub seqno: u32,
    pub segments: Vec<SegmentMap>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SegmentMap {
    /// Byte offset in the LV.
    pub offset: u64,
    pub length: u64,
    /// The PV's LVM UUID and the device path it was last seen at.
    pub pv_uuid: String,
    pub pv_path: String,
    /// Byte offset on the PV.
    pub pv_offset: u64,
}

/// `lv`'s segments as byte ranges on PVs (linear segments; others are
/// reported with no PV, which a writer must refuse).
pub fn lv_mapping(vg: &lvm::Vg, lv: &str) -> Result<LvMapping> {
    let l = vg
        .lv(lv)
        .ok_or_else(|| Error::NotFound(format!("no LV {lv} in pool {}", vg.name)))?;
    let ext = vg.extent_bytes();
    let mut segments = Vec::new();
    for seg in &l.segments {
        let (pv_uuid, pv_path, pv_offset) = match &seg.kind {
            lvm::SegmentKind::Striped { stripes, .. } if stripes.len() == 1 => {
                let (pv, at) = vg.stripe_start(&stripes[0])?;
                (pv.id.to_string(), pv.device.clone().unwrap_or_default(), at)
            }
            _ => (String::new(), String::new(), 0),
        };
        segments.push(SegmentMap {
            offset: seg.start_extent * ext,
            length: seg.extent_count * ext,
            pv_uuid,
            pv_path,
            pv_offset,
        });
    }
    Ok(LvMapping {
        lv: lv.to_string(),
        size: l.extent_count() * ext,
        seqno: vg.seqno,
        segments,
    })
}

impl Host {
    /// The growth service for writers in other processes: extends the
    /// volume's top LV under the pool lease and answers with its mapping.
    /// The caller holds the volume's lease (it is the volume's writer).
    pub fn grow_lv(&self, volume: &str, req: &GrowRequest) -> Result<LvMapping> {
        let (pool, rec) = self.resolve(volume)?;
        if req.lv != rec.top {
            return Err(Error::Conflict(format!(
                "LV {} is not the top of volume {} (its top is {}): only the top grows; reopen the volume",
                req.lv, rec.id, rec.top
            )));
        }
        // Combined with other hosts' extensions like our own writers':
        // the target where it fits, else what the writer needs at least.
        let grow = thin::GrowthRequest {
            lv: req.lv.clone(),
            current_size: req.min_size,
            min_size: req.min_size,
            target_size: req.target_size.max(req.min_size),
            urgent: true,
        };
        if req.notice {
            thin::Extender::notice(&self.extender(&pool), &grow);
        } else {
            self.extender(&pool).grow(&grow, Some(&rec.id))?;
        }
        lv_mapping(&pool.vg(), &req.lv)
    }

    pub(crate) fn layer_opts(&self, pool: &Pool, tags: Vec<String>) -> LayerOptions {
        LayerOptions {
            initial_lv_size: self.growth(pool).1,
            tags,
            ..LayerOptions::default()
        }
    }

    pub(crate) fn pending_tags(id: &str, layer: u32) -> Vec<String> {
        vec![
            TAG_SSV.into(),
            format!("{TAG_VOLUME}{id}"),
            format!("{TAG_LAYER}{layer}"),
            TAG_PENDING.into(),
        ]
    }

    /// Makes pending layer `lv` the top of a new volume: its name, a lease
    /// slot, no longer pending; one commit under the pool lease.
    pub(crate) fn publish_volume(&self, pool: &Pool, id: &str, lv: &str, name: &str) -> Result<()> {
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

    pub(crate) fn pick_id(&self, what: &str, id: &Option<String>) -> Result<String> {
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
                initial_lv_size: self.growth(&pool).1,
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
    pub(crate) fn drop_pending(&self, pool: &Pool, lv: &str) -> Result<()> {
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
    pub(crate) fn quiesced<T>(
        &self,
        pool: &Arc<Pool>,
        rec: &VolumeRecord,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        // An attached writer (a VMM) holds the lease and, for this change,
        // its I/O; it reopens the volume itself afterwards.
        if self.attached_writer_quiesced(&rec.id)? {
            return f();
        }
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
                let _lease = self.volume_lease(pool, rec, false)?;
                f()
            }
        }
    }

    /// The volume's lease, held exclusively: refused at once while another
    /// host has the volume open, or (`wait`) once that host is surely dead.
    pub(crate) fn volume_lease(
        &self,
        pool: &Pool,
        rec: &VolumeRecord,
        wait: bool,
    ) -> Result<crate::leases::Lease<'_>> {
        self.locks
            .acquire(&pool.vg(), &rec.id, rec.lease_slot, false, wait)
            .map_err(|e| match e {
                Error::Conflict(m) => Error::Conflict(format!(
                    "volume {} is open for writing on another host: {m}",
                    rec.id
                )),
                e => e,
            })
    }

    pub(crate) fn open_volume(&self, pool: &Arc<Pool>, top: &str) -> Result<Volume> {
        let opts = OpenOptions {
            policy: self.growth(pool).0,
            ..OpenOptions::default()
        }
        .with_extender(Arc::new(self.extender(pool)));
        Ok(Volume::open(&**pool, top, &opts)?)
    }

    pub(crate) fn extender(&self, pool: &Arc<Pool>) -> MeteredExtender {
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

    /// Other volumes whose chains use `lvs` (linked clones), each as
    /// "VOLUME (over LV)".
    pub(crate) fn dependents(
        &self,
        pool: &Pool,
        rec: &VolumeRecord,
        lvs: &[&str],
    ) -> Result<Vec<String>> {
        let vg = pool.refresh()?;
        // This volume's own layers (pending ones too) use each other.
        let own: Vec<&str> = vg
            .lvs
            .iter()
            .filter(|l| tag_value(&l.tags, TAG_VOLUME) == Some(rec.id.as_str()))
            .map(|l| l.name.as_str())
            .collect();
        Ok(thin::chain::users_of(pool, lvs, &own)?
            .into_iter()
            .map(|(user, base)| {
                let who = vg
                    .lv(&user)
                    .and_then(|l| tag_value(&l.tags, TAG_VOLUME))
                    .unwrap_or(&user);
                format!("{who} (over {base})")
            })
            .collect())
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
}

//! Snapshots: freeze the top under a new one, revert, delete by merging.

use crate::host::{Host, VolumeDetail};
use crate::model::{self, SnapshotInfo, VolumeRecord};
use crate::names::{self, *};
use crate::pool::Pool;
use crate::{Error, Result};
use serde::Deserialize;
use std::sync::Arc;
use thin::LvStore;

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateSnapshot {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
}

/// Reduces a layer nobody writes any more to the extents its qcow2 uses:
/// everything the image references lies below its allocated end, which
/// thin computes from the refcounts.
fn shrink_frozen(pool: &Pool, lv: &str) -> Result<()> {
    let dev = pool.open(lv)?;
    let h = thin::layer::read_header(&*dev)?;
    let end = thin::layer::allocated_end(&*dev, &h)?;
    pool.change(&format!("shrinking frozen layer {lv}"), |vg| {
        let ext = vg.vg().extent_bytes();
        let Some(l) = vg.vg().lv(lv) else {
            return Ok(());
        };
        let keep = end.div_ceil(ext).max(1);
        let have = l.extent_count();
        if keep < have {
            vg.change(&format!("ssvd: shrink frozen layer {lv}"), |v| {
                v.reduce_lv(lv, have - keep)
            })?;
        }
        Ok(())
    })
}

impl Host {
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
                &self.layer_opts(&pool, Self::pending_tags(&rec.id, n)),
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
            )?;
            // Frozen, the layer never grows again: give back the headroom
            // growth left past its data (an optimisation; the snapshot
            // stands either way).
            if let Err(e) = shrink_frozen(&pool, &rec.top) {
                log::warn!("snapshot {sid}: keeping LV {} at its size: {e}", rec.top);
            }
            Ok(())
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

    pub(crate) fn snapshot_of<'a>(rec: &'a VolumeRecord, snap: &str) -> Result<&'a SnapshotInfo> {
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
                &self.layer_opts(&pool, Self::pending_tags(&rec.id, n)),
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
}

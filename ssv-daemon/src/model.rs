//! Volumes and snapshots as the LV tags describe them (`names`): every
//! layer of volume V is an LV tagged `ssv.vol=V` and `ssv.layer=N`; its top
//! carries `ssv.top`, the volume's name and its lease slot; frozen layers
//! that are snapshots carry the snapshot's id and name.

use crate::names::{self, *};
use lvm::Vg;
use serde::Serialize;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LayerInfo {
    pub lv: String,
    pub layer: u32,
    /// LV size in bytes.
    pub lv_size: u64,
    /// Snapshot id, if this layer is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub volume: String,
    pub lv: String,
    /// Unix seconds.
    pub created: u64,
}

/// A volume as its tags say (no I/O).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct VolumeRecord {
    pub id: String,
    pub name: String,
    pub pool: String,
    pub top: String,
    pub lease_slot: u64,
    pub created: u64,
    /// The volume's own layers, top first (a linked clone's base is not one).
    pub layers: Vec<LayerInfo>,
    pub snapshots: Vec<SnapshotInfo>,
    /// Layers this volume's LVs take together, in bytes.
    pub lv_bytes: u64,
}

fn layer_no(tags: &[String]) -> Option<u32> {
    tag_value(tags, TAG_LAYER).and_then(|v| v.parse().ok())
}

fn created(tags: &[String]) -> u64 {
    tag_value(tags, TAG_CREATED)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Every complete volume of the pool (pending layers are skipped).
pub fn volumes(vg: &Vg) -> Vec<VolumeRecord> {
    let ext = vg.extent_bytes();
    let mut out: Vec<VolumeRecord> = Vec::new();
    for top in vg
        .lvs
        .iter()
        .filter(|l| has_tag(&l.tags, TAG_TOP) && !has_tag(&l.tags, TAG_PENDING))
    {
        let Some(id) = tag_value(&top.tags, TAG_VOLUME) else {
            continue;
        };
        let mut layers: Vec<LayerInfo> = vg
            .lvs
            .iter()
            .filter(|l| {
                tag_value(&l.tags, TAG_VOLUME) == Some(id) && !has_tag(&l.tags, TAG_PENDING)
            })
            .filter_map(|l| {
                Some(LayerInfo {
                    lv: l.name.clone(),
                    layer: layer_no(&l.tags)?,
                    lv_size: l.extent_count() * ext,
                    snapshot: tag_value(&l.tags, TAG_SNAPSHOT).map(str::to_string),
                })
            })
            .collect();
        layers.sort_by_key(|l| std::cmp::Reverse(l.layer));
        let snapshots = vg
            .lvs
            .iter()
            .filter(|l| {
                tag_value(&l.tags, TAG_VOLUME) == Some(id) && !has_tag(&l.tags, TAG_PENDING)
            })
            .filter_map(|l| {
                Some(SnapshotInfo {
                    id: tag_value(&l.tags, TAG_SNAPSHOT)?.to_string(),
                    name: tag_value(&l.tags, TAG_SNAPSHOT_NAME)
                        .and_then(names::decode)
                        .unwrap_or_default(),
                    volume: id.to_string(),
                    lv: l.name.clone(),
                    created: created(&l.tags),
                })
            })
            .collect::<Vec<_>>();
        let mut snapshots = snapshots;
        snapshots.sort_by_key(|s| (s.created, s.lv.clone()));
        out.push(VolumeRecord {
            id: id.to_string(),
            name: tag_value(&top.tags, TAG_NAME)
                .and_then(names::decode)
                .unwrap_or_default(),
            pool: vg.name.clone(),
            top: top.name.clone(),
            lease_slot: tag_value(&top.tags, TAG_LEASE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            created: created(&top.tags),
            lv_bytes: layers.iter().map(|l| l.lv_size).sum(),
            layers,
            snapshots,
        });
    }
    out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    out
}

pub fn find<'a>(vols: &'a [VolumeRecord], id: &str) -> Option<&'a VolumeRecord> {
    vols.iter().find(|v| v.id == id)
}

/// The next layer number of volume `id` (past every layer it ever had
/// that still exists, pending ones included).
pub fn next_layer(vg: &Vg, id: &str) -> u32 {
    vg.lvs
        .iter()
        .filter(|l| tag_value(&l.tags, TAG_VOLUME) == Some(id))
        .filter_map(|l| layer_no(&l.tags))
        .max()
        .map_or(0, |n| n + 1)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

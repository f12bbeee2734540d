//! One canonical view of a VG, built from our model or from lvm2's reports,
//! so a test can say "both tools see exactly this".

use crate::{LvReport, Lvm2};
use anyhow::Result;
use lvm::scan::LabelScan;
use lvm::{OpenVg, PvDev, SegmentKind, Vg};
use std::collections::HashMap;

/// `(first PE, last PE)` on a PV path, per stripe.
pub type Ranges = Vec<(String, u64, u64)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LvView {
    pub name: String,
    pub uuid: String,
    pub size: u64,
    pub tags: Vec<String>,
    /// `(first LE, extents, ranges)`, adjacent linear pieces merged as lvm does.
    pub segments: Vec<(u64, u64, Ranges)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VgView {
    pub name: String,
    pub seqno: u64,
    pub tags: Vec<String>,
    pub lvs: Vec<LvView>,
}

fn merge(mut segs: Vec<(u64, u64, Ranges)>) -> Vec<(u64, u64, Ranges)> {
    segs.sort_by_key(|s| s.0);
    let mut out: Vec<(u64, u64, Ranges)> = Vec::new();
    for s in segs {
        if let Some(last) = out.last_mut() {
            if last.2.len() == 1
                && s.2.len() == 1
                && last.2[0].0 == s.2[0].0
                && last.2[0].2 + 1 == s.2[0].1
            {
                last.1 += s.1;
                last.2[0].2 = s.2[0].2;
                continue;
            }
        }
        out.push(s);
    }
    out
}

fn finish(mut lvs: Vec<LvView>, name: &str, seqno: u64, mut tags: Vec<String>) -> VgView {
    for lv in &mut lvs {
        lv.tags.sort();
        lv.segments = merge(std::mem::take(&mut lv.segments));
    }
    lvs.sort_by(|a, b| a.name.cmp(&b.name));
    tags.sort();
    VgView {
        name: name.to_string(),
        seqno,
        tags,
        lvs,
    }
}

/// The VG as our engine reads it from `devs` (None: no such VG there).
pub fn ours(devs: &[PvDev], vg: &str) -> Result<Option<VgView>> {
    let scan = lvm::scan(devs)?;
    if !scan.vg_names().iter().any(|n| n == vg) {
        return Ok(None);
    }
    let open = OpenVg::open(devs, Some(vg))?;
    let paths: HashMap<String, String> = scan
        .devs
        .iter()
        .filter_map(|d| match &d.label {
            LabelScan::Pv(l) => Some((l.uuid.to_string(), d.pv.path.clone())),
            _ => None,
        })
        .collect();
    Ok(Some(view_of(open.vg(), &paths)))
}

/// `paths`: PV UUID (dashed) → device path.
pub fn view_of(vg: &Vg, paths: &HashMap<String, String>) -> VgView {
    let pv_path = |name: &str| {
        vg.pv(name)
            .and_then(|p| paths.get(&p.id.to_string()).cloned())
            .unwrap_or_else(|| format!("?{name}"))
    };
    let lvs = vg
        .lvs
        .iter()
        .filter(|l| l.visible())
        .map(|l| LvView {
            name: l.name.clone(),
            uuid: l.id.to_string(),
            size: l.extent_count() * vg.extent_bytes(),
            tags: l.tags.clone(),
            segments: l
                .segments
                .iter()
                .map(|s| {
                    let ranges = match &s.kind {
                        SegmentKind::Striped { stripes, .. } => stripes
                            .iter()
                            .map(|st| {
                                (pv_path(&st.pv), st.start_pe, st.start_pe + s.area_len() - 1)
                            })
                            .collect(),
                        SegmentKind::Other { .. } => Vec::new(),
                    };
                    (s.start_extent, s.extent_count, ranges)
                })
                .collect(),
        })
        .collect();
    finish(lvs, &vg.name, u64::from(vg.seqno), vg.tags.clone())
}

/// The VG as stock lvm2 reports it (None: lvm2 finds no such VG).
pub fn lvm2(lvm: &Lvm2, vg: &str) -> Result<Option<VgView>> {
    let Ok(v) = lvm.vgs(vg) else { return Ok(None) };
    let lvs = lvm.lvs(vg)?.into_iter().map(|l: LvReport| LvView {
        name: l.name,
        uuid: l.uuid,
        size: l.size,
        tags: l.tags,
        segments: l
            .segments
            .into_iter()
            .map(|s| {
                (
                    s.start_pe,
                    s.size_pe,
                    s.pe_ranges
                        .into_iter()
                        .map(|r| (r.pv, r.start, r.end))
                        .collect(),
                )
            })
            .collect(),
    });
    Ok(Some(finish(lvs.collect(), &v.name, v.seqno, v.tags)))
}

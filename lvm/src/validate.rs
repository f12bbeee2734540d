//! Consistency checks run on every VG read and before every commit: what
//! lvm's `vg_validate` checks, plus bounds that keep I/O inside each PV.

use crate::model::{SegmentKind, Vg, LV_STATUS, PV_STATUS, VG_STATUS};
use crate::names::{check_name, check_tag, check_vg_name};
use crate::{Error, Result};
use std::collections::HashSet;

fn meta(msg: String) -> Error {
    Error::Metadata(msg)
}

fn check_status(what: &str, words: &[String], vocab: &[&str]) -> Result<()> {
    match words.iter().find(|w| !vocab.contains(&w.as_str())) {
        Some(bad) => Err(meta(format!("{what}: unknown status flag {bad:?}"))),
        None => Ok(()),
    }
}

/// Largest extent size lvm accepts (in sectors): extents are counted in u32 elsewhere.
const EXTENT_SIZE_MAX: u64 = 1 << 32;

/// An extent size (in sectors) lvm accepts: a power of two, or a multiple of 128 KiB.
pub fn check_extent_size(sectors: u64) -> Result<()> {
    if sectors == 0
        || sectors > EXTENT_SIZE_MAX
        || !(sectors.is_power_of_two() || sectors % 256 == 0)
    {
        return Err(Error::InvalidArgument(format!(
            "extent size of {sectors} sectors: must be a power of two or a multiple of 128 KiB"
        )));
    }
    Ok(())
}

impl Vg {
    pub fn validate(&self) -> Result<()> {
        check_vg_name(&self.name)?;
        check_status(&format!("VG {}", self.name), &self.status, VG_STATUS)?;
        check_extent_size(self.extent_size).map_err(|e| meta(e.to_string()))?;
        for tag in &self.tags {
            check_tag(tag)?;
        }
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for pv in &self.pvs {
            if !names.insert(pv.name.as_str()) || !ids.insert(pv.id) {
                return Err(meta(format!("PV {} ({}) is listed twice", pv.name, pv.id)));
            }
            check_status(&format!("PV {}", pv.name), &pv.status, PV_STATUS)?;
            for tag in &pv.tags {
                check_tag(tag)?;
            }
            let end = pv
                .pe_count
                .checked_mul(self.extent_size)
                .and_then(|n| n.checked_add(pv.pe_start))
                .ok_or_else(|| {
                    meta(format!(
                        "PV {}: pe_count {} is absurd",
                        pv.name, pv.pe_count
                    ))
                })?;
            if pv.dev_size > 0 && end > pv.dev_size {
                return Err(meta(format!(
                    "PV {}: {} extents from sector {} end past the device size of {} sectors",
                    pv.name, pv.pe_count, pv.pe_start, pv.dev_size
                )));
            }
        }
        let mut names = HashSet::new();
        for lv in &self.lvs {
            check_name("LV", &lv.name)?;
            if !names.insert(lv.name.as_str()) || !ids.insert(lv.id) {
                return Err(meta(format!(
                    "LV {} or its id {} is not unique",
                    lv.name, lv.id
                )));
            }
            for tag in &lv.tags {
                check_tag(tag)?;
            }
            check_status(&format!("LV {}", lv.name), &lv.status, LV_STATUS)?;
            let mut next = 0u64;
            for seg in &lv.segments {
                if seg.start_extent != next || seg.extent_count == 0 {
                    return Err(meta(format!(
                        "LV {}: segments do not tile the LV (a segment starts at extent {} where {} was expected, or is empty)",
                        lv.name, seg.start_extent, next
                    )));
                }
                next = next
                    .checked_add(seg.extent_count)
                    .ok_or_else(|| meta(format!("LV {}: extent counts overflow", lv.name)))?;
                if let SegmentKind::Striped {
                    stripes,
                    stripe_size,
                } = &seg.kind
                {
                    let n = stripes.len() as u64;
                    if seg.extent_count % n != 0 {
                        return Err(meta(format!(
                            "LV {}: {} extents do not divide into {n} stripes",
                            lv.name, seg.extent_count
                        )));
                    }
                    if n > 1 && !stripe_size.is_some_and(|s| s > 0 && s.is_power_of_two()) {
                        return Err(meta(format!(
                            "LV {}: striped segment without a valid stripe_size",
                            lv.name
                        )));
                    }
                    for st in stripes {
                        let pv = self.pv(&st.pv).ok_or_else(|| {
                            meta(format!("LV {}: segment on unknown PV {:?}", lv.name, st.pv))
                        })?;
                        let end = st.start_pe.checked_add(seg.area_len());
                        if end.is_none_or(|e| e > pv.pe_count) {
                            return Err(meta(format!(
                                "LV {}: extents {}+{} are outside PV {} ({} extents)",
                                lv.name,
                                st.start_pe,
                                seg.area_len(),
                                pv.name,
                                pv.pe_count
                            )));
                        }
                    }
                }
            }
        }
        self.used_extents().map(|_| ())
    }
}

//! Physical extent accounting and allocation: contiguous first, then any one
//! free range that fits, then several ranges (largest first) across PVs.

use crate::model::{SegmentKind, Vg};
use crate::{Error, Result};

/// A run of physical extents on one PV (by index in `Vg::pvs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    pub pv: usize,
    pub start: u64,
    pub len: u64,
}

impl Vg {
    /// Used extent ranges `(start, len)` per PV, sorted; an error if any
    /// extent is owned twice.
    pub fn used_extents(&self) -> Result<Vec<Vec<(u64, u64)>>> {
        let mut used = vec![Vec::new(); self.pvs.len()];
        for lv in &self.lvs {
            for seg in &lv.segments {
                if let SegmentKind::Striped { stripes, .. } = &seg.kind {
                    for st in stripes {
                        let i = self
                            .pvs
                            .iter()
                            .position(|p| p.name == st.pv)
                            .ok_or_else(|| {
                                Error::Metadata(format!(
                                    "LV {}: segment on unknown PV {:?}",
                                    lv.name, st.pv
                                ))
                            })?;
                        used[i].push((st.start_pe, seg.area_len()));
                    }
                }
            }
        }
        for (i, ranges) in used.iter_mut().enumerate() {
            ranges.sort_unstable();
            for w in ranges.windows(2) {
                if w[0].0 + w[0].1 > w[1].0 {
                    return Err(Error::Metadata(format!(
                        "PV {}: extent {} is allocated to more than one segment",
                        self.pvs[i].name, w[1].0
                    )));
                }
            }
        }
        Ok(used)
    }

    /// Free areas on allocatable PVs, in PV then extent order.
    pub fn free_areas(&self) -> Result<Vec<Area>> {
        let used = self.used_extents()?;
        let mut free = Vec::new();
        for (i, pv) in self.pvs.iter().enumerate() {
            let allocatable = pv.status.iter().any(|s| s == "ALLOCATABLE")
                && !pv.status.iter().chain(&pv.flags).any(|s| s == "MISSING");
            if !allocatable {
                continue;
            }
            let mut at = 0;
            for &(start, len) in &used[i] {
                if start > at {
                    free.push(Area {
                        pv: i,
                        start: at,
                        len: start - at,
                    });
                }
                at = at.max(start + len);
            }
            if pv.pe_count > at {
                free.push(Area {
                    pv: i,
                    start: at,
                    len: pv.pe_count - at,
                });
            }
        }
        Ok(free)
    }

    pub fn free_extent_count(&self) -> Result<u64> {
        Ok(self.free_areas()?.iter().map(|a| a.len).sum())
    }

    /// Picks `n` extents. `after`, when extending, is `(pv, extent)` right past
    /// the LV's end: space there is taken first so the LV stays contiguous.
    pub(crate) fn allocate(&self, n: u64, after: Option<(usize, u64)>) -> Result<Vec<Area>> {
        let mut free = self.free_areas()?;
        let total: u64 = free.iter().map(|a| a.len).sum();
        if n > total {
            return Err(Error::NoSpace {
                vg: self.name.clone(),
                needed: n,
                free: total,
            });
        }
        let mut out = Vec::new();
        let mut left = n;
        if let Some((pv, start)) = after {
            if let Some(a) = free.iter_mut().find(|a| a.pv == pv && a.start == start) {
                let take = a.len.min(left);
                out.push(Area {
                    pv,
                    start,
                    len: take,
                });
                a.start += take;
                a.len -= take;
                left -= take;
            }
        }
        if left == 0 {
            return Ok(out);
        }
        // The smallest single range that holds the rest keeps big ranges whole.
        if let Some(a) = free
            .iter()
            .filter(|a| a.len >= left)
            .min_by_key(|a| (a.len, a.pv, a.start))
        {
            out.push(Area {
                pv: a.pv,
                start: a.start,
                len: left,
            });
            return Ok(out);
        }
        free.sort_by_key(|a| (std::cmp::Reverse(a.len), a.pv, a.start));
        for a in free {
            if left == 0 {
                break;
            }
            let take = a.len.min(left);
            out.push(Area {
                pv: a.pv,
                start: a.start,
                len: take,
            });
            left -= take;
        }
        Ok(out)
    }
}

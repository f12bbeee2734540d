//! An LV as a `BlockDev` over its segments: linear and striped segments are
//! mapped to their PVs' extents; the map can be swapped while I/O runs, so
//! a writer picks up new segments after an extension without reopening.

use crate::model::{Lv, SegmentKind, Vg};
use crate::{Error, Result};
use san::{check_io, BlockDev, DevId};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

struct MappedSeg {
    /// Byte range of the LV this segment covers.
    start: u64,
    len: u64,
    /// Bytes per stripe chunk (the whole segment when there is one stripe).
    chunk: u64,
    /// Each stripe's device and the byte offset of its first extent.
    stripes: Vec<(Arc<dyn BlockDev>, u64)>,
}

struct Map {
    size: u64,
    segs: Vec<MappedSeg>,
}

pub struct LvDev {
    id: DevId,
    lss: u32,
    pss: u32,
    map: RwLock<Map>,
}

fn build(vg: &Vg, lv: &Lv, devs: &HashMap<String, Arc<dyn BlockDev>>) -> Result<Map> {
    let eb = vg.extent_bytes();
    // Metadata can hold numbers whose byte offsets do not fit a u64.
    let bytes = |what: &str, a: u64, b: u64| {
        a.checked_mul(b).ok_or_else(|| {
            Error::Metadata(format!("LV {}: {what} overflows a byte offset", lv.name))
        })
    };
    let size = bytes("LV size", lv.extent_count(), eb)?;
    let mut segs = Vec::new();
    for seg in &lv.segments {
        let SegmentKind::Striped {
            stripe_size,
            stripes,
        } = &seg.kind
        else {
            return Err(Error::InvalidArgument(format!(
                "LV {}: only linear and striped LVs can be opened",
                lv.name
            )));
        };
        let len = bytes("segment size", seg.extent_count, eb)?;
        let area = bytes("stripe length", seg.area_len(), eb)?;
        let chunk = if stripes.len() > 1 {
            bytes("stripe_size", stripe_size.unwrap_or(0), 512)?
        } else {
            len
        };
        if chunk == 0 {
            return Err(Error::Metadata(format!(
                "LV {}: striped segment without stripe_size",
                lv.name
            )));
        }
        // As for dm-stripe: each stripe's extents must hold whole chunks, or
        // the last chunk would run into extents of another LV.
        if area % chunk != 0 {
            return Err(Error::Metadata(format!(
                "LV {}: stripe_size of {} bytes does not divide the {area} bytes of each stripe",
                lv.name, chunk
            )));
        }
        let mut mapped = Vec::new();
        for st in stripes {
            let (pv, base) = vg.stripe_start(st).map_err(|e| match e {
                Error::Metadata(m) => Error::Metadata(format!("LV {}: {m}", lv.name)),
                e => e,
            })?;
            let dev = devs.get(&st.pv).ok_or_else(|| Error::NotFound {
                kind: "PV device",
                name: pv.id.to_string(),
            })?;
            if base.checked_add(area).is_none_or(|end| end > dev.size()) {
                return Err(Error::Metadata(format!(
                    "LV {}: extents on PV {} end past its device ({} bytes)",
                    lv.name,
                    pv.name,
                    dev.size()
                )));
            }
            mapped.push((dev.clone(), base));
        }
        segs.push(MappedSeg {
            start: seg.start_extent * eb,
            len,
            chunk,
            stripes: mapped,
        });
    }
    Ok(Map { size, segs })
}

impl LvDev {
    pub fn new(vg: &Vg, lv: &Lv, devs: &HashMap<String, Arc<dyn BlockDev>>) -> Result<LvDev> {
        let map = build(vg, lv, devs)?;
        let all = map
            .segs
            .iter()
            .flat_map(|s| s.stripes.iter().map(|(d, _)| d));
        let (lss, pss) = all.fold((512, 512), |(l, p), d| {
            (
                l.max(d.logical_sector_size()),
                p.max(d.physical_sector_size()),
            )
        });
        Ok(LvDev {
            id: DevId(format!("lv:{}/{}", vg.id, lv.id)),
            lss,
            pss,
            map: RwLock::new(map),
        })
    }

    /// Swaps in the LV's current segments (after it was extended or reduced).
    pub fn remap(&self, vg: &Vg, lv: &Lv, devs: &HashMap<String, Arc<dyn BlockDev>>) -> Result<()> {
        let map = build(vg, lv, devs)?;
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        Ok(())
    }

    /// Runs `f(dev, dev_offset, range_in_buf)` for each piece of an I/O.
    fn each(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&dyn BlockDev, u64, std::ops::Range<usize>) -> san::Result<()>,
    ) -> san::Result<()> {
        check_io(self, offset, len)?;
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let i = map.segs.partition_point(|s| s.start + s.len <= pos);
            let seg = map.segs.get(i).ok_or(san::Error::OutOfRange {
                offset,
                len: len as u64,
                size: map.size,
            })?;
            let x = pos - seg.start;
            let (chunk_no, in_chunk) = (x / seg.chunk, x % seg.chunk);
            let n = seg.stripes.len() as u64;
            let (dev, base) = &seg.stripes[(chunk_no % n) as usize];
            let dev_off = base + (chunk_no / n) * seg.chunk + in_chunk;
            let piece = (seg.chunk - in_chunk).min((len - done) as u64) as usize;
            f(&**dev, dev_off, done..done + piece)?;
            done += piece;
        }
        Ok(())
    }
}

impl BlockDev for LvDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> san::Result<()> {
        self.each(offset, buf.len(), |dev, at, r| dev.read_at(&mut buf[r], at))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> san::Result<()> {
        self.each(offset, buf.len(), |dev, at, r| dev.write_at(&buf[r], at))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> san::Result<()> {
        // Split like any I/O, one segment piece at a time (lengths can pass usize).
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(1 << 30);
            self.each(offset + done, n as usize, |dev, at, r| {
                dev.write_zeroes(at, (r.end - r.start) as u64)
            })?;
            done += n;
        }
        Ok(())
    }

    /// Cheap only if every PV under the LV zeroes cheaply.
    fn zeroes_cheaply(&self) -> bool {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.segs
            .iter()
            .flat_map(|s| &s.stripes)
            .all(|(dev, _)| dev.zeroes_cheaply())
    }

    fn flush(&self) -> san::Result<()> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let mut done: Vec<&DevId> = Vec::new();
        for (dev, _) in map.segs.iter().flat_map(|s| &s.stripes) {
            if !done.contains(&dev.identity()) {
                dev.flush()?;
                done.push(dev.identity());
            }
        }
        Ok(())
    }
    fn size(&self) -> u64 {
        self.map.read().unwrap_or_else(|p| p.into_inner()).size
    }
    fn logical_sector_size(&self) -> u32 {
        self.lss
    }
    fn physical_sector_size(&self) -> u32 {
        self.pss
    }
    fn identity(&self) -> &DevId {
        &self.id
    }
}

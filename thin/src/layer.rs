//! One layer's qcow2 metadata on its LV: reading the header, writing an empty
//! image, rewriting the backing name, and finding the highest allocated host
//! offset from the refcounts. Writes are ordered so a crash at any point
//! leaves either the old state or the new one.

use crate::format::{be64, refcount_at, Backing, EmptyLayout, Header};
use crate::{Error, Result};
use san::BlockDev;

/// Reads `len` bytes at `offset`, widened to whole logical sectors.
pub(crate) fn read_bytes(dev: &dyn BlockDev, offset: u64, len: u64) -> Result<Vec<u8>> {
    let sector = u64::from(dev.logical_sector_size());
    let start = offset / sector * sector;
    let end = offset
        .checked_add(len)
        .map(|e| e.div_ceil(sector) * sector)
        .filter(|&e| e <= dev.size())
        .ok_or_else(|| {
            Error::Corrupt(format!(
                "{len} bytes at offset {offset} lie past the LV's end ({} bytes)",
                dev.size()
            ))
        })?;
    let mut buf = vec![0u8; (end - start) as usize];
    dev.read_at(&mut buf, start)?;
    let skip = (offset - start) as usize;
    Ok(buf[skip..skip + len as usize].to_vec())
}

/// Writes `data` at a sector-aligned `offset`, zero-padded to whole sectors.
fn write_padded(dev: &dyn BlockDev, offset: u64, data: &[u8]) -> Result<()> {
    let sector = u64::from(dev.logical_sector_size()) as usize;
    let mut buf = data.to_vec();
    buf.resize(data.len().div_ceil(sector) * sector, 0);
    dev.write_at(&buf, offset)?;
    Ok(())
}

/// The header of the image on `dev`.
pub fn read_header(dev: &dyn BlockDev) -> Result<Header> {
    let want = (64u64 << 10).min(dev.size());
    let sector = u64::from(dev.logical_sector_size());
    if want < sector {
        return Err(Error::NotQcow2);
    }
    let buf = read_bytes(dev, 0, want / sector * sector)?;
    Header::decode(&buf, dev.size())
}

/// Writes an empty image of `size` bytes at the start of `dev`: first the
/// old header's magic is erased, then the tables, then the new header, each
/// step flushed. A crash leaves either no image or the complete empty one.
pub fn format_empty(
    dev: &dyn BlockDev,
    size: u64,
    cluster_size: u64,
    backing: Option<Backing>,
) -> Result<Header> {
    let layout = EmptyLayout::new(size, cluster_size)?;
    if layout.end() > dev.size() {
        return Err(Error::InvalidArgument(format!(
            "the LV ({} bytes) cannot hold the image's {} bytes of metadata",
            dev.size(),
            layout.end()
        )));
    }
    let header = layout.header(size, backing);
    let encoded = header.encode()?;
    write_padded(dev, 0, &[0u8; 8])?;
    dev.flush()?;
    // Zero everything (old extents may hold anything), then the tables.
    dev.write_zeroes(cluster_size, layout.end() - cluster_size)?;
    for (offset, data) in layout.tables() {
        write_padded(dev, offset, &data)?;
    }
    dev.flush()?;
    let mut cluster0 = encoded;
    cluster0.resize(cluster_size as usize, 0);
    write_padded(dev, 0, &cluster0)?;
    dev.flush()?;
    Ok(header)
}

/// Points the image on `dev` at another backing layer (or none). The new
/// header must fit in one logical sector, which the device writes whole.
pub fn set_backing(dev: &dyn BlockDev, backing: Option<Backing>) -> Result<()> {
    let mut h = read_header(dev)?;
    h.backing = backing;
    let encoded = h.encode()?;
    let sector = dev.logical_sector_size() as usize;
    if encoded.len() > sector {
        return Err(Error::Unsupported(format!(
            "a header of {} bytes cannot be rewritten in one {sector}-byte sector",
            encoded.len()
        )));
    }
    let mut first = read_bytes(dev, 0, sector as u64)?;
    first[..encoded.len()].copy_from_slice(&encoded);
    first[encoded.len()..].fill(0);
    dev.write_at(&first, 0)?;
    dev.flush()?;
    Ok(())
}

/// Refcounts of single clusters, reading each refblock once.
struct Refcounts<'a> {
    dev: &'a dyn BlockDev,
    h: &'a Header,
    table: Vec<u8>,
    blocks: std::collections::HashMap<u64, Vec<u8>>,
}

impl<'a> Refcounts<'a> {
    fn new(dev: &'a dyn BlockDev, h: &'a Header) -> Result<Refcounts<'a>> {
        let bytes = u64::from(h.refcount_table_clusters) * h.cluster_size();
        Ok(Refcounts {
            dev,
            h,
            table: read_bytes(dev, h.refcount_table_offset, bytes)?,
            blocks: Default::default(),
        })
    }

    fn per_block(&self) -> u64 {
        (self.h.cluster_size() * 8) >> self.h.refcount_order
    }

    fn entries(&self) -> u64 {
        self.table.len() as u64 / 8
    }

    /// Offset of refblock `i` (refcount table entry `i`, reserved bits
    /// dropped); 0 when there is none.
    fn refblock(&self, i: u64) -> u64 {
        if i >= self.entries() {
            return 0;
        }
        be64(&self.table, (i * 8) as usize) & !0x1ff
    }

    /// (refblock offset, index in it) of a cluster; `None` without a refblock.
    fn locate(&self, cluster: u64) -> Option<(u64, u64)> {
        let per = self.per_block();
        let off = self.refblock(cluster / per);
        (off != 0 && off % self.h.cluster_size() == 0).then_some((off, cluster % per))
    }

    fn get(&mut self, cluster: u64) -> Result<u64> {
        let Some((rb, i)) = self.locate(cluster) else {
            return Ok(0);
        };
        if !self.blocks.contains_key(&rb) {
            let b = read_bytes(self.dev, rb, self.h.cluster_size())?;
            self.blocks.insert(rb, b);
        }
        Ok(refcount_at(&self.blocks[&rb], self.h.refcount_order, i))
    }
}

/// Undoes what a crash can leave behind when the engine writes an L1 entry
/// for a new L2 table before the refblock that counts the table (imago
/// 0.2.6 does, and may write a dirty table before the refblock in a flush):
/// an L1 entry whose L2 table has refcount 0, which the allocator would
/// hand out again. Such a table maps no cluster: its entries are empty, or
/// zero flags without a cluster for guest offsets at or past `zero_from`
/// (where the layers below hold nothing, so the range reads zeroes either
/// way: the grown range of a virtual grow). Its L1 entry is cleared.
/// Returns how many were. A table that maps anything else with no refcount
/// is corruption this cannot explain, and is refused.
pub fn repair_unreferenced_l2(dev: &dyn BlockDev, h: &Header, zero_from: u64) -> Result<usize> {
    let cs = h.cluster_size();
    let l1 = read_bytes(dev, h.l1_table_offset, u64::from(h.l1_size) * 8)?;
    let mut refs = Refcounts::new(dev, h)?;
    let mut cleared = 0;
    for i in 0..l1.len() / 8 {
        let l2 = be64(&l1, i * 8) & crate::format::OFFSET_MASK;
        if l2 == 0 || l2 % cs != 0 || l2 + cs > dev.size() || refs.get(l2 / cs)? != 0 {
            continue;
        }
        let table = read_bytes(dev, l2, cs)?;
        let per_table = cs / 8;
        let maps_nothing = table.chunks_exact(8).enumerate().all(|(j, e)| {
            let e = be64(e, 0);
            let guest = (i as u64 * per_table + j as u64) * cs;
            e == 0 || (e == crate::format::L2_ZERO && guest >= zero_from)
        });
        if !maps_nothing {
            return Err(Error::Corrupt(format!(
                "L1 entry {i} points at an L2 table (offset {l2}) with entries but no refcount; \
                 copy the image out and run `qemu-img check -r all` on it"
            )));
        }
        let at = h.l1_table_offset + i as u64 * 8;
        let sector = u64::from(dev.logical_sector_size());
        let start = at / sector * sector;
        let mut buf = read_bytes(dev, start, sector)?;
        let k = (at - start) as usize;
        buf[k..k + 8].fill(0);
        dev.write_at(&buf, start)?;
        cleared += 1;
    }
    if cleared > 0 {
        dev.flush()?;
        log::warn!("cleared {cleared} L1 entries left by a crash (L2 tables never flushed)");
    }
    Ok(cleared)
}

/// Undoes what a crash can leave when the engine moves the L1 table (imago
/// 0.2.6's resize writes a new L1 table and points the header at it before
/// the refblock that counts it): the header's L1 table with refcount 0.
/// The table was written whole before the header pointed at it, and nothing
/// was allocated after the crash, so its clusters are counted again (the old
/// table stays behind as a leak). Each refcount is written in its own
/// sector, relying on whole-sector writes as the header rewrite does.
/// Returns how many clusters were counted again.
pub fn repair_uncounted_l1(dev: &dyn BlockDev, h: &Header) -> Result<usize> {
    let cs = h.cluster_size();
    let mut refs = Refcounts::new(dev, h)?;
    let first = h.l1_table_offset / cs;
    let last = (h.l1_table_offset + (u64::from(h.l1_size) * 8).max(1)).div_ceil(cs);
    let sector = u64::from(dev.logical_sector_size());
    let mut fixed = 0;
    for c in first..last {
        if refs.get(c)? != 0 {
            continue;
        }
        // No refblock for it: check_metadata_refcounts refuses the image.
        let Some((rb, i)) = refs.locate(c) else {
            continue;
        };
        let start = (rb + ((i << h.refcount_order) / 8)) / sector * sector;
        let mut buf = read_bytes(dev, start, sector)?;
        // The sector is a piece of the (cluster-aligned) refblock: index
        // the entry from the sector's first one.
        let first_in_sector = ((start - rb) * 8) >> h.refcount_order;
        crate::format::set_refcount(&mut buf, h.refcount_order, i - first_in_sector, 1);
        dev.write_at(&buf, start)?;
        fixed += 1;
    }
    if fixed > 0 {
        dev.flush()?;
        log::warn!("counted the L1 table's {fixed} clusters again (left uncounted by a crash during a resize)");
    }
    Ok(fixed)
}

/// End of the highest cluster with a non-zero refcount (QEMU's "image end
/// offset"). Refcounts past the LV's end are reported and ignored.
pub fn allocated_end(dev: &dyn BlockDev, h: &Header) -> Result<u64> {
    let cs = h.cluster_size();
    let refs = Refcounts::new(dev, h)?;
    let per = refs.per_block();
    for i in (0..refs.entries()).rev() {
        let rb_off = refs.refblock(i);
        if rb_off == 0 {
            continue;
        }
        if rb_off % cs != 0 {
            return Err(Error::Corrupt(format!(
                "refcount block {i} at unaligned offset {rb_off}"
            )));
        }
        let block = read_bytes(dev, rb_off, cs)?;
        if let Some(j) = (0..per)
            .rev()
            .find(|&j| refcount_at(&block, h.refcount_order, j) != 0)
        {
            let end = (i * per + j + 1).saturating_mul(cs);
            if end > dev.size() {
                log::warn!(
                    "refcounts count clusters up to {end} bytes, past the LV's end ({} bytes); \
                     treating them as leaked",
                    dev.size()
                );
                return Ok(dev.size());
            }
            return Ok(end);
        }
    }
    Err(Error::Corrupt("no cluster has a refcount".into()))
}

/// Refuses an image whose own metadata clusters (header, refcount table,
/// refblocks, L1 table) have a refcount of 0: the allocator would hand them
/// out for guest data and the next write would overwrite the image's header
/// or tables (QEMU stops such writes with its overlap checks; imago has
/// none). L2 tables are [`repair_unreferenced_l2`]'s. Run before opening a
/// layer for writing.
pub fn check_metadata_refcounts(dev: &dyn BlockDev, h: &Header) -> Result<()> {
    let cs = h.cluster_size();
    let mut refs = Refcounts::new(dev, h)?;
    let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
    let mut spans = vec![
        ("the header", 0, cs),
        ("the refcount table", h.refcount_table_offset, rt_bytes),
        ("the L1 table", h.l1_table_offset, u64::from(h.l1_size) * 8),
    ];
    for i in 0..refs.entries() {
        let rb = refs.refblock(i);
        // Refblocks outside the LV are ignored here as by allocated_end.
        if rb != 0 && rb.checked_add(cs).is_some_and(|end| end <= dev.size()) {
            spans.push(("a refcount block", rb, cs));
        }
    }
    for (what, off, bytes) in spans {
        for c in off / cs..(off + bytes.max(1)).div_ceil(cs) {
            if refs.get(c)? == 0 {
                return Err(Error::Corrupt(format!(
                    "{what} (cluster at {}) has refcount 0, so new data would overwrite it; \
                     copy the image out and run `qemu-img check -r all` on it",
                    c * cs
                )));
            }
        }
    }
    Ok(())
}

//! One layer's qcow2 metadata on its LV: reading the header, writing an empty
//! image, rewriting the backing name, and finding the highest allocated host
//! offset from the refcounts. Writes are ordered so a crash at any point
//! leaves either the old state or the new one.

use crate::format::{refcount_at, Backing, EmptyLayout, Header};
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

/// End of the highest cluster with a non-zero refcount (QEMU's "image end
/// offset"). Refcounts past the LV's end are reported and ignored.
pub fn allocated_end(dev: &dyn BlockDev, h: &Header) -> Result<u64> {
    let cs = h.cluster_size();
    let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
    let rt = read_bytes(dev, h.refcount_table_offset, rt_bytes)?;
    let refs_per_block = (cs * 8) >> h.refcount_order;
    for i in (0..rt_bytes / 8).rev() {
        let at = (i * 8) as usize;
        let mut e = [0u8; 8];
        e.copy_from_slice(&rt[at..at + 8]);
        let rb_off = u64::from_be_bytes(e) & !0x1ff;
        if rb_off == 0 {
            continue;
        }
        if rb_off % cs != 0 {
            return Err(Error::Corrupt(format!(
                "refcount block {i} at unaligned offset {rb_off}"
            )));
        }
        let block = read_bytes(dev, rb_off, cs)?;
        if let Some(j) = (0..refs_per_block)
            .rev()
            .find(|&j| refcount_at(&block, h.refcount_order, j) != 0)
        {
            let end = (i * refs_per_block + j + 1).saturating_mul(cs);
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

//! The parts of qcow2 (version 3) that ssv reads and writes itself: the header
//! with its extensions and backing name, an empty image's layout, the metadata
//! overhead of a virtual size, and the highest allocated host offset taken from
//! the refcounts. Data I/O goes through the engine (imago); these are the
//! pieces the engine does not expose. Layout: `thin/FORMAT.md`.

use crate::{Error, Result};

pub const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
pub const VERSION: u32 = 3;
/// Version 3 header without the optional compression-type byte.
pub const HEADER_LEN: u32 = 104;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;
/// 16-bit refcounts, as QEMU creates them.
pub const REFCOUNT_ORDER: u32 = 4;
/// QEMU refuses L1 tables larger than this; so do we.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// QEMU refuses refcount tables larger than this.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: usize = 1023;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;

/// Host offset bits of L1, L2 and refcount table entries (bits 9..55).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// An L2 entry of a zero cluster with no cluster behind it (bit 0, v3).
pub const L2_ZERO: u64 = 1;
/// L1/L2 entry flag: the table or cluster has refcount 1 (written in place).
pub const COPIED: u64 = 1 << 63;
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Incompatible bits we understand (everything else refuses the image).
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Why an image with incompatible feature bits `incompat` cannot be used, or
/// `None` when it has none. The engine implements none of them: imago
/// refuses the dirty and corrupt bits, zstd and extended L2 entries itself
/// (thin would report those as corrupt), and with the external-data-file bit
/// it keeps guest data at its guest offset in the LV itself (over the header
/// and tables), since ssv never gives it a data file.
fn incompat_refusal(incompat: u64) -> Option<Error> {
    let unknown = incompat & !INCOMPAT_KNOWN;
    Some(if unknown != 0 {
        Error::Unsupported(format!("incompatible features {unknown:#x}"))
    } else if incompat & INCOMPAT_CORRUPT != 0 {
        bad("the image is marked corrupt (repair it with `qemu-img check -r all`)")
    } else if incompat & INCOMPAT_DIRTY != 0 {
        Error::Unsupported(
            "the image was not closed cleanly (dirty, lazy refcounts); \
             repair it with `qemu-img check -r all`"
                .into(),
        )
    } else if incompat & INCOMPAT_DATA_FILE != 0 {
        Error::Unsupported("an external data file".into())
    } else if incompat & INCOMPAT_EXTL2 != 0 {
        Error::Unsupported("extended L2 entries (subclusters)".into())
    } else if incompat & INCOMPAT_COMPRESSION != 0 {
        Error::Unsupported("a compression type other than zlib".into())
    } else {
        return None;
    })
}

/// The backing layer a header names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backing {
    /// Relative to the image's directory: for ssv the backing LV's name.
    pub name: String,
    /// `qcow2` or `raw`; `None` when the header has no backing-format extension.
    pub format: Option<String>,
}

/// A decoded header. Fields keep their on-disk names (qcow2.txt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub backing: Option<Backing>,
    /// Header bytes past the first 104 (e.g. the compression type), kept as read.
    pub header_tail: Vec<u8>,
    /// Extensions other than the backing format and feature names, kept as read.
    pub other_extensions: Vec<(u32, Vec<u8>)>,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

fn bad(what: impl Into<String>) -> Error {
    Error::Corrupt(what.into())
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Decodes the header from the start of an image (at least its first
    /// cluster, or as much of it as the device has). Every offset is checked
    /// against `dev_size` so no later step reads outside the device.
    pub fn decode(buf: &[u8], dev_size: u64) -> Result<Header> {
        if buf.len() < 72 {
            return Err(bad("image shorter than a qcow2 header"));
        }
        if be32(buf, 0) != MAGIC {
            return Err(Error::NotQcow2);
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!("qcow2 version {version}")));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(format!("cluster_bits {cluster_bits} outside 9..=21")));
        }
        let cs = 1u64 << cluster_bits;
        let (mut incompat, mut compat, mut autoclear, mut refcount_order, mut header_length) =
            (0, 0, 0, 4, 72);
        if version == 3 {
            if buf.len() < HEADER_LEN as usize {
                return Err(bad("image shorter than a version 3 header"));
            }
            incompat = be64(buf, 72);
            compat = be64(buf, 80);
            autoclear = be64(buf, 88);
            refcount_order = be32(buf, 96);
            header_length = be32(buf, 100);
            if header_length < HEADER_LEN
                || header_length % 8 != 0
                || u64::from(header_length) > cs
                || header_length as usize > buf.len()
            {
                return Err(bad(format!("header_length {header_length}")));
            }
        }
        if refcount_order > 6 {
            return Err(bad(format!("refcount_order {refcount_order} > 6")));
        }
        if let Some(e) = incompat_refusal(incompat) {
            return Err(e);
        }
        let h = Header {
            version,
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: incompat,
            compatible_features: compat,
            autoclear_features: autoclear,
            refcount_order,
            header_length,
            backing: None,
            header_tail: Vec::new(),
            other_extensions: Vec::new(),
        };
        let mut h = h;
        if version == 3 {
            h.header_tail = buf[HEADER_LEN as usize..header_length as usize].to_vec();
        }
        h.check_tables(dev_size)?;
        let backing_format = h.decode_extensions(buf)?;
        let (bf_off, bf_len) = (be64(buf, 8), be32(buf, 16) as usize);
        if bf_off != 0 {
            if bf_len == 0 || bf_len > MAX_BACKING_NAME {
                return Err(bad(format!("backing file name of {bf_len} bytes")));
            }
            let end = bf_off
                .checked_add(bf_len as u64)
                .filter(|&e| e <= cs && e <= buf.len() as u64)
                .ok_or_else(|| bad("backing file name outside the first cluster"))?;
            let name = std::str::from_utf8(&buf[bf_off as usize..end as usize])
                .map_err(|_| bad("backing file name is not UTF-8"))?;
            h.backing = Some(Backing {
                name: name.to_string(),
                format: backing_format,
            });
        }
        Ok(h)
    }

    /// The L1 and refcount tables lie inside the device and inside QEMU's limits.
    fn check_tables(&self, dev_size: u64) -> Result<()> {
        let cs = self.cluster_size();
        let table = |what: &str, off: u64, bytes: u64, max: u64| -> Result<()> {
            if off % cs != 0 {
                return Err(bad(format!("{what} at {off} is not cluster-aligned")));
            }
            if bytes > max {
                return Err(bad(format!("{what} of {bytes} bytes (limit {max})")));
            }
            match off.checked_add(bytes) {
                Some(end) if end <= dev_size => Ok(()),
                _ => Err(bad(format!(
                    "{what} at {off} ({bytes} bytes) ends past the device ({dev_size} bytes)"
                ))),
            }
        };
        table(
            "L1 table",
            self.l1_table_offset,
            u64::from(self.l1_size) * 8,
            MAX_L1_BYTES,
        )?;
        let needed = l1_entries(self.size, self.cluster_bits);
        if u64::from(self.l1_size) < needed {
            return Err(bad(format!(
                "L1 table of {} entries cannot map a {}-byte disk ({needed} needed)",
                self.l1_size, self.size
            )));
        }
        if self.refcount_table_clusters == 0 {
            return Err(bad("no refcount table"));
        }
        table(
            "refcount table",
            self.refcount_table_offset,
            u64::from(self.refcount_table_clusters) * cs,
            MAX_REFTABLE_BYTES.max(cs),
        )?;
        if self.crypt_method != 0 {
            return Err(Error::Unsupported("encrypted images".into()));
        }
        if self.nb_snapshots != 0 {
            return Err(Error::Unsupported(
                "internal snapshots (ssv snapshots are chains of LVs; `qemu-img snapshot -d` them first)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Reads the extension area; returns the backing format if present.
    fn decode_extensions(&mut self, buf: &[u8]) -> Result<Option<String>> {
        let limit = buf.len().min(self.cluster_size() as usize);
        let mut at = if self.version == 3 {
            self.header_length as usize
        } else {
            72
        };
        let mut format = None;
        loop {
            if at + 8 > limit {
                return Err(bad("header extensions run past the first cluster"));
            }
            let (ty, len) = (be32(buf, at), be32(buf, at + 4) as usize);
            at += 8;
            if ty == EXT_END {
                return Ok(format);
            }
            let end = at
                .checked_add(len)
                .filter(|&e| e <= limit)
                .ok_or_else(|| bad(format!("header extension {ty:#x} of {len} bytes")))?;
            let data = &buf[at..end];
            match ty {
                EXT_BACKING_FORMAT => {
                    let f = std::str::from_utf8(data)
                        .map_err(|_| bad("backing format is not UTF-8"))?;
                    format = Some(f.to_string());
                }
                EXT_FEATURE_NAMES => {}
                _ => self.other_extensions.push((ty, data.to_vec())),
            }
            at = end.div_ceil(8) * 8;
        }
    }

    /// Encodes the header, its extensions and the backing name. The result is
    /// what goes at offset 0; it is at most one cluster long.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; HEADER_LEN as usize];
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());
        put32(&mut b, 0, MAGIC);
        put32(&mut b, 4, VERSION);
        put32(&mut b, 20, self.cluster_bits);
        put64(&mut b, 24, self.size);
        put32(&mut b, 32, self.crypt_method);
        put32(&mut b, 36, self.l1_size);
        put64(&mut b, 40, self.l1_table_offset);
        put64(&mut b, 48, self.refcount_table_offset);
        put32(&mut b, 56, self.refcount_table_clusters);
        put32(&mut b, 60, self.nb_snapshots);
        put64(&mut b, 64, self.snapshots_offset);
        put64(&mut b, 72, self.incompatible_features);
        put64(&mut b, 80, self.compatible_features);
        put64(&mut b, 88, self.autoclear_features);
        put32(&mut b, 96, self.refcount_order);
        put32(&mut b, 100, HEADER_LEN + self.header_tail.len() as u32);
        b.extend_from_slice(&self.header_tail);
        let ext = |b: &mut Vec<u8>, ty: u32, data: &[u8]| {
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(8) * 8, 0);
        };
        if let Some(Backing {
            format: Some(f), ..
        }) = &self.backing
        {
            ext(&mut b, EXT_BACKING_FORMAT, f.as_bytes());
        }
        for (ty, data) in &self.other_extensions {
            ext(&mut b, *ty, data);
        }
        b.extend_from_slice(&[0u8; 8]); // end of extensions
        if let Some(bk) = &self.backing {
            if bk.name.is_empty() || bk.name.len() > MAX_BACKING_NAME {
                return Err(Error::InvalidArgument(format!(
                    "backing name of {} bytes (1..={MAX_BACKING_NAME})",
                    bk.name.len()
                )));
            }
            let off = b.len() as u64;
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(bk.name.len() as u32).to_be_bytes());
            b.extend_from_slice(bk.name.as_bytes());
        }
        if b.len() as u64 > self.cluster_size() {
            return Err(Error::InvalidArgument(
                "header and extensions do not fit in the first cluster".into(),
            ));
        }
        Ok(b)
    }
}

/// L1 entries needed to map `size` bytes.
pub fn l1_entries(size: u64, cluster_bits: u32) -> u64 {
    let l2_span = 1u64 << (cluster_bits + cluster_bits - 3);
    size.div_ceil(l2_span)
}

/// Clusters of `bytes` rounded up.
fn clusters(bytes: u64, cs: u64) -> u64 {
    bytes.div_ceil(cs)
}

/// Refcounts per refblock at the default 16-bit width.
fn refs_per_block(cs: u64) -> u64 {
    cs * 8 / (1 << REFCOUNT_ORDER)
}

/// The layout of a new, empty image. All of its metadata is allocated up
/// front: the L2 tables for the whole virtual size and the refblocks for a
/// fully allocated image (QEMU's `preallocation=metadata`, without data).
/// Writes then only ever allocate data clusters, whose refcounts the engine
/// flushes before the L2 entries that use them; the engine writes the L1
/// entry of a *new* L2 table, and the refcount table entry of a *new*
/// refblock, before the refcount that covers it (imago 0.2.6), which a
/// crash could leave pointing at a free cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmptyLayout {
    pub cluster_size: u64,
    pub reftable_clusters: u64,
    /// L1 entries the virtual size needs (= L2 tables).
    pub l1_entries: u64,
    pub l1_clusters: u64,
    pub refblocks: u64,
}

impl EmptyLayout {
    /// Header at cluster 0, then the refcount table, the L1 table, the
    /// refblocks and the L2 tables.
    pub fn new(size: u64, cluster_size: u64) -> Result<EmptyLayout> {
        if !cluster_size.is_power_of_two()
            || !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_size.trailing_zeros())
        {
            return Err(Error::InvalidArgument(format!(
                "cluster size {cluster_size}: must be a power of two from 512 B to 2 MiB"
            )));
        }
        let l1 = l1_entries(size, cluster_size.trailing_zeros());
        if l1 * 8 > MAX_L1_BYTES {
            return Err(Error::InvalidArgument(format!(
                "a {size}-byte disk needs an L1 table over {} MiB at {cluster_size}-byte clusters; use larger clusters",
                MAX_L1_BYTES >> 20
            )));
        }
        let l1_clusters = clusters(l1 * 8, cluster_size).max(1);
        let data = clusters(size, cluster_size);
        let (rt, rb) = refcount_structures(1 + l1_clusters + l1 + data, cluster_size);
        if rt * cluster_size > MAX_REFTABLE_BYTES.max(cluster_size) {
            return Err(Error::InvalidArgument(format!(
                "a {size}-byte disk needs a refcount table over {} MiB at {cluster_size}-byte clusters; use larger clusters",
                MAX_REFTABLE_BYTES >> 20
            )));
        }
        Ok(EmptyLayout {
            cluster_size,
            reftable_clusters: rt,
            l1_entries: l1,
            l1_clusters,
            refblocks: rb,
        })
    }

    pub fn reftable_offset(&self) -> u64 {
        self.cluster_size
    }
    pub fn l1_offset(&self) -> u64 {
        (1 + self.reftable_clusters) * self.cluster_size
    }
    pub fn refblocks_offset(&self) -> u64 {
        self.l1_offset() + self.l1_clusters * self.cluster_size
    }
    pub fn l2_offset(&self) -> u64 {
        self.refblocks_offset() + self.refblocks * self.cluster_size
    }
    /// Bytes the empty image occupies.
    pub fn end(&self) -> u64 {
        self.l2_offset() + self.l1_entries * self.cluster_size
    }

    /// L1 entries the header declares: the whole of its clusters, so a
    /// virtual resize within them never moves the L1 table.
    pub fn l1_capacity(&self) -> u64 {
        (self.l1_clusters * self.cluster_size / 8).min(MAX_L1_BYTES / 8)
    }

    pub fn header(&self, size: u64, backing: Option<Backing>) -> Header {
        Header {
            version: VERSION,
            cluster_bits: self.cluster_size.trailing_zeros(),
            size,
            crypt_method: 0,
            l1_size: self.l1_capacity() as u32,
            l1_table_offset: self.l1_offset(),
            refcount_table_offset: self.reftable_offset(),
            refcount_table_clusters: self.reftable_clusters as u32,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: REFCOUNT_ORDER,
            header_length: HEADER_LEN,
            backing,
            header_tail: Vec::new(),
            other_extensions: Vec::new(),
        }
    }

    /// The metadata after the header that is not all zeroes, as (offset,
    /// bytes): the refcount table, the L1 table (pointing at the L2 tables,
    /// with COPIED set) and the refblocks that count the metadata. The rest
    /// up to [`EmptyLayout::end`] must read as zeroes.
    pub fn tables(&self) -> Vec<(u64, Vec<u8>)> {
        let cs = self.cluster_size;
        let mut rt = vec![0u8; (self.reftable_clusters * cs) as usize];
        for i in 0..self.refblocks {
            let off = self.refblocks_offset() + i * cs;
            rt[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
        }
        let mut l1 = vec![0u8; (self.l1_clusters * cs) as usize];
        for i in 0..self.l1_entries {
            let e = (self.l2_offset() + i * cs) | COPIED;
            l1[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_be_bytes());
        }
        let used = self.end() / cs;
        let counted = used.div_ceil(refs_per_block(cs)) * cs;
        let mut rbs = vec![0u8; counted as usize];
        for c in 0..used {
            rbs[(c * 2) as usize..(c * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
        }
        vec![
            (self.reftable_offset(), rt),
            (self.l1_offset(), l1),
            (self.refblocks_offset(), rbs),
        ]
    }
}

/// Bytes of metadata a fully allocated image of `size` bytes needs on top of
/// its data (header, L1, L2 tables, refcount table and blocks), as QEMU's
/// `qemu-img measure` counts them.
pub fn metadata_overhead(size: u64, cluster_size: u64) -> u64 {
    let cs = cluster_size.max(512);
    let data = clusters(size, cs);
    let l2 = clusters(data, cs / 8);
    let l1 = clusters(l2 * 8, cs).max(1);
    let (rt, rb) = refcount_structures(1 + data + l2 + l1, cs);
    (1 + l2 + l1 + rt + rb) * cs
}

/// Refcount table clusters and refblocks that count `others` clusters plus
/// themselves (a fixpoint: more refblocks need counting too).
fn refcount_structures(others: u64, cs: u64) -> (u64, u64) {
    let (mut rt, mut rb) = (1u64, 1u64);
    loop {
        let need_rb = clusters(others + rt + rb, refs_per_block(cs));
        let need_rt = clusters(need_rb * 8, cs);
        if need_rb <= rb && need_rt <= rt {
            return (rt, rb);
        }
        (rb, rt) = (need_rb.max(rb), need_rt.max(rt));
    }
}

/// Writes refcount `v` (of `1 << order` bits; higher bits dropped) at
/// index `i` of a refblock: the inverse of [`refcount_at`].
pub fn set_refcount(block: &mut [u8], order: u32, i: u64, v: u64) {
    let bits = 1u64 << order;
    if bits >= 8 {
        let n = (bits / 8) as usize;
        let at = i as usize * n;
        for (k, b) in block[at..at + n].iter_mut().enumerate() {
            *b = (v >> (8 * (n - 1 - k))) as u8;
        }
    } else {
        let at = (i * bits / 8) as usize;
        let shift = (i * bits) % 8;
        let mask = (((1u64 << bits) - 1) << shift) as u8;
        block[at] = (block[at] & !mask) | (((v << shift) as u8) & mask);
    }
}

/// Reads a refcount of `1 << order` bits at index `i` of a refblock.
pub fn refcount_at(block: &[u8], order: u32, i: u64) -> u64 {
    let bits = 1u64 << order;
    if bits >= 8 {
        let n = (bits / 8) as usize;
        let at = i as usize * n;
        block[at..at + n]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        let byte = block[(i * bits / 8) as usize];
        let shift = (i * bits) % 8;
        (u64::from(byte) >> shift) & ((1 << bits) - 1)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn set_refcount_is_the_inverse_of_refcount_at() {
        for order in 0..=6u32 {
            let bits = 1u64 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1 << bits) - 1
            };
            let mut block = vec![0xa5u8; 64];
            let n = 64 * 8 / bits;
            for i in 0..n {
                let v = (i.wrapping_mul(0x9e37_79b9) ^ 0x5a) & max;
                set_refcount(&mut block, order, i, v);
                assert_eq!(refcount_at(&block, order, i), v, "order {order} index {i}");
            }
            // Setting one entry leaves its neighbours alone.
            let before: Vec<u64> = (0..n).map(|i| refcount_at(&block, order, i)).collect();
            set_refcount(&mut block, order, n / 2, 1);
            for i in (0..n).filter(|&i| i != n / 2) {
                assert_eq!(refcount_at(&block, order, i), before[i as usize]);
            }
        }
    }
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_layout_of_default_disk() {
        let l = EmptyLayout::new(10 << 30, DEFAULT_CLUSTER_SIZE).unwrap();
        assert_eq!(l.l1_entries, 20);
        // 163,840 data clusters and 29 of metadata: 6 refblocks of 32,768.
        assert_eq!((l.reftable_clusters, l.l1_clusters, l.refblocks), (1, 1, 6));
        assert_eq!(l.end(), (3 + 6 + 20) * DEFAULT_CLUSTER_SIZE);
        // All the metadata a fully allocated image needs, as qemu-img measures it.
        assert_eq!(l.end(), metadata_overhead(10 << 30, DEFAULT_CLUSTER_SIZE));
    }

    #[test]
    fn small_clusters_need_several_refblocks() {
        // 512-byte clusters, 4 GiB: 256 refs per refblock, a 1 MiB L1 table.
        let l = EmptyLayout::new(4 << 30, 512).unwrap();
        assert_eq!(l.l1_clusters, 2048);
        let total = l.end() / 512 + (4 << 30) / 512;
        assert!(l.refblocks * 256 >= total, "{l:?}");
        assert!(l.reftable_clusters * 64 >= l.refblocks);
    }

    #[test]
    fn too_large_for_the_cluster_size_is_refused() {
        assert!(matches!(
            EmptyLayout::new(1 << 50, 512),
            Err(Error::InvalidArgument(_))
        ));
        assert!(EmptyLayout::new(1 << 20, 3000).is_err());
    }

    #[test]
    fn overhead_matches_qemu_measure() {
        // `qemu-img measure -O qcow2 --size S [-o cluster_size=C]`: "fully
        // allocated size" minus S (qemu-img 7.2 and 10.0 agree).
        assert_eq!(metadata_overhead(20 << 30, 65536), 3_538_944);
        assert_eq!(metadata_overhead(1 << 40, 65536), 168_034_304);
        assert_eq!(metadata_overhead(20 << 30, 512), 427_681_280);
    }

    #[test]
    fn header_round_trip_with_backing() {
        let l = EmptyLayout::new(1 << 30, 65536).unwrap();
        let h = l.header(
            1 << 30,
            Some(Backing {
                name: "vol-1.snap-2".into(),
                format: Some("qcow2".into()),
            }),
        );
        let enc = h.encode().unwrap();
        assert!(enc.len() < 512);
        let mut buf = enc.clone();
        buf.resize(65536, 0);
        assert_eq!(Header::decode(&buf, 1 << 30).unwrap(), h);
    }

    #[test]
    fn refcounts_of_every_width() {
        let block = [0b1011_0100u8, 0xff, 0x12, 0x34, 0, 0, 0, 7];
        assert_eq!(refcount_at(&block, 0, 2), 1);
        assert_eq!(refcount_at(&block, 0, 3), 0);
        assert_eq!(refcount_at(&block, 1, 1), 0b01);
        assert_eq!(refcount_at(&block, 2, 1), 0b1011);
        assert_eq!(refcount_at(&block, 3, 1), 0xff);
        assert_eq!(refcount_at(&block, 4, 1), 0x1234);
        assert_eq!(refcount_at(&block, 5, 1), 7);
        assert_eq!(refcount_at(&block, 6, 0), 0xb4ff_1234_0000_0007);
    }

    proptest! {
        /// Arbitrary bytes and mutated valid headers give a header or an
        /// error, never a panic, and a header's tables lie in the device.
        #[test]
        fn decode_never_panics(
            flips in proptest::collection::vec((0usize..512, any::<u8>()), 0..24),
            dev_size in 0u64..(1 << 40),
        ) {
            let l = EmptyLayout::new(1 << 30, 65536).unwrap();
            let h = l.header(1 << 30, Some(Backing { name: "base".into(), format: Some("qcow2".into()) }));
            let mut buf = h.encode().unwrap();
            buf.resize(4096, 0);
            for (at, v) in flips {
                buf[at] = v;
            }
            if let Ok(h) = Header::decode(&buf, dev_size) {
                prop_assert!(h.l1_table_offset + u64::from(h.l1_size) * 8 <= dev_size);
                prop_assert!(h.refcount_table_offset + u64::from(h.refcount_table_clusters) * h.cluster_size() <= dev_size);
            }
        }
    }
}

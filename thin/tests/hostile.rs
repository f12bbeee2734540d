//! Hostile images: valid thin volumes (data in a top layer and in its
//! backing layer, refcount widths of 1, 16 and 64 bits) with their metadata
//! damaged on purpose, opened read-only and read-write (with an extender),
//! read whole, written in a few places, grown and flushed.
//!
//! Asserted for every input:
//! - no panic (each case runs under `catch_unwind` in its own thread, which
//!   also catches hangs), and every failure is a `thin::Error` value;
//! - no I/O outside the LV: both layers are `san::WindowDev`s in the middle
//!   of one file whose bytes before, between and after them are a canary
//!   pattern, checked after every case; the room the top LV may grow into
//!   is checked too while the extender was not called;
//! - thin itself never asks the device for anything outside the LV (a spy
//!   between thin and each window counts requests the window refuses).
//!
//! Inputs: `listed_hostile_inputs` runs every damage the design names (header
//! fields: l1_size 2^31, table offsets past the end or unaligned,
//! cluster_bits and refcount_order out of range, header_length, extension
//! lengths, backing names that loop, name themselves or hold '/' or '..';
//! L1/L2/refcount-table entries past the end, unaligned, at metadata;
//! bogus compressed descriptors; refcounts 0 or at the maximum with and
//! without COPIED, shared clusters); `random_damage` draws 1024 random
//! combinations of the same, plus byte flips in the first six clusters.
//! A failing case is reported with the exact mutations applied.
//!
//! Tests marked FINDING fail today: damage that passes the checks above
//! but destroys the image on the first write (see their comments).

use proptest::prelude::*;
use san::{BlockDev, DevId, FileDev, WindowDev};
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use thin::format::{Backing, EmptyLayout, Header};
use thin::{DirStore, LvStore, OpenOptions, StoreExtender, Volume};

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
/// Cluster size of the templates.
const CS: u64 = 4096;
/// Virtual size of the templates.
const VSIZE: u64 = 4 * MIB;
/// Canary bytes before, between and after the LVs.
const CANARY: u64 = 64 * KIB;
/// Room after the top LV that an extension hands out.
const SPARE: u64 = 2 * MIB;
/// Reads stop here (plus the last MiB) when a mutated size is huge.
const READ_CAP: u64 = 8 * MIB;
/// A case that takes longer than this is reported as a hang.
const TIMEOUT: Duration = Duration::from_secs(20);
/// Refcount widths of the templates (refcount_order).
const ORDERS: [u32; 3] = [0, 4, 6];

// ---------------------------------------------------------------------------
// Templates: valid two-layer volumes, built once.

#[derive(Debug)]
struct Layer {
    bytes: Vec<u8>,
    l1_off: u64,
    rt_off: u64,
    rb_offs: Vec<u64>,
    l2_offs: Vec<u64>,
    data_offs: Vec<u64>,
    order: u32,
}

#[derive(Debug)]
struct Template {
    order: u32,
    top: Layer,
    base: Layer,
    /// What the volume reads before any mutation.
    content: Vec<u8>,
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn set_refcount(block: &mut [u8], order: u32, i: u64, v: u64) {
    let bits = 1u64 << order;
    if bits >= 8 {
        let n = (bits / 8) as usize;
        let at = i as usize * n;
        let bytes = v.to_be_bytes();
        block[at..at + n].copy_from_slice(&bytes[8 - n..]);
    } else {
        let byte = &mut block[(i * bits / 8) as usize];
        let shift = (i * bits) % 8;
        let mask = ((1u64 << bits) - 1) as u8;
        *byte = (*byte & !(mask << shift)) | (((v as u8) & mask) << shift);
    }
}

/// An empty image with `1 << order`-bit refcounts (thin makes 16-bit ones).
fn empty_image(order: u32, backing: Option<&str>) -> Vec<u8> {
    let l = EmptyLayout::new(VSIZE, CS).unwrap();
    let mut h = l.header(
        VSIZE,
        backing.map(|b| Backing {
            name: b.into(),
            format: Some("qcow2".into()),
        }),
    );
    h.refcount_order = order;
    let mut img = vec![0u8; l.end() as usize];
    let enc = h.encode().unwrap();
    img[..enc.len()].copy_from_slice(&enc);
    for (off, data) in l.tables() {
        img[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    let rb = l.refblocks_offset() as usize;
    let per_block = (CS * 8) >> order;
    let used = l.end() / CS;
    assert!(used <= per_block, "one refblock must count the empty image");
    img[rb..rb + CS as usize].fill(0);
    for c in 0..used {
        set_refcount(&mut img[rb..rb + CS as usize], order, c, 1);
    }
    img
}

/// Deterministic bytes, never all zero.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

fn fill_layer(v: &Volume, content: &mut [u8], seed: u64, n: u64) {
    for i in 0..n {
        let x = noise(seed * 1000 + i, 16);
        let r = u64::from_le_bytes(x[..8].try_into().unwrap());
        let len = 1 + (r >> 40) as usize % 40_000;
        let off = (r % (VSIZE - len as u64)) & !if i % 2 == 0 { 511 } else { 0 };
        let data = noise(r, len);
        v.write(&data, off).unwrap();
        content[off as usize..off as usize + len].copy_from_slice(&data);
    }
    v.write_zeroes(VSIZE / 2, 3 * CS).unwrap();
    content[(VSIZE / 2) as usize..(VSIZE / 2 + 3 * CS) as usize].fill(0);
    v.flush().unwrap();
}

fn parse_layer(bytes: Vec<u8>, order: u32) -> Layer {
    let h = Header::decode(&bytes, bytes.len() as u64).unwrap();
    assert_eq!(h.refcount_order, order);
    let mut rb_offs = Vec::new();
    for i in 0..(u64::from(h.refcount_table_clusters) * CS / 8) {
        let e = get64(&bytes, (h.refcount_table_offset + i * 8) as usize) & !0x1ff;
        if e != 0 {
            rb_offs.push(e);
        }
    }
    let (mut l2_offs, mut data_offs) = (Vec::new(), Vec::new());
    for i in 0..u64::from(h.l1_size) {
        let e = get64(&bytes, (h.l1_table_offset + i * 8) as usize) & thin::format::OFFSET_MASK;
        if e == 0 {
            continue;
        }
        l2_offs.push(e);
        for j in 0..CS / 8 {
            let d = get64(&bytes, (e + j * 8) as usize) & thin::format::OFFSET_MASK;
            if d != 0 {
                data_offs.push(d);
            }
        }
    }
    assert!(!l2_offs.is_empty() && !data_offs.is_empty());
    Layer {
        bytes,
        l1_off: h.l1_table_offset,
        rt_off: h.refcount_table_offset,
        rb_offs,
        l2_offs,
        data_offs,
        order,
    }
}

fn build_template(order: u32) -> Template {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), 64 * KIB));
    let ext: Arc<dyn thin::Extender> = Arc::new(StoreExtender(store.clone()));
    std::fs::write(dir.path().join("base"), empty_image(order, None)).unwrap();
    std::fs::write(dir.path().join("top"), empty_image(order, Some("base"))).unwrap();
    let mut content = vec![0u8; VSIZE as usize];
    let rw = OpenOptions::default().with_extender(ext);
    fill_layer(
        &Volume::open(&*store, "base", &rw).unwrap(),
        &mut content,
        1 + u64::from(order),
        40,
    );
    fill_layer(
        &Volume::open(&*store, "top", &rw).unwrap(),
        &mut content,
        100 + u64::from(order),
        16,
    );
    let layer = |name: &str| {
        let dev = store.open(name).unwrap();
        let h = thin::layer::read_header(&*dev).unwrap();
        let end = thin::layer::allocated_end(&*dev, &h).unwrap();
        let mut bytes = std::fs::read(dir.path().join(name)).unwrap();
        bytes.truncate(end as usize);
        parse_layer(bytes, order)
    };
    Template {
        order,
        top: layer("top"),
        base: layer("base"),
        content,
    }
}

fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| ORDERS.iter().map(|&o| build_template(o)).collect())
}

// ---------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Top,
    Base,
}

/// Where an offset points, resolved against the layer being damaged.
#[derive(Clone, Copy, Debug)]
enum Anchor {
    Zero,
    L1,
    RefTable,
    RefBlock,
    L2(u8),
    Data(u8),
    /// The LV's end (the first byte past it).
    LvEnd,
    /// The start of the LV's last cluster.
    LvLast,
}

#[derive(Clone, Copy, Debug)]
enum Val {
    /// An offset: base plus delta bytes.
    At(Anchor, u64),
    Raw(u64),
}

#[derive(Clone, Copy, Debug)]
#[allow(clippy::upper_case_acronyms)]
enum Field {
    Version,
    BackingOffset,
    BackingLen,
    ClusterBits,
    Size,
    CryptMethod,
    L1Size,
    L1Offset,
    RefTableOffset,
    RefTableClusters,
    NbSnapshots,
    SnapshotsOffset,
    Incompatible,
    Compatible,
    Autoclear,
    RefcountOrder,
    HeaderLength,
}

impl Field {
    /// (offset, width in bytes)
    fn place(self) -> (usize, usize) {
        match self {
            Field::Version => (4, 4),
            Field::BackingOffset => (8, 8),
            Field::BackingLen => (16, 4),
            Field::ClusterBits => (20, 4),
            Field::Size => (24, 8),
            Field::CryptMethod => (32, 4),
            Field::L1Size => (36, 4),
            Field::L1Offset => (40, 8),
            Field::RefTableOffset => (48, 8),
            Field::RefTableClusters => (56, 4),
            Field::NbSnapshots => (60, 4),
            Field::SnapshotsOffset => (64, 8),
            Field::Incompatible => (72, 8),
            Field::Compatible => (80, 8),
            Field::Autoclear => (88, 8),
            Field::RefcountOrder => (96, 4),
            Field::HeaderLength => (100, 4),
        }
    }
}

#[derive(Clone, Debug)]
enum Mut {
    Header(Which, Field, Val),
    /// Replaces the backing name (written where the old one was).
    BackingName(Which, Vec<u8>),
    /// Replaces the backing format extension's text.
    BackingFormat(Which, Vec<u8>),
    /// Sets the length of the first header extension.
    ExtensionLen(Which, u32),
    /// L1 entry `i` := value | flags.
    L1(Which, u16, Val, u64),
    /// Entry `i` of L2 table `t` := value | flags.
    L2(Which, u8, u16, Val, u64),
    /// Entry `i` of L2 table `t` := a compressed descriptor (raw bits).
    L2Compressed(Which, u8, u16, u64),
    /// Entries `i` and `j` of L2 table `t` share the first one's cluster,
    /// COPIED cleared on both.
    L2Shared(Which, u8, u16, u16),
    /// L1 entries `i` and `j` share one L2 table.
    L1Shared(Which, u16, u16),
    /// Refcount table entry `i` := value.
    RefTable(Which, u16, Val),
    /// The refcount of the cluster at the offset := count (masked to width).
    Refcount(Which, Val, u64),
    /// Every refcount in every refblock := count (0 = all free).
    AllRefcounts(Which, u64),
    /// Refcounts of allocated clusters := the width's maximum.
    AllocatedAtMax(Which),
    /// COPIED cleared on every L2 entry (every write must copy).
    ClearCopied(Which),
    /// XOR these bytes into the layer (offsets within its first clusters).
    Flips(Which, Vec<(u32, u8)>),
}

impl Mut {
    fn which(&self) -> Which {
        match self {
            Mut::Header(w, ..)
            | Mut::BackingName(w, _)
            | Mut::BackingFormat(w, _)
            | Mut::ExtensionLen(w, _)
            | Mut::L1(w, ..)
            | Mut::L2(w, ..)
            | Mut::L2Compressed(w, ..)
            | Mut::L2Shared(w, ..)
            | Mut::L1Shared(w, ..)
            | Mut::RefTable(w, ..)
            | Mut::Refcount(w, ..)
            | Mut::AllRefcounts(w, _)
            | Mut::AllocatedAtMax(w)
            | Mut::ClearCopied(w)
            | Mut::Flips(w, _) => *w,
        }
    }
}

fn resolve(v: Val, l: &Layer, lv_len: u64) -> u64 {
    match v {
        Val::Raw(x) => x,
        Val::At(b, d) => {
            let base = match b {
                Anchor::Zero => 0,
                Anchor::L1 => l.l1_off,
                Anchor::RefTable => l.rt_off,
                Anchor::RefBlock => l.rb_offs[0],
                Anchor::L2(i) => l.l2_offs[i as usize % l.l2_offs.len()],
                Anchor::Data(i) => l.data_offs[i as usize % l.data_offs.len()],
                Anchor::LvEnd => lv_len,
                Anchor::LvLast => lv_len - CS,
            };
            base.wrapping_add(d)
        }
    }
}

/// The offset of the first header extension and of the backing name.
fn header_layout(img: &[u8]) -> (usize, usize, usize) {
    let hl = u32::from_be_bytes(img[100..104].try_into().unwrap()) as usize;
    let name_off = get64(img, 8) as usize;
    let name_len = u32::from_be_bytes(img[16..20].try_into().unwrap()) as usize;
    (hl, name_off, name_len)
}

fn apply(m: &Mut, l: &Layer, img: &mut [u8], lv_len: u64) {
    let cs = CS as usize;
    let rc_max = if l.order == 6 {
        u64::MAX
    } else {
        (1u64 << (1u64 << l.order)) - 1
    };
    match m {
        Mut::Header(_, f, v) => {
            let x = resolve(*v, l, lv_len);
            let (at, w) = f.place();
            if w == 4 {
                put32(img, at, x as u32);
            } else {
                put64(img, at, x);
            }
        }
        Mut::BackingName(_, name) => {
            let (_, off, _) = header_layout(img);
            let off = if off == 0 || off >= cs { 512 } else { off };
            let end = (off + name.len()).min(cs);
            img[off..end].copy_from_slice(&name[..end - off]);
            put64(img, 8, off as u64);
            put32(img, 16, name.len() as u32);
        }
        Mut::BackingFormat(_, text) => {
            // Only layers with a backing carry the extension (first one).
            let (hl, _, _) = header_layout(img);
            if hl + 16 <= cs
                && u32::from_be_bytes(img[hl..hl + 4].try_into().unwrap())
                    == thin::format::EXT_BACKING_FORMAT
            {
                let old = u32::from_be_bytes(img[hl + 4..hl + 8].try_into().unwrap()) as usize;
                let n = text.len().min(old.div_ceil(8) * 8);
                img[hl + 8..hl + 8 + n].copy_from_slice(&text[..n]);
                put32(img, hl + 4, n as u32);
            }
        }
        Mut::ExtensionLen(_, len) => {
            let (hl, _, _) = header_layout(img);
            if hl + 8 <= cs {
                if get64(img, hl) == 0 {
                    put32(img, hl, 0x1234_5678); // an unknown extension
                }
                put32(img, hl + 4, *len);
            }
        }
        Mut::L1(_, i, v, flags) => {
            let at = l.l1_off as usize + (*i as usize % (cs / 8)) * 8;
            put64(img, at, resolve(*v, l, lv_len) | flags);
        }
        Mut::L2(_, t, i, v, flags) => {
            let tab = l.l2_offs[*t as usize % l.l2_offs.len()] as usize;
            let at = tab + (*i as usize % (cs / 8)) * 8;
            put64(img, at, resolve(*v, l, lv_len) | flags);
        }
        Mut::L2Compressed(_, t, i, desc) => {
            let tab = l.l2_offs[*t as usize % l.l2_offs.len()] as usize;
            let at = tab + (*i as usize % (cs / 8)) * 8;
            put64(img, at, (1 << 62) | (desc & ((1 << 62) - 1)));
        }
        Mut::L2Shared(_, t, i, j) => {
            let tab = l.l2_offs[*t as usize % l.l2_offs.len()] as usize;
            let a = tab + (*i as usize % (cs / 8)) * 8;
            let b = tab + (*j as usize % (cs / 8)) * 8;
            let mut e = get64(img, a) & thin::format::OFFSET_MASK;
            if e == 0 {
                e = l.data_offs[0];
            }
            put64(img, a, e);
            put64(img, b, e);
        }
        Mut::L1Shared(_, i, j) => {
            let a = l.l1_off as usize + (*i as usize % (cs / 8)) * 8;
            let b = l.l1_off as usize + (*j as usize % (cs / 8)) * 8;
            let e = l.l2_offs[0] | (1 << 63);
            put64(img, a, e);
            put64(img, b, e);
        }
        Mut::RefTable(_, i, v) => {
            let at = l.rt_off as usize + (*i as usize % (cs / 8)) * 8;
            put64(img, at, resolve(*v, l, lv_len));
        }
        Mut::Refcount(_, v, count) => {
            let c = resolve(*v, l, lv_len) / CS;
            let per = (CS * 8) >> l.order;
            if let Some(&rb) = l.rb_offs.get((c / per) as usize) {
                let rb = rb as usize;
                set_refcount(&mut img[rb..rb + cs], l.order, c % per, count & rc_max);
            }
        }
        Mut::AllRefcounts(_, count) => {
            let per = (CS * 8) >> l.order;
            for &rb in &l.rb_offs {
                let rb = rb as usize;
                for i in 0..per {
                    set_refcount(&mut img[rb..rb + cs], l.order, i, count & rc_max);
                }
            }
        }
        Mut::AllocatedAtMax(_) => {
            let per = (CS * 8) >> l.order;
            for &rb in &l.rb_offs {
                let rb = rb as usize;
                for i in 0..per {
                    if thin::format::refcount_at(&img[rb..rb + cs], l.order, i) != 0 {
                        set_refcount(&mut img[rb..rb + cs], l.order, i, rc_max);
                    }
                }
            }
        }
        Mut::ClearCopied(_) => {
            for &t in &l.l2_offs {
                for i in 0..cs / 8 {
                    let at = t as usize + i * 8;
                    let e = get64(img, at);
                    put64(img, at, e & !(1 << 63));
                }
            }
        }
        Mut::Flips(_, flips) => {
            for &(at, x) in flips {
                let at = at as usize % img.len().min(6 * cs);
                img[at] ^= x;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The disk: one file, canaries around two LV windows.

fn canary(at: u64) -> u8 {
    ((at.wrapping_mul(0x9e37_79b9) >> 7) as u8) ^ 0xa5 | 0x10
}
fn stale(at: u64) -> u8 {
    ((at.wrapping_mul(31) >> 3) as u8) | 0x81
}

/// Counts requests the window under it refuses (thin asked for bytes
/// outside the LV, or misaligned ones).
struct Spy {
    inner: Arc<dyn BlockDev>,
    refused: Arc<Mutex<Vec<String>>>,
    name: &'static str,
}

impl Spy {
    fn note<T>(&self, what: &str, off: u64, len: u64, r: san::Result<T>) -> san::Result<T> {
        if let Err(e @ (san::Error::OutOfRange { .. } | san::Error::Misaligned { .. })) = &r {
            self.refused.lock().unwrap().push(format!(
                "{}: {what} of {len} bytes at {off}: {e}",
                self.name
            ));
        }
        r
    }
}

impl BlockDev for Spy {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> san::Result<()> {
        let len = buf.len() as u64;
        let r = self.inner.read_at(buf, offset);
        self.note("read", offset, len, r)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> san::Result<()> {
        let r = self.inner.write_at(buf, offset);
        self.note("write", offset, buf.len() as u64, r)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> san::Result<()> {
        let r = self.inner.write_zeroes(offset, len);
        self.note("write_zeroes", offset, len, r)
    }
    fn flush(&self) -> san::Result<()> {
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn identity(&self) -> &DevId {
        self.inner.identity()
    }
}

/// The two LVs of one case, as windows of one file.
struct HostileStore {
    file: Arc<dyn BlockDev>,
    top_at: u64,
    top_len: AtomicU64,
    top_max: u64,
    base_at: u64,
    base_len: u64,
    extended: AtomicBool,
    refused: Arc<Mutex<Vec<String>>>,
}

impl HostileStore {
    fn window(&self, name: &'static str, at: u64, len: u64) -> Arc<dyn BlockDev> {
        Arc::new(Spy {
            inner: Arc::new(WindowDev::new(self.file.clone(), at, len).unwrap()),
            refused: self.refused.clone(),
            name,
        })
    }
}

impl LvStore for HostileStore {
    fn open(&self, name: &str) -> thin::Result<Arc<dyn BlockDev>> {
        match name {
            "top" => Ok(self.window("top", self.top_at, self.top_len.load(Ordering::SeqCst))),
            "base" => Ok(self.window("base", self.base_at, self.base_len)),
            _ => Err(thin::Error::NotFound(format!("LV {name}"))),
        }
    }
    fn create(&self, name: &str, _: u64, _: &[String]) -> thin::Result<Arc<dyn BlockDev>> {
        Err(thin::Error::InvalidArgument(format!("no new LVs ({name})")))
    }
    fn extend(&self, name: &str, size: u64) -> thin::Result<Arc<dyn BlockDev>> {
        if name != "top" || size > self.top_max {
            return Err(thin::Error::NoSpace(format!("{name} to {size} bytes")));
        }
        self.extended.store(true, Ordering::SeqCst);
        let len = size.div_ceil(64 * KIB) * 64 * KIB;
        let len = len
            .min(self.top_max)
            .max(self.top_len.load(Ordering::SeqCst));
        self.top_len.store(len, Ordering::SeqCst);
        Ok(self.window("top", self.top_at, len))
    }
    fn remove(&self, name: &str) -> thin::Result<()> {
        Err(thin::Error::InvalidArgument(format!("no removal ({name})")))
    }
    fn exists(&self, name: &str) -> thin::Result<bool> {
        Ok(name == "top" || name == "base")
    }
}

/// Hands out as much of the growth room as asked for, within it.
struct Grow(Arc<HostileStore>);

impl thin::Extender for Grow {
    fn extend(&self, req: &thin::GrowthRequest) -> Result<Arc<dyn BlockDev>, String> {
        let want = req.target_size.min(self.0.top_max).max(req.min_size);
        self.0.extend(&req.lv, want).map_err(|e| e.to_string())
    }
}

struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Arc<HostileStore>,
    /// The file as made, before the images went in.
    expect: Arc<Vec<u8>>,
    /// Ranges that must keep the canary, and the top LV's growth room.
    canaries: Vec<(u64, u64)>,
    spare: (u64, u64),
}

fn round64k(n: u64) -> u64 {
    n.div_ceil(64 * KIB) * 64 * KIB
}

/// The bytes of a disk file before the images go in: canaries around the
/// LVs, stale bytes inside them. One per layout, computed once.
fn pattern(total: u64, lvs: [(u64, u64); 2]) -> Arc<Vec<u8>> {
    type Entry = (u64, [(u64, u64); 2], Arc<Vec<u8>>);
    static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap();
    if let Some((.., p)) = cache.iter().find(|(t, l, _)| *t == total && *l == lvs) {
        return p.clone();
    }
    let mut bytes: Vec<u8> = (0..total).map(canary).collect();
    for (at, len) in lvs {
        for a in at..at + len {
            bytes[a as usize] = stale(a);
        }
    }
    let p = Arc::new(bytes);
    cache.push((total, lvs, p.clone()));
    p
}

fn make_disk(top: &[u8], base: &[u8], top_len: u64, base_len: u64) -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    let top_at = CANARY;
    let spare_at = top_at + top_len;
    let c2 = spare_at + SPARE;
    let base_at = c2 + CANARY;
    let c3 = base_at + base_len;
    let total = c3 + CANARY;
    let expect = pattern(total, [(top_at, top_len + SPARE), (base_at, base_len)]);
    let mut bytes = (*expect).clone();
    bytes[top_at as usize..top_at as usize + top.len()].copy_from_slice(top);
    bytes[base_at as usize..base_at as usize + base.len()].copy_from_slice(base);
    std::fs::write(&path, &bytes).unwrap();
    let file: Arc<dyn BlockDev> =
        Arc::new(FileDev::open(&path, &san::OpenOptions::new().direct(false)).unwrap());
    let store = Arc::new(HostileStore {
        file,
        top_at,
        top_len: AtomicU64::new(top_len),
        top_max: top_len + SPARE,
        base_at,
        base_len,
        extended: AtomicBool::new(false),
        refused: Arc::new(Mutex::new(Vec::new())),
    });
    Disk {
        _dir: dir,
        path,
        store,
        expect,
        canaries: vec![(0, CANARY), (c2, CANARY), (c3, CANARY)],
        spare: (spare_at, SPARE),
    }
}

impl Disk {
    /// What was found outside the LVs (empty when all is well).
    fn damage(&self) -> Vec<String> {
        let f = std::fs::File::open(&self.path).unwrap();
        let mut out = Vec::new();
        let mut check = |(at, len): (u64, u64), what: &str| {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, at).unwrap();
            let want = &self.expect[at as usize..(at + len) as usize];
            if let Some(i) = (buf[..] != *want)
                .then(|| buf.iter().zip(want).position(|(a, b)| a != b))
                .flatten()
            {
                out.push(format!(
                    "{what} at file offset {} overwritten",
                    at + i as u64
                ));
            }
        };
        for &c in &self.canaries {
            check(c, "canary");
        }
        if !self.store.extended.load(Ordering::SeqCst) {
            check(self.spare, "growth room of the top LV (never handed out)");
        }
        let len = f.metadata().unwrap().len();
        if len != self.expect.len() as u64 {
            out.push(format!(
                "file length changed from {} to {len}",
                self.expect.len()
            ));
        }
        out
    }
}

// ---------------------------------------------------------------------------
// One case.

#[derive(Clone, Debug)]
struct Case {
    template: usize,
    muts: Vec<Mut>,
    /// Extra writes: (offset, length), taken modulo the virtual size.
    writes: Vec<(u64, u32)>,
    grow: bool,
}

#[derive(Debug, Default)]
struct Outcome {
    /// What happened, step by step (errors are fine, panics are not).
    log: Vec<String>,
}

impl Outcome {
    fn step<T>(&mut self, what: &str, r: thin::Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                // Every failure is a thin::Error; its text must be printable.
                let text = e.to_string();
                assert!(!text.is_empty());
                self.log.push(format!("{what}: {text}"));
                None
            }
        }
    }
}

fn read_all(o: &mut Outcome, v: &Volume, what: &str) -> Option<Vec<u8>> {
    let size = v.virtual_size();
    let mut out = Vec::new();
    let mut ok = true;
    let mut ranges = vec![(0, size.min(READ_CAP))];
    if size > READ_CAP {
        ranges.push((size.saturating_sub(MIB).max(READ_CAP), size));
    }
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = (end - at).min(256 * KIB);
            let mut buf = vec![0u8; n as usize];
            if o.step(&format!("{what}: read {n} at {at}"), v.read(&mut buf, at))
                .is_none()
            {
                ok = false;
            }
            out.extend_from_slice(&buf);
            at += n;
        }
    }
    ok.then_some(out)
}

fn run_case(t: &Template, case: &Case, store: Arc<HostileStore>) -> Outcome {
    let mut o = Outcome::default();
    let dyn_store: Arc<dyn LvStore> = store.clone();
    if let Some(v) = o.step(
        "open read-only",
        Volume::open(&*dyn_store, "top", &OpenOptions::read_only()),
    ) {
        read_all(&mut o, &v, "ro");
    }
    let ext: Arc<dyn thin::Extender> = Arc::new(Grow(store.clone()));
    let rw = OpenOptions::default().with_extender(ext);
    if let Some(v) = o.step("open read-write", Volume::open(&*dyn_store, "top", &rw)) {
        read_all(&mut o, &v, "rw");
        let size = v.virtual_size().max(1);
        let mut writes: Vec<(u64, u64)> = vec![
            (0, 4096),
            (5000, 300),
            (MIB - 100, 8292),
            (size.saturating_sub(512), 512),
        ];
        writes.extend(case.writes.iter().map(|&(a, n)| (a, u64::from(n))));
        for (i, (off, len)) in writes.into_iter().enumerate() {
            let off = off % size;
            let len = len.min(size - off) as usize;
            let data = noise(i as u64 + 77, len);
            o.step(&format!("write {len} at {off}"), v.write(&data, off));
        }
        o.step(
            "write_zeroes",
            v.write_zeroes(
                (2 * MIB + 4096) % size,
                8192.min(size - (2 * MIB + 4096) % size),
            ),
        );
        if size >= 3 * MIB + 64 * KIB {
            o.step("discard", v.discard(3 * MIB, 64 * KIB));
        }
        if case.grow {
            o.step("grow", v.grow(size.saturating_add(MIB)));
            let s = v.virtual_size();
            let n = s.min(512);
            o.step("write after grow", v.write(&vec![0x5a; n as usize], s - n));
        }
        o.step("flush", v.flush());
        drop(v);
        // Reopen what the writes left.
        if let Some(v) = o.step(
            "reopen read-only",
            Volume::open(&*dyn_store, "top", &OpenOptions::read_only()),
        ) {
            read_all(&mut o, &v, "reopened");
        }
    }
    let _ = t;
    o
}

/// Builds the disk for `case`, runs it in a thread with a time limit, then
/// checks the canaries. Returns a description of what went wrong, if anything.
/// The disk of template `t` with `muts` applied.
fn damaged_disk(t: &Template, muts: &[Mut]) -> Disk {
    let top_len = round64k(t.top.bytes.len() as u64) + 64 * KIB;
    let base_len = round64k(t.base.bytes.len() as u64) + 64 * KIB;
    let mut top = t.top.bytes.clone();
    let mut base = t.base.bytes.clone();
    for m in muts {
        match m.which() {
            Which::Top => apply(m, &t.top, &mut top, top_len),
            Which::Base => apply(m, &t.base, &mut base, base_len),
        }
    }
    make_disk(&top, &base, top_len, base_len)
}

fn check_case(case: &Case) -> Result<Outcome, String> {
    let t = &templates()[case.template];
    let disk = damaged_disk(t, &case.muts);
    let store = disk.store.clone();
    let (tx, rx) = mpsc::channel();
    let c = case.clone();
    std::thread::Builder::new()
        .name("hostile-case".into())
        .spawn(move || {
            let t = &templates()[c.template];
            let r = catch_unwind(AssertUnwindSafe(|| run_case(t, &c, store)));
            let _ = tx.send(r);
        })
        .unwrap();
    let mut problems = Vec::new();
    let outcome = match rx.recv_timeout(TIMEOUT) {
        Ok(Ok(o)) => Some(o),
        Ok(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            problems.push(format!("PANIC: {msg}"));
            None
        }
        Err(_) => {
            problems.push(format!("HANG: no result after {TIMEOUT:?}"));
            None
        }
    };
    problems.extend(disk.damage());
    let refused = disk.store.refused.lock().unwrap().clone();
    if !refused.is_empty() {
        problems.push(format!(
            "thin sent {} request(s) outside the LV to the device (the window refused them), first: {}",
            refused.len(),
            refused[0]
        ));
    }
    if problems.is_empty() {
        Ok(outcome.unwrap())
    } else {
        let mut s = format!(
            "input: template with {}-bit refcounts, {case:?}\n",
            1u32 << t.order
        );
        for p in problems {
            let _ = writeln!(s, "  {p}");
        }
        Err(s)
    }
}

// ---------------------------------------------------------------------------
// The tests.

/// The undamaged templates work: no errors, reads return exactly what was
/// written (stale bytes past the image's end never show), and thin's writes
/// read back, before and after reopening.
#[test]
fn unmutated_volumes_work_in_the_harness() {
    for (i, t) in templates().iter().enumerate() {
        let disk = damaged_disk(t, &[]);
        let store: Arc<dyn LvStore> = disk.store.clone();
        let ext: Arc<dyn thin::Extender> = Arc::new(Grow(disk.store.clone()));
        let mut want = t.content.clone();
        {
            let v =
                Volume::open(&*store, "top", &OpenOptions::default().with_extender(ext)).unwrap();
            let mut got = vec![0u8; VSIZE as usize];
            v.read(&mut got, 0).unwrap();
            assert!(got == want, "template {i}: content differs");
            // Enough new data to need the growth room.
            for k in 0..20u64 {
                let off = (k * 104_729) % (VSIZE - 70_000);
                let data = noise(k + 5000, 65_000);
                v.write(&data, off).unwrap();
                want[off as usize..off as usize + 65_000].copy_from_slice(&data);
            }
            v.flush().unwrap();
        }
        assert!(disk.store.extended.load(Ordering::SeqCst), "template {i}");
        let v = Volume::open(&*store, "top", &OpenOptions::read_only()).unwrap();
        let mut got = vec![0u8; VSIZE as usize];
        v.read(&mut got, 0).unwrap();
        assert!(got == want, "template {i}: content after writes differs");
        drop(v);
        assert_eq!(disk.damage(), Vec::<String>::new());
        assert!(disk.store.refused.lock().unwrap().is_empty());
        let o = check_case(&Case {
            template: i,
            muts: vec![],
            writes: vec![],
            grow: true,
        })
        .unwrap();
        assert!(o.log.is_empty(), "template {i}: {:#?}", o.log);
    }
}

fn vat(b: Anchor, d: u64) -> Val {
    Val::At(b, d)
}

/// The inputs the design names, one by one, on every refcount width.
fn listed_cases() -> Vec<(String, Vec<Mut>)> {
    use Anchor::*;
    use Field::*;
    use Which::*;
    let mut v: Vec<(String, Vec<Mut>)> = Vec::new();
    let mut add = |name: &str, muts: Vec<Mut>| v.push((name.to_string(), muts));
    for (name, val) in [
        ("2^31", 1u64 << 31),
        ("u32::MAX", u64::from(u32::MAX)),
        ("0", 0),
        ("4M entries (32 MiB)", 4 << 20),
    ] {
        add(
            &format!("l1_size {name}"),
            vec![Mut::Header(Top, L1Size, Val::Raw(val))],
        );
    }
    for (f, fname) in [
        (L1Offset, "l1_table_offset"),
        (RefTableOffset, "refcount_table_offset"),
    ] {
        for (what, val) in [
            ("past the end", vat(LvEnd, 0)),
            ("far past the end", vat(LvEnd, 1 << 40)),
            ("in the last cluster", vat(LvLast, 0)),
            ("unaligned", vat(L1, 8)),
            ("unaligned by 512", vat(RefTable, 512)),
            ("at the header", vat(Zero, 0)),
            ("at the refblock", vat(RefBlock, 0)),
            ("at data", vat(Data(0), 0)),
            ("2^63", Val::Raw(1 << 63)),
            ("u64::MAX", Val::Raw(u64::MAX)),
        ] {
            add(&format!("{fname} {what}"), vec![Mut::Header(Top, f, val)]);
            add(
                &format!("base {fname} {what}"),
                vec![Mut::Header(Base, f, val)],
            );
        }
    }
    for n in [0u64, 2, 3, 1 << 20, u64::from(u32::MAX)] {
        add(
            &format!("refcount_table_clusters {n}"),
            vec![Mut::Header(Top, RefTableClusters, Val::Raw(n))],
        );
    }
    for b in [0u64, 8, 10, 12, 16, 22, 31, 32, 63, 64, u64::from(u32::MAX)] {
        add(
            &format!("cluster_bits {b}"),
            vec![Mut::Header(Top, ClusterBits, Val::Raw(b))],
        );
    }
    for s in [0u64, 511, 4 * MIB + 1, 64 * MIB, 1 << 40, 1 << 62, u64::MAX] {
        add(
            &format!("size {s}"),
            vec![Mut::Header(Top, Size, Val::Raw(s))],
        );
        add(
            &format!("base size {s}"),
            vec![Mut::Header(Base, Size, Val::Raw(s))],
        );
    }
    add(
        "size 64 MiB with an L1 table for it",
        vec![
            Mut::Header(Top, Size, Val::Raw(64 * MIB)),
            Mut::Header(Top, L1Size, Val::Raw(32)),
        ],
    );
    for o in [5u64, 6, 7, 8, 31, 32, 64, u64::from(u32::MAX)] {
        add(
            &format!("refcount_order {o}"),
            vec![Mut::Header(Top, RefcountOrder, Val::Raw(o))],
        );
    }
    for hl in [
        0u64,
        72,
        103,
        105,
        112,
        CS - 8,
        CS,
        CS + 8,
        u64::from(u32::MAX),
    ] {
        add(
            &format!("header_length {hl}"),
            vec![Mut::Header(Top, HeaderLength, Val::Raw(hl))],
        );
    }
    for ver in [0u64, 1, 2, 4] {
        add(
            &format!("version {ver}"),
            vec![Mut::Header(Top, Version, Val::Raw(ver))],
        );
    }
    for bit in 0..64 {
        add(
            &format!("incompatible bit {bit}"),
            vec![Mut::Header(Top, Incompatible, Val::Raw(1 << bit))],
        );
    }
    add(
        "compatible bits all",
        vec![Mut::Header(Top, Compatible, Val::Raw(u64::MAX))],
    );
    add(
        "autoclear bits all",
        vec![Mut::Header(Top, Autoclear, Val::Raw(u64::MAX))],
    );
    add(
        "crypt_method 1",
        vec![Mut::Header(Top, CryptMethod, Val::Raw(1))],
    );
    add(
        "crypt_method 2",
        vec![Mut::Header(Top, CryptMethod, Val::Raw(2))],
    );
    add(
        "one internal snapshot past the end",
        vec![
            Mut::Header(Top, NbSnapshots, Val::Raw(1)),
            Mut::Header(Top, SnapshotsOffset, vat(LvEnd, 0)),
        ],
    );
    add(
        "nb_snapshots u32::MAX",
        vec![Mut::Header(Top, NbSnapshots, Val::Raw(u64::from(u32::MAX)))],
    );
    // Backing names.
    for (what, name) in [
        ("itself", b"top".to_vec()),
        ("with a slash", b"vg/base".to_vec()),
        ("absolute", b"/dev/vg/base".to_vec()),
        ("parent dir", b"../base".to_vec()),
        ("..", b"..".to_vec()),
        (".", b".".to_vec()),
        ("missing LV", b"nosuch".to_vec()),
        ("NUL inside", b"ba\0se".to_vec()),
        ("not UTF-8", vec![0xff, 0xfe, b'b']),
        ("1023 bytes", vec![b'a'; 1023]),
        ("1024 bytes", vec![b'a'; 1024]),
        ("past the cluster", vec![b'a'; 4000]),
    ] {
        add(
            &format!("backing name {what}"),
            vec![Mut::BackingName(Top, name)],
        );
    }
    add(
        "loop top -> base -> top",
        vec![Mut::BackingName(Base, b"top".to_vec())],
    );
    add(
        "base names itself",
        vec![Mut::BackingName(Base, b"base".to_vec())],
    );
    add(
        "backing name length 0",
        vec![Mut::Header(Top, BackingLen, Val::Raw(0))],
    );
    add(
        "backing name length u32::MAX",
        vec![Mut::Header(Top, BackingLen, Val::Raw(u64::from(u32::MAX)))],
    );
    add(
        "backing name offset in the last bytes of the cluster",
        vec![Mut::Header(Top, BackingOffset, Val::Raw(CS - 2))],
    );
    add(
        "backing name offset past the cluster",
        vec![Mut::Header(Top, BackingOffset, Val::Raw(CS + 8))],
    );
    add(
        "backing name offset u64::MAX",
        vec![Mut::Header(Top, BackingOffset, Val::Raw(u64::MAX))],
    );
    add(
        "backing name offset 0 with a length",
        vec![Mut::Header(Top, BackingOffset, Val::Raw(0))],
    );
    for f in [&b"raw"[..], b"vmdk", b"", b"qcow2\0", b"\xff\xff"] {
        add(
            &format!("backing format {:?}", String::from_utf8_lossy(f)),
            vec![Mut::BackingFormat(Top, f.to_vec())],
        );
    }
    for len in [CS as u32 - 100, CS as u32, 1 << 31, u32::MAX] {
        add(
            &format!("extension length {len}"),
            vec![Mut::ExtensionLen(Top, len)],
        );
        add(
            &format!("base extension length {len}"),
            vec![Mut::ExtensionLen(Base, len)],
        );
    }
    // L1 and L2 entries.
    let copied = 1u64 << 63;
    for (what, val) in [
        ("past the end", vat(LvEnd, 0)),
        ("far past the end", vat(LvEnd, 1 << 40)),
        ("last cluster", vat(LvLast, 0)),
        ("unaligned", vat(L2(0), 512)),
        ("unaligned by 8", vat(L2(0), 8)),
        ("unaligned, inside the header cluster", vat(Zero, 512)),
        ("at the L1 table", vat(L1, 0)),
        ("at the refcount table", vat(RefTable, 0)),
        ("at the refblock", vat(RefBlock, 0)),
        ("at a data cluster", vat(Data(3), 0)),
        ("reserved bits", Val::Raw((1 << 56) | (1 << 1))),
        ("all ones", Val::Raw(u64::MAX)),
    ] {
        for flags in [0, copied] {
            for i in [0u16, 1] {
                add(
                    &format!("L1[{i}] {what} flags {flags:#x}"),
                    vec![Mut::L1(Top, i, val, flags)],
                );
            }
            add(
                &format!("base L1[0] {what} flags {flags:#x}"),
                vec![Mut::L1(Base, 0, val, flags)],
            );
            for i in [0u16, 3, 511] {
                add(
                    &format!("L2[{i}] {what} flags {flags:#x}"),
                    vec![Mut::L2(Top, 0, i, val, flags)],
                );
            }
            add(
                &format!("base L2 {what} flags {flags:#x}"),
                vec![Mut::L2(Base, 0, 5, val, flags)],
            );
        }
        add(
            &format!("L2 zero flag with offset {what}"),
            vec![Mut::L2(Top, 0, 2, val, copied | 1)],
        );
        add(
            &format!("refcount table entry {what}"),
            vec![Mut::RefTable(Top, 0, val)],
        );
        add(
            &format!("refcount table entry 1 {what}"),
            vec![Mut::RefTable(Top, 1, val)],
        );
    }
    for (what, desc) in [
        ("past the end", 1u64 << 40),
        ("huge length", (1u64 << 62) - 1),
        ("at the header", 0),
        ("unaligned in the last cluster", 0x3fff),
        ("random", 0x1234_5678_9abc_def1),
    ] {
        add(
            &format!("compressed L2 entry {what}"),
            vec![Mut::L2Compressed(Top, 0, 0, desc)],
        );
        add(
            &format!("base compressed L2 entry {what}"),
            vec![Mut::L2Compressed(Base, 0, 0, desc)],
        );
    }
    add(
        "two L2 entries share a cluster",
        vec![Mut::L2Shared(Top, 0, 0, 1)],
    );
    add(
        "two L1 entries share an L2 table",
        vec![Mut::L1Shared(Top, 0, 1)],
    );
    // Refcounts.
    for (what, at) in [
        ("header", vat(Zero, 0)),
        ("refcount table", vat(RefTable, 0)),
        ("L1 table", vat(L1, 0)),
        ("refblock", vat(RefBlock, 0)),
        ("an L2 table", vat(L2(0), 0)),
        ("a data cluster", vat(Data(0), 0)),
        ("the first free cluster", vat(LvLast, 0)),
    ] {
        for (cw, count) in [("0", 0u64), ("max", u64::MAX), ("2", 2)] {
            add(
                &format!("refcount of {what} := {cw}"),
                vec![Mut::Refcount(Top, at, count)],
            );
        }
    }
    add(
        "every refcount 0 (everything looks free)",
        vec![Mut::AllRefcounts(Top, 0)],
    );
    add(
        "every refcount at the maximum (nothing free)",
        vec![Mut::AllRefcounts(Top, u64::MAX)],
    );
    add(
        "allocated refcounts at the maximum",
        vec![Mut::AllocatedAtMax(Top)],
    );
    add(
        "allocated refcounts at the maximum, COPIED cleared (every write copies)",
        vec![Mut::AllocatedAtMax(Top), Mut::ClearCopied(Top)],
    );
    add(
        "COPIED cleared with refcount 1",
        vec![Mut::ClearCopied(Top)],
    );
    add(
        "shared cluster, refcount 1, COPIED cleared (freed twice)",
        vec![Mut::L2Shared(Top, 0, 0, 1), Mut::ClearCopied(Top)],
    );
    add(
        "shared cluster at the maximum refcount",
        vec![Mut::L2Shared(Top, 0, 0, 1), Mut::AllocatedAtMax(Top)],
    );
    add("base refcounts all 0", vec![Mut::AllRefcounts(Base, 0)]);
    v
}

/// Every listed input on every template: no panic, no hang, nothing
/// touched outside the LVs.
#[test]
fn listed_hostile_inputs() {
    let t0 = Instant::now();
    templates();
    let build = t0.elapsed();
    let mut findings = Vec::new();
    let (mut n, mut errors) = (0, 0);
    for (k, (name, muts)) in listed_cases().into_iter().enumerate() {
        // Refcount and copy-on-write damage on every width, the rest on one.
        let every = ["refcount", "COPIED", "share"]
            .iter()
            .any(|w| name.contains(w));
        let on: Vec<usize> = if every {
            (0..ORDERS.len()).collect()
        } else {
            vec![k % ORDERS.len()]
        };
        for template in on {
            n += 1;
            let case = Case {
                template,
                muts: muts.clone(),
                writes: vec![(MIB / 2 + 7, 70_000)],
                grow: n % 3 == 0,
            };
            match check_case(&case) {
                Ok(o) => errors += usize::from(!o.log.is_empty()),
                Err(e) => findings.push(format!("[{name}] {e}")),
            }
        }
    }
    eprintln!(
        "{n} listed cases ({errors} ended in errors) in {:?} (templates {build:?})",
        t0.elapsed()
    );
    assert!(
        findings.is_empty(),
        "{} finding(s):\n{}",
        findings.len(),
        findings.join("\n")
    );
}

// Random damage.

fn which() -> impl Strategy<Value = Which> {
    prop_oneof![3 => Just(Which::Top), 1 => Just(Which::Base)]
}

fn anchor() -> impl Strategy<Value = Anchor> {
    prop_oneof![
        Just(Anchor::Zero),
        Just(Anchor::L1),
        Just(Anchor::RefTable),
        Just(Anchor::RefBlock),
        any::<u8>().prop_map(Anchor::L2),
        any::<u8>().prop_map(Anchor::Data),
        Just(Anchor::LvEnd),
        Just(Anchor::LvLast),
    ]
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        4 => (anchor(), prop_oneof![Just(0u64), Just(8), Just(512), Just(CS), Just(3 * CS), 0u64..70_000])
            .prop_map(|(b, d)| Val::At(b, d)),
        2 => (0u64..80).prop_map(Val::Raw),
        1 => (0u32..64).prop_map(|s| Val::Raw(1 << s)),
        1 => any::<u64>().prop_map(Val::Raw),
        1 => Just(Val::Raw(u64::MAX)),
    ]
}

fn field() -> impl Strategy<Value = Field> {
    use Field::*;
    prop_oneof![
        Just(Version),
        Just(BackingOffset),
        Just(BackingLen),
        Just(ClusterBits),
        Just(Size),
        Just(CryptMethod),
        Just(L1Size),
        Just(L1Offset),
        Just(RefTableOffset),
        Just(RefTableClusters),
        Just(NbSnapshots),
        Just(SnapshotsOffset),
        Just(Incompatible),
        Just(Compatible),
        Just(Autoclear),
        Just(RefcountOrder),
        Just(HeaderLength),
    ]
}

fn flags() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1 << 63),
        Just((1 << 63) | 1),
        Just(1),
        any::<u64>()
    ]
}

fn mutation() -> impl Strategy<Value = Mut> {
    prop_oneof![
        4 => (which(), field(), val()).prop_map(|(w, f, v)| Mut::Header(w, f, v)),
        1 => (which(), prop_oneof![
                Just(b"top".to_vec()),
                Just(b"base".to_vec()),
                Just(b"../base".to_vec()),
                Just(b"a/b".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
            ]).prop_map(|(w, n)| Mut::BackingName(w, n)),
        1 => (which(), proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(w, t)| Mut::BackingFormat(w, t)),
        1 => (which(), any::<u32>()).prop_map(|(w, n)| Mut::ExtensionLen(w, n)),
        3 => (which(), 0u16..4, val(), flags()).prop_map(|(w, i, v, f)| Mut::L1(w, i, v, f)),
        4 => (which(), any::<u8>(), any::<u16>(), val(), flags())
            .prop_map(|(w, t, i, v, f)| Mut::L2(w, t, i, v, f)),
        2 => (which(), any::<u8>(), any::<u16>(), any::<u64>())
            .prop_map(|(w, t, i, d)| Mut::L2Compressed(w, t, i, d)),
        1 => (which(), any::<u8>(), any::<u16>(), any::<u16>())
            .prop_map(|(w, t, i, j)| Mut::L2Shared(w, t, i, j)),
        1 => (which(), 0u16..4, 0u16..4).prop_map(|(w, i, j)| Mut::L1Shared(w, i, j)),
        2 => (which(), 0u16..4, val()).prop_map(|(w, i, v)| Mut::RefTable(w, i, v)),
        3 => (which(), val(), prop_oneof![Just(0u64), Just(1), Just(2), Just(u64::MAX), any::<u64>()])
            .prop_map(|(w, v, c)| Mut::Refcount(w, v, c)),
        1 => (which(), prop_oneof![Just(0u64), Just(u64::MAX)]).prop_map(|(w, c)| Mut::AllRefcounts(w, c)),
        1 => which().prop_map(Mut::AllocatedAtMax),
        1 => which().prop_map(Mut::ClearCopied),
        4 => (which(), proptest::collection::vec((0u32..(6 * CS as u32), 1u8..=255), 1..24))
            .prop_map(|(w, f)| Mut::Flips(w, f)),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..ORDERS.len(),
        proptest::collection::vec(mutation(), 1..=3),
        proptest::collection::vec((0..VSIZE, 1u32..100_000), 0..3),
        any::<bool>(),
    )
        .prop_map(|(template, muts, writes, grow)| Case {
            template,
            muts,
            writes,
            grow,
        })
}

static RANDOM_FINDINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// (cases, opened read-write, ran without any error)
static RANDOM_STATS: Mutex<(usize, usize, usize)> = Mutex::new((0, 0, 0));

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random combinations of damage; findings are collected (no shrinking,
    /// which would repeat hangs) and reported together below.
    fn random_damage_cases(c in case()) {
        let mut stats = RANDOM_STATS.lock().unwrap();
        stats.0 += 1;
        drop(stats);
        match check_case(&c) {
            Ok(o) => {
                let opened = !o.log.iter().any(|l| l.starts_with("open read-write"));
                let mut stats = RANDOM_STATS.lock().unwrap();
                stats.1 += usize::from(opened);
                stats.2 += usize::from(opened && o.log.is_empty());
            }
            Err(e) => RANDOM_FINDINGS.lock().unwrap().push(e),
        }
    }
}

#[test]
fn random_damage() {
    let t0 = Instant::now();
    random_damage_cases();
    let found = RANDOM_FINDINGS.lock().unwrap().clone();
    let (n, opened, clean) = *RANDOM_STATS.lock().unwrap();
    eprintln!(
        "random damage: {n} cases, {opened} opened read-write, {clean} without any error, in {:?}",
        t0.elapsed()
    );
    assert!(
        found.is_empty(),
        "{} finding(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Findings: damage that passes every check above (no panic, nothing outside
// the LV) but that thin should still refuse.

/// Opens the damaged top read-write, writes `writes` (mirrored into the
/// expected content), flushes, reopens read-only and compares. Returns what
/// went wrong, or `None` when thin refused the image at open (also fine).
fn write_and_verify(t: &Template, muts: &[Mut], writes: &[(u64, usize)]) -> Option<String> {
    let disk = damaged_disk(t, muts);
    let store: Arc<dyn LvStore> = disk.store.clone();
    let ext: Arc<dyn thin::Extender> = Arc::new(Grow(disk.store.clone()));
    let mut want = t.content.clone();
    {
        let v = match Volume::open(&*store, "top", &OpenOptions::default().with_extender(ext)) {
            Ok(v) => v,
            Err(_) => return None,
        };
        for (k, &(off, len)) in writes.iter().enumerate() {
            let data = noise(k as u64 + 900, len);
            if let Err(e) = v.write(&data, off) {
                return Some(format!("write {len} at {off}: {e}"));
            }
            want[off as usize..off as usize + len].copy_from_slice(&data);
        }
        if let Err(e) = v.flush() {
            return Some(format!("flush: {e}"));
        }
    }
    let v = match Volume::open(&*store, "top", &OpenOptions::read_only()) {
        Ok(v) => v,
        Err(e) => {
            return Some(format!(
                "thin's own writes destroyed the image: reopen: {e}"
            ))
        }
    };
    let mut got = vec![0u8; VSIZE as usize];
    if let Err(e) = v.read(&mut got, 0) {
        return Some(format!("thin's own writes destroyed the image: read: {e}"));
    }
    if got != want {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        return Some(format!("reads back other data from byte {i} on"));
    }
    None
}

/// FINDING (fails today). The external-data-file bit (incompatible bit 2)
/// passes `Header::decode` (it is in `INCOMPAT_KNOWN`); imago then keeps
/// guest data in the "data file", which thin never sets, so it uses the LV
/// itself at the guest offset, unrefcounted: the first write at guest
/// offset 0 overwrites the qcow2 header and the image is gone. Reads show
/// the image's own metadata as guest data. Expected: refused at open.
#[test]
fn external_data_file_bit_is_refused() {
    let mut found = Vec::new();
    for (i, t) in templates().iter().enumerate() {
        let muts = [Mut::Header(
            Which::Top,
            Field::Incompatible,
            Val::Raw(thin::format::INCOMPAT_DATA_FILE),
        )];
        let disk = damaged_disk(t, &muts);
        let store: Arc<dyn LvStore> = disk.store.clone();
        match Volume::open(&*store, "top", &OpenOptions::read_only()) {
            Err(e) if matches!(e.root(), thin::Error::Unsupported(_)) => {}
            Err(e) => found.push(format!(
                "template {i}: refused, but not as unsupported: {e}"
            )),
            Ok(_) => found.push(format!("template {i}: opened read-only")),
        }
        if let Some(p) = write_and_verify(t, &muts, &[(0, 65536)]) {
            found.push(format!("template {i}: {p}"));
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// FINDING (fails today). A metadata cluster whose refcount says "free"
/// (one bad refcount, as a torn refblock write leaves it) is handed out by
/// the allocator for guest data: the next write lands on the header, the
/// refcount table or the L1 table. QEMU refuses such writes (its metadata
/// overlap checks) and marks the image corrupt; thin opens the image and
/// destroys it. Expected: refused at open (or the data written reads back).
#[test]
fn metadata_marked_free_is_not_overwritten() {
    let mut found = Vec::new();
    for (i, t) in templates().iter().enumerate() {
        for (what, at) in [
            ("header", Val::At(Anchor::Zero, 0)),
            ("refcount table", Val::At(Anchor::RefTable, 0)),
            ("L1 table", Val::At(Anchor::L1, 0)),
            ("refblock", Val::At(Anchor::RefBlock, 0)),
        ] {
            let muts = [Mut::Refcount(Which::Top, at, 0)];
            let writes = [(MIB + 4096, 4096), (3 * MIB + 8192, 4096)];
            if let Some(p) = write_and_verify(t, &muts, &writes) {
                found.push(format!("template {i}, {what} marked free: {p}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

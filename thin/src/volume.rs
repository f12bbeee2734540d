//! A thin volume: a chain of qcow2 layers in LVs, its top writable and
//! growing. One `Volume` is shared by all I/O queues of its user (`&self`
//! everywhere, `Send + Sync`).

use crate::engine::{Engine, Extent, ImagoEngine};
use crate::format::{self, Backing, Header};
use crate::growth::{Extender, Grower, GrowthPolicy, GrowthStats, LvMap, DEFAULT_INITIAL_SIZE};
use crate::layer;
use crate::storage::{Backend, LayerStorage};
use crate::store::LvStore;
use crate::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Chains deeper than this are refused unless configured otherwise: every
/// read of an unallocated cluster walks the chain.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// What a new volume (or layer) looks like.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Virtual size in bytes; `None` takes the backing layer's.
    pub size: Option<u64>,
    pub cluster_size: u64,
    pub initial_lv_size: u64,
    /// Backing layer, by LV name.
    pub backing: Option<String>,
    pub tags: Vec<String>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            size: None,
            cluster_size: format::DEFAULT_CLUSTER_SIZE,
            initial_lv_size: DEFAULT_INITIAL_SIZE,
            backing: None,
            tags: Vec::new(),
        }
    }
}

/// How a volume is opened.
#[derive(Clone)]
pub struct OpenOptions {
    pub writable: bool,
    pub policy: GrowthPolicy,
    /// Grows the top LV; without one, writes past its end fail with ENOSPC.
    pub extender: Option<Arc<dyn Extender>>,
    pub max_depth: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: true,
            policy: GrowthPolicy::default(),
            extender: None,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl OpenOptions {
    pub fn read_only() -> Self {
        OpenOptions {
            writable: false,
            ..Default::default()
        }
    }
    pub fn with_extender(mut self, extender: Arc<dyn Extender>) -> Self {
        self.extender = Some(extender);
        self
    }
}

/// Creates a volume (or a layer over `opts.backing`) in a new LV `name`.
/// On failure the new LV is removed again.
pub fn create(store: &dyn LvStore, name: &str, opts: &CreateOptions) -> Result<Header> {
    let backing = match &opts.backing {
        Some(b) => {
            check_layer_name(b)?;
            let h = layer::read_header(&*store.open(b)?)
                .map_err(|e| e.context(&format!("backing layer {b}")))?;
            Some((b.clone(), h.size))
        }
        None => None,
    };
    let size = match (opts.size, &backing) {
        (Some(s), _) => s,
        (None, Some((_, s))) => *s,
        (None, None) => {
            return Err(Error::InvalidArgument(
                "a volume without a backing layer needs a size".into(),
            ))
        }
    };
    if size == 0 || size % 512 != 0 {
        return Err(Error::InvalidArgument(format!(
            "virtual size {size}: must be a non-zero multiple of 512 bytes"
        )));
    }
    let layout = format::EmptyLayout::new(size, opts.cluster_size)?;
    let lv_size = opts.initial_lv_size.max(layout.end());
    let dev = store.create(name, lv_size, &opts.tags)?;
    let backing = backing.map(|(name, _)| Backing {
        name,
        format: Some("qcow2".into()),
    });
    match layer::format_empty(&*dev, size, opts.cluster_size, backing) {
        Ok(h) => Ok(h),
        Err(e) => {
            if let Err(e2) = store.remove(name) {
                log::warn!("LV {name} left behind after a failed create: {e2}");
            }
            Err(e)
        }
    }
}

/// LV names only: a layer never points outside its pool.
pub(crate) fn check_layer_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Corrupt(format!(
            "backing name {name:?} is not an LV name (ssv chains name layers of the same VG)"
        )));
    }
    Ok(())
}

/// The layers from `top` down, with their headers: `[top, parent, …, base]`.
pub fn chain(store: &dyn LvStore, top: &str, max_depth: usize) -> Result<Vec<(String, Header)>> {
    let mut out: Vec<(String, Header)> = Vec::new();
    let mut name = top.to_string();
    loop {
        if out.iter().any(|(n, _)| *n == name) {
            return Err(Error::Corrupt(format!(
                "backing chain of {top} loops back to {name}"
            )));
        }
        if out.len() >= max_depth {
            return Err(Error::ChainTooDeep {
                top: top.to_string(),
                limit: max_depth,
            });
        }
        let dev = store.open(&name)?;
        let h = layer::read_header(&*dev).map_err(|e| e.context(&format!("layer {name}")))?;
        let next = match &h.backing {
            None => None,
            Some(b) => {
                check_layer_name(&b.name)?;
                match b.format.as_deref() {
                    None | Some("qcow2") => Some(b.name.clone()),
                    Some(f) => {
                        return Err(Error::Unsupported(format!(
                            "layer {name} has a {f} backing layer; ssv chains are qcow2 throughout"
                        )))
                    }
                }
            }
        };
        out.push((name, h));
        match next {
            Some(n) => name = n,
            None => return Ok(out),
        }
    }
}

pub struct Volume {
    engine: ImagoEngine,
    top: Arc<Backend>,
    grower: Option<Arc<Grower>>,
    layers: Vec<String>,
    cluster_size: u64,
}

impl Volume {
    /// Opens the chain under `top`; only `top` is ever written.
    pub fn open(store: &dyn LvStore, top: &str, opts: &OpenOptions) -> Result<Volume> {
        let layers = chain(store, top, opts.max_depth)?;
        let mut below: Option<Arc<imago::FormatAccess<LayerStorage>>> = None;
        for (i, (name, h)) in layers.iter().enumerate().rev() {
            let is_top = i == 0;
            let dev = store.open(name)?;
            if is_top && opts.writable {
                layer::repair_uncounted_l1(&*dev, h)
                    .and_then(|_| layer::check_metadata_refcounts(&*dev, h))
                    .and_then(|()| {
                        // Past the backing layer's end, the chain below holds nothing.
                        let zero_from = layers.get(1).map_or(0, |(_, b)| b.size);
                        layer::repair_unreferenced_l2(&*dev, h, zero_from)
                    })
                    .map_err(|e| e.context(&format!("layer {name}")))?;
            }
            let end = if is_top {
                layer::allocated_end(&*dev, h).map_err(|e| e.context(&format!("layer {name}")))?
            } else {
                0
            };
            let map = Arc::new(LvMap::new(dev));
            let grower = match (&opts.extender, is_top && opts.writable) {
                (Some(x), true) => {
                    // By default: a fully allocated image on top of what is
                    // allocated now, since clusters in use (compressed ones,
                    // say) stay allocated while their data is copied anew.
                    let cap = opts.policy.cap.unwrap_or_else(|| default_cap(h) + end);
                    Some(Arc::new(Grower::new(
                        name,
                        opts.policy.clone(),
                        cap,
                        x.clone(),
                    )))
                }
                _ => None,
            };
            let backend = Backend::new(name, map, grower.clone(), end, h.cluster_size());
            let engine = ImagoEngine::open(
                name,
                LayerStorage(backend.clone()),
                is_top && opts.writable,
                below.take(),
            )?;
            if is_top {
                return Ok(Volume {
                    engine,
                    top: backend,
                    grower,
                    layers: layers.iter().map(|(n, _)| n.clone()).collect(),
                    cluster_size: h.cluster_size(),
                });
            }
            below = Some(engine.into_access());
        }
        Err(Error::InvalidArgument(format!(
            "volume {top} has no layers"
        )))
    }

    /// Layer names, top first.
    pub fn layers(&self) -> &[String] {
        &self.layers
    }
    pub fn virtual_size(&self) -> u64 {
        self.engine.virtual_size()
    }
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }
    /// Size of the top LV as currently mapped.
    pub fn lv_size(&self) -> u64 {
        self.top.map.size()
    }
    /// Highest allocated host offset of the top layer.
    pub fn allocated_end(&self) -> u64 {
        self.top.end.load(Ordering::Acquire)
    }
    pub fn growth(&self) -> GrowthStats {
        self.grower.as_ref().map(|g| g.stats()).unwrap_or_default()
    }

    pub fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.engine.read(buf, offset)
    }
    pub fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.engine.write(buf, offset)
    }
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.engine.write_zeroes(offset, len)
    }
    /// Frees the range's whole clusters; it reads as zeroes afterwards. The
    /// allocated end is recomputed, since the last cluster may be gone.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.engine.discard(offset, len)?;
        self.engine.flush()?;
        let dev = self.top.map.dev();
        let h = layer::read_header(&*dev)?;
        let end = layer::allocated_end(&*dev, &h)?;
        self.top.end.store(end, Ordering::Release);
        Ok(())
    }
    pub fn flush(&self) -> Result<()> {
        self.engine.flush()
    }
    /// Grows the virtual size; the growth cap follows.
    /// Grows the virtual size, with the L2 tables of the grown range made
    /// now, as at create: the engine would make each one on the first write
    /// there and write its L1 entry before the refcount that covers it.
    /// Made here and flushed, a crash can only leave empty tables referenced
    /// with refcount 0, which opening repairs (`repair_unreferenced_l2`).
    pub fn grow(&self, new_size: u64) -> Result<()> {
        let full = |size| size + format::metadata_overhead(size, self.cluster_size);
        let old = self.virtual_size();
        self.engine.grow(new_size)?;
        // Zeroing one cluster per new table makes the table (the range
        // reads as zeroes either way).
        let per_table = self.cluster_size * (self.cluster_size / 8);
        let mut at = old.div_ceil(per_table) * per_table;
        while at < new_size {
            let len = self.cluster_size.min(new_size - at) / 512 * 512;
            if len > 0 {
                self.engine.write_zeroes(at, len)?;
            }
            at += per_table;
        }
        self.engine.flush()?;
        if let Some(g) = &self.grower {
            g.raise_cap(g.cap() + full(new_size).saturating_sub(full(old)));
        }
        Ok(())
    }
    pub fn extent(&self, offset: u64, len: u64, deep: bool) -> Result<(Extent, u64)> {
        self.engine.extent(offset, len, deep)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Err(e) = self.engine.flush() {
            log::warn!("{}: flush on close failed: {e}", self.layers[0]);
        }
    }
}

fn default_cap(h: &Header) -> u64 {
    h.size + format::metadata_overhead(h.size, h.cluster_size())
}

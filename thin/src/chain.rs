//! Snapshots as chains of LVs. A snapshot freezes the volume's top layer and
//! puts a new empty layer over it; revert puts a new empty layer over an
//! older snapshot; deleting a snapshot merges it into the layer above it.
//! All of these work on a volume nobody is writing (the VMM quiesces its own
//! volume for an online snapshot).

use crate::engine::Extent;
use crate::format::Backing;
use crate::growth::Extender;
use crate::layer;
use crate::store::LvStore;
use crate::volume::{self, CreateOptions, OpenOptions, Volume};
use crate::{Error, Result};
use std::sync::Arc;

/// Bytes copied per request while merging.
const MERGE_CHUNK: u64 = 4 << 20;

/// How new layers are made.
#[derive(Clone, Debug)]
pub struct LayerOptions {
    pub initial_lv_size: u64,
    pub max_depth: usize,
    pub tags: Vec<String>,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            initial_lv_size: crate::growth::DEFAULT_INITIAL_SIZE,
            max_depth: volume::DEFAULT_MAX_DEPTH,
            tags: Vec::new(),
        }
    }
}

fn new_layer(store: &dyn LvStore, name: &str, over: &str, opts: &LayerOptions) -> Result<()> {
    let chain = volume::chain(store, over, opts.max_depth)?;
    if chain.len() + 1 > opts.max_depth {
        return Err(Error::ChainTooDeep {
            top: over.to_string(),
            limit: opts.max_depth,
        });
    }
    let h = &chain[0].1;
    volume::create(
        store,
        name,
        &CreateOptions {
            size: Some(h.size),
            cluster_size: h.cluster_size(),
            initial_lv_size: opts.initial_lv_size,
            backing: Some(over.to_string()),
            tags: opts.tags.clone(),
        },
    )?;
    Ok(())
}

/// Freezes `top` (now a read-only snapshot) under a new empty top `new_top`.
pub fn snapshot(store: &dyn LvStore, top: &str, new_top: &str, opts: &LayerOptions) -> Result<()> {
    new_layer(store, new_top, top, opts)
}

/// Makes the volume read as `snapshot` again: a new empty top `new_top`
/// over it; the layers that were above it are removed (top first, after the
/// new top exists, so a crash leaves only orphans). Returns their names.
pub fn revert(
    store: &dyn LvStore,
    top: &str,
    snapshot: &str,
    new_top: &str,
    opts: &LayerOptions,
) -> Result<Vec<String>> {
    let chain = volume::chain(store, top, opts.max_depth)?;
    let idx = position(&chain, top, snapshot)?;
    let removed: Vec<String> = chain[..idx].iter().map(|(n, _)| n.clone()).collect();
    // Each removed layer may only be used by the one above it in this chain.
    for (i, name) in removed.iter().enumerate() {
        let above: Vec<&str> = removed[..i].iter().map(String::as_str).collect();
        refuse_if_used(store, name, &above)?;
    }
    new_layer(store, new_top, snapshot, opts)?;
    for name in &removed {
        store.remove(name)?;
    }
    Ok(removed)
}

/// LVs other than `except` whose image names `layer` as its backing.
/// The layers of the store, other than `layers` and `except`, whose backing
/// is one of `layers`: each user with the layer it is over. Reads every
/// LV's header once.
pub fn users_of(
    store: &dyn LvStore,
    layers: &[&str],
    except: &[&str],
) -> Result<Vec<(String, String)>> {
    let Some(all) = store.list()? else {
        return Ok(Vec::new());
    };
    let mut users = Vec::new();
    for name in all {
        if layers.contains(&name.as_str()) || except.contains(&name.as_str()) {
            continue;
        }
        // LVs that are not images (leases, foreign LVs) name no backing.
        let Ok(h) = layer::read_header(&*store.open(&name)?) else {
            continue;
        };
        if let Some(b) = h.backing.filter(|b| layers.contains(&b.name.as_str())) {
            users.push((name, b.name));
        }
    }
    Ok(users)
}

fn refuse_if_used(store: &dyn LvStore, layer: &str, except: &[&str]) -> Result<()> {
    let users: Vec<String> = users_of(store, &[layer], except)?
        .into_iter()
        .map(|(user, _)| user)
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "layer {layer} is also the base of {}; remove or flatten (full-clone) those first",
        users.join(", ")
    )))
}

fn position(chain: &[(String, crate::format::Header)], top: &str, layer: &str) -> Result<usize> {
    match chain.iter().position(|(n, _)| n == layer) {
        Some(0) => Err(Error::InvalidArgument(format!(
            "{layer} is the volume's top layer, not a snapshot of it"
        ))),
        Some(i) => Ok(i),
        None => Err(Error::NotFound(format!(
            "layer {layer} in the chain under {top}"
        ))),
    }
}

/// Deletes the snapshot layer `snapshot` of the chain under `top` by merging
/// it into the layer above it: clusters the upper layer does not have are
/// copied up, the upper layer is pointed at the snapshot's own backing (one
/// sector write), and the snapshot's LV is removed. Reads of the volume give
/// the same data at every step, so a crash at any point loses nothing.
/// A layer that other chains use as their base (linked clones) must not be
/// deleted; the caller knows those chains (ssvd keeps them in LV tags).
pub fn delete_snapshot(
    store: &dyn LvStore,
    top: &str,
    snapshot: &str,
    extender: Option<Arc<dyn Extender>>,
    max_depth: usize,
) -> Result<()> {
    let chain = volume::chain(store, top, max_depth)?;
    let idx = position(&chain, top, snapshot)?;
    let upper = chain[idx - 1].0.clone();
    refuse_if_used(store, snapshot, &[&upper])?;
    let below = chain.get(idx + 1).map(|(n, _)| Backing {
        name: n.clone(),
        format: Some("qcow2".into()),
    });
    {
        let oo = OpenOptions {
            max_depth,
            extender,
            ..OpenOptions::default()
        };
        let up = Volume::open(store, &upper, &oo)?;
        let snap = Volume::open(store, snapshot, &OpenOptions::read_only())?;
        let size = up.virtual_size().min(snap.virtual_size());
        // Page-aligned, so the engine hands it to O_DIRECT without a copy.
        let mut buf = san::AlignedBuf::new(MERGE_CHUNK as usize, 4096);
        let mut off = 0;
        while off < size {
            let (e, n) = up.extent(off, size - off, false)?;
            if n == 0 {
                break;
            }
            if e == Extent::Backing {
                copy_up(&up, &snap, off, n, below.is_some(), &mut buf)?;
            }
            off += n;
        }
        up.flush()?;
    }
    layer::set_backing(&*store.open(&upper)?, below)?;
    store.remove(snapshot)
}

/// Copies what `snap` itself holds in `[off, off + len)` into `up`.
fn copy_up(
    up: &Volume,
    snap: &Volume,
    mut off: u64,
    len: u64,
    snap_has_backing: bool,
    buf: &mut [u8],
) -> Result<()> {
    let end = off + len;
    while off < end {
        let (e, n) = snap.extent(off, end - off, false)?;
        if n == 0 {
            break;
        }
        match e {
            Extent::Data => {
                let mut at = off;
                while at < off + n {
                    let k = (off + n - at).min(buf.len() as u64) as usize;
                    snap.read(&mut buf[..k], at)?;
                    up.write(&buf[..k], at)?;
                    at += k as u64;
                }
            }
            // Explicit zeroes hide the snapshot's own backing; keep hiding it.
            Extent::Zero if snap_has_backing => up.write_zeroes(off, n)?,
            Extent::Zero | Extent::Backing => {}
        }
        off += n;
    }
    Ok(())
}

//! Clones. A full clone copies the data the whole chain holds (and nothing
//! it does not: unallocated and zero ranges stay unallocated) into a new,
//! independent image; a linked clone is a new layer over a read-only base.

use crate::engine::Extent;
use crate::format;
use crate::growth::Extender;
use crate::store::LvStore;
use crate::volume::{self, CreateOptions, OpenOptions, Volume};
use crate::Result;
use std::sync::Arc;

/// Bytes per copy request.
const COPY_CHUNK: usize = 2 << 20;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Allocated bytes of the source handled so far.
    pub done: u64,
    /// Allocated bytes of the source in all.
    pub total: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloneReport {
    /// Bytes written to the clone.
    pub copied: u64,
    /// Allocated source bytes that held only zeroes (left unallocated).
    pub zero: u64,
}

/// Allocated bytes of the volume seen through its whole chain.
pub fn allocated_bytes(src: &Volume) -> Result<u64> {
    let size = src.virtual_size();
    let (mut off, mut total) = (0, 0);
    while off < size {
        let (e, n) = src.extent(off, size - off, true)?;
        if n == 0 {
            break;
        }
        if e == Extent::Data {
            total += n;
        }
        off += n;
    }
    Ok(total)
}

/// Copies the volume under `src_top` into a new LV `dst` (same virtual and
/// cluster size, no backing). `opts.size` and `opts.backing` are ignored.
/// Nobody may write the source meanwhile. On failure `dst` is removed.
pub fn full_clone(
    store: &dyn LvStore,
    src_top: &str,
    dst: &str,
    opts: &CreateOptions,
    extender: Option<Arc<dyn Extender>>,
    progress: &mut dyn FnMut(Progress),
) -> Result<CloneReport> {
    let src = Volume::open(store, src_top, &OpenOptions::read_only())?;
    let total = allocated_bytes(&src)?;
    let (size, cs) = (src.virtual_size(), src.cluster_size());
    // Room for everything up front, so the copy does not wait for growth.
    let need = total + format::metadata_overhead(total.max(cs), cs) + 4 * cs;
    let create = CreateOptions {
        size: Some(size),
        cluster_size: cs,
        initial_lv_size: opts.initial_lv_size.max(need),
        backing: None,
        tags: opts.tags.clone(),
    };
    volume::create(store, dst, &create)?;
    let copied = (|| {
        let oo = OpenOptions {
            extender,
            ..OpenOptions::default()
        };
        let out = Volume::open(store, dst, &oo)?;
        let report = copy_allocated(&src, &out, total, progress)?;
        out.flush()?;
        Ok(report)
    })();
    if copied.is_err() {
        if let Err(e) = store.remove(dst) {
            log::warn!("LV {dst} left behind after a failed clone: {e}");
        }
    }
    copied
}

fn copy_allocated(
    src: &Volume,
    dst: &Volume,
    total: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<CloneReport> {
    let size = src.virtual_size();
    let mut report = CloneReport::default();
    // Page-aligned, so the engine hands it to O_DIRECT without a copy.
    let mut buf = san::AlignedBuf::new(COPY_CHUNK, 4096);
    let mut done = 0;
    let mut off = 0;
    progress(Progress { done, total });
    while off < size {
        let (e, n) = src.extent(off, size - off, true)?;
        if n == 0 {
            break;
        }
        if e == Extent::Data {
            let mut at = off;
            while at < off + n {
                let k = (off + n - at).min(COPY_CHUNK as u64) as usize;
                src.read(&mut buf[..k], at)?;
                if san::is_zero(&buf[..k]) {
                    report.zero += k as u64;
                } else {
                    dst.write(&buf[..k], at)?;
                    report.copied += k as u64;
                }
                at += k as u64;
                done += k as u64;
                progress(Progress { done, total });
            }
        }
        off += n;
    }
    Ok(report)
}

/// A new volume `dst` whose reads fall through to `base` until written.
/// `base` must stay read-only for as long as clones use it (a snapshot
/// layer or a template, never a volume's live top).
pub fn linked_clone(
    store: &dyn LvStore,
    base: &str,
    dst: &str,
    opts: &CreateOptions,
) -> Result<()> {
    let create = CreateOptions {
        backing: Some(base.to_string()),
        size: None,
        ..opts.clone()
    };
    volume::create(store, dst, &create)?;
    Ok(())
}

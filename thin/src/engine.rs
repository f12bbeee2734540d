//! The seam between ssv and a qcow2 engine. Everything above (volumes,
//! snapshots, clones) uses [`Engine`]; [`ImagoEngine`] implements it with
//! imago, whose copy-on-write we trust (`shared/specs/rust-crates.md` §1).

use crate::storage::LayerStorage;
use crate::{Error, Result};
use imago::format::PreallocateMode;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, ShallowMapping, StorageExt};
use std::io;
use std::sync::{Arc, RwLock};

/// Where a guest range of one layer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Data stored in the layer asked (or, resolved through the chain, in some layer).
    Data,
    /// Reads as zeroes.
    Zero,
    /// Falls through to the backing layer (shallow queries only).
    Backing,
}

/// A qcow2 image with its backing chain opened.
pub trait Engine: Send + Sync {
    fn virtual_size(&self) -> u64;
    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()>;
    fn write(&self, buf: &[u8], offset: u64) -> Result<()>;
    /// The range reads as zeroes afterwards; whole clusters become zero clusters.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()>;
    /// Frees whole clusters of the range; it reads as zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;
    /// Writes cached metadata and makes every completed write durable.
    fn flush(&self) -> Result<()>;
    /// Grows the virtual size (never shrinks: that would drop data).
    fn grow(&self, new_size: u64) -> Result<()>;
    /// What backs `offset`, and for how many bytes from there (at most
    /// `len`; 0 at the end of the disk). `deep` resolves through the chain,
    /// so it never answers [`Extent::Backing`].
    fn extent(&self, offset: u64, len: u64, deep: bool) -> Result<(Extent, u64)>;
}

type Access = FormatAccess<LayerStorage>;

pub(crate) struct ImagoEngine {
    /// Data I/O shares the lock; discard and resize take it exclusively
    /// (imago requires that nobody holds a mapping while clusters are freed).
    access: RwLock<Access>,
    has_backing: bool,
    cluster_size: u64,
    /// Allocating writes of whole clusters zero first too (see `write`).
    zero_first: bool,
    /// This layer's storage, told the size of allocating writes.
    storage: LayerStorage,
    name: String,
}

fn engine_err(name: &str, what: &str, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::StorageFull {
        Error::NoSpace(format!("{name}: {what}: {e}"))
    } else {
        Error::Io(format!("{name}: {what}: {e}"))
    }
}

impl ImagoEngine {
    /// Opens one layer over `storage`, with `backing` (already opened) under it.
    pub fn open(
        name: &str,
        storage: LayerStorage,
        writable: bool,
        backing: Option<Arc<Access>>,
    ) -> Result<ImagoEngine> {
        let cluster_size = storage.0.cluster_size;
        let zero_first = storage.0.map.dev().zeroes_cheaply();
        let mut q: Qcow2<LayerStorage, Arc<Access>> = Qcow2::open_image(storage.clone(), writable)
            .map_err(|e| Error::Corrupt(format!("{name}: {e}")))?;
        let has_backing = backing.is_some();
        q.set_backing(backing);
        Ok(ImagoEngine {
            access: RwLock::new(FormatAccess::new(q)),
            has_backing,
            cluster_size,
            zero_first,
            storage,
            name: name.to_string(),
        })
    }

    /// Gives up this layer to serve as the backing of the next one up.
    pub fn into_access(self) -> Arc<Access> {
        Arc::new(
            self.access
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn read_lock(&self) -> std::sync::RwLockReadGuard<'_, Access> {
        self.access
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Access> {
        self.access
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.virtual_size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "{}: {len} bytes at offset {offset} are past the disk's end ({size} bytes)",
                self.name
            ))),
        }
    }
}

impl Engine for ImagoEngine {
    fn virtual_size(&self) -> u64 {
        self.read_lock().size()
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.read_lock()
            .read(buf, offset)
            .map_err(|e| engine_err(&self.name, "read", e))
    }

    /// Clusters that read as zeroes are allocated zero-first: imago maps
    /// zeroed clusters (a short metadata step under its L2-table lock, the
    /// zeroing mostly done ahead by `LayerStorage`) and the data is written
    /// after the lock is released. imago's own write holds that lock across
    /// the data write, which runs every allocating write in one L2 table's
    /// range (512 MiB at 64 KiB clusters) one at a time; QEMU serialises
    /// only writes to the same cluster, and so do we. Until the data lands
    /// the range reads zeroes, as it did before, so a crash in between
    /// shows the old contents. Rewrites of mapped clusters go straight to
    /// the LV. Copy-on-write from a backing layer is imago's write, and so
    /// are whole clusters where zeroing moves zero buffers to the device
    /// (`zero_first` false): there the zeroing would double the data sent.
    fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        let a = self.read_lock();
        let err = |e| engine_err(&self.name, "write", e);
        let mut done = 0;
        while done < buf.len() {
            let (at, rest) = (offset + done as u64, &buf[done..]);
            let (m, n) = a.get_shallow_mapping(at, rest.len() as u64).map_err(err)?;
            if n == 0 {
                return Err(Error::Io(format!("{}: no mapping at {at}", self.name)));
            }
            let n = n.min(rest.len() as u64);
            let to_boundary = self.cluster_size - at % self.cluster_size;
            let partial = to_boundary < self.cluster_size || n < self.cluster_size;
            // Allocations go a cluster at a time where one is written in
            // part, else in whole clusters (the rest comes next round).
            let piece = if partial {
                n.min(to_boundary)
            } else {
                n - n % self.cluster_size
            } as usize;
            match m {
                // Mapped in place: straight to the LV, as imago's own fast
                // path would, without looking the mapping up a second time.
                ShallowMapping::Raw {
                    storage,
                    offset: host,
                    writable: true,
                    ..
                } => {
                    storage.write(&rest[..n as usize], host).map_err(err)?;
                    done += n as usize;
                }
                ShallowMapping::Zero { .. } if partial || self.zero_first => {
                    self.storage.allocating(piece as u64);
                    let mapping = a
                        .prepare_data_mapping(at, piece as u64, false)
                        .map_err(err)?;
                    let (storage, host) = (mapping.storage().clone(), mapping.offset());
                    let n = (mapping.length() as usize).min(piece);
                    a.commit_data_mapping(mapping).map_err(err)?;
                    storage.write(&rest[..n], host).map_err(err)?;
                    done += n;
                }
                _ => {
                    a.write(&rest[..piece], at).map_err(err)?;
                    done += piece;
                }
            }
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.read_lock()
            .write_zeroes(offset, len)
            .map_err(|e| engine_err(&self.name, "write zeroes", e))
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.write_lock()
            .discard_to_zero(offset, len)
            .map_err(|e| engine_err(&self.name, "discard", e))
    }

    fn flush(&self) -> Result<()> {
        let a = self.read_lock();
        a.flush().map_err(|e| engine_err(&self.name, "flush", e))?;
        a.sync().map_err(|e| engine_err(&self.name, "sync", e))
    }

    fn grow(&self, new_size: u64) -> Result<()> {
        let a = self.write_lock();
        if new_size < a.size() {
            return Err(Error::InvalidArgument(format!(
                "{}: shrinking from {} to {new_size} bytes would drop data; disks only grow",
                self.name,
                a.size()
            )));
        }
        // Zero mode keeps a shorter backing layer's tail from showing through.
        let mode = if self.has_backing {
            PreallocateMode::Zero
        } else {
            PreallocateMode::None
        };
        a.resize_grow(new_size, mode)
            .map_err(|e| engine_err(&self.name, "resize", e))
    }

    fn extent(&self, offset: u64, len: u64, deep: bool) -> Result<(Extent, u64)> {
        let a = self.read_lock();
        let len = len.min(a.size().saturating_sub(offset));
        if len == 0 {
            return Ok((Extent::Zero, 0));
        }
        let err = |e| engine_err(&self.name, "mapping", e);
        if deep {
            let (m, n) = a.get_mapping(offset, len).map_err(err)?;
            let kind = match m {
                imago::Mapping::Raw { .. } | imago::Mapping::Special { .. } => Extent::Data,
                imago::Mapping::Zero { .. } => Extent::Zero,
                imago::Mapping::Eof { .. } => return Ok((Extent::Zero, 0)),
                _ => Extent::Data,
            };
            return Ok((kind, n.min(len)));
        }
        let (m, n) = a.get_shallow_mapping(offset, len).map_err(err)?;
        let kind = match m {
            ShallowMapping::Raw { .. } | ShallowMapping::Special { .. } => Extent::Data,
            ShallowMapping::Indirect { .. } => Extent::Backing,
            ShallowMapping::Zero { .. } => Extent::Zero,
            ShallowMapping::Eof { .. } => return Ok((Extent::Zero, 0)),
            _ => Extent::Data,
        };
        Ok((kind, n.min(len)))
    }
}

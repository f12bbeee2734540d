//! Where a volume's layers live: LVs of a VG ([`VgStore`]), or files in a
//! directory laid out like `/dev/VG/` ([`DirStore`], which QEMU tools read
//! directly). Layers name their backing by LV name, relative to that place.

use crate::growth::{Extender, GrowthRequest};
use crate::{Error, Result};
use lvm::{OpenVg, PvDev, Stamp};
use san::{BlockDev, FileDev, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Creates, opens, extends and removes the LVs of one pool.
pub trait LvStore: Send + Sync {
    /// The LV as a device (read and write).
    fn open(&self, name: &str) -> Result<Arc<dyn BlockDev>>;
    /// A new LV of at least `size` bytes.
    fn create(&self, name: &str, size: u64, tags: &[String]) -> Result<Arc<dyn BlockDev>>;
    /// Grows the LV to at least `size` bytes; returns it with its new segments.
    fn extend(&self, name: &str, size: u64) -> Result<Arc<dyn BlockDev>>;
    fn remove(&self, name: &str) -> Result<()>;
    fn exists(&self, name: &str) -> Result<bool>;
    /// Every LV of the pool, so chain changes can refuse to drop a layer
    /// another chain still uses; `None` if the store cannot tell (then the
    /// caller answers for it).
    fn list(&self) -> Result<Option<Vec<String>>> {
        Ok(None)
    }
}

/// An [`Extender`] that extends through a store directly (single host, tests).
pub struct StoreExtender(pub Arc<dyn LvStore>);

impl Extender for StoreExtender {
    fn extend(&self, req: &GrowthRequest) -> std::result::Result<Arc<dyn BlockDev>, String> {
        self.0
            .extend(&req.lv, req.target_size.max(req.min_size))
            .map_err(|e| e.to_string())
    }
}

/// LVs of a VG, changed in place with the native LVM engine. The caller
/// makes sure no other host changes the VG meanwhile (ssvd holds the pool
/// lease); a VG changed under us is re-read once and the change retried.
pub struct VgStore {
    vg: Mutex<OpenVg>,
}

impl VgStore {
    pub fn open(pvs: &[PvDev], vg: &str) -> Result<VgStore> {
        Ok(VgStore {
            vg: Mutex::new(OpenVg::open(pvs, Some(vg))?),
        })
    }

    pub fn from_open(vg: OpenVg) -> VgStore {
        VgStore { vg: Mutex::new(vg) }
    }

    fn with_vg<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut OpenVg) -> lvm::Result<T>,
    ) -> Result<T> {
        let mut vg = self.vg.lock().unwrap_or_else(PoisonError::into_inner);
        match f(&mut vg) {
            Err(lvm::Error::Stale { .. }) => {
                vg.reload()?;
                f(&mut vg).map_err(|e| Error::Lvm(format!("{what}: {e}")))
            }
            r => r.map_err(|e| Error::Lvm(format!("{what}: {e}"))),
        }
    }

    fn extents(vg: &OpenVg, bytes: u64) -> u64 {
        bytes.div_ceil(vg.vg().extent_bytes()).max(1)
    }

    /// The VG as last read or committed.
    pub fn vg(&self) -> lvm::Vg {
        self.vg
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .vg()
            .clone()
    }
}

impl LvStore for VgStore {
    fn open(&self, name: &str) -> Result<Arc<dyn BlockDev>> {
        let dev = self.with_vg(&format!("open LV {name}"), |vg| vg.lv_dev(name))?;
        Ok(Arc::new(dev))
    }

    fn create(&self, name: &str, size: u64, tags: &[String]) -> Result<Arc<dyn BlockDev>> {
        let dev = self.with_vg(&format!("create LV {name}"), |vg| {
            let n = Self::extents(vg, size);
            vg.change(&format!("ssv: create {name}"), |v| {
                v.create_lv(name, n, tags, &Stamp::now()).map(|_| ())
            })?;
            vg.lv_dev(name)
        })?;
        Ok(Arc::new(dev))
    }

    fn extend(&self, name: &str, size: u64) -> Result<Arc<dyn BlockDev>> {
        let dev = self.with_vg(&format!("extend LV {name}"), |vg| {
            let lv = vg.vg().lv(name).ok_or_else(|| lvm::Error::NotFound {
                kind: "LV",
                name: name.to_string(),
            })?;
            let have = lv.extent_count();
            let want = Self::extents(vg, size);
            if want > have {
                vg.change(&format!("ssv: extend {name}"), |v| {
                    v.extend_lv(name, want - have)
                })?;
            }
            vg.lv_dev(name)
        })?;
        Ok(Arc::new(dev))
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.with_vg(&format!("remove LV {name}"), |vg| {
            vg.change(&format!("ssv: remove {name}"), |v| {
                v.remove_lv(name).map(|_| ())
            })
        })
    }

    fn exists(&self, name: &str) -> Result<bool> {
        let vg = self.vg.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(vg.vg().lv(name).is_some())
    }

    fn list(&self) -> Result<Option<Vec<String>>> {
        let vg = self.vg.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(Some(vg.vg().lvs.iter().map(|l| l.name.clone()).collect()))
    }
}

/// Files in one directory, one per LV, named like the LVs: what `/dev/VG/`
/// looks like to QEMU. Sizes are rounded up to `granularity` (an "extent").
pub struct DirStore {
    dir: PathBuf,
    granularity: u64,
    direct: bool,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>, granularity: u64) -> DirStore {
        DirStore {
            dir: dir.into(),
            granularity: granularity.max(4096),
            direct: true,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn check_name(name: &str) -> Result<()> {
        lvm::names::check_lv_name("ssv", name).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    fn open_file(&self, name: &str, size: Option<u64>) -> Result<Arc<dyn BlockDev>> {
        Self::check_name(name)?;
        // QEMU leaves images whose length is not whole sectors (a new image
        // ends inside its L1 table, `qemu-io write -c` inside a compressed
        // cluster) and reads past EOF as zeroes. A device ends at a whole
        // sector, so give the file its zeroes for real.
        let path = self.path(name);
        if let Ok(meta) = std::fs::metadata(&path) {
            let len = meta.len();
            if meta.is_file() && len % 512 != 0 {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(len.div_ceil(512) * 512))
                    .map_err(|e| Error::Io(format!("pad {}: {e}", path.display())))?;
            }
        }
        let opts = OpenOptions::new().direct(self.direct).create_size(size);
        Ok(Arc::new(FileDev::open(self.path(name), &opts)?))
    }
}

impl LvStore for DirStore {
    fn open(&self, name: &str) -> Result<Arc<dyn BlockDev>> {
        if !self.exists(name)? {
            return Err(Error::NotFound(format!(
                "LV {name} in {}",
                self.dir.display()
            )));
        }
        self.open_file(name, None)
    }

    fn create(&self, name: &str, size: u64, _tags: &[String]) -> Result<Arc<dyn BlockDev>> {
        if self.exists(name)? {
            return Err(Error::InvalidArgument(format!("LV {name} exists")));
        }
        self.open_file(
            name,
            Some(size.div_ceil(self.granularity).max(1) * self.granularity),
        )
    }

    fn extend(&self, name: &str, size: u64) -> Result<Arc<dyn BlockDev>> {
        Self::check_name(name)?;
        let path = self.path(name);
        let size = size.div_ceil(self.granularity) * self.granularity;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
        let have = f
            .metadata()
            .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?
            .len();
        if size > have {
            f.set_len(size)
                .map_err(|e| Error::Io(format!("extend {}: {e}", path.display())))?;
        }
        self.open_file(name, None)
    }

    fn remove(&self, name: &str) -> Result<()> {
        Self::check_name(name)?;
        std::fs::remove_file(self.path(name))
            .map_err(|e| Error::Io(format!("remove {}: {e}", self.path(name).display())))
    }

    fn exists(&self, name: &str) -> Result<bool> {
        Self::check_name(name)?;
        Ok(self.path(name).exists())
    }

    fn list(&self) -> Result<Option<Vec<String>>> {
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::Io(format!("{}: {e}", self.dir.display())))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| Error::Io(format!("{}: {e}", self.dir.display())))?;
            if let Some(n) = entry.file_name().to_str() {
                if Self::check_name(n).is_ok() && entry.path().is_file() {
                    names.push(n.to_string());
                }
            }
        }
        Ok(Some(names))
    }
}

//! What the device reads and writes: a [`Disk`]. The real one is a thin
//! volume ([`ThinDisk`]); [`FileDisk`] serves plain files (tests, scratch
//! disks). The device checks every range before it calls a disk, and the
//! disks check again, so a wrong range never reaches past a disk's end.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The backing pool is full: the request may succeed later.
    #[error("no space left: {0}")]
    NoSpace(String),
    #[error("{len} bytes at {offset} are past the disk's end ({capacity} bytes)")]
    OutOfRange {
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("the disk is read-only")]
    ReadOnly,
    #[error("{0}")]
    Io(String),
}

impl DiskError {
    pub fn is_no_space(&self) -> bool {
        matches!(self, DiskError::NoSpace(_))
    }
}

pub type DiskResult<T = ()> = Result<T, DiskError>;

/// A disk as the block device needs it. Shared by all queues' threads.
pub trait Disk: Send + Sync {
    /// Size in bytes.
    fn capacity(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Bytes a discard frees at once (a thin volume's cluster).
    fn discard_granularity(&self) -> u64 {
        512
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> DiskResult;
    fn write(&self, buf: &[u8], offset: u64) -> DiskResult;
    /// Makes every completed write durable.
    fn flush(&self) -> DiskResult;
    /// Frees the range; it reads as zeroes afterwards.
    fn discard(&self, offset: u64, len: u64) -> DiskResult;
    /// The range reads as zeroes afterwards; `may_unmap` lets the disk free it.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> DiskResult;
}

/// `offset..offset+len` lies inside a disk of `capacity` bytes.
pub fn check_range(offset: u64, len: u64, capacity: u64) -> DiskResult {
    match offset.checked_add(len) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(DiskError::OutOfRange {
            offset,
            len,
            capacity,
        }),
    }
}

/// A thin volume (qcow2 chain in LVs). Writes that need the LV to grow
/// block inside `thin` until the extension is done; a failed extension is
/// [`DiskError::NoSpace`].
pub struct ThinDisk {
    volume: Arc<thin::Volume>,
    read_only: bool,
}

impl ThinDisk {
    /// `read_only` must be set when the volume was opened read-only (a
    /// shared layer): the device then offers `VIRTIO_BLK_F_RO`.
    pub fn new(volume: Arc<thin::Volume>, read_only: bool) -> ThinDisk {
        ThinDisk { volume, read_only }
    }
    pub fn volume(&self) -> &Arc<thin::Volume> {
        &self.volume
    }
    fn writable(&self) -> DiskResult {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        Ok(())
    }
}

fn thin_err(e: thin::Error) -> DiskError {
    match e.root() {
        thin::Error::NoSpace(_) => DiskError::NoSpace(e.to_string()),
        _ => DiskError::Io(e.to_string()),
    }
}

impl Disk for ThinDisk {
    fn capacity(&self) -> u64 {
        self.volume.virtual_size()
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn discard_granularity(&self) -> u64 {
        self.volume.cluster_size()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> DiskResult {
        check_range(offset, buf.len() as u64, self.capacity())?;
        self.volume.read(buf, offset).map_err(thin_err)
    }
    fn write(&self, buf: &[u8], offset: u64) -> DiskResult {
        self.writable()?;
        check_range(offset, buf.len() as u64, self.capacity())?;
        self.volume.write(buf, offset).map_err(thin_err)
    }
    fn flush(&self) -> DiskResult {
        if self.read_only {
            return Ok(());
        }
        self.volume.flush().map_err(thin_err)
    }
    fn discard(&self, offset: u64, len: u64) -> DiskResult {
        self.writable()?;
        check_range(offset, len, self.capacity())?;
        self.volume.discard(offset, len).map_err(thin_err)
    }
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> DiskResult {
        // The volume turns whole clusters into zero clusters either way.
        self.writable()?;
        check_range(offset, len, self.capacity())?;
        self.volume.write_zeroes(offset, len).map_err(thin_err)
    }
}

/// A plain file of fixed size.
pub struct FileDisk {
    file: File,
    capacity: u64,
    read_only: bool,
}

fn io_err(what: &str, e: io::Error) -> DiskError {
    if e.kind() == io::ErrorKind::StorageFull {
        DiskError::NoSpace(format!("{what}: {e}"))
    } else {
        DiskError::Io(format!("{what}: {e}"))
    }
}

/// Bytes written per call when zeroes are written for real.
const ZERO_CHUNK: u64 = 1 << 20;

impl FileDisk {
    /// Opens `path`; its size (rounded down to whole sectors) is the capacity.
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileDisk> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        let capacity = file.metadata()?.len() / 512 * 512;
        Ok(FileDisk {
            file,
            capacity,
            read_only,
        })
    }

    fn writable(&self, offset: u64, len: u64) -> DiskResult {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        check_range(offset, len, self.capacity)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only reads its integer arguments; the fd is ours
        // and open for the life of `self`.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, n) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn zero_by_writing(&self, offset: u64, len: u64) -> DiskResult {
        let zeros = vec![0u8; ZERO_CHUNK.min(len) as usize];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK) as usize;
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(|e| io_err("write zeroes", e))?;
            at += n as u64;
        }
        Ok(())
    }
}

/// The file system cannot do it in place; fall back to writing zeroes.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL)
    )
}

impl Disk for FileDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> DiskResult {
        check_range(offset, buf.len() as u64, self.capacity)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_err("read", e))
    }
    fn write(&self, buf: &[u8], offset: u64) -> DiskResult {
        self.writable(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| io_err("write", e))
    }
    fn flush(&self) -> DiskResult {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| io_err("flush", e))
    }
    fn discard(&self, offset: u64, len: u64) -> DiskResult {
        self.writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.zero_by_writing(offset, len),
            Err(e) => Err(io_err("discard", e)),
        }
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> DiskResult {
        self.writable(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mode = if may_unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => self.zero_by_writing(offset, len),
            Err(e) => Err(io_err("write zeroes", e)),
        }
    }
}

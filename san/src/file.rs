//! A regular file or a block device as a [`BlockDev`], opened with O_DIRECT
//! so that ssv's writes reach the LUN rather than this host's page cache (other
//! hosts on the SAN read the LUN, not our cache).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{check_io, AlignedBuf, BlockDev, DevId, Error, Result};

/// Memory alignment O_DIRECT buffers get: the largest logical sector size in
/// use (4Kn disks), so one value is right for every device.
const DIRECT_ALIGN: usize = 4096;
/// Bounce unaligned buffers in chunks of at most this many bytes, so a large
/// request does not allocate a second copy of itself.
const BOUNCE_MAX: usize = 1 << 20;

// Block-device ioctl request numbers from <linux/fs.h>, in the generic ioctl
// encoding (x86_64, aarch64, riscv64), which are the architectures ssv runs on.
/// `_IOR(0x12, 114, size_t)`: device size in bytes, as a u64.
const BLKGETSIZE64: libc::Ioctl =
    (2 << 30 | (std::mem::size_of::<libc::size_t>() as u32) << 16 | 0x12 << 8 | 114) as libc::Ioctl;
/// `_IO(0x12, 104)`: logical sector size, as an int.
const BLKSSZGET: libc::Ioctl = 0x12 << 8 | 104;
/// `_IO(0x12, 123)`: physical sector size, as an unsigned int.
const BLKPBSZGET: libc::Ioctl = 0x12 << 8 | 123;
/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::Ioctl = 0x12 << 8 | 127;

/// Whether the block device's queue takes WRITE ZEROES requests
/// (`write_zeroes_max_bytes` > 0), so BLKZEROOUT sends no zero pages. A
/// partition has no queue of its own; its disk's is one directory up.
fn queue_zeroes_offloaded(major: u32, minor: u32) -> bool {
    let dev = format!("/sys/dev/block/{major}:{minor}");
    ["queue", "../queue"].iter().any(|q| {
        std::fs::read_to_string(format!("{dev}/{q}/write_zeroes_max_bytes"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// How to open a [`FileDev`].
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Open read-only; writes fail without reaching the kernel.
    pub read_only: bool,
    /// Use O_DIRECT (default). Falls back to buffered I/O, with a warning,
    /// where the filesystem refuses it (tmpfs before Linux 6.6, ramfs).
    pub direct: bool,
    /// Create the file if missing and extend it (sparse) to at least this
    /// size; never shrinks. For test images; ignored for block devices.
    pub create_size: Option<u64>,
    /// Open with O_DSYNC: each write is durable when it returns, with no
    /// separate flush (lease records, where one write is one protocol step).
    pub sync: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            direct: true,
            create_size: None,
            sync: false,
        }
    }
}

impl OpenOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }
    pub fn direct(mut self, yes: bool) -> Self {
        self.direct = yes;
        self
    }
    pub fn create_size(mut self, size: Option<u64>) -> Self {
        self.create_size = size;
        self
    }
    pub fn sync(mut self, yes: bool) -> Self {
        self.sync = yes;
        self
    }
}

/// A regular file or block device with positional I/O.
#[derive(Debug)]
pub struct FileDev {
    file: File,
    path: PathBuf,
    id: DevId,
    /// Path and identity, precomputed for error messages.
    label: String,
    size: AtomicU64,
    logical: u32,
    physical: u32,
    is_block: bool,
    /// See [`BlockDev::zeroes_cheaply`]: fallocate on files, the queue's
    /// WRITE ZEROES support on block devices.
    cheap_zeroes: bool,
    direct: bool,
    read_only: bool,
}

impl FileDev {
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<FileDev> {
        let path = path.as_ref();
        let open_err = |source: io::Error| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        if opts.read_only && opts.create_size.is_some() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "create_size needs a writable open",
            )));
        }
        let (file, direct) = match open_file(path, opts, opts.direct) {
            Ok(file) => (file, opts.direct),
            Err(e) if opts.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{}: the filesystem refuses O_DIRECT; opening without it, so writes go through the page cache",
                    path.display()
                );
                (open_file(path, opts, false).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        let meta = file.metadata().map_err(open_err)?;
        let is_block = meta.file_type().is_block_device();
        let mut cheap_zeroes = !is_block;
        let (id, size, logical, physical) = if is_block {
            let dev = meta.rdev();
            cheap_zeroes = queue_zeroes_offloaded(libc::major(dev), libc::minor(dev));
            let id = DevId(format!("blk:{}:{}", libc::major(dev), libc::minor(dev)));
            let size = block_size(&file).map_err(open_err)?;
            let logical = ioctl_u32(&file, BLKSSZGET).map_err(open_err)?;
            let physical = ioctl_u32(&file, BLKPBSZGET).map_err(open_err)?;
            (id, size, logical, physical)
        } else if meta.file_type().is_file() {
            let mut size = meta.len();
            if let Some(want) = opts.create_size {
                if size < want {
                    file.set_len(want).map_err(open_err)?;
                    size = want;
                }
            }
            (
                DevId(format!("file:{}:{}", meta.dev(), meta.ino())),
                size,
                512,
                4096,
            )
        } else {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither a regular file nor a block device",
            )));
        };
        if !logical.is_power_of_two() || !physical.is_power_of_two() {
            let msg = format!("bad sector sizes: logical {logical}, physical {physical}");
            return Err(open_err(io::Error::new(io::ErrorKind::InvalidData, msg)));
        }
        let label = format!("{} ({id})", path.display());
        Ok(FileDev {
            file,
            path: path.to_path_buf(),
            id,
            label,
            size: AtomicU64::new(round_down(size, logical)),
            logical,
            physical,
            is_block,
            cheap_zeroes,
            direct,
            read_only: opts.read_only,
        })
    }

    /// Whether I/O bypasses the page cache (false after the tmpfs fallback).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the size (after a LUN or file was resized) and returns it.
    pub fn refresh_size(&self) -> Result<u64> {
        let size = if self.is_block {
            block_size(&self.file)
        } else {
            self.file.metadata().map(|m| m.len())
        }
        .map_err(|e| self.io_err("size query", 0, 0, e))?;
        let size = round_down(size, self.logical);
        self.size.store(size, Ordering::Release);
        Ok(size)
    }

    fn io_err(&self, op: &'static str, offset: u64, len: usize, source: io::Error) -> Error {
        Error::Io {
            op,
            dev: self.label.clone(),
            offset,
            len: len as u64,
            source,
        }
    }

    /// True if `buf` can be handed to the kernel as is.
    fn buf_ok(&self, buf: &[u8]) -> bool {
        !self.direct || AlignedBuf::is_aligned(buf.as_ptr(), DIRECT_ALIGN)
    }
}

fn open_file(path: &Path, opts: &OpenOptions, direct: bool) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true)
        .write(!opts.read_only)
        .create(opts.create_size.is_some());
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if opts.sync {
        flags |= libc::O_DSYNC;
    }
    o.custom_flags(flags);
    o.open(path)
}

/// Size in bytes of a block device, via BLKGETSIZE64.
fn block_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to
    // a live, writable u64; the fd is open for the duration of the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// A sector-size ioctl (BLKSSZGET, BLKPBSZGET), which writes a 32-bit int.
fn ioctl_u32(file: &File, req: libc::Ioctl) -> io::Result<u32> {
    let mut val: libc::c_uint = 0;
    // SAFETY: both requests write one (unsigned) int through the pointer,
    // which points to a live, writable c_uint; the fd is open.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), req, &mut val as *mut libc::c_uint) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(val)
}

/// The size a device exposes: a trailing partial sector cannot be addressed.
fn round_down(size: u64, sector: u32) -> u64 {
    size - size % u64::from(sector)
}

impl BlockDev for FileDev {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        let len = buf.len();
        let err = |e| self.io_err("read", offset, len, e);
        if self.buf_ok(buf) {
            // read_exact_at turns a short read (file shrank) into UnexpectedEof.
            return self.file.read_exact_at(buf, offset).map_err(err);
        }
        let mut bounce = AlignedBuf::new(buf.len().min(BOUNCE_MAX), DIRECT_ALIGN);
        let mut off = offset;
        for chunk in buf.chunks_mut(BOUNCE_MAX) {
            let b = &mut bounce[..chunk.len()];
            self.file.read_exact_at(b, off).map_err(err)?;
            chunk.copy_from_slice(b);
            off += chunk.len() as u64;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        check_io(self, offset, buf.len())?;
        let len = buf.len();
        let err = |e| self.io_err("write", offset, len, e);
        if self.read_only {
            return Err(err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "device opened read-only",
            )));
        }
        if self.buf_ok(buf) {
            return self.file.write_all_at(buf, offset).map_err(err);
        }
        let mut bounce = AlignedBuf::new(buf.len().min(BOUNCE_MAX), DIRECT_ALIGN);
        let mut off = offset;
        for chunk in buf.chunks(BOUNCE_MAX) {
            let b = &mut bounce[..chunk.len()];
            b.copy_from_slice(chunk);
            self.file.write_all_at(b, off).map_err(err)?;
            off += chunk.len() as u64;
        }
        Ok(())
    }

    /// fallocate(ZERO_RANGE) on files, BLKZEROOUT on block devices (the
    /// kernel turns it into WRITE SAME or unmap where the LUN can); zero
    /// buffers where the filesystem or device cannot.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(self.logical, self.size(), offset, len)?;
        if self.read_only {
            return Err(self.io_err(
                "write zeroes",
                offset,
                len as usize,
                io::Error::new(io::ErrorKind::PermissionDenied, "device opened read-only"),
            ));
        }
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let rc = if self.is_block {
            let range: [u64; 2] = [offset, len];
            // SAFETY: BLKZEROOUT reads two u64s (start, length) through the
            // pointer, which points to a live array of two u64; the fd is open.
            unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) }
        } else {
            // SAFETY: plain syscall on an open fd; no memory is passed.
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            }
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOTTY) => {
                crate::write_zero_buffers(self, offset, len)
            }
            _ => Err(self.io_err("write zeroes", offset, len as usize, e)),
        }
    }

    fn zeroes_cheaply(&self) -> bool {
        self.cheap_zeroes
    }

    fn flush(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| self.io_err("flush", 0, 0, e))
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn logical_sector_size(&self) -> u32 {
        self.logical
    }

    fn physical_sector_size(&self) -> u32 {
        self.physical
    }

    fn identity(&self) -> &DevId {
        &self.id
    }
}

//! Sparse backing files on a real (non-tmpfs) filesystem and loop devices.

use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Prefix of every scratch directory; also how leaked loops are recognised.
const SCRATCH_PREFIX: &str = "ssv-tests-";
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A temporary directory (removed on drop) on a filesystem that is not
/// tmpfs/ramfs, for sparse backing files of loop devices.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// Uses `base` (e.g. `env!("CARGO_TARGET_TMPDIR")`) when given and not
    /// tmpfs, else `/var/tmp`.
    pub fn new(base: Option<&Path>) -> Result<Scratch> {
        let mut rejected = Vec::new();
        for cand in base.into_iter().chain([Path::new("/var/tmp")]) {
            match is_memory_fs(cand) {
                Ok(false) => {
                    let dir = tempfile::Builder::new()
                        .prefix(SCRATCH_PREFIX)
                        .tempdir_in(cand)
                        .with_context(|| format!("creating a temp dir in {}", cand.display()))?;
                    return Ok(Scratch { dir });
                }
                Ok(true) => rejected.push(format!("{} is tmpfs/ramfs", cand.display())),
                Err(e) => rejected.push(format!("{}: {e:#}", cand.display())),
            }
        }
        bail!("no non-tmpfs scratch directory: {}", rejected.join("; "))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Creates (or truncates) a sparse file of `len` bytes; returns its path.
    pub fn sparse_file(&self, name: &str, len: u64) -> Result<PathBuf> {
        let path = self.dir.path().join(name);
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.set_len(len)
            .with_context(|| format!("sizing {} to {len} bytes", path.display()))?;
        Ok(path)
    }
}

fn is_memory_fs(dir: &Path) -> Result<bool> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statfs writes into a zeroed struct we own; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).context("statfs");
    }
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    Ok(t == TMPFS_MAGIC || t == RAMFS_MAGIC)
}

/// An attached loop device; detached on drop (only if it still points at
/// our backing file, so a number reused by someone else is left alone).
///
/// Attached without direct I/O, so writes through the backing file and
/// through the device stay coherent for O_DIRECT readers such as lvm.
#[derive(Debug)]
pub struct LoopDev {
    path: PathBuf,
    backing: PathBuf,
    attached: bool,
}

impl LoopDev {
    /// `losetup -f --show FILE`. If that fails, loops leaked by earlier
    /// crashed runs of this harness are detached and the attach is retried.
    pub fn attach(file: &Path) -> Result<LoopDev> {
        Self::attach_inner(file, None)
    }

    /// As [`LoopDev::attach`], with a logical sector size for the device
    /// (`losetup --sector-size`, e.g. 4096 to emulate a 4Kn LUN).
    pub fn attach_with_sector_size(file: &Path, sector_size: u32) -> Result<LoopDev> {
        Self::attach_inner(file, Some(sector_size))
    }

    fn attach_inner(file: &Path, sector_size: Option<u32>) -> Result<LoopDev> {
        let backing = file
            .canonicalize()
            .with_context(|| format!("resolving {}", file.display()))?;
        let losetup = crate::find_tool("losetup").context("losetup not found")?;
        let mut last_err = String::new();
        for attempt in 0..4 {
            if attempt > 0 {
                detach_leaked();
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            let mut cmd = Command::new(&losetup);
            cmd.args(["-f", "--show"]);
            if let Some(size) = sector_size {
                cmd.arg("--sector-size").arg(size.to_string());
            }
            let out = cmd
                .arg(&backing)
                .stdin(Stdio::null())
                .output()
                .context("running losetup")?;
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && dev.starts_with("/dev/loop") {
                return Ok(LoopDev {
                    path: PathBuf::from(dev),
                    backing,
                    attached: true,
                });
            }
            last_err = format!(
                "{}; stdout: {dev:?}; stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let how = sector_size.map_or(String::new(), |s| format!("--sector-size {s} "));
        bail!(
            "losetup -f --show {how}{} failed: {last_err}",
            backing.display()
        )
    }

    /// The device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backing_file(&self) -> &Path {
        &self.backing
    }

    /// Detaches now, reporting failure (Drop only prints it).
    pub fn detach(mut self) -> Result<()> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        let mut last_err = String::new();
        for attempt in 0..5 {
            if backing_file_of(&self.path).as_deref() != Some(self.backing.as_path()) {
                return Ok(()); // already gone (or the number now belongs to someone else)
            }
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            match losetup_detach(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) => last_err = format!("{e:#}"),
            }
        }
        bail!("detaching {}: {last_err}", self.path.display())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if let Err(e) = self.detach_inner() {
            eprintln!("ssv-tests: warning: {e:#}");
        }
    }
}

fn losetup_detach(dev: &Path) -> Result<()> {
    let losetup = crate::find_tool("losetup").context("losetup not found")?;
    let out = Command::new(losetup)
        .arg("-d")
        .arg(dev)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "losetup -d: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The backing file of `/dev/loopN` per sysfs (a " (deleted)" suffix is
/// stripped), or `None` if it is not attached.
pub fn backing_file_of(dev: &Path) -> Option<PathBuf> {
    let name = dev.file_name()?.to_str()?;
    let s = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let s = s.trim_end_matches('\n');
    Some(PathBuf::from(s.strip_suffix(" (deleted)").unwrap_or(s)))
}

/// Detaches loop devices whose backing file was deleted and lived in a
/// scratch directory of this harness (leaked by a crashed test run).
/// Returns how many were detached.
pub fn detach_leaked() -> usize {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let b = b.trim_end();
        if b.ends_with(" (deleted)")
            && b.contains(&format!("/{SCRATCH_PREFIX}"))
            && losetup_detach(&Path::new("/dev").join(&name)).is_ok()
        {
            n += 1;
        }
    }
    n
}

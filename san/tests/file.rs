//! FileDev on regular files (O_DIRECT and the tmpfs fallback) and on a loop device.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::pattern;
use san::{AlignedBuf, BlockDev, Error, FileDev, OpenOptions};

const MIB: u64 = 1 << 20;

fn tmpdir() -> tempfile::TempDir {
    // Not /tmp: it may be tmpfs, which refuses O_DIRECT.
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn create(path: &Path, size: u64) -> FileDev {
    FileDev::open(path, &OpenOptions::new().create_size(Some(size))).unwrap()
}

#[test]
fn direct_round_trip() {
    let dir = tmpdir();
    let path = dir.path().join("disk.img");
    let dev = create(&path, 4 * MIB);
    assert!(
        dev.is_direct(),
        "the target dir's filesystem should take O_DIRECT"
    );
    assert_eq!(dev.size(), 4 * MIB);
    assert_eq!(dev.logical_sector_size(), 512);
    assert_eq!(dev.physical_sector_size(), 4096);
    assert_eq!(dev.path(), path);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        dev.identity().0,
        format!("file:{}:{}", meta.dev(), meta.ino())
    );

    let mut wbuf = AlignedBuf::new(64 * 1024, 4096);
    wbuf.copy_from_slice(&pattern(64 * 1024, 1));
    dev.write_at(&wbuf, MIB + 512).unwrap();
    dev.flush().unwrap();
    let mut rbuf = AlignedBuf::new(64 * 1024, 4096);
    dev.read_at(&mut rbuf, MIB + 512).unwrap();
    assert_eq!(&rbuf[..], &wbuf[..]);
    drop(dev);

    // A second open sees the data and has the same identity; the file
    // content matches too.
    let dev2 = FileDev::open(&path, &OpenOptions::new().read_only(true)).unwrap();
    assert_eq!(
        dev2.identity().0,
        format!("file:{}:{}", meta.dev(), meta.ino())
    );
    let mut r2 = vec![0u8; 64 * 1024];
    dev2.read_at(&mut r2, MIB + 512).unwrap();
    assert_eq!(r2, &wbuf[..]);
    let raw = std::fs::read(&path).unwrap();
    assert_eq!(&raw[(MIB + 512) as usize..][..64 * 1024], &wbuf[..]);
    assert!(raw[..(MIB + 512) as usize].iter().all(|&b| b == 0));
}

#[test]
fn unaligned_buffer_bounces() {
    let dir = tmpdir();
    let dev = create(&dir.path().join("d"), 8 * MIB);
    assert!(dev.is_direct());
    // Larger than one bounce chunk (1 MiB) and not a multiple of it.
    let len = 2 * MIB as usize + 1536;
    let data = pattern(len, 7);
    let mut backing = vec![0u8; len + 1];
    let unaligned = &mut backing[1..];
    assert!(!AlignedBuf::is_aligned(unaligned.as_ptr(), 4096));
    unaligned.copy_from_slice(&data);
    dev.write_at(unaligned, 4096 + 512).unwrap();

    let mut back = vec![0u8; len + 3];
    let out = &mut back[3..];
    dev.read_at(out, 4096 + 512).unwrap();
    assert_eq!(out, &data[..]);
    // And through an aligned buffer, which takes the direct path.
    let mut al = AlignedBuf::new(len, 4096);
    dev.read_at(&mut al, 4096 + 512).unwrap();
    assert_eq!(&al[..], &data[..]);
}

#[test]
fn misaligned_and_out_of_range() {
    let dir = tmpdir();
    let dev = create(&dir.path().join("d"), MIB);
    let mut buf = AlignedBuf::new(4096, 4096);
    assert!(matches!(
        dev.read_at(&mut buf, 100),
        Err(Error::Misaligned {
            offset: 100,
            len: 4096,
            sector: 512
        })
    ));
    assert!(matches!(
        dev.write_at(&buf[..100], 0),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        dev.read_at(&mut buf, MIB),
        Err(Error::OutOfRange {
            offset: MIB,
            len: 4096,
            size: MIB
        })
    ));
    assert!(matches!(
        dev.write_at(&buf, MIB - 512),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        dev.write_at(&buf, u64::MAX - 511),
        Err(Error::OutOfRange { .. })
    ));
    // The last sector is fine, and nothing grew the file.
    dev.write_at(&buf[..512], MIB - 512).unwrap();
    assert_eq!(std::fs::metadata(dev.path()).unwrap().len(), MIB);
}

#[test]
fn short_read_after_shrink_is_io_error() {
    let dir = tmpdir();
    let path = dir.path().join("d");
    let dev = create(&path, MIB);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(MIB / 2)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let err = dev.read_at(&mut buf, MIB - 4096).unwrap_err();
    match &err {
        Error::Io {
            op: "read",
            offset,
            len: 4096,
            dev,
            ..
        } => {
            assert_eq!(*offset, MIB - 4096);
            assert!(
                dev.contains(&path.display().to_string()) && dev.contains("file:"),
                "{dev}"
            );
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(dev.refresh_size().unwrap(), MIB / 2);
    assert_eq!(dev.size(), MIB / 2);
    assert!(matches!(
        dev.read_at(&mut buf, MIB - 4096),
        Err(Error::OutOfRange { .. })
    ));
}

#[test]
fn size_rounds_down_to_sector_and_create_never_shrinks() {
    let dir = tmpdir();
    let path = dir.path().join("d");
    std::fs::write(&path, vec![1u8; 1000]).unwrap();
    let dev = FileDev::open(&path, &OpenOptions::default()).unwrap();
    assert_eq!(dev.size(), 512);
    drop(dev);
    let dev = create(&path, 100);
    assert_eq!(dev.size(), 512);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000);
}

#[test]
fn read_only_and_open_errors() {
    let dir = tmpdir();
    let path = dir.path().join("d");
    create(&path, MIB);
    let ro = FileDev::open(&path, &OpenOptions::new().read_only(true)).unwrap();
    let buf = vec![0u8; 512];
    assert!(matches!(
        ro.write_at(&buf, 0),
        Err(Error::Io { op: "write", .. })
    ));
    assert!(matches!(
        FileDev::open(
            &path,
            &OpenOptions::new().read_only(true).create_size(Some(MIB))
        ),
        Err(Error::Open { .. })
    ));
    match FileDev::open(dir.path().join("missing"), &OpenOptions::default()) {
        Err(Error::Open { path: p, source }) => {
            assert!(p.ends_with("missing"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Open error, got {other:?}"),
    }
    // A directory is neither a file nor a block device.
    assert!(matches!(
        FileDev::open(dir.path(), &OpenOptions::new().read_only(true)),
        Err(Error::Open { .. })
    ));
}

#[test]
fn identity_is_per_inode() {
    let dir = tmpdir();
    let a = create(&dir.path().join("a"), MIB);
    let b = create(&dir.path().join("b"), MIB);
    std::fs::hard_link(dir.path().join("a"), dir.path().join("a2")).unwrap();
    let a2 = FileDev::open(dir.path().join("a2"), &OpenOptions::default()).unwrap();
    assert_eq!(a.identity(), a2.identity());
    assert_ne!(a.identity(), b.identity());
}

#[test]
fn buffered_when_asked() {
    let dir = tmpdir();
    let dev = FileDev::open(
        dir.path().join("d"),
        &OpenOptions::new().direct(false).create_size(Some(MIB)),
    )
    .unwrap();
    assert!(!dev.is_direct());
    let data = pattern(1024, 3);
    dev.write_at(&data, 512).unwrap();
    let mut back = vec![0u8; 1024];
    dev.read_at(&mut back, 512).unwrap();
    assert_eq!(back, data);
}

/// Whether the kernel takes O_DIRECT for a new file in `dir`.
fn kernel_takes_o_direct(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join("probe");
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(probe);
    ok
}

/// Buffered I/O through whatever [`FileDev::open`] picked.
fn check_io_works(dev: &FileDev) {
    let data = pattern(8192, 9);
    dev.write_at(&data[1..4097], 0).unwrap(); // unaligned memory
    dev.write_at(&data, 4096).unwrap();
    dev.flush().unwrap();
    let mut back = vec![0u8; 8192];
    dev.read_at(&mut back, 4096).unwrap();
    assert_eq!(back, data);
    dev.read_at(&mut back[..4096], 0).unwrap();
    assert_eq!(&back[..4096], &data[1..4097]);
}

#[test]
fn tmpfs_dev_shm() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipping tmpfs_dev_shm: no /dev/shm");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    // tmpfs refused O_DIRECT before Linux 6.6 and takes it since: either
    // way the open succeeds, and falls back exactly when the kernel refuses.
    let expect_direct = kernel_takes_o_direct(dir.path());
    capture_logs();
    let path = dir.path().join("d");
    let dev = create(&path, MIB);
    assert_eq!(dev.is_direct(), expect_direct);
    if !expect_direct {
        assert!(logged_fallback(&path));
    }
    check_io_works(&dev);
}

/// Records warnings so a test can check the fallback was reported.
struct Capture(std::sync::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            self.0.lock().unwrap().push(r.args().to_string());
        }
    }
    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

fn capture_logs() {
    // Only the first call installs the logger; later ones find it set.
    if log::set_logger(&CAPTURE).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

fn logged_fallback(path: &Path) -> bool {
    let want = path.display().to_string();
    CAPTURE
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains(&want) && m.contains("page cache"))
}

#[test]
fn falls_back_where_o_direct_is_refused() {
    capture_logs();
    // ramfs refuses O_DIRECT on every kernel. Mount one in a private mount
    // namespace owned by a fresh thread, so nothing leaks to the host.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping falls_back_where_o_direct_is_refused: mounting ramfs needs root");
        return;
    }
    let dir = tmpdir();
    let mnt = dir.path().to_path_buf();
    let ran = std::thread::spawn(move || {
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (root, none, ramfs, target) = (c("/"), c("none"), c("ramfs"), c(mnt.to_str().unwrap()));
        // SAFETY: unshare(CLONE_NEWNS) only changes this thread's mount
        // namespace (it implies CLONE_FS, which copies the thread's fs info).
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: all pointers are valid NUL-terminated strings or null
        // where mount(2) allows it; making / private stops our mount from
        // propagating to the host's namespace.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "make / private: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: as above; the target directory exists.
        let rc = unsafe {
            libc::mount(
                none.as_ptr(),
                target.as_ptr(),
                ramfs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(format!("mount ramfs: {}", std::io::Error::last_os_error()));
        }
        let path = mnt.join("d");
        let dev = create(&path, MIB);
        assert!(!dev.is_direct());
        assert!(
            logged_fallback(&path),
            "no warning naming {} was logged",
            path.display()
        );
        check_io_works(&dev);
        drop(dev);
        // SAFETY: target is a valid path string; we mounted it above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        Ok(())
    })
    .join()
    .unwrap();
    if let Err(why) = ran {
        eprintln!("skipping falls_back_where_o_direct_is_refused: {why}");
    }
}

/// Detaches the loop device when the test ends, however it ends.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn attach(file: &Path, extra: &[&str]) -> Option<Loop> {
    let out = Command::new("losetup")
        .args(extra)
        .arg("-f")
        .arg("--show")
        .arg(file)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("losetup failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(Loop(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

#[test]
fn loop_block_device() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let have_losetup = Command::new("losetup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !root || !have_losetup {
        eprintln!("skipping loop_block_device: needs root (have {root}) and losetup (have {have_losetup})");
        return;
    }
    let dir = tmpdir();
    let img = dir.path().join("loop.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();

    let Some(lp) = attach(&img, &[]) else {
        eprintln!("skipping loop_block_device: cannot attach a loop device here");
        return;
    };
    let dev = FileDev::open(&lp.0, &OpenOptions::default()).unwrap();
    assert!(dev.is_direct());
    assert_eq!(dev.size(), 8 * MIB);
    assert_eq!(dev.refresh_size().unwrap(), 8 * MIB);
    assert_eq!(dev.logical_sector_size(), 512);
    let pb = dev.physical_sector_size();
    assert!(pb.is_power_of_two() && pb >= 512, "physical sector {pb}");
    let rdev = std::fs::metadata(&lp.0).unwrap().rdev();
    assert_eq!(
        dev.identity().0,
        format!("blk:{}:{}", libc::major(rdev), libc::minor(rdev))
    );
    let file_id = FileDev::open(&img, &OpenOptions::new().read_only(true))
        .unwrap()
        .identity()
        .clone();
    assert_ne!(dev.identity(), &file_id);
    // A loop device over a file takes WRITE ZEROES (the file's fallocate),
    // as the queue says; a regular file always zeroes cheaply.
    let queue = format!(
        "/sys/dev/block/{}:{}/queue/write_zeroes_max_bytes",
        libc::major(rdev),
        libc::minor(rdev)
    );
    let offloaded = std::fs::read_to_string(&queue).unwrap().trim() != "0";
    assert_eq!(dev.zeroes_cheaply(), offloaded, "{queue}");
    assert!(FileDev::open(&img, &OpenOptions::new().read_only(true))
        .unwrap()
        .zeroes_cheaply());

    // Unaligned memory through O_DIRECT on a real block device.
    let data = pattern(4096 + 512, 5);
    let mut unaligned = vec![0u8; data.len() + 1];
    unaligned[1..].copy_from_slice(&data);
    dev.write_at(&unaligned[1..], 3 * 512).unwrap();
    dev.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read_at(&mut back, 3 * 512).unwrap();
    assert_eq!(back, data);
    assert!(matches!(
        dev.read_at(&mut back, 8 * MIB),
        Err(Error::OutOfRange { .. })
    ));
    drop(dev);
    drop(lp);
    let raw = std::fs::read(&img).unwrap();
    assert_eq!(&raw[3 * 512..][..data.len()], &data[..]);

    // A 4Kn device: 512-byte I/O is misaligned there.
    let Some(lp) = attach(&img, &["--sector-size", "4096"]) else {
        eprintln!("skipping the 4096-byte-sector part: losetup --sector-size unsupported");
        return;
    };
    let dev = FileDev::open(&lp.0, &OpenOptions::default()).unwrap();
    assert_eq!(dev.logical_sector_size(), 4096);
    assert!(dev.physical_sector_size() >= 4096);
    let mut buf = vec![0u8; 512];
    assert!(matches!(
        dev.read_at(&mut buf, 0),
        Err(Error::Misaligned { sector: 4096, .. })
    ));
    let mut buf = vec![0u8; 4096];
    dev.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[3 * 512..], &data[..4096 - 3 * 512]);
}

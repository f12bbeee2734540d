//! Test harness for ssv: sparse backing files, loop devices, a private,
//! metadata-only lvm2 environment (this machine has no device-mapper), and
//! real sanlock ([`sanlock`]) next to lockd in-process ([`leases`]).
//!
//! Typical use in an integration test or benchmark:
//!
//! ```no_run
//! use ssv_tests::{skip_unless_lvm2, LvmFixture, Size, MIB};
//! # fn t() -> anyhow::Result<()> {
//! skip_unless_lvm2!(Ok(()));
//! // From an integration test or bench: Some(env!("CARGO_TARGET_TMPDIR").as_ref())
//! let base = option_env!("CARGO_TARGET_TMPDIR").map(std::path::Path::new);
//! let fx = LvmFixture::new(base, &[64 * MIB, 64 * MIB])?;
//! fx.lvm.pvcreate(fx.dev(0), &[])?;
//! fx.lvm.vgcreate("vg0", &[fx.dev(0)], &[])?;
//! fx.lvm.lvcreate("vg0", "lv0", Size::Bytes(8 * MIB), &[])?;
//! assert_eq!(fx.lvm.lvs("vg0")?[0].size, 8 * MIB);
//! # Ok(()) }
//! ```
//!
//! Drop order matters: loop devices must be detached before their backing
//! files go away, so keep a [`Scratch`] alive longer than the [`LoopDev`]s on
//! its files ([`LvmFixture`] does this for you).

pub mod bench;
pub mod diskstats;
pub mod hosts;
pub mod lab;
pub mod leases;
mod loopdev;
mod lvm2;
pub mod qemu;
mod report;
pub mod sanlock;
pub mod tgtd;
pub mod vgview;

pub use loopdev::{backing_file_of, detach_leaked, LoopDev, Scratch};
pub use lvm2::{strip_noise, Lvm2, Size};
pub use report::{parse_pe_ranges, LvReport, PeRange, PvReport, SegReport, VgReport};

use std::path::{Path, PathBuf};

pub const MIB: u64 = 1024 * 1024;

/// Finds an executable in `$PATH`, `/usr/sbin` or `/sbin`.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Why lvm2/loop tests cannot run here, or `None` if they can.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (loop devices and lvm2 need root)".into());
    }
    for tool in ["losetup", "lvm"] {
        if find_tool(tool).is_none() {
            return Some(format!("`{tool}` not found in PATH, /usr/sbin or /sbin"));
        }
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing (no loop device support)".into());
    }
    None
}

/// Returns early from the calling test (with the given value, or `()`)
/// after printing why, when lvm2 and loop devices are not usable.
#[macro_export]
macro_rules! skip_unless_lvm2 {
    () => {
        $crate::skip_unless_lvm2!(())
    };
    ($ret:expr) => {
        if let Some(reason) = $crate::skip_reason() {
            eprintln!("SKIPPED (lvm2 harness): {reason}");
            return $ret;
        }
    };
}

/// N sparse files on loop devices plus an [`Lvm2`] environment that sees
/// exactly those devices. Fields drop in order: lvm2 dir, loops, files.
pub struct LvmFixture {
    pub lvm: Lvm2,
    pub loops: Vec<LoopDev>,
    pub scratch: Scratch,
}

impl LvmFixture {
    /// `base`: preferred parent for the backing files (pass
    /// `env!("CARGO_TARGET_TMPDIR")` from integration tests/benches);
    /// `sizes`: one sparse file + loop device per entry, in bytes.
    pub fn new(base: Option<&Path>, sizes: &[u64]) -> anyhow::Result<LvmFixture> {
        let scratch = Scratch::new(base)?;
        let mut loops = Vec::with_capacity(sizes.len());
        for (i, &len) in sizes.iter().enumerate() {
            let file = scratch.sparse_file(&format!("pv{i}.img"), len)?;
            loops.push(LoopDev::attach(&file)?);
        }
        let devs: Vec<PathBuf> = loops.iter().map(|l| l.path().to_path_buf()).collect();
        let lvm = Lvm2::new(&devs)?;
        Ok(LvmFixture {
            lvm,
            loops,
            scratch,
        })
    }

    /// Path of the i-th loop device (panics if out of range).
    pub fn dev(&self, i: usize) -> &Path {
        self.loops[i].path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_is_not_tmpfs_and_files_are_sparse() {
        let s = Scratch::new(None).unwrap();
        let f = s.sparse_file("x.img", 64 * MIB).unwrap();
        let md = std::fs::metadata(&f).unwrap();
        assert_eq!(md.len(), 64 * MIB);
        use std::os::unix::fs::MetadataExt;
        assert!(md.blocks() * 512 < MIB, "file is not sparse");
    }

    #[test]
    fn loop_attach_and_detach() {
        skip_unless_lvm2!();
        let s = Scratch::new(None).unwrap();
        let f = s.sparse_file("l.img", 8 * MIB).unwrap();
        let l = LoopDev::attach(&f).unwrap();
        let dev = l.path().to_path_buf();
        assert!(dev.to_string_lossy().starts_with("/dev/loop"));
        assert_eq!(loopdev::backing_file_of(&dev).as_deref(), Some(f.as_path()));
        l.detach().unwrap();
        assert_ne!(loopdev::backing_file_of(&dev).as_deref(), Some(f.as_path()));
    }

    #[test]
    fn leaked_loops_are_reclaimed() {
        skip_unless_lvm2!();
        let s = Scratch::new(None).unwrap();
        let l = LoopDev::attach(&s.sparse_file("leak.img", 8 * MIB).unwrap()).unwrap();
        let (dev, file) = (l.path().to_path_buf(), l.backing_file().to_path_buf());
        std::mem::forget(l); // as if the test process had crashed
        drop(s); // backing file deleted while attached
        assert_eq!(backing_file_of(&dev).as_ref(), Some(&file));
        assert!(detach_leaked() >= 1);
        // The kernel defers the detach while someone has the device open,
        // and the number may already be reused by a concurrent test.
        let gone = (0..50).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            backing_file_of(&dev).as_ref() != Some(&file)
        });
        assert!(
            gone,
            "{} still attached to {}",
            dev.display(),
            file.display()
        );
    }

    #[test]
    fn lvm2_metadata_only_roundtrip() {
        skip_unless_lvm2!();
        let fx = LvmFixture::new(None, &[64 * MIB, 64 * MIB]).unwrap();
        let lvm = &fx.lvm;
        lvm.pvcreate(fx.dev(0), &[]).unwrap();
        lvm.pvcreate(fx.dev(1), &[]).unwrap();
        lvm.vgcreate("harnessvg", &[fx.dev(0), fx.dev(1)], &["--addtag", "vgt"])
            .unwrap();
        lvm.lvcreate("harnessvg", "lin", Size::Bytes(8 * MIB), &["--addtag", "a"])
            .unwrap();
        lvm.lvcreate("harnessvg", "gap", Size::Extents(1), &[])
            .unwrap();
        lvm.lvextend("harnessvg", "lin", Size::Bytes(4 * MIB), &[])
            .unwrap();
        lvm.lvcreate("harnessvg", "str", Size::Bytes(16 * MIB), &["-i2", "-I64k"])
            .unwrap();
        lvm.lvchange_addtag("harnessvg", "gap", "t1").unwrap();
        lvm.lvrename("harnessvg", "gap", "gap2").unwrap();

        let vg = lvm.vgs("harnessvg").unwrap();
        assert_eq!(vg.name, "harnessvg");
        assert_eq!((vg.pv_count, vg.lv_count, vg.extent_size), (2, 3, 4 * MIB));
        assert_eq!(vg.tags, ["vgt"]);

        let lvs = lvm.lvs("harnessvg").unwrap();
        let lin = lvs.iter().find(|l| l.name == "lin").unwrap();
        assert_eq!(
            (lin.size, lin.seg_count, lin.tags.clone()),
            (12 * MIB, 2, vec!["a".to_string()])
        );
        assert_eq!(lin.segments.len(), 2);
        assert_eq!(lin.segments[1].start_pe, 2);
        assert_eq!(lin.segments[1].pe_ranges.len(), 1);
        let st = lvs.iter().find(|l| l.name == "str").unwrap();
        assert_eq!(
            (st.segments[0].segtype.as_str(), st.segments[0].stripes),
            ("striped", 2)
        );
        assert_eq!(st.segments[0].pe_ranges.len(), 2);
        assert_eq!(lvs.iter().find(|l| l.name == "gap2").unwrap().tags, ["t1"]);

        lvm.lvreduce("harnessvg", "lin", Size::Extents(1), &[])
            .unwrap();
        lvm.lvremove("harnessvg", "gap2").unwrap();
        assert_eq!(lvm.lvs("harnessvg").unwrap().len(), 2);

        let pvs = lvm.pvs().unwrap();
        assert_eq!(pvs.len(), 2);
        assert!(pvs
            .iter()
            .all(|p| p.vg_name == "harnessvg" && p.pe_start == MIB));

        let (rc, err) = lvm.vgck("harnessvg").unwrap();
        assert_eq!(rc, 0, "vgck stderr: {err}");
        assert!(err.is_empty(), "vgck stderr: {err}");
        let (rc, err) = lvm.pvck(fx.dev(0)).unwrap();
        assert_eq!(rc, 0, "pvck stderr: {err}");
        let text = lvm.dump_metadata(fx.dev(1)).unwrap();
        assert!(text.starts_with("harnessvg {\n"), "{text}");
        assert!(text.ends_with("\n\n"));
    }

    #[test]
    fn failures_carry_command_and_stderr() {
        skip_unless_lvm2!();
        let fx = LvmFixture::new(None, &[16 * MIB]).unwrap();
        let err = fx.lvm.vgs("no_such_vg").unwrap_err().to_string();
        assert!(err.contains("lvm vgs --driverloaded n"), "{err}");
        assert!(err.contains("not found"), "{err}");
    }

    #[test]
    fn only_listed_devices_are_visible() {
        skip_unless_lvm2!();
        let a = LvmFixture::new(None, &[16 * MIB]).unwrap();
        let b = LvmFixture::new(None, &[16 * MIB]).unwrap();
        a.lvm.pvcreate(a.dev(0), &[]).unwrap();
        b.lvm.pvcreate(b.dev(0), &[]).unwrap();
        let seen = a.lvm.pvs().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].name, a.dev(0).to_string_lossy());
        assert!(a.lvm.pvcreate(b.dev(0), &[]).is_err());
    }
}

//! Thin volumes on VGs made by our LVM engine, checked by stock lvm2 and by
//! QEMU's tools; and `BlockDev::write_zeroes` (fallocate ZERO_RANGE on
//! files, BLKZEROOUT on block devices) on files, loop devices and windows.
//!
//! - `write_zeroes_*`: exactly the range reads as zeroes afterwards (every
//!   byte around it kept); misaligned and out-of-range requests are refused
//!   and write nothing (on a file, a 512 B and a 4 KiB loop device, windows).
//! - `thin_on_a_file_pv` / `thin_on_a_loop_pv`: a VG made by our engine on a
//!   sparse file PV (our I/O to the file) or on a loop device PV (our I/O to
//!   the block device, so COW zeroing reaches BLKZEROOUT). The PV's data area
//!   is filled with stale bytes first: none may ever show through. `VgStore`
//!   creates volumes, thin writes, zeroes, discards, grows them (LVs extended
//!   by `StoreExtender` on the same store, into several segments) and
//!   snapshots them. Then lvm2 (`lvs`, `vgck`) sees exactly these LVs and
//!   sizes, each LV's bytes equal the PV's bytes at the segments lvm2
//!   reports, and the copied-out LVs pass `qemu-img check` and `qemu-img
//!   compare` (the snapshot chain resolved by LV name).
//! - On the file PV also: a qcow2 that qemu-io writes straight into an LV's
//!   region of the PV file (a `json:` raw-offset filename) reads back through
//!   thin on the `VgStore`, and thin's writes to it satisfy QEMU.

use lvm::{format_pv, OpenVg, PvDev, PvFormat};
use san::{BlockDev, FileDev, OpenOptions, WindowDev};
use ssv_tests::vgview;
use ssv_tests::{skip_unless_lvm2, LoopDev, LvmFixture, Scratch, MIB};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use thin::chain::{snapshot, LayerOptions};

// thin's own test helpers for QEMU's tools, shared rather than copied.
#[path = "../../thin/tests/common/mod.rs"]
mod common;
use common::{have_qemu, tool, tool_ok};
use thin::{
    CreateOptions, Extender, GrowthPolicy, LvStore, OpenOptions as VolOptions, StoreExtender,
    VgStore, Volume,
};

const EXTENT: u64 = 4 * MIB;
const PV_SIZE: u64 = 1024 * MIB;
/// Stale bytes the PV's data area holds before any LV exists.
const STALE: u8 = 0xee;

fn base() -> Option<&'static Path> {
    Some(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

fn pattern(at: u64) -> u8 {
    ((at.wrapping_mul(2_654_435_761) >> 11) as u8) | 1
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

fn read_dev(dev: &dyn BlockDev, at: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    dev.read_at(&mut buf, at).unwrap();
    buf
}

/// Panics with the first differing offset.
fn same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if got == want {
        return;
    }
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: byte {i} is {:#04x}, expected {:#04x}",
            got[i], want[i]
        );
    }
}

// ---------------------------------------------------------------------------
// BlockDev::write_zeroes

/// Fills `[0, len)` of `dev` with the pattern, then zeroes ranges and refuses
/// bad requests, checking every byte of `dev` (through `check`, which may
/// read the backing file too) after each step. `model` is what `dev` holds.
fn write_zeroes_exactly(what: &str, dev: &dyn BlockDev, check: &dyn Fn(&str, &[u8])) {
    let size = dev.size();
    let s = u64::from(dev.logical_sector_size());
    let mut model: Vec<u8> = (0..size).map(pattern).collect();
    dev.write_at(&model, 0).unwrap();
    dev.flush().unwrap();
    check(&format!("{what}: filled"), &model);
    let good = [
        (0, s),
        (s, 3 * s),
        (3 * 4096, 65536),
        (MIB - s, 2 * s + 4096),
        (2 * MIB, MIB),
        (size - 2 * s, 2 * s),
        (5 * s, 0),
    ];
    for (off, len) in good {
        dev.write_zeroes(off, len)
            .unwrap_or_else(|e| panic!("{what}: write_zeroes({off}, {len}): {e}"));
        model[off as usize..(off + len) as usize].fill(0);
        dev.flush().unwrap();
        check(&format!("{what}: after write_zeroes({off}, {len})"), &model);
    }
    let bad = [
        (s / 2, s),
        (0, s + 1),
        (s, s / 2),
        (size - s, 2 * s),
        (size, s),
        (size + s, s),
        (u64::MAX - s + 1, s),
        (s, u64::MAX - s + 1),
    ];
    for (off, len) in bad {
        match dev.write_zeroes(off, len) {
            Err(san::Error::Misaligned { .. } | san::Error::OutOfRange { .. }) => {}
            r => panic!("{what}: write_zeroes({off}, {len}) gave {r:?}, expected a refusal"),
        }
        dev.flush().unwrap();
        check(
            &format!("{what}: after refused write_zeroes({off}, {len})"),
            &model,
        );
    }
    if s == 4096 {
        for (off, len) in [(512, 4096), (4096, 512), (1024, 1024)] {
            assert!(
                matches!(
                    dev.write_zeroes(off, len),
                    Err(san::Error::Misaligned { .. })
                ),
                "{what}: 512-byte request on a 4 KiB device"
            );
        }
        check(&format!("{what}: after 512-byte requests"), &model);
    }
}

/// Checks through the device itself and, if given, the file behind it at
/// an offset (what really is on the medium).
fn checker<'a>(dev: &'a dyn BlockDev, file: Option<(&'a Path, u64)>) -> impl Fn(&str, &[u8]) + 'a {
    move |what, model| {
        same(
            &format!("{what} (device)"),
            &read_dev(dev, 0, dev.size()),
            model,
        );
        if let Some((path, at)) = file {
            let f = std::fs::File::open(path).unwrap();
            let mut buf = vec![0u8; model.len()];
            f.read_exact_at(&mut buf, at).unwrap();
            same(&format!("{what} (file {})", path.display()), &buf, model);
        }
    }
}

/// On a sparse file (fallocate ZERO_RANGE), with and without O_DIRECT, and
/// on a window of it. Needs no root.
#[test]
fn write_zeroes_on_files_and_windows() {
    let scratch = Scratch::new(base()).unwrap();
    for direct in [true, false] {
        let path = scratch
            .sparse_file(&format!("z{direct}.img"), 8 * MIB)
            .unwrap();
        let dev = FileDev::open(&path, &OpenOptions::new().direct(direct)).unwrap();
        write_zeroes_exactly(
            &format!("file (direct {direct})"),
            &dev,
            &checker(&dev, Some((&path, 0))),
        );
        // A window in the middle: only its bytes change.
        let inner: Arc<dyn BlockDev> = Arc::new(dev);
        inner.write_at(&vec![0x77; (8 * MIB) as usize], 0).unwrap();
        let w = WindowDev::new(inner.clone(), MIB, 4 * MIB).unwrap();
        write_zeroes_exactly(
            &format!("window of a file (direct {direct})"),
            &w,
            &checker(&w, Some((&path, MIB))),
        );
        let outside = [
            read_dev(&*inner, 0, MIB),
            read_dev(&*inner, 5 * MIB, 3 * MIB),
        ]
        .concat();
        assert!(
            outside.iter().all(|&b| b == 0x77),
            "bytes outside the window changed"
        );
    }
    let ro = FileDev::open(
        scratch.path().join("ztrue.img"),
        &OpenOptions::new().read_only(true),
    )
    .unwrap();
    assert!(ro.write_zeroes(0, 4096).is_err(), "read-only device zeroed");
}

/// On loop devices (BLKZEROOUT) with 512 B and 4 KiB logical sectors, and on
/// a window of one; checked through the device and the backing file.
#[test]
fn write_zeroes_on_loop_devices_and_windows() {
    skip_unless_lvm2!();
    let scratch = Scratch::new(base()).unwrap();
    for sector in [512u32, 4096] {
        let path = scratch
            .sparse_file(&format!("l{sector}.img"), 8 * MIB)
            .unwrap();
        let lo = LoopDev::attach_with_sector_size(&path, sector).unwrap();
        {
            let dev = FileDev::open(lo.path(), &OpenOptions::new()).unwrap();
            assert_eq!(dev.logical_sector_size(), sector);
            write_zeroes_exactly(
                &format!("loop device ({sector} B sectors)"),
                &dev,
                &checker(&dev, Some((&path, 0))),
            );
            let inner: Arc<dyn BlockDev> = Arc::new(dev);
            inner.write_at(&vec![0x77; (8 * MIB) as usize], 0).unwrap();
            let w = WindowDev::new(inner.clone(), 2 * MIB, 4 * MIB).unwrap();
            write_zeroes_exactly(
                &format!("window of a loop device ({sector} B sectors)"),
                &w,
                &checker(&w, Some((&path, 2 * MIB))),
            );
            let outside = [
                read_dev(&*inner, 0, 2 * MIB),
                read_dev(&*inner, 6 * MIB, 2 * MIB),
            ]
            .concat();
            assert!(
                outside.iter().all(|&b| b == 0x77),
                "bytes outside the window changed"
            );
        }
        lo.detach().unwrap();
    }
}

// ---------------------------------------------------------------------------
// Thin volumes on a VG

const VG_FILE: &str = "thinfilevg";
const VG_LOOP: &str = "thinloopvg";

/// The layers the exercise made and what each reads as.
struct Made {
    layers: Vec<(String, Vec<u8>)>,
}

/// Scattered writes, unaligned ones included.
fn scatter(v: &Volume, content: &mut [u8], seed: u64, count: u64) {
    let size = content.len() as u64;
    for i in 0..count {
        let r = u64::from_le_bytes(noise(seed * 7919 + i, 8)[..8].try_into().unwrap());
        let len = 1 + (r >> 44) as usize % 300_000;
        let mut off = (r % (size - len as u64)) & !511;
        if i % 3 == 0 {
            off += r % 511; // unaligned start
        }
        let off = off.min(size - len as u64);
        let data = noise(r, len);
        v.write(&data, off).unwrap();
        content[off as usize..off as usize + len].copy_from_slice(&data);
    }
}

fn read_volume(store: &dyn LvStore, name: &str) -> Vec<u8> {
    let v = Volume::open(store, name, &VolOptions::read_only()).unwrap();
    let mut out = vec![0u8; v.virtual_size() as usize];
    for (i, piece) in out.chunks_mut(8 << 20).enumerate() {
        v.read(piece, (i as u64) << 23).unwrap();
    }
    out
}

/// Creates, writes, zeroes, discards, grows (LV and virtual size) and
/// snapshots volumes on `store`.
fn exercise(store: Arc<VgStore>) -> Made {
    let st: Arc<dyn LvStore> = store.clone();
    let ext: Arc<dyn Extender> = Arc::new(StoreExtender(st.clone()));
    let rw = VolOptions {
        policy: GrowthPolicy {
            chunk: 8 * MIB,
            ..Default::default()
        },
        ..VolOptions::default().with_extender(ext.clone())
    };
    let size = 64 * MIB;
    let small = |size| CreateOptions {
        size: Some(size),
        initial_lv_size: EXTENT,
        ..Default::default()
    };
    thin::create(&*st, "vol", &small(size)).unwrap();
    // A neighbour, so vol's extensions cannot stay in one segment.
    thin::create(&*st, "other", &small(16 * MIB)).unwrap();
    let mut e0 = vec![0u8; size as usize];
    {
        let v = Volume::open(&*st, "vol", &rw).unwrap();
        scatter(&v, &mut e0, 1, 120);
        // Partial clusters over fresh ones: COW zeroing (write_zeroes).
        for k in 0..16u64 {
            let off = 40 * MIB + k * 65536 + 100 + k;
            v.write(&[0x42; 77], off).unwrap();
            e0[off as usize..off as usize + 77].fill(0x42);
        }
        v.write_zeroes(5 * MIB + 512, 3 * MIB).unwrap();
        e0[(5 * MIB + 512) as usize..(8 * MIB + 512) as usize].fill(0);
        v.discard(10 * MIB, MIB).unwrap();
        e0[(10 * MIB) as usize..(11 * MIB) as usize].fill(0);
        v.flush().unwrap();
        let g = v.growth();
        assert!(
            g.extensions > 0 && v.lv_size() > EXTENT,
            "vol did not grow: {g:?}"
        );
        // The virtual size too.
        v.grow(80 * MIB).unwrap();
        e0.resize((80 * MIB) as usize, 0);
        let tail = noise(99, 100_000);
        v.write(&tail, 80 * MIB - 100_000).unwrap();
        e0[(80 * MIB - 100_000) as usize..].copy_from_slice(&tail);
        v.flush().unwrap();
        eprintln!(
            "vol: LV {} MiB, allocated end {}, {:?}",
            v.lv_size() >> 20,
            v.allocated_end(),
            (g.extensions, g.parked_writes)
        );
    }
    let mut eo = vec![0u8; (16 * MIB) as usize];
    {
        let v = Volume::open(&*st, "other", &rw).unwrap();
        scatter(&v, &mut eo, 2, 20);
        v.flush().unwrap();
    }
    let lo = LayerOptions {
        initial_lv_size: EXTENT,
        ..Default::default()
    };
    snapshot(&*st, "vol", "vol-t1", &lo).unwrap();
    let mut e1 = e0.clone();
    {
        let v = Volume::open(&*st, "vol-t1", &rw).unwrap();
        assert_eq!(v.layers(), ["vol-t1", "vol"]);
        scatter(&v, &mut e1, 3, 60);
        v.write_zeroes(MIB + 4096, 65536 * 3).unwrap();
        e1[(MIB + 4096) as usize..(MIB + 4096 + 3 * 65536) as usize].fill(0);
        v.flush().unwrap();
    }
    let made = Made {
        layers: vec![
            ("vol".into(), e0),
            ("other".into(), eo),
            ("vol-t1".into(), e1),
        ],
    };
    for (name, want) in &made.layers {
        same(
            &format!("{name} read through thin"),
            &read_volume(&*st, name),
            want,
        );
    }
    made
}

/// Every LV's bytes, through our engine.
fn lv_bytes(store: &dyn LvStore, name: &str) -> Vec<u8> {
    let dev = store.open(name).unwrap();
    read_dev(&*dev, 0, dev.size())
}

/// lvm2 sees exactly our LVs with our sizes, agrees with our whole view of
/// the VG, and `vgck` is clean; each LV's bytes equal the PV's bytes at the
/// segments lvm2 reports. `pv_file` is the PV's backing file.
fn lvm2_agrees(fx: &LvmFixture, vg: &str, loop_idx: usize, store: &dyn LvStore, pv_file: &Path) {
    let lvm = &fx.lvm;
    let loop_path = fx.dev(loop_idx).display().to_string();
    let ours_dev = PvDev::new(
        Arc::new(FileDev::open(&loop_path, &OpenOptions::new().read_only(true)).unwrap()),
        loop_path.clone(),
    );
    let ours = vgview::ours(&[ours_dev], vg).unwrap().expect("our view");
    let theirs = vgview::lvm2(lvm, vg).unwrap().expect("lvm2 finds the VG");
    assert_eq!(ours, theirs, "our view (left) differs from lvm2's (right)");
    let (rc, err) = lvm.vgck(vg).unwrap();
    assert_eq!((rc, err.trim()), (0, ""), "vgck {vg}");
    let lvs = lvm.lvs(vg).unwrap();
    let pv = lvm
        .pvs()
        .unwrap()
        .into_iter()
        .find(|p| p.vg_name == vg)
        .unwrap();
    let f = std::fs::File::open(pv_file).unwrap();
    for lv in &lvs {
        let mine = lv_bytes(store, &lv.name);
        assert_eq!(lv.size, mine.len() as u64, "lvs size of {}", lv.name);
        let mut via_pv = Vec::new();
        for seg in &lv.segments {
            assert_eq!(seg.pe_ranges.len(), 1, "{} is linear", lv.name);
            let r = &seg.pe_ranges[0];
            let mut buf = vec![0u8; (seg.size_pe * EXTENT) as usize];
            f.read_exact_at(&mut buf, pv.pe_start + r.start * EXTENT)
                .unwrap();
            via_pv.extend_from_slice(&buf);
        }
        same(
            &format!("LV {} read at lvm2's segments of the PV file", lv.name),
            &via_pv,
            &mine,
        );
        eprintln!(
            "lvs: {} {} MiB, {} segment(s)",
            lv.name,
            lv.size >> 20,
            lv.seg_count
        );
    }
    let names: Vec<&str> = lvs.iter().map(|l| l.name.as_str()).collect();
    for want in ["vol", "vol-t1", "other"] {
        assert!(names.contains(&want), "lvm2 lists {names:?}");
    }
    assert!(
        lvs.iter().find(|l| l.name == "vol").unwrap().seg_count > 1,
        "vol should have grown into several segments"
    );
}

/// Copies the layers out as files named like the LVs (so the chain
/// resolves), then `qemu-img check` and `qemu-img compare` each.
fn qemu_agrees(dir: &Path, store: &dyn LvStore, made: &Made) {
    if !have_qemu() {
        eprintln!("SKIPPED: qemu-img not installed");
        return;
    }
    std::fs::create_dir_all(dir).unwrap();
    for (name, _) in &made.layers {
        std::fs::write(dir.join(name), lv_bytes(store, name)).unwrap();
    }
    for (name, want) in &made.layers {
        let (ok, text) = tool(dir, "qemu-img", &["check", "-f", "qcow2", name]);
        assert!(
            ok && text.contains("No errors"),
            "qemu-img check {name}: {text}"
        );
        let raw = format!("{name}.raw");
        std::fs::write(dir.join(&raw), want).unwrap();
        let (ok, text) = tool(
            dir,
            "qemu-img",
            &["compare", "-f", "qcow2", "-F", "raw", name, &raw],
        );
        assert!(ok, "qemu-img compare {name}: {text}");
    }
    let info = tool_ok(dir, "qemu-img", &["info", "--backing-chain", "vol-t1"]);
    assert!(info.contains("backing file: vol"), "{info}");
}

fn format_and_create(dev: Arc<dyn BlockDev>, path: &str, vg: &str) -> Arc<VgStore> {
    format_pv(&*dev, &PvFormat::default()).unwrap();
    let pvs = [PvDev::new(dev.clone(), path)];
    let open = OpenVg::create(vg, &pvs, EXTENT).unwrap();
    let pe_start = open.vg().pvs[0].pe_start * 512;
    // Stale bytes over the data area, as a reused LUN has.
    let stale = vec![STALE; (16 * MIB) as usize];
    for i in 0..16 {
        dev.write_at(&stale, pe_start + i * 16 * MIB).unwrap();
    }
    dev.flush().unwrap();
    Arc::new(VgStore::from_open(open))
}

/// A VG on a sparse file PV, our I/O going to the file (fallocate for
/// zeroes); lvm2 reads the same file through a loop device.
#[test]
fn thin_on_a_file_pv() {
    skip_unless_lvm2!();
    let t0 = Instant::now();
    let fx = LvmFixture::new(base(), &[PV_SIZE]).unwrap();
    let file = fx.loops[0].backing_file().to_path_buf();
    let path = file.display().to_string();
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(&file, &OpenOptions::new()).unwrap());
    let store = format_and_create(dev, &path, VG_FILE);
    let made = exercise(store.clone());
    let qimg = qemu_into_an_lv(&store, &file, &fx.scratch.path().join("qemu-lv"));
    lvm2_agrees(&fx, VG_FILE, 0, &*store, &file);
    if let Some(q) = qimg {
        assert!(fx.lvm.lvs(VG_FILE).unwrap().iter().any(|l| l.name == q));
    }
    qemu_agrees(&fx.scratch.path().join("out"), &*store, &made);
    eprintln!("file PV: {:?}", t0.elapsed());
}

/// A VG on a loop device PV, our I/O going to the block device (BLKZEROOUT
/// for zeroes).
#[test]
fn thin_on_a_loop_pv() {
    skip_unless_lvm2!();
    let t0 = Instant::now();
    let fx = LvmFixture::new(base(), &[PV_SIZE]).unwrap();
    let path = fx.dev(0).display().to_string();
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(&path, &OpenOptions::new()).unwrap());
    let store = format_and_create(dev, &path, VG_LOOP);
    let made = exercise(store.clone());
    let file: PathBuf = fx.loops[0].backing_file().to_path_buf();
    lvm2_agrees(&fx, VG_LOOP, 0, &*store, &file);
    qemu_agrees(&fx.scratch.path().join("out"), &*store, &made);
    eprintln!("loop PV: {:?}", t0.elapsed());
}

/// qemu-img makes a qcow2, which is copied into a new LV; qemu-io then
/// writes it in place, in the PV file, through a raw-offset `json:` name.
/// thin reads exactly what QEMU reads, and thin's writes satisfy QEMU.
/// Returns the LV's name (None when qemu is missing).
fn qemu_into_an_lv(store: &Arc<VgStore>, pv_file: &Path, dir: &Path) -> Option<String> {
    if !have_qemu() {
        eprintln!("SKIPPED: qemu-img not installed");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let name = "qimg";
    let lv_size = 32 * MIB;
    let dev = store.create(name, lv_size, &[]).unwrap();
    assert_eq!(dev.size(), lv_size);
    // Where the LV is in the PV file: our engine's view (lvm2 checks it later).
    let pvs = [PvDev::new(
        Arc::new(FileDev::open(pv_file, &OpenOptions::new().read_only(true)).unwrap()),
        pv_file.display().to_string(),
    )];
    let open = OpenVg::open(&pvs, Some(VG_FILE)).unwrap();
    let lv = open.vg().lv(name).unwrap();
    assert_eq!(lv.segments.len(), 1, "a new LV of free space in one piece");
    let lvm::SegmentKind::Striped { stripes, .. } = &lv.segments[0].kind else {
        panic!("linear LV expected")
    };
    let offset = open.vg().pvs[0].pe_start * 512 + stripes[0].start_pe * EXTENT;
    tool_ok(
        dir,
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "made.qcow2", "24M"],
    );
    let mut img = std::fs::read(dir.join("made.qcow2")).unwrap();
    img.resize(img.len().div_ceil(512) * 512, 0);
    dev.write_at(&img, 0).unwrap();
    dev.flush().unwrap();
    let json = format!(
        r#"json:{{"driver":"qcow2","file":{{"driver":"raw","offset":{offset},"size":{lv_size},"file":{{"driver":"file","filename":"{}"}}}}}}"#,
        pv_file.display()
    );
    let cmds = [
        "write -P 0x11 0 65536",
        "write -P 0x12 1000 70001",
        "write -z 2M 1M",
        "write -P 0x13 4M 1M",
        "discard 4M 64k",
        "write -c -P 0x14 8M 64k",
        "write -P 0x15 24575k 1024",
    ];
    let mut args = vec!["-f", "qcow2"];
    for c in &cmds {
        args.extend(["-c", c]);
    }
    args.push(&json);
    let text = tool_ok(dir, "qemu-io", &args);
    assert!(!text.contains("error"), "{text}");
    tool_ok(
        dir,
        "qemu-img",
        &["convert", "-O", "raw", &json, "want.raw"],
    );
    let mut want = std::fs::read(dir.join("want.raw")).unwrap();
    let st: Arc<dyn LvStore> = store.clone();
    same(
        "qemu-written LV read through thin",
        &read_volume(&*st, name),
        &want,
    );
    // thin writes; QEMU checks and compares in place.
    {
        let v = Volume::open(&*st, name, &VolOptions::default()).unwrap();
        for (k, (off, len)) in [
            (7u64, 100usize),
            (8 * MIB + 1000, 5000),
            (20 * MIB + 3, 70_000),
        ]
        .into_iter()
        .enumerate()
        {
            let data = noise(500 + k as u64, len);
            v.write(&data, off).unwrap();
            want[off as usize..off as usize + len].copy_from_slice(&data);
        }
        v.flush().unwrap();
    }
    let (ok, text) = tool(dir, "qemu-img", &["check", &json]);
    assert!(
        ok && text.contains("No errors"),
        "qemu-img check in place: {text}"
    );
    std::fs::write(dir.join("want2.raw"), &want).unwrap();
    let (ok, text) = tool(
        dir,
        "qemu-img",
        &["compare", "-F", "raw", &json, "want2.raw"],
    );
    assert!(ok, "qemu-img compare in place: {text}");
    Some(name.into())
}

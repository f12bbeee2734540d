//! The real `ssv-vmm` binary runs the real-mode test guest
//! (`vmm/guest/blk_test.S`) under /dev/kvm with one virtio-blk disk: a thin
//! volume in a VG on a sparse file PV, with a small growth policy. The
//! guest writes every 64 KiB block of the disk (each sector tagged with its
//! LBA), flushes, reads everything back and compares.
//!
//! Asserted: the guest reports success (exit code 0 and its line on the
//! serial file), the LV grew during the run (its size read back from the
//! VG), every sector the guest wrote reads back through `thin` after the
//! VMM exited, and stock `qemu-img check` finds the image (copied out of
//! the LV) clean. And the guest's own check can fail: on a read-only disk
//! it reports the failed write. Skips when /dev/kvm is absent.
// Real mode is x86; the guest and its setup exist for x86_64 only.
#![cfg(target_arch = "x86_64")]

use lvm::{format_pv, OpenVg, PvDev, PvFormat};
use san::{BlockDev, FileDev, OpenOptions};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thin::{CreateOptions, LvStore, VgStore, Volume};

const MIB: u64 = 1 << 20;
const EXTENT: u64 = 4 * MIB;
const PV_SIZE: u64 = 256 * MIB;
const DISK: u64 = 16 * MIB;
const INITIAL_LV: u64 = 4 * MIB;
const VG: &str = "rmvg";
const LV: &str = "rmdisk";
/// What the guest fills every sector with after its LBA.
const FILL: [u8; 2] = [0x5a, 0xa5];
const TIMEOUT: Duration = Duration::from_secs(120);

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn pv(path: &Path, read_only: bool) -> Vec<PvDev> {
    let dev = FileDev::open(path, &OpenOptions::new().read_only(read_only)).unwrap();
    vec![PvDev::new(Arc::new(dev), path.display().to_string())]
}

/// Runs the VMM to its end (killed by pid past [`TIMEOUT`]).
fn run_vmm(args: &[String]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssv-vmm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ssv-vmm");
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            return (status.code().unwrap_or(-1), text);
        }
        if t0.elapsed() > TIMEOUT {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("ssv-vmm still running after {TIMEOUT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn realmode_guest_writes_grows_flushes_and_reads_back_a_thin_disk() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm is absent or not usable");
        return;
    }
    let t0 = Instant::now();
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pv_path = scratch.path().join("pv0");
    std::fs::File::create(&pv_path)
        .unwrap()
        .set_len(PV_SIZE)
        .unwrap();
    {
        let pvs = pv(&pv_path, false);
        format_pv(&*pvs[0].dev, &PvFormat::default()).unwrap();
        let store = VgStore::from_open(OpenVg::create(VG, &pvs, EXTENT).unwrap());
        let opts = CreateOptions {
            size: Some(DISK),
            initial_lv_size: INITIAL_LV,
            ..CreateOptions::default()
        };
        thin::create(&store, LV, &opts).unwrap();
    }
    let image = scratch.path().join("blk_test.bin");
    std::fs::write(&image, vmm::arch::x86_64::realmode::BLK_TEST_GUEST).unwrap();
    let console = scratch.path().join("console");

    let t_vm = Instant::now();
    let (code, out) = run_vmm(&[
        "--memory".into(),
        "4".into(),
        "--realmode".into(),
        image.display().to_string(),
        "--disk".into(),
        format!(
            "vg={VG},lv={LV},pv={},threshold=50,chunk=4M",
            pv_path.display()
        ),
        "--serial".into(),
        console.display().to_string(),
    ]);
    let vm_time = t_vm.elapsed();
    let serial = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        code, 0,
        "ssv-vmm exit code; console: {serial:?}; output:\n{out}"
    );
    let blocks = DISK / (64 << 10);
    assert!(
        serial.contains(&format!("blk-test: OK {blocks:08X}")),
        "console: {serial:?}"
    );

    // What the VMM left behind, read back after it exited.
    let pvs = pv(&pv_path, true);
    let store = VgStore::open(&pvs, VG).unwrap();
    let lv_size = store.vg().lv(LV).unwrap().extent_count() * EXTENT;
    assert!(
        lv_size > DISK,
        "the LV grew from {INITIAL_LV} to {lv_size} bytes for {DISK} bytes of data"
    );
    let vol = Volume::open(&store, LV, &thin::OpenOptions::read_only()).unwrap();
    assert_eq!(vol.lv_size(), lv_size);
    let mut buf = vec![0u8; MIB as usize];
    for mib in 0..DISK / MIB {
        vol.read(&mut buf, mib * MIB).unwrap();
        for (i, sector) in buf.chunks(512).enumerate() {
            let lba = mib * MIB / 512 + i as u64;
            assert_eq!(
                sector[..4],
                (lba as u32).to_le_bytes(),
                "LBA tag of sector {lba}"
            );
            assert!(
                sector[4..].chunks(2).all(|w| w == FILL),
                "fill of sector {lba}"
            );
        }
    }
    drop(vol);

    if have_qemu_img() {
        let lv = store.open(LV).unwrap();
        let mut img = vec![0u8; lv.size() as usize];
        lv.read_at(&mut img, 0).unwrap();
        let copy = scratch.path().join("copy.qcow2");
        std::fs::write(&copy, &img).unwrap();
        let out = Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img check: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("SKIPPED part: qemu-img not installed, image not checked");
    }
    eprintln!(
        "real-mode guest: {blocks} x 64 KiB written, flushed, read back; LV {INITIAL_LV} -> {lv_size} bytes; VMM {vm_time:?}, test {:?}",
        t0.elapsed()
    );
}

/// On a read-only disk the guest's first write fails: it says so and exits
/// with the code of a failed request ('I').
#[test]
fn realmode_guest_reports_a_failed_request() {
    if !kvm_usable() {
        eprintln!("SKIPPED: /dev/kvm is absent or not usable");
        return;
    }
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = thin::DirStore::new(scratch.path(), 4 * MIB);
    let opts = CreateOptions {
        size: Some(MIB),
        initial_lv_size: 4 * MIB,
        ..CreateOptions::default()
    };
    thin::create(&store, "ro", &opts).unwrap();
    let image = scratch.path().join("blk_test.bin");
    std::fs::write(&image, vmm::arch::x86_64::realmode::BLK_TEST_GUEST).unwrap();
    let console = scratch.path().join("console");
    let (code, out) = run_vmm(&[
        "--memory".into(),
        "4".into(),
        "--realmode".into(),
        image.display().to_string(),
        "--disk".into(),
        format!("dir={},top=ro,readonly", scratch.path().display()),
        "--serial".into(),
        console.display().to_string(),
    ]);
    let serial = std::fs::read_to_string(&console).unwrap_or_default();
    assert_eq!(
        code,
        i32::from(b'I'),
        "exit code; console {serial:?}; output:\n{out}"
    );
    assert!(serial.contains("blk-test: FAIL I"), "console: {serial:?}");
}

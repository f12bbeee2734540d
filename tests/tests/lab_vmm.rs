//! ssv-vmm boots Debian's cloud kernel inside a lab VM (nested KVM under
//! QEMU's software emulation) with two vCPUs and a virtio-blk disk on a
//! thin volume in a VG on a sparse file. The guest's init
//! (`vmm/guest/linux/init.sh`) writes 256 MiB of random data from two
//! writers at once, reads it back past the page cache and compares, then
//! powers off; the lab VM (`vmm/guest/linux/lab-disk.sh`) then looks at the
//! volume from outside. Asserted here: the guest's result lines (both vCPUs
//! up, one virtio queue per vCPU, data read back equal), the VMM's clean
//! exit through the guest's power-off, the LV grown from its small initial
//! size in several extensions, the volume holding exactly what the guest
//! wrote (per-chunk sha256 against `ssvadm volume read`), and, where the
//! host has qemu-img, `qemu-img check` clean on the qcow2 in the LV.
//!
//! Run: `cargo test -p ssv-tests --test lab_vmm -- --test-threads=1`
//! (root the first time, to build the lab; about 3 minutes for x86_64; the
//! aarch64 test cross-builds the VMM first). Skips, saying why, where the
//! lab, the cross toolchain or a C compiler is missing.

mod lab_vmm_support;

use lab_vmm_support::{console, guest_lines, vmm_payload};
use ssv_tests::lab::Arch;
use ssv_tests::lab_or_skip;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Lab VMs use both cores: one at a time.
static ONE_LAB: Mutex<()> = Mutex::new(());

const MIB_WRITTEN: u64 = 256;
const INITIAL_LV: u64 = 32 << 20;
const CHUNK: u64 = 16 << 20;

fn lv_size(info: &serde_json::Value) -> u64 {
    info["layers"][0]["lv_size"].as_u64().unwrap_or(0)
}

/// `chunk N ... sha256=HEX` lines of the guest, by chunk.
fn guest_sums(lines: &[&str]) -> BTreeMap<u64, String> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("SSV-GUEST: chunk ")?;
            let n = rest.split_whitespace().next()?.parse().ok()?;
            let sum = rest.split("sha256=").nth(1)?.trim().to_string();
            Some((n, sum))
        })
        .collect()
}

fn linux_writes_grows_and_reads_a_thin_disk(arch: Arch) {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = lab_or_skip!(arch);
    let p = match vmm_payload(&lab).unwrap() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED (lab VMM {}): {}", arch.name(), why.0);
            return;
        }
    };
    let run_sh = format!(
        "KERNEL={} CONSOLE={} VCPUS=2 MIB={MIB_WRITTEN} CHUNK={}M\n. ./lab-disk.sh\n",
        arch.guest_kernel_name(),
        console(arch),
        CHUNK >> 20
    );
    p.payload.set_run_script(&run_sh).unwrap();
    let run = lab.run(&p.payload, Duration::from_secs(900)).unwrap();
    let out = &run.results;
    let guest = std::fs::read_to_string(out.join("guest.log")).unwrap_or_default();
    let vmm_err = std::fs::read_to_string(out.join("vmm.err")).unwrap_or_default();
    let lines = guest_lines(&guest);
    let context = format!(
        "lab console:\n{}\nguest console:\n{guest}\nssv-vmm stderr:\n{vmm_err}",
        run.console
    );
    assert_eq!(run.status, 0, "payload failed; {context}");
    assert!(!lines.iter().any(|l| l.contains("FAIL")), "{context}");

    // Booted to init, both vCPUs, one queue each, the data came back.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("SSV-GUEST: init reached")),
        "{context}"
    );
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("SSV-GUEST: {} cpus=2", arch.name())),
        "{context}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("SSV-GUEST: vda queues=2 ")),
        "{context}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("SSV-GUEST: disk ok")),
        "{context}"
    );

    // The guest's power-off ended the VM and ssv-vmm exited 0.
    let status = std::fs::read_to_string(out.join("vmm.status")).unwrap();
    assert_eq!(status.trim(), "0", "{context}");

    // The LV grew from its initial size, in several extensions.
    let read_json = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        serde_json::from_str(&text).unwrap()
    };
    let (before, after) = (read_json("info-before.json"), read_json("info-after.json"));
    assert_eq!(lv_size(&before), INITIAL_LV);
    assert!(
        lv_size(&after) >= INITIAL_LV + 3 * CHUNK && lv_size(&after) >= MIB_WRITTEN << 20,
        "LV {} -> {} bytes",
        lv_size(&before),
        lv_size(&after)
    );
    let allocated = after["layers"][0]["allocated_end"].as_u64().unwrap();
    assert!(allocated >= MIB_WRITTEN << 20, "allocated_end {allocated}");

    // What the volume holds is what the guest wrote, chunk by chunk.
    let written = guest_sums(&lines);
    assert_eq!(written.len() as u64, MIB_WRITTEN / 32, "{context}");
    let on_volume: BTreeMap<u64, String> = std::fs::read_to_string(out.join("volume-sums.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (n, sum) = l.split_once(' ')?;
            Some((n.parse().ok()?, sum.to_string()))
        })
        .collect();
    assert_eq!(
        on_volume, written,
        "volume content differs from the guest's"
    );

    // The qcow2 in the LV is consistent.
    if p.qemu_img.is_some() {
        let check = std::fs::read_to_string(out.join("qemu-img-check.txt")).unwrap();
        let status = std::fs::read_to_string(out.join("qemu-img-check.status")).unwrap();
        assert_eq!(status.trim(), "0", "qemu-img check:\n{check}");
        assert!(check.contains("No errors were found"), "{check}");
    } else {
        eprintln!("note: no qemu-img for {}: qcow2 check skipped", arch.name());
    }
    let boot = run.time_of("LAB: ssv-vmm starts");
    let init = run.time_of("LAB: ssv-vmm exited");
    eprintln!(
        "{}: lab VM start to ssv-vmm start {boot:?} s, to its exit {init:?} s; LV {} -> {} MiB",
        arch.name(),
        lv_size(&before) >> 20,
        lv_size(&after) >> 20
    );
}

#[test]
fn x86_64_linux_writes_grows_and_reads_a_thin_disk() {
    linux_writes_grows_and_reads_a_thin_disk(Arch::X86_64);
}

#[test]
fn aarch64_linux_writes_grows_and_reads_a_thin_disk() {
    linux_writes_grows_and_reads_a_thin_disk(Arch::Aarch64);
}

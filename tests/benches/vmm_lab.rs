//! ssv-vmm against QEMU/KVM inside the same x86_64 lab VM, in the same run,
//! with the same kernel, initramfs, vCPUs, memory and disk content
//! (`vmm/guest/linux/lab-bench.sh` says exactly how):
//! - boot to init: from the VMM process's start to the guest init's first
//!   console line (`ssv-io stamp`), median of the rounds; speedup =
//!   QEMU's time / ours;
//! - virtio-blk 4 KiB random reads, O_DIRECT in the guest (`ssv-io
//!   randread`): ours a thin volume (qcow2 in an LV), QEMU a qcow2 file of
//!   the same raw data; speedup = our IOPS / QEMU's.
//!
//! The lab VM is QEMU's software emulation: absolute figures are slow, the
//! ratio is what counts.
//!
//! Run: `cargo bench -p ssv-tests --bench vmm_lab` (root the first time, to
//! build the lab; needs qemu-img). Under `cargo test --all-targets` it runs
//! one short randread boot per side, whose times to init stand for the boot
//! rounds: figures that mean nothing, from the full bench's code paths.
//!
//! `SSV_LAB_RANDREAD_BOOTS=N cargo bench -p ssv-tests --bench vmm_lab` runs
//! only N randread boots of ours (full sizes, 150 s each at most) and
//! prints how many failed, no ratios. `SSV_LAB_TRACE`, `SSV_LAB_RANDREAD_SIDE`,
//! `SSV_LAB_QEMU_DISK`, `SSV_LAB_APPEND_EXTRA` and `SSV_LAB_OURS_EXTRA` (more
//! ssv-vmm options, e.g. `--virtio-transport mmio`) set `lab-bench.sh`'s
//! experiment variables of the same names (without the prefix); e.g.
//! `SSV_LAB_APPEND_EXTRA='ssv.rate=185'` paces each guest read job to 185
//! reads a second, QEMU's unpaced rate in the lab.

#[path = "../tests/lab_vmm_support/mod.rs"]
mod lab_vmm_support;

use anyhow::{bail, ensure, Context, Result};
use lab_vmm_support::vmm_payload;
use ssv_tests::bench::ratio;
use ssv_tests::lab::{Arch, Lab};
use std::path::Path;
use std::time::Duration;

struct Sizes {
    rounds: u32,
    secs: u32,
    span_mib: u32,
    jobs: u32,
    /// Seconds one boot may take before it is killed (and tried once more).
    limit: u32,
}

/// `side value` lines of a result file, by side.
fn values(path: &Path, side: &str) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .filter_map(|l| l.strip_prefix(side)?.strip_prefix(' '))
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .with_context(|| format!("{v:?} in {}", path.display()))
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let mut sz = if full {
        Sizes {
            rounds: 5,
            secs: 20,
            span_mib: 256,
            jobs: 2,
            limit: 300,
        }
    } else {
        Sizes {
            rounds: 0,
            secs: 2,
            span_mib: 64,
            jobs: 2,
            // A smoke boot takes 10-20 s; a hung one must not cost CI 5 min.
            limit: 90,
        }
    };
    if !Path::new("/usr/bin/qemu-img").is_file() {
        println!("SKIPPED: qemu-img not installed (Debian package qemu-utils)");
        return Ok(());
    }
    let Some(lab) = Lab::get(Arch::X86_64)? else {
        return Ok(());
    };
    let p = match vmm_payload(&lab)? {
        Ok(p) => p,
        Err(why) => {
            println!("SKIPPED (lab VMM): {}", why.0);
            return Ok(());
        }
    };
    ensure!(
        p.qemu_img.is_some(),
        "qemu-img was not added to the payload"
    );
    p.payload.add_qemu(Arch::X86_64)?;
    // The stamper runs in the lab VM: the guest's tool, same architecture.
    lab_vmm_support::build_guest_tool(Arch::X86_64, &p.payload.dir().join("ssv-io"))?
        .map_err(|u| anyhow::anyhow!(u.0))?;
    std::fs::copy(
        lab_vmm_support::guest_dir().join("lab-bench.sh"),
        p.payload.dir().join("lab-bench.sh"),
    )?;
    let randread_boots: u32 = match std::env::var("SSV_LAB_RANDREAD_BOOTS") {
        Ok(n) => n
            .parse()
            .context("SSV_LAB_RANDREAD_BOOTS: a number of boots")?,
        Err(_) => 0,
    };
    if randread_boots > 0 {
        sz.limit = 150;
    }
    p.payload.set_run_script(&format!(
        "RANDREAD_BOOTS={randread_boots} {}ROUNDS={} SECS={} SPAN={} JOBS={} LIMIT={}\n. ./lab-bench.sh\n",
        experiment_vars(),
        sz.rounds, sz.secs, sz.span_mib, sz.jobs, sz.limit
    ))?;
    // A smoke run takes about 2 min; one whose lab VM hangs must not cost CI more.
    let timeout = Duration::from_secs(if randread_boots > 0 {
        300 + u64::from(randread_boots) * u64::from(sz.limit)
    } else if full {
        600 + u64::from(sz.rounds) * 120
    } else {
        300
    });
    let mut run = lab.run(&p.payload, timeout)?;
    // The lab's nested virtualization failing (nested SVM emulated by TCG;
    // BENCHMARKS.md, issue 7) stops the smoke round, not CI: the lab_vmm
    // tests are what must pass. A full run is tried once more in a new lab
    // VM (a boot that fails inside one is already tried twice there).
    if let Some(lines) = run.nested_failure() {
        if !full {
            println!(
                "SKIPPED (smoke round): the lab's nested KVM failed (status {}):\n{lines}",
                run.status
            );
            return Ok(());
        }
        if randread_boots == 0 {
            eprintln!(
                "RETRY (vmm_lab): the lab's nested KVM failed (status {}), once more in a new lab VM:\n{lines}",
                run.status
            );
            run = lab.run(&p.payload, timeout)?;
        }
    }
    if run.status != 0 {
        bail!(
            "the lab benchmark failed (status {}):\n{}",
            run.status,
            run.console
        );
    }
    for line in run.console.lines().filter(|l| l.contains("LAB: ")) {
        eprintln!("{line}");
    }
    if randread_boots > 0 {
        return Ok(());
    }

    let boot = run.results.join("boot.txt");
    let (ours_boot, qemu_boot) = (
        median(values(&boot, "ours")?),
        median(values(&boot, "qemu")?),
    );
    let iops = run.results.join("iops.txt");
    let (ours_iops, qemu_iops) = (
        median(values(&iops, "ours")?),
        median(values(&iops, "qemu")?),
    );
    ensure!(ours_iops > 0.0 && qemu_iops > 0.0, "no reads measured");

    // As `lab-bench.sh` decides: no boot rounds, the randread boots' times.
    let boots = if sz.rounds > 0 {
        format!("{} boot rounds each", sz.rounds)
    } else {
        "boot times of the randread boots".into()
    };
    println!(
        "vmm_lab: {boots}, randread {} s x {} jobs over {} MiB{}",
        sz.secs,
        sz.jobs,
        sz.span_mib,
        if full {
            ""
        } else {
            " (smoke round: figures mean nothing)"
        }
    );
    ratio(
        "vmm_boot_to_init_vs_qemu",
        Duration::from_secs_f64(ours_boot),
        Duration::from_secs_f64(qemu_boot),
    );
    println!(
        "RATIO vmm_virtio_blk_4k_randread_vs_qemu ours={ours_iops:.0}iops baseline={qemu_iops:.0}iops speedup={:.2}",
        ours_iops / qemu_iops
    );
    Ok(())
}

/// `lab-bench.sh`'s experiment settings, from `SSV_LAB_<NAME>`, as
/// `NAME='value' ` for its run script.
fn experiment_vars() -> String {
    [
        "TRACE",
        "RANDREAD_SIDE",
        "QEMU_DISK",
        "APPEND_EXTRA",
        "OURS_EXTRA",
    ]
    .iter()
    .filter_map(|name| {
        let v = std::env::var(format!("SSV_LAB_{name}")).ok()?;
        Some(format!("{name}='{}' ", v.replace('\'', "")))
    })
    .collect()
}

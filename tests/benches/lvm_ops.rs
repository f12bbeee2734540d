//! Create-LV and extend-LV latency of our LVM engine against stock lvm2, on
//! loop devices over sparse files, in the same run.
//!
//! Run: `cargo bench -p ssv-tests --bench lvm_ops` (root; needs lvm2 and losetup).
//! Each operation is one full metadata commit, flushed to the device. lvm2
//! runs metadata-only (`--driverloaded n -an -Zn`): this machine has no
//! device-mapper, so its figures include no activation work.
//! `SSV_BENCH_SAMPLES=N` sets our sample count (lvm2 takes a fifth of it).

use anyhow::{Context, Result};
use lvm::{format_pv, OpenVg, PvDev, PvFormat, Stamp};
use san::{FileDev, OpenOptions};
use ssv_tests::bench::{ratio, stats, Stats};
use ssv_tests::{skip_reason, LvmFixture, MIB};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXTENT: u64 = 4 * MIB;
/// The pool default: room for well over 10,000 LVs.
const MDA_SIZE: u64 = 128 * MIB;

/// A VG of `lvs` one-extent LVs, made by our engine on a fresh loop device.
fn build(lvs: usize, spare: usize) -> Result<(LvmFixture, OpenVg)> {
    let size = MDA_SIZE + 8 * MIB + (lvs + 2 * spare + 8) as u64 * EXTENT;
    let fx = LvmFixture::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR"))), &[size])?;
    let path = fx.dev(0).display().to_string();
    let dev = Arc::new(FileDev::open(&path, &OpenOptions::new())?);
    format_pv(
        &*dev,
        &PvFormat {
            mda_size: MDA_SIZE,
            ..Default::default()
        },
    )?;
    let mut vg = OpenVg::create("benchvg", &[PvDev::new(dev, path)], EXTENT)?;
    let stamp = Stamp::now();
    vg.change("bench setup", |v| {
        for i in 0..lvs {
            v.create_lv(&format!("lv{i}"), 1, &["ssv".into()], &stamp)?;
        }
        Ok(())
    })?;
    Ok((fx, vg))
}

fn ours(lvs: usize, samples: usize) -> Result<(Stats, Stats, usize)> {
    let (_fx, mut vg) = build(lvs, samples)?;
    let stamp = Stamp::now();
    let mut create = Vec::new();
    for i in 0..samples {
        let t = Instant::now();
        vg.change("bench lvcreate", |v| {
            v.create_lv(&format!("new{i}"), 1, &["ssv".into()], &stamp)
                .map(drop)
        })?;
        create.push(t.elapsed());
    }
    let mut extend = Vec::new();
    for i in 0..samples {
        let t = Instant::now();
        vg.change("bench lvextend", |v| v.extend_lv(&format!("lv{i}"), 1))?;
        extend.push(t.elapsed());
    }
    Ok((stats(create), stats(extend), vg.raw_text().len()))
}

fn lvm2(lvs: usize, samples: usize) -> Result<(Stats, Stats)> {
    let (fx, vg) = build(lvs, samples)?;
    drop(vg);
    let timed = |args: &[&str]| -> Result<Duration> {
        let t = Instant::now();
        fx.lvm.run_ok(args)?;
        Ok(t.elapsed())
    };
    let mut create = Vec::new();
    for i in 0..samples {
        let name = format!("new{i}");
        create.push(timed(&[
            "lvcreate", "-an", "-Zn", "-l", "1", "-n", &name, "--addtag", "ssv", "benchvg",
        ])?);
    }
    let mut extend = Vec::new();
    for i in 0..samples {
        extend.push(timed(&["lvextend", "-l", "+1", &format!("benchvg/lv{i}")])?);
    }
    Ok((stats(create), stats(extend)))
}

fn main() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED lvm_ops bench: {why}");
        return Ok(());
    }
    // `cargo test --all-targets` runs this binary without `--bench`: a quick smoke run, no figures.
    if !std::env::args().any(|a| a == "--bench") {
        ours(50, 3).context("smoke run of our engine")?;
        lvm2(50, 2).context("smoke run of lvm2")?;
        println!("lvm_ops: smoke run passed (figures only under `cargo bench`)");
        return Ok(());
    }
    let samples: usize = std::env::var("SSV_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let lvm_samples = (samples / 5).max(5);
    let (oc1, oe1, text1) = ours(1000, samples).context("our engine at 1,000 LVs")?;
    let (oc10, oe10, text10) = ours(10_000, samples).context("our engine at 10,000 LVs")?;
    let (lc1, le1) = lvm2(1000, lvm_samples).context("lvm2 at 1,000 LVs")?;
    println!("# {samples} samples each for ours, {lvm_samples} for lvm2; metadata text {text1} bytes at 1,000 LVs, {text10} at 10,000");
    ratio("create_lv_p50_1000lvs", oc1.p50, lc1.p50);
    ratio("create_lv_p99_1000lvs", oc1.p99, lc1.p99);
    ratio("extend_lv_p50_1000lvs", oe1.p50, le1.p50);
    ratio("extend_lv_p99_1000lvs", oe1.p99, le1.p99);
    // lvm2 at 10,000 LVs would take minutes per run to set up; its 1,000-LV figure is the baseline.
    ratio("create_lv_p50_10000lvs_vs_lvm2_1000lvs", oc10.p50, lc1.p50);
    ratio("create_lv_p99_10000lvs_vs_lvm2_1000lvs", oc10.p99, lc1.p99);
    ratio("extend_lv_p50_10000lvs_vs_lvm2_1000lvs", oe10.p50, le1.p50);
    ratio("extend_lv_p99_10000lvs_vs_lvm2_1000lvs", oe10.p99, le1.p99);
    Ok(())
}

//! Growth latency with several hosts writing at once: 8 hosts (each a real
//! lockd and ssvd) share one sparse-file LUN; each opens its own volume and
//! `qemu-img bench` writes it sequentially through ssvd's NBD export, so
//! every volume's LV grows several times while all hosts contend for the
//! pool lease. Per extension we take the time from the threshold crossing
//! to the grown LV mapped in the writer (thin's `extension_times`), over all
//! hosts, p50 and p99; also parked writes and write errors (must be 0).
//!
//! Baseline, same run, under the same load: stock lvm2 `lvextend` by the
//! same chunk, repeated while the hosts write, of an LV in a VG of its own
//! on a second sparse file of the same filesystem (through a loop device,
//! `--driverloaded n`; it cannot share ssv's VG without its lease): the
//! metadata step VDSM's extension runs on its SPM (before the mailbox round
//! trips that make oVirt's 1.15 s average).
//!
//! Run: `cargo bench -p ssv-tests --bench ssvd_growth` (root for the
//! baseline; needs qemu-img). Under `cargo test --all-targets` it runs a
//! 2-host smoke round whose figures mean nothing.

use anyhow::{ensure, Context, Result};
use serde_json::json;
use ssv_tests::bench::{ms, ratio, stats};
use ssv_tests::diskstats::{self, DiskCounters};
use ssv_tests::hosts::{start_hosts, HostProc};
use ssv_tests::{find_tool, skip_reason, LoopDev, Lvm2, Scratch, Size, MIB};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct Sizes {
    full: bool,
    hosts: u64,
    per_host: u64,
    extent: u64,
    chunk: u64,
    /// Rounds of writing, each into new volumes: two give over 100
    /// extensions, so that p99 is not simply the slowest one.
    rounds: usize,
    baseline_extends: usize,
}

impl Sizes {
    fn new(full: bool) -> Sizes {
        if full {
            Sizes {
                full,
                hosts: 8,
                per_host: 3 << 30,
                extent: 128 * MIB,
                chunk: 512 * MIB,
                rounds: 2,
                baseline_extends: 800,
            }
        } else {
            Sizes {
                full,
                hosts: 2,
                per_host: 96 * MIB,
                extent: 4 * MIB,
                chunk: 16 * MIB,
                rounds: 1,
                baseline_extends: 4,
            }
        }
    }
}

fn main() -> Result<()> {
    if find_tool("qemu-img").is_none() {
        println!("SKIPPED: qemu-img not installed (Debian package qemu-utils)");
        return Ok(());
    }
    let sz = Sizes::new(std::env::args().any(|a| a == "--bench"));
    let scratch = Scratch::new(Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))))?;
    // Room for every volume, and for the baseline's LV.
    let lun_size = sz.hosts * (sz.per_host + sz.chunk * 2) + (4 << 30);
    let lun = scratch.sparse_file("lun0.img", lun_size)?;
    let luns = [lun.clone()];
    eprintln!("ssvd_growth: starting {} hosts", sz.hosts);
    let mut hosts = start_hosts(scratch.path(), sz.hosts, &luns, 1)?;
    hosts[0].client.post(
        "/v1/pools",
        &json!({"name": "pool0", "luns": [lun.display().to_string()],
                "extent_size": sz.extent.to_string(), "initial": sz.chunk.to_string(),
                "chunk": sz.chunk.to_string()}),
    )?;
    let baseline = match skip_reason() {
        Some(why) => {
            println!("# baseline skipped: {why}");
            None
        }
        None => Some(Baseline::new(scratch.path(), &sz)?),
    };
    // The disk under the LUN file: how long its requests waited.
    let disk = diskstats::disk_of(&lun);
    let mut all = Round::default();
    for round in 1..=sz.rounds {
        eprintln!(
            "ssvd_growth: round {round} of {}: {} hosts writing {} MiB each",
            sz.rounds,
            sz.hosts,
            sz.per_host / MIB
        );
        all.add(write_round(
            &hosts,
            &sz,
            round,
            baseline.as_ref(),
            all.baseline.len(),
            disk.as_deref(),
        )?);
    }
    let Round {
        extensions: ext,
        baseline: base,
        per_host,
        parked,
        park_p99,
        errors,
        wall,
        disk: disk_counts,
    } = all;
    // SSVD_GROWTH_LOGS=DIR keeps each host's ssvd log there.
    if let Some(dir) = std::env::var_os("SSVD_GROWTH_LOGS") {
        std::fs::create_dir_all(&dir)?;
        for h in &hosts {
            std::fs::write(
                std::path::Path::new(&dir).join(format!("ssvd{}.log", h.id)),
                h.ssvd_log(),
            )?;
        }
    }
    for h in &mut hosts {
        h.stop();
    }
    drop(hosts);
    ensure!(!ext.is_empty(), "no extension happened");
    let ours = stats(ext.clone());
    let worst = ext.iter().max().copied().unwrap_or_default();

    println!(
        "# {} run; {} hosts (lockd io_timeout 1 s) on one sparse-file LUN, {} MiB extents; {} rounds: each host writes {} MiB sequentially (qemu-img bench, 1 MiB, depth 8) through NBD into a new volume of its own; LV starts at {} MiB and grows by {} MiB at 50%",
        if sz.full { "full" } else { "smoke (figures mean nothing)" },
        sz.hosts,
        sz.extent / MIB,
        sz.rounds,
        sz.per_host / MIB,
        sz.chunk / MIB,
        sz.chunk / MIB
    );
    println!(
        "# extensions {} in {:.1} s of writing; threshold crossing to mapped: p50 {} p99 {} max {}; parked writes {parked} (worst host p99 {park_p99:.1} ms); writer errors {errors}; goal p99 < 100 ms",
        ext.len(),
        wall.as_secs_f64(),
        ms(ours.p50),
        ms(ours.p99),
        ms(worst)
    );
    if let Some(d) = &disk {
        // The writers only write: the reads are the pool's metadata,
        // lockd's and the baseline's, which wait behind the data queued at
        // the disk.
        println!(
            "# disk {d} while the hosts wrote: {}",
            disk_counts.describe()
        );
    }
    // Each host's extensions in order: the bursts line up across hosts.
    for line in &per_host {
        println!("{line}");
    }
    if !base.is_empty() {
        let n = base.len();
        let s = stats(base);
        println!(
            "# baseline: stock lvm2 lvextend by {} MiB, {} times while the hosts wrote: p50 {} p99 {}",
            sz.chunk / MIB,
            n,
            ms(s.p50),
            ms(s.p99)
        );
        ratio(
            &format!("growth_latency_p50_{}hosts_vs_lvm2_lvextend", sz.hosts),
            ours.p50,
            s.p50,
        );
        ratio(
            &format!("growth_latency_p99_{}hosts_vs_lvm2_lvextend", sz.hosts),
            ours.p99,
            s.p99,
        );
    }
    ensure!(errors == 0, "{errors} writers failed");
    Ok(())
}

/// What one round measured, or several together.
#[derive(Default)]
struct Round {
    extensions: Vec<Duration>,
    baseline: Vec<Duration>,
    per_host: Vec<String>,
    parked: u64,
    park_p99: f64,
    errors: usize,
    wall: Duration,
    disk: DiskCounters,
}

impl Round {
    fn add(&mut self, r: Round) {
        self.extensions.extend(r.extensions);
        self.baseline.extend(r.baseline);
        self.per_host.extend(r.per_host);
        self.parked += r.parked;
        self.park_p99 = self.park_p99.max(r.park_p99);
        self.errors += r.errors;
        self.wall += r.wall;
        self.disk.add(&r.disk);
    }
}

/// Round `round`: every host opens a new volume and writes it through NBD
/// while the baseline (if any) extends its LV, up to its limit less `done`;
/// then the hosts close and delete their volumes.
fn write_round(
    hosts: &[HostProc],
    sz: &Sizes,
    round: usize,
    baseline: Option<&Baseline>,
    done: usize,
    disk: Option<&str>,
) -> Result<Round> {
    let name = |h: &HostProc| format!("b{}r{round}", h.id);
    let uris: Vec<String> = hosts
        .iter()
        .map(|h| h.open_new_volume(&name(h), sz.per_host + sz.chunk))
        .collect::<Result<_>>()?;
    let writing = AtomicBool::new(true);
    let before = disk.and_then(diskstats::counters);
    let started = Instant::now();
    let (results, base) = std::thread::scope(|s| {
        let base = baseline.map(|b| {
            s.spawn(|| b.extend_while(&writing, sz.baseline_extends.saturating_sub(done), sz))
        });
        let handles: Vec<_> = uris
            .iter()
            .map(|uri| {
                s.spawn(move || -> Result<()> {
                    let out = Command::new("qemu-img")
                        .args([
                            "bench",
                            "-w",
                            "-f",
                            "raw",
                            "-s",
                            "1M",
                            "-d",
                            "8",
                            "--pattern",
                            "165",
                        ])
                        .args(["-c", &(sz.per_host / MIB).to_string()])
                        .arg(uri)
                        .output()?;
                    ensure!(
                        out.status.success(),
                        "qemu-img bench on {uri}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    Ok(())
                })
            })
            .collect();
        let results: Vec<Result<()>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("writer panicked")))
            })
            .collect();
        writing.store(false, Ordering::Relaxed);
        let base = base.map(|b| {
            b.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("baseline panicked")))
        });
        (results, base)
    });
    let wall = started.elapsed();
    let after = disk.and_then(diskstats::counters);
    let mut r = Round {
        extensions: Vec::new(),
        baseline: base.transpose()?.unwrap_or_default(),
        per_host: Vec::new(),
        parked: 0,
        park_p99: 0.0,
        errors: 0,
        wall,
        disk: match (before, after) {
            (Some(b), Some(a)) => a.since(&b),
            _ => DiskCounters::default(),
        },
    };
    for e in results.iter().filter_map(|r| r.as_ref().err()) {
        eprintln!("ssvd_growth: {e}");
        r.errors += 1;
    }
    for h in hosts {
        let v = h.client.get(&format!("/v1/volumes/{}", name(h)))?;
        let g = &v["growth"];
        let mut mine = Vec::new();
        for x in g["extension_ms"].as_array().context("no growth figures")? {
            let t = x.as_f64().unwrap_or(0.0);
            mine.push(format!("{t:.0}"));
            r.extensions.push(Duration::from_secs_f64(t / 1e3));
        }
        r.per_host.push(format!(
            "# round {round} host {}: {} ms",
            h.id,
            mine.join(" ")
        ));
        r.parked += g["parked_writes"].as_u64().unwrap_or(0);
        r.park_p99 = r.park_p99.max(g["park_p99_ms"].as_f64().unwrap_or(0.0));
        ensure!(g["failed_extensions"] == 0, "host {}: {g}", h.id);
    }
    for h in hosts {
        h.client
            .delete(&format!("/v1/volumes/{}/session", name(h)))?;
        h.client.delete(&format!("/v1/volumes/{}", name(h)))?;
    }
    Ok(r)
}

/// A VG of stock lvm2's own on a second sparse file, for the baseline.
struct Baseline {
    lvm: Lvm2,
    _dev: LoopDev,
}

impl Baseline {
    fn new(dir: &std::path::Path, sz: &Sizes) -> Result<Baseline> {
        let file = dir.join("baseline.img");
        let f = std::fs::File::create(&file)?;
        f.set_len((sz.baseline_extends as u64 + 2) * sz.chunk + (1 << 30))?;
        let dev = LoopDev::attach(&file)?;
        let lvm = Lvm2::new(&[dev.path().to_path_buf()])?;
        lvm.pvcreate(dev.path(), &[])?;
        lvm.vgcreate("base0", &[dev.path()], &["-s", &format!("{}b", sz.extent)])?;
        lvm.lvcreate("base0", "grown", Size::Bytes(sz.chunk), &[])?;
        Ok(Baseline { lvm, _dev: dev })
    }

    /// `lvextend` by one chunk, again and again while `writing` holds, at
    /// most `limit` times.
    fn extend_while(
        &self,
        writing: &AtomicBool,
        limit: usize,
        sz: &Sizes,
    ) -> Result<Vec<Duration>> {
        let mut out = Vec::new();
        while writing.load(Ordering::Relaxed) && out.len() < limit {
            let t = Instant::now();
            self.lvm
                .lvextend("base0", "grown", Size::Bytes(sz.chunk), &[])?;
            out.push(t.elapsed());
        }
        Ok(out)
    }
}

//! Thin volumes (qcow2 in LVs, through imago) against `qemu-img` on the same
//! image files, against raw O_DIRECT I/O on the same files, growth of a
//! volume on a VG of our LVM engine, and full clones against
//! `qemu-img convert`, all in one run.
//!
//! Run: `cargo bench -p ssv-tests --bench thin_ops` (no root; needs
//! `qemu-img` from Debian's qemu-utils). Under `cargo test --all-targets`
//! the same rows run once with tiny sizes (a smoke run; its figures mean
//! nothing). `SSV_THIN_LOOP=1` (root) adds the allocating rows on loop
//! devices (`…_loop`).
//!
//! - I/O rows, queue depth 1 and 32: 4 KiB reads, 4 KiB allocating writes,
//!   4 KiB rewrites, 1 MiB sequential writes. Ours: `depth` threads sharing
//!   one `Arc<Volume>` on a `DirStore` file (O_DIRECT), each taking the next
//!   request number from a shared counter and issuing it synchronously.
//!   QEMU: `qemu-img bench -f qcow2 -t none -n -d DEPTH` on the same file
//!   (reads, rewrites) or on a copy of the same fresh image (allocating
//!   rows); its own "Run completed in" figure. Raw: `san::FileDev` (O_DIRECT)
//!   on the same file (reads; rewrites, last) or on a third copy of the fresh
//!   image (allocating rows), same offsets, same thread count. Request `i`
//!   is at `i * step` on all three sides: qemu-img bench's `-S` pattern,
//!   kept below `size - request` so its wrap rule (which changed in QEMU
//!   10.1) never applies. Three rounds; who goes first rotates; every timed
//!   step starts after a `sync`; medians are reported, with the range.
//! - Growth: 4 threads write disjoint sequential 1 MiB streams into a volume
//!   made with a 1 GiB initial LV on a `VgStore` (sparse-file PV, 128 MiB
//!   extents, our LVM engine), extended by `StoreExtender`, then flush.
//!   Raw: the same 4 streams straight into the same PV file's extent area,
//!   after punching it back to holes, then flush.
//! - Full clone of a 3-layer chain: `thin::clone::full_clone` against
//!   `qemu-img convert -f qcow2 -O qcow2 -t none -T none` of the same top,
//!   three rounds, alternating who goes first.

use anyhow::{bail, ensure, Context, Result};
use lvm::{format_pv, OpenVg, PvDev, PvFormat};
use san::{AlignedBuf, BlockDev, FileDev, OpenOptions as DevOptions};
use ssv_tests::bench::{ms, ratio, stats};
use ssv_tests::{find_tool, LoopDev, Scratch, MIB};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};
use thin::chain::{self, LayerOptions};
use thin::{CreateOptions, DirStore, GrowthPolicy, OpenOptions, StoreExtender, VgStore, Volume};

const KIB: u64 = 1024;
const GIB: u64 = 1024 * MIB;
const CLUSTER: u64 = 64 * KIB;
/// Byte every write carries (qemu-img bench `--pattern`).
const PATTERN: u8 = 0xa5;
const DEPTHS: [usize; 2] = [1, 32];
/// Writer threads of the growth row.
const GROWTH_THREADS: usize = 4;

/// Sizes of one run.
struct Sizes {
    full: bool,
    /// Virtual size of every I/O-row image; the 1 MiB rows fill it.
    disk: u64,
    /// Requests of each 4 KiB row, at depth 1 and at depth 32.
    small_count: [u64; 2],
    /// Rounds of the I/O rows and of the clone row (medians are reported).
    rounds: usize,
    /// Step of the 4 KiB read and rewrite rows (each lands in a new cluster).
    stride: u64,
    /// Bytes written in the growth row.
    growth: u64,
    growth_extent: u64,
    growth_initial: u64,
    growth_chunk: u64,
    /// Clone layout unit (the chain's virtual size is 64 units).
    clone_unit: u64,
}

impl Sizes {
    fn new(full: bool) -> Sizes {
        if full {
            Sizes {
                full,
                disk: 8 * GIB,
                small_count: [30_000, 100_000],
                rounds: 3,
                stride: 80 * KIB,
                growth: 20 * GIB,
                growth_extent: 128 * MIB,
                growth_initial: GIB,
                growth_chunk: thin::growth::DEFAULT_CHUNK,
                clone_unit: 64 * MIB,
            }
        } else {
            Sizes {
                full,
                disk: 64 * MIB,
                small_count: [200, 800],
                rounds: 1,
                stride: 80 * KIB,
                growth: 256 * MIB,
                growth_extent: 4 * MIB,
                growth_initial: 16 * MIB,
                growth_chunk: 16 * MIB,
                clone_unit: MIB,
            }
        }
    }
}

/// Request `i` of `count` is `req` bytes at `i * step` (never wrapping).
#[derive(Clone, Copy, Debug)]
struct Pattern {
    req: u64,
    count: u64,
    step: u64,
}

impl Pattern {
    fn at(&self, i: u64) -> u64 {
        i * self.step
    }
    fn bytes(&self) -> u64 {
        self.req * self.count
    }
    fn check(&self, size: u64) -> Result<()> {
        ensure!(
            self.count > 0 && (self.count - 1) * self.step + self.req <= size,
            "{self:?} does not fit {size} bytes without wrapping"
        );
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Read,
    Write,
}

/// What the threads of one run talk to.
#[derive(Clone, Copy)]
enum Dev<'a> {
    Thin(&'a Volume),
    Raw(&'a FileDev),
}

impl Dev<'_> {
    fn io(&self, op: Op, buf: &mut [u8], off: u64) -> Result<()> {
        match (self, op) {
            (Dev::Thin(v), Op::Read) => v.read(buf, off)?,
            (Dev::Thin(v), Op::Write) => v.write(buf, off)?,
            (Dev::Raw(d), Op::Read) => d.read_at(buf, off)?,
            (Dev::Raw(d), Op::Write) => d.write_at(buf, off)?,
        }
        Ok(())
    }
}

/// Runs `pat` with `depth` threads, each taking the next request number from
/// a shared counter and issuing it synchronously. Thin reads are checked
/// for the pattern byte. Returns the wall time from release to last completion.
fn drive(dev: Dev<'_>, depth: usize, pat: Pattern, op: Op) -> Result<Duration> {
    settle();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let start = Barrier::new(depth + 1);
    let check = op == Op::Read && matches!(dev, Dev::Thin(_));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..depth)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut buf = AlignedBuf::new(pat.req as usize, 4096);
                    if op == Op::Write {
                        buf.fill(PATTERN);
                    }
                    start.wait();
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= pat.count {
                            break;
                        }
                        let off = pat.at(i);
                        let r = dev.io(op, &mut buf, off).and_then(|()| {
                            ensure!(
                                !check || (buf[0] == PATTERN && buf[buf.len() - 1] == PATTERN),
                                "read at {off} did not return the written data"
                            );
                            Ok(())
                        });
                        if let Err(e) = r {
                            stop.store(true, Ordering::Relaxed);
                            return Err(e.context(format!("{op:?} at {off}")));
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        start.wait();
        let t = Instant::now();
        let mut first_err = None;
        for w in workers {
            match w.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(anyhow::anyhow!("I/O thread panicked"))),
            }
        }
        let took = t.elapsed();
        match first_err {
            Some(e) => Err(e),
            None => Ok(took),
        }
    })
}

struct Qemu {
    bin: PathBuf,
}

impl Qemu {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .output()
            .context("running qemu-img")?;
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "qemu-img {}: {}: {}",
                args.join(" "),
                out.status,
                text.trim()
            );
        }
        Ok(text)
    }

    /// `qemu-img bench` of `pat`; its own timing ("Run completed in").
    fn bench(&self, img: &Path, depth: usize, pat: Pattern, op: Op) -> Result<Duration> {
        let (d, c, s, st) = (
            depth.to_string(),
            pat.count.to_string(),
            pat.req.to_string(),
            pat.step.to_string(),
        );
        let pattern = PATTERN.to_string();
        let mut args = vec![
            "bench", "-f", "qcow2", "-t", "none", "-n", "-d", &d, "-c", &c, "-s", &s, "-S", &st,
            "-o", "0",
        ];
        if op == Op::Write {
            args.extend(["-w", "--pattern", &pattern]);
        }
        let img = img.to_str().context("image path")?;
        args.push(img);
        settle();
        let text = self.run(&args)?;
        let secs: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("Run completed in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no run time in qemu-img bench output: {text}"))?;
        Ok(Duration::from_secs_f64(secs))
    }

    fn check(&self, img: &Path) -> Result<()> {
        self.run(&["check", "-f", "qcow2", img.to_str().context("image path")?])
            .map(drop)
    }
}

/// A RATIO line for a rate (higher is better): speedup = ours / baseline,
/// so above 1.0 means we are faster, as for [`ratio`].
fn ratio_rate(metric: &str, ours: f64, base: f64, unit: Unit) {
    let speedup = ours / base.max(1e-9);
    println!(
        "RATIO {metric} ours={} baseline={} speedup={speedup:.2}",
        unit.fmt(ours),
        unit.fmt(base)
    );
}

#[derive(Clone, Copy)]
enum Unit {
    Iops,
    MBps,
}

impl Unit {
    fn of(pat: Pattern, t: Duration) -> f64 {
        let secs = t.as_secs_f64().max(1e-9);
        if pat.req < MIB {
            pat.count as f64 / secs
        } else {
            pat.bytes() as f64 / 1e6 / secs
        }
    }
    fn for_pattern(pat: Pattern) -> Unit {
        if pat.req < MIB {
            Unit::Iops
        } else {
            Unit::MBps
        }
    }
    fn fmt(self, v: f64) -> String {
        match self {
            Unit::Iops => format!("{:.1}kIOPS", v / 1e3),
            Unit::MBps => format!("{v:.0}MB/s"),
        }
    }
}

/// One I/O row at one depth: each side's time of the same pattern, one
/// sample per round.
struct Row {
    name: String,
    pat: Pattern,
    ours: Vec<Duration>,
    qemu: Vec<Duration>,
    raw: Vec<Duration>,
}

impl Row {
    fn new(name: String, pat: Pattern) -> Row {
        Row {
            name,
            pat,
            ours: Vec::new(),
            qemu: Vec::new(),
            raw: Vec::new(),
        }
    }

    fn push(&mut self, t: Sides) {
        self.ours.push(t.ours);
        self.qemu.push(t.qemu);
        self.raw.push(t.raw);
    }

    /// Median rate and the range over rounds.
    fn summary(&self, v: &[Duration]) -> (f64, String) {
        let u = Unit::for_pattern(self.pat);
        let rates: Vec<f64> = v.iter().map(|&t| Unit::of(self.pat, t)).collect();
        let med = Unit::of(self.pat, stats(v.to_vec()).p50);
        let (lo, hi) = rates
            .iter()
            .fold((f64::MAX, 0f64), |(l, h), &r| (l.min(r), h.max(r)));
        let range = if v.len() > 1 {
            format!(" [{}..{}]", u.fmt(lo), u.fmt(hi))
        } else {
            String::new()
        };
        (med, format!("{}{range}", u.fmt(med)))
    }

    fn print(&self) {
        let u = Unit::for_pattern(self.pat);
        let (o, os) = self.summary(&self.ours);
        let (q, qs) = self.summary(&self.qemu);
        let (r, rs) = self.summary(&self.raw);
        println!(
            "# {}: {} x {} KiB, step {} KiB, median of {}: ours {os}, qemu {qs}, raw {rs}",
            self.name,
            self.pat.count,
            self.pat.req / KIB,
            self.pat.step / KIB,
            self.ours.len()
        );
        ratio_rate(&format!("{}_vs_qemu", self.name), o, q, u);
        ratio_rate(&format!("{}_vs_raw", self.name), o, r, u);
    }
}

/// One round's time of each side.
struct Sides {
    ours: Duration,
    qemu: Duration,
    raw: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Qemu,
    Raw,
}

/// Who goes first changes every round, so no side always runs right after
/// a big write (the disk's background work) or always last.
fn order(round: usize) -> [Side; 3] {
    let mut o = [Side::Ours, Side::Qemu, Side::Raw];
    o.rotate_left(round % 3);
    o
}

/// The images of the I/O rows: one directory as a `DirStore`. With `loops`,
/// every image is reached through a loop device with direct I/O instead of
/// the file (ours through a symlink in `links`, which a second `DirStore` reads).
struct Images {
    store: DirStore,
    qemu: Qemu,
    size: u64,
    loops: Option<Links>,
}

struct Links {
    store: DirStore,
    dir: PathBuf,
}

/// Where qemu and raw reach one image's copies (ours reaches it by name in
/// [`Images::ours_store`]), and what keeps them reachable.
struct Attached {
    qemu: PathBuf,
    raw: PathBuf,
    _loops: Vec<LoopDev>,
}

impl Images {
    fn path(&self, name: &str) -> PathBuf {
        self.store.path(name)
    }

    /// A fresh, empty image `name` with room for every cluster (no growth
    /// here), and copies of its bytes for qemu and for raw I/O.
    fn fresh(&self, name: &str) -> Result<()> {
        let lv = self.size + thin::format::metadata_overhead(self.size, CLUSTER) + 4 * CLUSTER;
        thin::create(
            &self.store,
            name,
            &CreateOptions {
                size: Some(self.size),
                initial_lv_size: lv,
                ..Default::default()
            },
        )?;
        for suffix in ["qemu", "raw"] {
            copy_sparse(&self.path(name), &self.path(&format!("{name}.{suffix}")))?;
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.path(name)).with_context(|| format!("removing {name}"))
    }

    /// The image `name` and its copies as each side reaches them.
    fn attach(&self, name: &str) -> Result<Attached> {
        let files = [
            self.path(name),
            self.path(&format!("{name}.qemu")),
            self.path(&format!("{name}.raw")),
        ];
        let Some(links) = &self.loops else {
            let [_, q, r] = files;
            return Ok(Attached {
                qemu: q,
                raw: r,
                _loops: Vec::new(),
            });
        };
        let mut loops = Vec::new();
        for f in &files {
            let l = LoopDev::attach(f)?;
            let st = Command::new("losetup")
                .arg("--direct-io=on")
                .arg(l.path())
                .status()?;
            ensure!(
                st.success(),
                "losetup --direct-io=on {}: {st}",
                l.path().display()
            );
            loops.push(l);
        }
        let link = links.dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(loops[0].path(), &link)?;
        Ok(Attached {
            qemu: loops[1].path().to_path_buf(),
            raw: loops[2].path().to_path_buf(),
            _loops: loops,
        })
    }

    fn ours_store(&self) -> &DirStore {
        self.loops.as_ref().map_or(&self.store, |l| &l.store)
    }

    /// Ours on `name`; the final flush (on close) is not timed, as
    /// qemu-img bench does not time its own.
    fn ours(&self, name: &str, depth: usize, pat: Pattern, op: Op) -> Result<Duration> {
        let opts = if op == Op::Write {
            OpenOptions::default()
        } else {
            OpenOptions::read_only()
        };
        let v = Volume::open(self.ours_store(), name, &opts)?;
        let t = drive(Dev::Thin(&v), depth, pat, op)?;
        v.flush()?;
        Ok(t)
    }

    fn raw(&self, path: &Path, depth: usize, pat: Pattern, op: Op) -> Result<Duration> {
        let dev = FileDev::open(path, &DevOptions::new().read_only(op == Op::Read))?;
        ensure!(dev.is_direct(), "{}: no O_DIRECT here", path.display());
        drive(Dev::Raw(&dev), depth, pat, op)
    }

    /// An allocating row on fresh images: ours, qemu, raw each on its own
    /// copy of the same empty image, in `round`'s order. Ours is checked by
    /// `qemu-img check`; its image is kept, the copies go.
    fn allocating(&self, img: &str, depth: usize, pat: Pattern, round: usize) -> Result<Sides> {
        self.fresh(img)?;
        let mut t = Sides {
            ours: Duration::ZERO,
            qemu: Duration::ZERO,
            raw: Duration::ZERO,
        };
        {
            let at = self.attach(img)?;
            for side in order(round) {
                match side {
                    Side::Ours => {
                        t.ours = self.ours(img, depth, pat, Op::Write)?;
                        self.qemu.check(&self.path(img))?;
                    }
                    Side::Qemu => t.qemu = self.qemu.bench(&at.qemu, depth, pat, Op::Write)?,
                    Side::Raw => t.raw = self.raw(&at.raw, depth, pat, Op::Write)?,
                }
            }
        }
        self.remove(&format!("{img}.qemu"))?;
        self.remove(&format!("{img}.raw"))?;
        Ok(t)
    }
}

/// `cp --sparse=always`: the fresh images are almost all holes.
fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    ensure!(st.success(), "cp {} {}: {st}", from.display(), to.display());
    Ok(())
}

/// Writes back and commits whatever earlier steps left (ext4 journal,
/// discards of removed images) before a timed step, so it does not land
/// on whoever runs next.
fn settle() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// Bytes free for an unprivileged user on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into a zeroed struct we own; c is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        bail!(
            "statvfs {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The patterns of one run: 1 MiB sequential, 4 KiB sequential (allocating:
/// one request in 16 allocates a cluster), 4 KiB strided (reads, rewrites).
struct Patterns {
    seq: Pattern,
    alloc: [Pattern; 2],
    strided: [Pattern; 2],
}

impl Patterns {
    fn new(sz: &Sizes) -> Result<Patterns> {
        let seq = Pattern {
            req: MIB,
            count: sz.disk / MIB,
            step: MIB,
        };
        let alloc = sz.small_count.map(|count| Pattern {
            req: 4 * KIB,
            count,
            step: 4 * KIB,
        });
        let strided = sz.small_count.map(|count| Pattern {
            req: 4 * KIB,
            count,
            step: sz.stride,
        });
        for p in [seq].iter().chain(&alloc).chain(&strided) {
            p.check(sz.disk)?;
        }
        Ok(Patterns {
            seq,
            alloc,
            strided,
        })
    }
}

fn images(sz: &Sizes, scratch: &Path, qemu: &Path, dir: &str, loops: bool) -> Result<Images> {
    let dir = scratch.join(dir);
    std::fs::create_dir(&dir)?;
    let loops = if loops {
        let links = dir.join("links");
        std::fs::create_dir(&links)?;
        Some(Links {
            store: DirStore::new(&links, 4 * MIB),
            dir: links,
        })
    } else {
        None
    };
    Ok(Images {
        store: DirStore::new(&dir, 4 * MIB),
        qemu: Qemu {
            bin: qemu.to_path_buf(),
        },
        size: sz.disk,
        loops,
    })
}

/// The I/O rows, in the order they print: reads, allocating writes,
/// rewrites, 1 MiB writes; each a median over `sz.rounds` rounds. With
/// `seq_only`, the 1 MiB writes alone.
fn io_rows(sz: &Sizes, scratch: &Path, qemu: &Path, seq_only: bool) -> Result<Vec<Row>> {
    let im = images(sz, scratch, qemu, "io", false)?;
    let p = Patterns::new(sz)?;
    let named = |what: &str, pats: [Pattern; 2]| -> Vec<Row> {
        DEPTHS
            .iter()
            .zip(pats)
            .map(|(d, pat)| Row::new(format!("{what}_qd{d}"), pat))
            .collect()
    };
    let mut read = named("read_4k", p.strided);
    let mut alloc = named("alloc_write_4k", p.alloc);
    let mut rewrite = named("rewrite_4k", p.strided);
    let mut seq = named("seq_write_1m", [p.seq; 2]);
    for round in 0..sz.rounds {
        // Depth 32 first and removed at once: three full images at most
        // are on the disk at a time.
        for (i, &d) in DEPTHS.iter().enumerate().rev() {
            eprintln!("thin_ops: round {round}: 1 MiB sequential writes, depth {d}");
            let img = format!("seq_qd{d}");
            seq[i].push(im.allocating(&img, d, p.seq, round)?);
            if d != 1 || seq_only {
                im.remove(&img)?;
            }
        }
        if seq_only {
            continue;
        }
        // Ours' depth-1 output, fully allocated, is every side's image for
        // the reads and rewrites of this round.
        let data = "seq_qd1";
        for (i, &d) in DEPTHS.iter().enumerate() {
            eprintln!("thin_ops: round {round}: 4 KiB reads, depth {d}");
            let pat = p.strided[i];
            let mut t = Vec::new();
            for side in order(round) {
                let took = match side {
                    Side::Ours => im.ours(data, d, pat, Op::Read)?,
                    Side::Qemu => im.qemu.bench(&im.path(data), d, pat, Op::Read)?,
                    Side::Raw => im.raw(&im.path(data), d, pat, Op::Read)?,
                };
                t.push((side, took));
            }
            read[i].push(sides(&t));
        }
        for (i, &d) in DEPTHS.iter().enumerate() {
            eprintln!("thin_ops: round {round}: 4 KiB allocating writes, depth {d}");
            let img = format!("alloc_qd{d}");
            alloc[i].push(im.allocating(&img, d, p.alloc[i], round)?);
            im.remove(&img)?;
        }
        // Rewrites: ours and qemu in turn on the same image; raw last, as
        // it overwrites the qcow2 metadata too.
        let mut by_depth = Vec::new();
        for (i, &d) in DEPTHS.iter().enumerate() {
            eprintln!("thin_ops: round {round}: 4 KiB rewrites, depth {d}");
            let pat = p.strided[i];
            let mut t = Vec::new();
            for side in order(round).into_iter().filter(|s| *s != Side::Raw) {
                let took = match side {
                    Side::Ours => im.ours(data, d, pat, Op::Write)?,
                    _ => im.qemu.bench(&im.path(data), d, pat, Op::Write)?,
                };
                t.push((side, took));
            }
            by_depth.push(t);
        }
        im.qemu.check(&im.path(data))?;
        for (i, &d) in DEPTHS.iter().enumerate() {
            let mut t = std::mem::take(&mut by_depth[i]);
            t.push((
                Side::Raw,
                im.raw(&im.path(data), d, p.strided[i], Op::Write)?,
            ));
            rewrite[i].push(sides(&t));
        }
        im.remove(data)?;
    }
    if seq_only {
        return Ok(seq);
    }
    let mut rows = read;
    rows.extend(alloc);
    rows.extend(rewrite);
    rows.extend(seq);
    Ok(rows)
}

fn sides(t: &[(Side, Duration)]) -> Sides {
    let of = |s: Side| {
        t.iter()
            .find(|(x, _)| *x == s)
            .map_or(Duration::ZERO, |x| x.1)
    };
    Sides {
        ours: of(Side::Ours),
        qemu: of(Side::Qemu),
        raw: of(Side::Raw),
    }
}

/// Why the loop-device rows cannot run here, if they cannot.
fn loop_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (loop devices need root)".into());
    }
    if find_tool("losetup").is_none() || !Path::new("/dev/loop-control").exists() {
        return Some("no losetup or /dev/loop-control".into());
    }
    None
}

/// `SSV_THIN_LOOP=1`: the allocating rows again, each image reached through
/// a loop device with direct I/O (block-device semantics, as an LV on a
/// LUN), named `…_loop`.
fn loop_rows(sz: &Sizes, scratch: &Path, qemu: &Path, seq_only: bool) -> Result<Vec<Row>> {
    let im = images(sz, scratch, qemu, "loop", true)?;
    let p = Patterns::new(sz)?;
    let mut rows = Vec::new();
    let alloc = ("alloc_write_4k", p.alloc);
    let seq = ("seq_write_1m", [p.seq; 2]);
    let kinds = if seq_only {
        vec![seq]
    } else {
        vec![alloc, seq]
    };
    for (what, pats) in kinds {
        for (i, &d) in DEPTHS.iter().enumerate() {
            let mut row = Row::new(format!("{what}_qd{d}_loop"), pats[i]);
            for round in 0..sz.rounds {
                eprintln!("thin_ops: round {round}: {what} on loop devices, depth {d}");
                row.push(im.allocating("l", d, pats[i], round)?);
                im.remove("l")?;
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

struct Growth {
    bytes: u64,
    threads: usize,
    ours: Duration,
    raw: Duration,
    stats: thin::GrowthStats,
    errors: u64,
    lv_size: u64,
    note: Option<String>,
}

/// Writes `bytes` as `threads` disjoint sequential streams of 1 MiB requests,
/// stream `t` covering `[t * bytes/threads, (t+1) * bytes/threads)` shifted
/// by `base`; returns the failed writes (a thread stops at its first) and
/// the first error. The caller times it, with its flush.
fn streams(
    threads: usize,
    bytes: u64,
    base: u64,
    write: &(dyn Fn(&[u8], u64) -> Result<()> + Sync),
) -> (u64, Option<anyhow::Error>) {
    let per = bytes / threads as u64 / MIB * MIB;
    let errors = AtomicU64::new(0);
    let first = Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let (errors, first) = (&errors, &first);
            s.spawn(move || {
                let mut buf = AlignedBuf::new(MIB as usize, 4096);
                buf.fill(PATTERN);
                let mut off = base + t * per;
                while off < base + (t + 1) * per {
                    if let Err(e) = write(&buf, off) {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first
                            .lock()
                            .unwrap()
                            .get_or_insert(e.context(format!("stream {t} at {off}")));
                        return;
                    }
                    off += MIB;
                }
            });
        }
    });
    (errors.into_inner(), first.into_inner().unwrap_or(None))
}

/// Growth on a VG: ours (with flush) against raw streams into the same PV
/// file's extent area (holes again), with flush.
fn growth_row(sz: &Sizes, scratch: &Path) -> Result<Growth> {
    let threads = GROWTH_THREADS;
    let mut bytes = sz.growth;
    let mut note = None;
    let free = free_bytes(scratch)?;
    if sz.full && free < 30 * GIB {
        let scaled = (free.saturating_sub(6 * GIB) / GIB * GIB).clamp(2 * GIB, sz.growth);
        note = Some(format!(
            "only {:.1} GiB free: growth row scaled down from {} to {} GiB",
            free as f64 / GIB as f64,
            sz.growth / GIB,
            scaled / GIB
        ));
        bytes = scaled;
    }
    let bytes = bytes / (threads as u64 * MIB) * (threads as u64 * MIB);
    let mda = 128 * MIB;
    let extents =
        (bytes + thin::format::metadata_overhead(bytes, CLUSTER)).div_ceil(sz.growth_extent) + 2;
    let pv_path = scratch.join("pv0.img");
    let pv_size = mda + 4 * MIB + (extents + 1) * sz.growth_extent;
    std::fs::File::create(&pv_path)?.set_len(pv_size)?;
    let pv_dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(&pv_path, &DevOptions::new())?);
    let label = format_pv(
        &*pv_dev,
        &PvFormat {
            mda_size: mda,
            ..Default::default()
        },
    )?;
    let pe_start = label.pe_start();
    let (ours, errors, stats, lv_size) = {
        let vg = OpenVg::create(
            "thinbench",
            &[PvDev::new(pv_dev, pv_path.display().to_string())],
            sz.growth_extent,
        )?;
        let store: Arc<VgStore> = Arc::new(VgStore::from_open(vg));
        thin::create(
            &*store,
            "grow",
            &CreateOptions {
                size: Some(bytes),
                initial_lv_size: sz.growth_initial,
                ..Default::default()
            },
        )?;
        let opts = OpenOptions {
            policy: GrowthPolicy {
                chunk: sz.growth_chunk,
                ..Default::default()
            },
            ..OpenOptions::default().with_extender(Arc::new(StoreExtender(store.clone())))
        };
        let v = Volume::open(&*store, "grow", &opts)?;
        settle();
        let t = Instant::now();
        let (errors, first) = streams(threads, bytes, 0, &|buf, off| {
            v.write(buf, off).map_err(Into::into)
        });
        v.flush()?;
        let took = t.elapsed();
        if let Some(e) = first {
            eprintln!("thin_ops: growth row: {errors} write errors, first: {e:#}");
        }
        // The data is there: the first and last MiB of each stream.
        let per = bytes / threads as u64;
        let mut buf = AlignedBuf::new(MIB as usize, 4096);
        for t in 0..threads as u64 {
            for off in [t * per, (t + 1) * per - MIB] {
                v.read(&mut buf, off)?;
                ensure!(
                    buf.iter().all(|&b| b == PATTERN),
                    "growth row: data at {off} did not come back"
                );
            }
        }
        (took, errors, v.growth(), v.lv_size())
    };
    // Back to holes, then the same streams straight into the extent area.
    {
        let f = std::fs::OpenOptions::new().write(true).open(&pv_path)?;
        // SAFETY: plain syscall on an open fd; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                pe_start as libc::off_t,
                (pv_size - pe_start) as libc::off_t,
            )
        };
        ensure!(
            rc == 0,
            "punching holes in {}: {}",
            pv_path.display(),
            std::io::Error::last_os_error()
        );
    }
    let dev = FileDev::open(&pv_path, &DevOptions::new())?;
    ensure!(dev.is_direct(), "{}: no O_DIRECT here", pv_path.display());
    settle();
    let t = Instant::now();
    let (raw_errors, first) = streams(threads, bytes, pe_start, &|buf, off| {
        dev.write_at(buf, off).map_err(Into::into)
    });
    dev.flush()?;
    let raw = t.elapsed();
    if let Some(e) = first {
        bail!("raw streams: {raw_errors} errors, first: {e:#}");
    }
    drop(dev);
    std::fs::remove_file(&pv_path)?;
    Ok(Growth {
        bytes,
        threads,
        ours,
        raw,
        stats,
        errors,
        lv_size,
        note,
    })
}

struct Clone {
    allocated: u64,
    report: thin::clone::CloneReport,
    ours: Vec<Duration>,
    qemu: Vec<Duration>,
    ours_size: u64,
    qemu_size: u64,
}

/// Writes `len` bytes of `byte` at `off` in 2 MiB requests.
fn fill(v: &Volume, off: u64, len: u64, byte: u8) -> Result<()> {
    let mut buf = AlignedBuf::new((2 * MIB) as usize, 4096);
    buf.fill(byte);
    let mut at = off;
    while at < off + len {
        let n = (off + len - at).min(2 * MIB) as usize;
        v.write(&buf[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn allocated_on_disk(p: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(p)?.blocks() * 512)
}

/// A 3-layer chain (base, two snapshots over it) with data, zero-filled
/// writes and zeroed ranges, cloned by ours and by qemu-img convert.
fn clone_row(sz: &Sizes, scratch: &Path, qemu: &Qemu) -> Result<Clone> {
    let dir = scratch.join("clone");
    std::fs::create_dir(&dir)?;
    let store = DirStore::new(&dir, 4 * MIB);
    let u = sz.clone_unit;
    let size = 64 * u;
    let lv = size + thin::format::metadata_overhead(size, CLUSTER) + 4 * CLUSTER;
    thin::create(
        &store,
        "c0",
        &CreateOptions {
            size: Some(size),
            initial_lv_size: lv,
            ..Default::default()
        },
    )?;
    let layer = LayerOptions {
        initial_lv_size: lv,
        ..Default::default()
    };
    {
        let v = Volume::open(&store, "c0", &OpenOptions::default())?;
        fill(&v, 0, 16 * u, 0x11)?;
        // Allocated but all zeroes: both sides should leave it out.
        fill(&v, 20 * u, 2 * u, 0)?;
    }
    chain::snapshot(&store, "c0", "c1", &layer)?;
    {
        let v = Volume::open(&store, "c1", &OpenOptions::default())?;
        fill(&v, 12 * u, 8 * u, 0x22)?;
        // Zero clusters hiding the base's data.
        v.write_zeroes(4 * u, u)?;
    }
    chain::snapshot(&store, "c1", "c2", &layer)?;
    {
        let v = Volume::open(&store, "c2", &OpenOptions::default())?;
        fill(&v, 32 * u, 4 * u, 0x33)?;
        fill(&v, 36 * u, 2 * u, 0)?;
    }
    let allocated: u64 = ["c0", "c1", "c2"]
        .iter()
        .map(|n| allocated_on_disk(&dir.join(n)))
        .sum::<Result<u64>>()?;
    let (src, ours_out, qemu_out) = (dir.join("c2"), dir.join("ours"), dir.join("theirs"));
    let (mut ours_t, mut qemu_t) = (Vec::new(), Vec::new());
    let mut report = Default::default();
    for round in 0..sz.rounds {
        // Alternate who goes first.
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for ours_turn in order {
            let out = if ours_turn { &ours_out } else { &qemu_out };
            if out.exists() {
                std::fs::remove_file(out)?;
            }
            settle();
            let t = Instant::now();
            if ours_turn {
                report = thin::clone::full_clone(
                    &store,
                    "c2",
                    "ours",
                    &CreateOptions::default(),
                    None,
                    &mut |_| {},
                )?;
                ours_t.push(t.elapsed());
            } else {
                let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
                qemu.run(&[
                    "convert", "-f", "qcow2", "-O", "qcow2", "-t", "none", "-T", "none", s, o,
                ])?;
                qemu_t.push(t.elapsed());
            }
        }
    }
    // Both outputs hold what the chain holds.
    for out in [&ours_out, &qemu_out] {
        qemu.check(out)?;
        qemu.run(&[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            out.to_str().unwrap(),
            src.to_str().unwrap(),
        ])?;
    }
    let (ours_size, qemu_size) = (allocated_on_disk(&ours_out)?, allocated_on_disk(&qemu_out)?);
    for n in ["c0", "c1", "c2", "ours", "theirs"] {
        std::fs::remove_file(dir.join(n))?;
    }
    Ok(Clone {
        allocated,
        report,
        ours: ours_t,
        qemu: qemu_t,
        ours_size,
        qemu_size,
    })
}

fn main() -> Result<()> {
    let Some(qemu_bin) = find_tool("qemu-img") else {
        println!("SKIPPED: qemu-img not installed (Debian package qemu-utils)");
        return Ok(());
    };
    // `cargo test --all-targets` runs this binary without `--bench`: the
    // same rows with tiny sizes; figures only under `cargo bench`.
    let full = std::env::args().any(|a| a == "--bench");
    let sz = Sizes::new(full);
    let began = Instant::now();
    let scratch = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR"))))?;
    let qemu = Qemu {
        bin: qemu_bin.clone(),
    };
    let version = qemu.run(&["--version"])?;
    let need = 3 * sz.disk + 2 * GIB;
    let free = free_bytes(scratch.path())?;
    ensure!(
        free > need,
        "{} needs {} GiB free for the I/O rows, {} has {:.1}",
        if full {
            "the full run"
        } else {
            "the smoke run"
        },
        need / GIB,
        scratch.path().display(),
        free as f64 / GIB as f64
    );

    // SSV_THIN_ROWS=io,clone,growth (any of them) runs only those rows;
    // `seq` only the 1 MiB sequential writes of the I/O rows.
    let only = std::env::var("SSV_THIN_ROWS").ok();
    let wants = |row: &str| {
        only.as_ref()
            .is_none_or(|o| o.split(',').any(|r| r.trim() == row))
    };
    let seq_only = !wants("io") && wants("seq");
    let rows = if wants("io") || seq_only {
        io_rows(&sz, scratch.path(), &qemu_bin, seq_only).context("I/O rows")?
    } else {
        Vec::new()
    };
    let loop_rows = if (wants("io") || seq_only) && std::env::var_os("SSV_THIN_LOOP").is_some() {
        match loop_skip_reason() {
            Some(why) => {
                println!("SKIPPED loop-device rows: {why}");
                Vec::new()
            }
            None => {
                loop_rows(&sz, scratch.path(), &qemu_bin, seq_only).context("loop-device rows")?
            }
        }
    } else {
        Vec::new()
    };
    let c = if wants("clone") {
        eprintln!("thin_ops: full clone");
        Some(clone_row(&sz, scratch.path(), &qemu).context("clone row")?)
    } else {
        None
    };
    let g = if wants("growth") {
        eprintln!("thin_ops: growth");
        Some(growth_row(&sz, scratch.path()).context("growth row")?)
    } else {
        None
    };

    println!(
        "# {}; {} run; images: qcow2 v3, 64 KiB clusters, virtual size {} MiB, files on {}",
        version.lines().next().unwrap_or("qemu-img").trim(),
        if full {
            "full"
        } else {
            "smoke (figures mean nothing)"
        },
        sz.disk / MIB,
        scratch.path().display()
    );
    for r in rows.iter().chain(&loop_rows) {
        r.print();
    }

    if let Some(g) = &g {
        if let Some(n) = &g.note {
            println!("# NOTE: {n}");
        }
        let park = if g.stats.park_times.is_empty() {
            "p50 - p99 -".to_string()
        } else {
            let s = stats(g.stats.park_times.clone());
            format!("p50 {} p99 {}", ms(s.p50), ms(s.p99))
        };
        let mbps = |t: Duration| g.bytes as f64 / 1e6 / t.as_secs_f64().max(1e-9);
        println!(
            "# growth: {} MiB in {} threads x sequential 1 MiB writes + flush, initial LV {} MiB, \
             extents {} MiB, chunk {} MiB: {} ({}), final LV {} MiB; extensions {} (failed {}), \
             parked writes {}, park time {park}, errors {}",
            g.bytes / MIB,
            g.threads,
            sz.growth_initial / MIB,
            sz.growth_extent / MIB,
            sz.growth_chunk / MIB,
            Unit::MBps.fmt(mbps(g.ours)),
            ms(g.ours),
            g.lv_size / MIB,
            g.stats.extensions,
            g.stats.failed_extensions,
            g.stats.parked_writes,
            g.errors
        );
        println!(
            "# growth raw: same streams into the PV file's extent area (punched to holes first) + \
             flush: {} ({})",
            Unit::MBps.fmt(mbps(g.raw)),
            ms(g.raw)
        );
        ratio_rate(
            &format!("growth_seq_write_1m_{}threads_vs_raw", g.threads),
            mbps(g.ours),
            mbps(g.raw),
            Unit::MBps,
        );
        ensure!(
            g.errors == 0 && g.stats.failed_extensions == 0,
            "growth row: {} write errors, {} failed extensions ({:?})",
            g.errors,
            g.stats.failed_extensions,
            g.stats.last_error
        );
    }

    if let Some(c) = &c {
        let spread = |v: &[Duration]| {
            let lo = v.iter().min().copied().unwrap_or_default();
            let hi = v.iter().max().copied().unwrap_or_default();
            format!("{} [{}..{}]", ms(stats(v.to_vec()).p50), ms(lo), ms(hi))
        };
        println!(
            "# full clone: chain of 3 layers, {} MiB allocated in all; ours copied {} MiB, left out {} MiB \
             of zeroes; output on disk: ours {} MiB, qemu {} MiB; median of {}: ours {}, qemu {}",
            c.allocated / MIB,
            c.report.copied / MIB,
            c.report.zero / MIB,
            c.ours_size / MIB,
            c.qemu_size / MIB,
            c.ours.len(),
            spread(&c.ours),
            spread(&c.qemu)
        );
        ratio(
            "full_clone_vs_qemu_img_convert",
            stats(c.ours.clone()).p50,
            stats(c.qemu.clone()).p50,
        );
    }
    println!("# thin_ops took {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

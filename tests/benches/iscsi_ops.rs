//! Two comparisons on one 1 GiB file of non-zero data, in the same run:
//! - initiator: ours against libiscsi's `iscsi-perf`, both reading the same
//!   tgtd LUN (page cache warm): 4 KiB at depth 32 and 1, 1 MiB at depth 8.
//!   Ours: one thread keeping N reads in flight on one session
//!   (`IscsiLun::start_read`), as iscsi-perf's event loop does; and, as a
//!   second figure, N threads sharing the session, each issuing its next
//!   read synchronously (`BlockDev::read_at`). iscsi-perf: `-m N -b BLOCKS
//!   -t SECS`, its own "iops average";
//! - target: `iscsi-perf` reading the file through our target (in this
//!   process, `FileDev` with O_DIRECT) against tgtd serving it with
//!   `--bsoflags direct`, the rows of depth above 1.
//!
//! Each row also prints the CPU per request of the bench process, of
//! iscsi-perf and of tgtd, summed over that side's rounds.
//!
//! `cargo bench -p ssv-tests --bench iscsi_ops [ROW...]` (root, tgt and
//! libiscsi-bin installed; a ROW picks the rows whose `RATIO` name holds
//! it, e.g. `initiator_read_1m`); under `cargo test` the same rows run for
//! a fraction of a second each (a smoke run, figures mean nothing).

use anyhow::{bail, Context, Result};
use san::iscsi::{login, login::isid, IscsiLun, LoginOptions, Session};
use san::target::{LunConfig, TargetConfig, TargetServer};
use san::{BlockDev, FileDev, OpenOptions};
use ssv_tests::tgtd::{LunOpts, Tgtd, TgtdOpts};
use ssv_tests::{find_tool, Scratch, MIB};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

const IQN: &str = "iqn.2026-11.org.ssv.bench:perf";
const BLOCK: u64 = 512;

struct Row {
    name: &'static str,
    depth: usize,
    bytes: u64,
}

const ROWS: [Row; 3] = [
    Row {
        name: "read_4k_qd32",
        depth: 32,
        bytes: 4096,
    },
    Row {
        name: "read_4k_qd1",
        depth: 1,
        bytes: 4096,
    },
    Row {
        name: "read_1m_qd8",
        depth: 8,
        bytes: MIB,
    },
];

/// Requests per second of `row` through our initiator for `secs`: one
/// thread keeps `row.depth` reads in flight, refilling in the order they
/// end.
fn ours(lun: &IscsiLun, row: &Row, secs: f64) -> Result<f64> {
    let per = lun.size() / row.bytes;
    let mut next = (0..).map(|i: u64| i % per * row.bytes);
    let mut flight = Vec::with_capacity(row.depth);
    let mut done = 0u64;
    let t0 = Instant::now();
    for (_, at) in (0..row.depth).zip(&mut next) {
        flight.push(lun.start_read(vec![0u8; row.bytes as usize], at)?);
    }
    while let Some(i) = lun.wait_any(&flight)? {
        let buf = flight.swap_remove(i).wait()?;
        done += 1;
        if t0.elapsed().as_secs_f64() < secs {
            let at = next.next().context("offsets ran out")?;
            flight.push(lun.start_read(buf, at)?);
        }
    }
    Ok(done as f64 / t0.elapsed().as_secs_f64())
}

/// The same with `row.depth` threads, each reading synchronously.
fn ours_threads(lun: &IscsiLun, row: &Row, secs: f64) -> Result<f64> {
    let per = lun.size() / row.bytes;
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..row.depth)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut b = vec![0u8; row.bytes as usize];
                    while t0.elapsed().as_secs_f64() < secs {
                        let i = next.fetch_add(1, Ordering::Relaxed) % per;
                        lun.read_at(&mut b, i * row.bytes)?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        }
        Ok(())
    })?;
    Ok(done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64())
}

/// One of our initiator's ways of reading a row, in reads (or bytes) per second.
type Way = fn(&IscsiLun, &Row, f64) -> Result<f64>;

/// Our initiator's ways of reading, by the name their rows carry.
const WAYS: [(&str, Way); 2] = [("initiator", ours), ("initiator_threads", ours_threads)];

/// The rows the target is measured on: depth 1 says nothing of a target.
fn target_rows() -> impl Iterator<Item = &'static Row> {
    ROWS.iter().filter(|r| r.depth > 1)
}

/// iscsi-perf's "iops average" for `row` over `secs` (whole seconds, >= 1).
fn libiscsi(url: &str, row: &Row, secs: u64) -> Result<f64> {
    let out = Command::new("iscsi-perf")
        .args(["-i", "iqn.2026-11.org.ssv.bench:libiscsi"])
        .args(["-t", &secs.to_string()])
        .args(["-m", &row.depth.to_string()])
        .args(["-b", &(row.bytes / BLOCK).to_string()])
        .arg(url)
        .output()
        .context("running iscsi-perf")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let avg = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("iops average "))
        .next_back()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok());
    match avg {
        Some(n) if out.status.success() => Ok(n),
        _ => bail!(
            "iscsi-perf {url}: {}: {}{}",
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// CPU seconds used so far: by this process, by its reaped children
/// (iscsi-perf), and by tgtd.
#[derive(Clone, Copy, Default)]
struct Cpu {
    me: f64,
    children: f64,
    tgtd: f64,
}

impl Cpu {
    fn now(tgtd: u32) -> Cpu {
        let usage = |who| {
            // SAFETY: getrusage fills the zeroed struct it is given.
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: a valid `who` and a pointer to a live rusage.
            unsafe { libc::getrusage(who, &mut u) };
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            secs(u.ru_utime) + secs(u.ru_stime)
        };
        Cpu {
            me: usage(libc::RUSAGE_SELF),
            children: usage(libc::RUSAGE_CHILDREN),
            tgtd: proc_cpu(tgtd).unwrap_or(f64::NAN),
        }
    }

    fn since(self, then: Cpu) -> Cpu {
        Cpu {
            me: self.me - then.me,
            children: self.children - then.children,
            tgtd: self.tgtd - then.tgtd,
        }
    }

    fn add(&mut self, o: Cpu) {
        self.me += o.me;
        self.children += o.children;
        self.tgtd += o.tgtd;
    }
}

/// utime + stime of `pid` from /proc, in seconds.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the whole line.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// One side of a comparison: its rates, and the CPU its runs took per
/// request.
#[derive(Default)]
struct Side {
    rates: Vec<f64>,
    cpu: Cpu,
    requests: f64,
}

impl Side {
    fn run(&mut self, tgtd: u32, secs: f64, f: &mut impl FnMut() -> Result<f64>) -> Result<()> {
        let t0 = Cpu::now(tgtd);
        let rate = f()?;
        self.cpu.add(Cpu::now(tgtd).since(t0));
        self.requests += rate * secs;
        self.rates.push(rate);
        Ok(())
    }

    /// Median, lowest, highest.
    fn spread(&mut self) -> [f64; 3] {
        let v = &mut self.rates;
        v.sort_by(f64::total_cmp);
        [v[v.len() / 2], v[0], v[v.len() - 1]]
    }

    /// "bench process X µs, iscsi-perf Y µs, tgtd Z µs" per request.
    fn cpu_per_request(&self) -> String {
        let us = |s: f64| s / self.requests * 1e6;
        format!(
            "bench process {:.0} µs, iscsi-perf {:.0} µs, tgtd {:.0} µs",
            us(self.cpu.me),
            us(self.cpu.children),
            us(self.cpu.tgtd)
        )
    }
}

/// `rounds` alternating runs of `a` and `b`, of `secs[0]` and `secs[1]`.
fn pair(
    rounds: usize,
    tgtd: u32,
    secs: [f64; 2],
    mut a: impl FnMut() -> Result<f64>,
    mut b: impl FnMut() -> Result<f64>,
) -> Result<(Side, Side)> {
    let (mut x, mut y) = (Side::default(), Side::default());
    for round in 0..rounds {
        if round % 2 == 0 {
            x.run(tgtd, secs[0], &mut a)?;
            y.run(tgtd, secs[1], &mut b)?;
        } else {
            y.run(tgtd, secs[1], &mut b)?;
            x.run(tgtd, secs[0], &mut a)?;
        }
    }
    Ok((x, y))
}

fn report(what: &str, row: &Row, base: &str, mut ours: Side, mut theirs: Side) {
    let (o, b) = (ours.spread(), theirs.spread());
    println!(
        "# {what} {}: {} B requests, depth {}: ours {} [{}..{}], {base} {} [{}..{}]",
        row.name,
        row.bytes,
        row.depth,
        fmt(row, o[0]),
        fmt(row, o[1]),
        fmt(row, o[2]),
        fmt(row, b[0]),
        fmt(row, b[1]),
        fmt(row, b[2]),
    );
    println!(
        "#   CPU per request: ours: {}; {base}: {}",
        ours.cpu_per_request(),
        theirs.cpu_per_request()
    );
    println!(
        "RATIO {what}_{}_vs_{} ours={} baseline={} speedup={:.2}",
        row.name,
        base.replace('-', "_"),
        fmt(row, o[0]),
        fmt(row, b[0]),
        o[0] / b[0]
    );
}

fn fmt(row: &Row, rate: f64) -> String {
    if row.bytes >= MIB {
        format!("{:.0}MB/s", rate * row.bytes as f64 / 1e6)
    } else {
        format!("{:.1}kIOPS", rate / 1e3)
    }
}

fn main() -> Result<()> {
    if let Some(why) = Tgtd::available() {
        println!("SKIPPED: {why}");
        return Ok(());
    }
    if find_tool("iscsi-perf").is_none() {
        println!("SKIPPED: iscsi-perf not installed (Debian package libiscsi-bin)");
        return Ok(());
    }
    let full = std::env::args().any(|a| a == "--bench");
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |what: &str, row: &Row| {
        let name = format!("{what}_{}", row.name);
        picked.is_empty() || picked.iter().any(|p| name.contains(p.as_str()))
    };
    let names: Vec<String> = WAYS
        .iter()
        .flat_map(|(w, _)| ROWS.iter().map(move |r| format!("{w}_{}", r.name)))
        .chain(target_rows().map(|r| format!("target_{}", r.name)))
        .collect();
    if let Some(p) = picked
        .iter()
        .find(|p| !names.iter().any(|n| n.contains(p.as_str())))
    {
        bail!(
            "no row's name holds {p:?}; the rows are {}",
            names.join(", ")
        );
    }
    let (secs, rounds) = if full { (5u64, 5) } else { (1, 1) };
    let lun_bytes = if full { 1024 * MIB } else { 64 * MIB };
    let ours_secs = if full { secs as f64 } else { 0.2 };
    let scratch = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR"))))?;
    let file = scratch.path().join("lun");
    {
        // Non-zero data, so neither side reads holes.
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let chunk: Vec<u8> = (0..MIB).map(|i| (i * 7 % 251) as u8 | 1).collect();
        for _ in 0..lun_bytes / MIB {
            f.write_all(&chunk)?;
        }
        f.flush()?;
    }
    let mut t = Tgtd::start(TgtdOpts::default())?;
    t.add_target(1, IQN)?;
    t.add_lun(1, 1, &file, &LunOpts::default())?;
    t.bind_all(1)?;
    let addr = format!("127.0.0.1:{}", t.port()).parse()?;
    let url = format!("iscsi://127.0.0.1:{}/{IQN}/1", t.port());
    let c = login(
        addr,
        Some(IQN),
        &LoginOptions::new("iqn.2026-11.org.ssv.bench:ours", isid(1, 1)),
    )?;
    let lun = IscsiLun::open(Session::new(c), 1)?;
    // Warm the target's page cache for both sides alike.
    ours_threads(&lun, &ROWS[2], if full { 2.0 } else { 0.1 })?;

    println!(
        "# tgtd (tgt 1.0.85, rdwr backend) on 127.0.0.1, {} MiB LUN; {} run, {rounds} round(s) of {secs} s per side",
        lun_bytes / MIB,
        if full { "full" } else { "smoke (figures mean nothing)" }
    );
    for row in &ROWS {
        for (what, way) in WAYS.into_iter().filter(|(w, _)| wanted(w, row)) {
            let (o, b) = pair(
                rounds,
                t.pid(),
                [ours_secs, secs as f64],
                || way(&lun, row, ours_secs),
                || libiscsi(&url, row, secs),
            )?;
            report(what, row, "iscsi-perf", o, b);
        }
    }

    // The target: the same file through ours and through tgtd, both O_DIRECT.
    t.add_lun(
        1,
        2,
        &file,
        &LunOpts {
            direct: true,
            ..LunOpts::default()
        },
    )?;
    let tgtd_url = format!("iscsi://127.0.0.1:{}/{IQN}/2", t.port());
    let dev = FileDev::open(&file, &OpenOptions::default().read_only(true))?;
    let server = TargetServer::start(TargetConfig::new(
        IQN,
        vec!["127.0.0.1:0".parse()?],
        vec![LunConfig::new(1, Arc::new(dev)).read_only(true)],
    ))?;
    let ours_url = format!("iscsi://{}/{IQN}/1", server.portals()[0]);
    for row in target_rows().filter(|r| wanted("target", r)) {
        let (o, b) = pair(
            rounds,
            t.pid(),
            [secs as f64; 2],
            || libiscsi(&ours_url, row, secs),
            || libiscsi(&tgtd_url, row, secs),
        )?;
        report("target", row, "tgtd", o, b);
    }
    server.stop();
    drop(lun);
    t.stop()?;
    Ok(())
}

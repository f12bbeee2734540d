//! A lease contender for `tests/lockd_hosts.rs`, in the spirit of sanlock's
//! `devcount`: a real client process of a real `lockd` daemon that
//! increments counters on a separate "count file" under resource leases and
//! reports any sign of two holders at once.
//!
//! Each count block (512 bytes at `--count-offset` + 4096·i for the i-th
//! resource) holds the id of the last writer and a counter. Under a lease a
//! holder reads it, writes (me, counter + 1), and reads it back; anyone else's
//! write in between is a violation, and so is a counter lower than the one
//! this process last left there. The test also compares the final counters
//! with the acquisitions every process reports: an overlap loses increments.
//!
//! Modes:
//! - `loop` (default): acquire a random resource (retrying busy ones after a
//!   short random sleep), one checked increment, release; until `--stop-file`
//!   exists or `--count` acquisitions are done.
//! - `hold`: acquire `--resource` once (`--wait`: wait out a silent owner),
//!   then increment every `--interval-ms`, checking the block is still ours,
//!   until `--stop-file` exists; then release.
//!
//! Every count-block write is preceded by `Client::lease_valid()`. Output: JSON
//! lines on stdout (`acquired`, `violation`, `lease_invalid`, `fenced`,
//! `summary`), each with `mono_ns`, CLOCK_MONOTONIC on this host.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockd::client::{Client, ClientError};
use lockd::clock::{jitter, monotime_ns, random_u64};
use lockd::proto::ResourceSpec;
use san::{AlignedBuf, BlockDev, FileDev, OpenOptions};
use serde_json::json;

const BLOCK: usize = 512;
const BLOCK_STRIDE: u64 = 4096;

struct Args {
    socket: PathBuf,
    resources: Vec<ResourceSpec>,
    count_file: PathBuf,
    count_offset: u64,
    me: u64,
    hold: bool,
    wait: bool,
    stop_file: Option<PathBuf>,
    count: Option<u64>,
    interval: Duration,
    kill_grace: Duration,
    ignore_sigterm: bool,
    no_self_fence: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "lease_counter: {msg}\nusage: lease_counter --socket S --resource LS:RES:PATH:OFF [--resource ...] \
         --count-file F [--count-offset N] --me ID [--hold] [--wait] [--stop-file F] [--count N] \
         [--interval-ms N] [--kill-grace-ms N] [--ignore-sigterm] [--no-self-fence]"
    );
    std::process::exit(64)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        socket: PathBuf::new(),
        resources: Vec::new(),
        count_file: PathBuf::new(),
        count_offset: 0,
        me: 0,
        hold: false,
        wait: false,
        stop_file: None,
        count: None,
        interval: Duration::from_millis(50),
        kill_grace: Duration::from_secs(2),
        ignore_sigterm: false,
        no_self_fence: false,
    };
    let num = |v: Option<String>, what: &str| -> u64 {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage(&format!("{what} needs a number")))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--socket" => a.socket = it.next().unwrap_or_else(|| usage("--socket")).into(),
            "--resource" => {
                let s = it.next().unwrap_or_else(|| usage("--resource"));
                let (spec, _) = ResourceSpec::parse(&s).unwrap_or_else(|e| usage(&e));
                a.resources.push(spec);
            }
            "--count-file" => {
                a.count_file = it.next().unwrap_or_else(|| usage("--count-file")).into()
            }
            "--count-offset" => a.count_offset = num(it.next(), "--count-offset"),
            "--me" => a.me = num(it.next(), "--me"),
            "--hold" => a.hold = true,
            "--wait" => a.wait = true,
            "--stop-file" => {
                a.stop_file = Some(it.next().unwrap_or_else(|| usage("--stop-file")).into())
            }
            "--count" => a.count = Some(num(it.next(), "--count")),
            "--interval-ms" => a.interval = Duration::from_millis(num(it.next(), "--interval-ms")),
            "--kill-grace-ms" => {
                a.kill_grace = Duration::from_millis(num(it.next(), "--kill-grace-ms"))
            }
            "--ignore-sigterm" => a.ignore_sigterm = true,
            "--no-self-fence" => a.no_self_fence = true,
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if a.socket.as_os_str().is_empty() || a.count_file.as_os_str().is_empty() {
        usage("--socket and --count-file are required");
    }
    if a.resources.is_empty() || a.me == 0 {
        usage("at least one --resource and a non-zero --me are required");
    }
    a
}

fn emit(v: serde_json::Value) {
    let mut v = v;
    v["mono_ns"] = json!(monotime_ns());
    v["pid"] = json!(std::process::id());
    println!("{v}");
}

/// The count blocks, one per resource, on the count file with O_DIRECT.
struct Counts {
    dev: FileDev,
    base: u64,
}

impl Counts {
    fn offset(&self, i: usize) -> u64 {
        self.base + i as u64 * BLOCK_STRIDE
    }

    /// (last writer, counter)
    fn read(&self, i: usize) -> san::Result<(u64, u64)> {
        let mut buf = AlignedBuf::new(BLOCK, 4096);
        self.dev.read_at(&mut buf, self.offset(i))?;
        let w = u64::from_le_bytes(buf[0..8].try_into().unwrap_or_default());
        let c = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
        Ok((w, c))
    }

    fn write(&self, i: usize, writer: u64, counter: u64) -> san::Result<()> {
        let mut buf = AlignedBuf::new(BLOCK, 4096);
        buf[0..8].copy_from_slice(&writer.to_le_bytes());
        buf[8..16].copy_from_slice(&counter.to_le_bytes());
        self.dev.write_at(&buf, self.offset(i))
    }
}

#[derive(Default)]
struct Tally {
    acquisitions: u64,
    busy: u64,
    /// Failed acquires other than "busy" (nothing was written).
    acquire_errors: u64,
    /// Failed releases and count-block I/O.
    errors: u64,
    violations: u64,
    writes: u64,
    invalid: u64,
    /// The first few error messages.
    error_samples: Vec<String>,
}

impl Tally {
    fn error(&mut self, what: &str, e: impl std::fmt::Display) {
        if what == "acquire" {
            self.acquire_errors += 1;
        } else {
            self.errors += 1;
        }
        let msg = format!("{what}: {e}");
        eprintln!("lease_counter {}: {msg}", std::process::id());
        if self.error_samples.len() < 5 {
            self.error_samples.push(msg);
        }
    }

    fn violation(&mut self, what: String) {
        self.violations += 1;
        emit(json!({"event": "violation", "what": what}));
    }
}

fn stop_requested(a: &Args, t: &Tally) -> bool {
    a.stop_file.as_ref().is_some_and(|f| f.exists()) || a.count.is_some_and(|n| t.acquisitions >= n)
}

fn main() {
    let a = parse_args();
    if a.ignore_sigterm {
        // SAFETY: installs SIG_IGN for one signal; no handler code runs.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    let counts = Counts {
        dev: FileDev::open(&a.count_file, &OpenOptions::new()).unwrap_or_else(|e| {
            eprintln!("lease_counter: {e}");
            std::process::exit(1)
        }),
        base: a.count_offset,
    };
    let client = Client::connect(&a.socket).unwrap_or_else(|e| {
        eprintln!("lease_counter: {e}");
        std::process::exit(1)
    });
    let fenced = Arc::new(AtomicBool::new(false));
    if a.no_self_fence {
        // Keep running when the leases are lost, so the test can see lockd
        // itself stop us (SIGTERM, then SIGKILL after kill_grace).
        let f = fenced.clone();
        client.on_fence(move |why| {
            f.store(true, Ordering::SeqCst);
            emit(json!({"event": "fenced", "why": format!("{why:?}")}));
        });
    }
    if let Err(e) = client.register(a.kill_grace) {
        eprintln!("lease_counter: register: {e}");
        std::process::exit(1)
    }
    let mut t = Tally::default();
    if a.hold {
        hold(&a, &client, &counts, &mut t);
    } else {
        contend(&a, &client, &counts, &mut t);
    }
    emit(json!({
        "event": "summary",
        "me": a.me,
        "acquisitions": t.acquisitions,
        "busy": t.busy,
        "acquire_errors": t.acquire_errors,
        "errors": t.errors,
        "violations": t.violations,
        "writes": t.writes,
        "invalid": t.invalid,
        "fenced": fenced.load(Ordering::SeqCst),
        "error_samples": t.error_samples,
    }));
}

fn acquire(a: &Args, client: &Client, spec: &ResourceSpec) -> Result<u64, ClientError> {
    client.acquire(spec, false, a.wait, None).map(|i| i.lver)
}

/// Many short holds of random resources.
fn contend(a: &Args, client: &Client, counts: &Counts, t: &mut Tally) {
    // The counter each resource had when we last released it: it may only grow.
    let mut left = vec![0u64; a.resources.len()];
    let started = Instant::now();
    while !stop_requested(a, t) {
        let i = (random_u64() % a.resources.len() as u64) as usize;
        let spec = &a.resources[i];
        match acquire(a, client, spec) {
            Ok(_) => {}
            Err(e) if e.is_busy() => {
                t.busy += 1;
                std::thread::sleep(jitter(Duration::from_millis(3)));
                continue;
            }
            Err(e) => {
                t.error("acquire", e);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        t.acquisitions += 1;
        match counts.read(i) {
            Ok((w, c)) => {
                if c < left[i] {
                    t.violation(format!(
                        "{}: counter {c} (writer {w}) is below the {} we left",
                        spec.resource, left[i]
                    ));
                }
                if client.lease_valid() {
                    let next = c + 1;
                    match counts.write(i, a.me, next) {
                        Ok(()) => {
                            t.writes += 1;
                            // Give an overlapping holder a chance to show.
                            std::thread::yield_now();
                            match counts.read(i) {
                                Ok((w2, c2)) if (w2, c2) == (a.me, next) => left[i] = next,
                                Ok((w2, c2)) => {
                                    t.violation(format!(
                                        "{}: wrote ({}, {next}), read back ({w2}, {c2})",
                                        spec.resource, a.me
                                    ));
                                    left[i] = c2;
                                }
                                Err(e) => t.error("count read-back", e),
                            }
                        }
                        Err(e) => t.error("count write", e),
                    }
                } else {
                    t.invalid += 1;
                }
            }
            Err(e) => t.error("count read", e),
        }
        if let Err(e) = client.release(spec, None) {
            t.error("release", e);
        }
    }
    eprintln!(
        "lease_counter {}: {} acquisitions in {:?}",
        std::process::id(),
        t.acquisitions,
        started.elapsed()
    );
}

/// One long hold with periodic checked increments.
fn hold(a: &Args, client: &Client, counts: &Counts, t: &mut Tally) {
    let spec = &a.resources[0];
    let lver = loop {
        if stop_requested(a, t) {
            return;
        }
        match acquire(a, client, spec) {
            Ok(lver) => break lver,
            Err(e) if e.is_busy() => {
                t.busy += 1;
                std::thread::sleep(Duration::from_millis(20) + jitter(Duration::from_millis(20)));
            }
            Err(e) => {
                t.error("acquire", e);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    t.acquisitions += 1;
    emit(json!({"event": "acquired", "resource": spec.resource, "lver": lver}));
    let mut last: Option<u64> = None;
    let mut reported_invalid = false;
    while !stop_requested(a, t) {
        if !client.lease_valid() {
            t.invalid += 1;
            if !reported_invalid {
                reported_invalid = true;
                emit(json!({"event": "lease_invalid"}));
            }
            std::thread::sleep(a.interval);
            continue;
        }
        match counts.read(0) {
            Ok((w, c)) => {
                if let Some(l) = last {
                    if (w, c) != (a.me, l) {
                        t.violation(format!(
                            "{}: found ({w}, {c}) where we left ({}, {l})",
                            spec.resource, a.me
                        ));
                    }
                }
                if client.lease_valid() {
                    match counts.write(0, a.me, c + 1) {
                        Ok(()) => {
                            t.writes += 1;
                            last = Some(c + 1);
                        }
                        Err(e) => t.error("count write", e),
                    }
                }
            }
            Err(e) => t.error("count read", e),
        }
        std::thread::sleep(a.interval);
    }
    if let Err(e) = client.release(spec, None) {
        t.error("release", e);
    }
}

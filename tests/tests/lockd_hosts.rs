//! Several real `lockd` daemons on one machine, each a "host" with its own
//! socket and host id, sharing one lease file; real client processes
//! (`lease_counter`, a devcount-style contender) hold the leases and check
//! mutual exclusion on a separate count file.
//!
//! Timeouts are the short test setting: io_timeout 1 s, watchdog fire 3 s,
//! so renewal every 2 s, id_renewal_fail 8 s, kill_grace 2 s, host_dead 11 s
//! (`lockd::timing`). No watchdog device is used (`--watchdog` points at a
//! path that does not exist), so fencing rests on lockd stopping its holders
//! and on the client library's own deadline.
//!
//! The heavy test (10,000 contended acquisitions) runs alone; the others,
//! which mostly wait out lease timeouts, run side by side.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use lockd::client::{Client, ClientError};
use lockd::clock::monotime_ns;
use lockd::proto::{ResourceSpec, Status};
use lockd::record::{Leader, LeaderKind};
use lockd::timing::Timeouts;
use san::{AlignedBuf, BlockDev, FileDev, OpenOptions};
use serde_json::Value;
use ssv_tests::leases::lockd_bin;
use ssv_tests::{Scratch, MIB};

const LS: &str = "hosts";
const IO_TIMEOUT: u64 = 1;
const WATCHDOG_FIRE: u64 = 3;
/// Count blocks are this far apart in the count file.
const COUNT_STRIDE: u64 = 4096;

fn timeouts() -> Timeouts {
    Timeouts::new(IO_TIMEOUT, WATCHDOG_FIRE).unwrap()
}

/// The throughput test takes the write side: it runs alone, so the
/// timing tests (1 s io_timeout) never compete with it for the disk.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared_slot() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive_slot() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

fn counter_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lease_counter")
}

fn mono() -> u64 {
    monotime_ns()
}

fn secs_between(from_ns: u64, to_ns: u64) -> f64 {
    (to_ns as f64 - from_ns as f64) / 1e9
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill takes plain integers; callers only pass pids of children
    // they have not reaped yet, so the pid cannot have been reused.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// A child process stopped by pid when dropped: SIGCONT (it may be
/// stopped) and SIGTERM, then SIGKILL if it is still there after a while.
struct Proc {
    child: Child,
    what: String,
    exited: Option<(ExitStatus, u64)>,
    log: Option<PathBuf>,
}

impl Proc {
    fn new(child: Child, what: impl Into<String>, log: Option<PathBuf>) -> Proc {
        Proc {
            child,
            what: what.into(),
            exited: None,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        self.poll();
        self.exited.is_none()
    }

    fn poll(&mut self) {
        if self.exited.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some((st, mono()));
            }
        }
    }

    /// Sends `sig` unless the process has been reaped.
    fn signal(&mut self, sig: libc::c_int) {
        if self.running() {
            signal(self.pid(), sig);
        }
    }

    /// Waits up to `limit` for the exit; returns its status and the
    /// CLOCK_MONOTONIC time it was seen (within 10 ms).
    fn wait_exit(&mut self, limit: Duration) -> Option<(ExitStatus, u64)> {
        let end = Instant::now() + limit;
        loop {
            self.poll();
            if self.exited.is_some() || Instant::now() >= end {
                return self.exited;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        self.signal(libc::SIGTERM);
        self.signal(libc::SIGCONT);
        if self.wait_exit(Duration::from_secs(5)).is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_exit(Duration::from_secs(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            if let Some(log) = &self.log {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- last lines of {} ({}) ----", self.what, log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

struct Daemon {
    host_id: u64,
    socket: PathBuf,
    proc: Proc,
}

impl Daemon {
    fn client(&self) -> Client {
        Client::connect(&self.socket).unwrap()
    }

    fn status(&self) -> Status {
        self.client().status().unwrap()
    }

    /// The state of our one lockspace ("joined", "failed: ...").
    fn ls_state(&self) -> String {
        self.status()
            .lockspaces
            .first()
            .map(|l| l.state.clone())
            .unwrap_or_default()
    }

    /// Returns right after a renewal (so the next one is 2 s away), with
    /// the lockspace's write count then.
    fn just_renewed(&self) -> u64 {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let st = self.status();
            let ls = &st.lockspaces[0];
            if ls.renewal_age_ms < 200 {
                return ls.io.writes;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("host {}: no renewal seen for 5 s", self.host_id);
    }
}

/// One lease file with a lockspace and `resources` resources, one count
/// file, and `hosts` daemons that have joined the lockspace.
struct Cluster {
    daemons: Vec<Daemon>,
    lease: PathBuf,
    count: PathBuf,
    resources: usize,
    next_contender: u64,
    scratch: Scratch,
}

impl Cluster {
    fn new(hosts: u64, resources: usize, num_hosts: u64) -> Cluster {
        let scratch = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR")))).unwrap();
        let lease = scratch
            .sparse_file("leases", (1 + resources as u64) * MIB)
            .unwrap();
        let count = scratch
            .sparse_file("counts", resources as u64 * COUNT_STRIDE)
            .unwrap();
        let mut c = Cluster {
            daemons: Vec::new(),
            lease,
            count,
            resources,
            next_contender: 0,
            scratch,
        };
        c.lockd_ok(&[
            "direct",
            "init",
            "-s",
            &format!("{LS}:0:{}:0", c.lease.display()),
            "-o",
            &IO_TIMEOUT.to_string(),
        ]);
        for i in 0..resources {
            let r = c.res(i);
            c.lockd_ok(&["direct", "init", "-r", &r, "-n", &num_hosts.to_string()]);
        }
        for h in 1..=hosts {
            let socket = c.scratch.path().join(format!("h{h}.sock"));
            let log = c.scratch.path().join(format!("h{h}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(lockd_bin())
                .arg("daemon")
                .arg("--socket")
                .arg(&socket)
                .args(["-o", &IO_TIMEOUT.to_string()])
                .args(["--watchdog-fire", &WATCHDOG_FIRE.to_string()])
                .arg("--fault-injection")
                .arg("--watchdog")
                .arg(c.scratch.path().join("no-watchdog"))
                .args(["-e", &format!("host{h}.{}", std::process::id())])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            c.daemons.push(Daemon {
                host_id: h,
                socket,
                proc: Proc::new(child, format!("lockd host {h}"), Some(log)),
            });
        }
        for d in &mut c.daemons {
            let end = Instant::now() + Duration::from_secs(10);
            while Client::connect(&d.socket).is_err() {
                assert!(d.proc.running(), "lockd host {} exited", d.host_id);
                assert!(
                    Instant::now() < end,
                    "lockd host {} never listened",
                    d.host_id
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Join in parallel: each join waits delta_short_delay (2 s).
        let joins: Vec<(u64, Child)> = c
            .daemons
            .iter()
            .map(|d| {
                let child = Command::new(lockd_bin())
                    .arg("client")
                    .arg("--socket")
                    .arg(&d.socket)
                    .arg("add-lockspace")
                    .arg("-s")
                    .arg(format!("{LS}:{}:{}:0", d.host_id, c.lease.display()))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (d.host_id, child)
            })
            .collect();
        for (h, child) in joins {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "host {h} add-lockspace: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c
    }

    fn d(&self, host: u64) -> &Daemon {
        &self.daemons[host as usize - 1]
    }

    fn dm(&mut self, host: u64) -> &mut Daemon {
        &mut self.daemons[host as usize - 1]
    }

    fn res_offset(&self, i: usize) -> u64 {
        (i as u64 + 1) * MIB
    }

    /// LS:rI:PATH:OFFSET
    fn res(&self, i: usize) -> String {
        format!("{LS}:r{i}:{}:{}", self.lease.display(), self.res_offset(i))
    }

    fn spec(&self, i: usize) -> ResourceSpec {
        ResourceSpec::parse(&self.res(i)).unwrap().0
    }

    fn lockd(&self, args: &[&str]) -> Output {
        Command::new(lockd_bin())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn lockd_ok(&self, args: &[&str]) -> String {
        let out = self.lockd(args);
        assert!(
            out.status.success(),
            "lockd {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `lockd client --socket <host's> ARGS`
    fn client_cli(&self, host: u64, args: &[&str]) -> Output {
        let sock = self.d(host).socket.display().to_string();
        let mut all = vec!["client", "--socket", &sock];
        all.extend_from_slice(args);
        self.lockd(&all)
    }

    fn dump(&self) -> Vec<Value> {
        let out = self.lockd_ok(&[
            "direct",
            "dump",
            "--json",
            &self.lease.display().to_string(),
        ]);
        serde_json::from_str(&out).unwrap()
    }

    /// The leader of resource `i`, read straight from the lease file.
    fn leader(&self, i: usize) -> Leader {
        let dev = FileDev::open(&self.lease, &OpenOptions::new().read_only(true)).unwrap();
        let mut buf = AlignedBuf::new(512, 4096);
        dev.read_at(&mut buf, self.res_offset(i)).unwrap();
        Leader::decode(&buf, LeaderKind::Paxos, 512).unwrap()
    }

    /// Overwrites `bytes` at `offset` of the lease file (O_DIRECT,
    /// read-modify-write of the sector), as a torn or foreign write would.
    fn scribble(&self, offset: u64, bytes: &[u8]) {
        let dev = FileDev::open(&self.lease, &OpenOptions::new().sync(true)).unwrap();
        let sector = offset / 512 * 512;
        let mut buf = AlignedBuf::new(512, 4096);
        dev.read_at(&mut buf, sector).unwrap();
        let at = (offset - sector) as usize;
        buf[at..at + bytes.len()].copy_from_slice(bytes);
        dev.write_at(&buf, sector).unwrap();
    }

    /// (last writer, counter) of count block `i`.
    fn count(&self, i: usize) -> (u64, u64) {
        let dev = FileDev::open(&self.count, &OpenOptions::new().read_only(true)).unwrap();
        let mut buf = AlignedBuf::new(512, 4096);
        dev.read_at(&mut buf, i as u64 * COUNT_STRIDE).unwrap();
        let w = u64::from_le_bytes(buf[0..8].try_into().unwrap());
        let c = u64::from_le_bytes(buf[8..16].try_into().unwrap());
        (w, c)
    }

    fn stop_file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(format!("stop-{name}"))
    }

    /// Starts a contender on `host`'s daemon; `me` is the id it writes.
    fn contender(&mut self, host: u64, me: u64, resources: &[usize], extra: &[&str]) -> Contender {
        self.next_contender += 1;
        let n = self.next_contender;
        let log = self.scratch.path().join(format!("c{n}-h{host}-me{me}.log"));
        let stop = self.stop_file(&format!("c{n}"));
        let mut cmd = Command::new(counter_bin());
        cmd.arg("--socket")
            .arg(&self.d(host).socket)
            .arg("--count-file")
            .arg(&self.count)
            .args(["--me", &me.to_string()])
            .arg("--stop-file")
            .arg(&stop)
            .args(extra);
        // A holder uses the count block of its one resource; a looping
        // contender numbers the blocks after its resource list.
        let base = if resources.len() == 1 {
            resources[0] as u64 * COUNT_STRIDE
        } else {
            assert_eq!(resources, (0..self.resources).collect::<Vec<_>>());
            0
        };
        cmd.args(["--count-offset", &base.to_string()]);
        for &i in resources {
            cmd.arg("--resource").arg(self.res(i));
        }
        let err = std::fs::File::create(&log).unwrap();
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Contender {
            proc: Proc::new(
                child,
                format!("contender {n} (writer {me}) on host {host}"),
                Some(log),
            ),
            stop,
            rx,
            events: Vec::new(),
        }
    }
}

struct Contender {
    proc: Proc,
    stop: PathBuf,
    rx: Receiver<Value>,
    events: Vec<Value>,
}

impl Contender {
    /// The first `kind` event, waiting up to `limit` for it.
    fn wait_for(&mut self, kind: &str, limit: Duration) -> Option<Value> {
        let end = Instant::now() + limit;
        loop {
            if let Some(e) = self.events.iter().find(|e| e["event"] == kind) {
                return Some(e.clone());
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(v) => self.events.push(v),
                Err(RecvTimeoutError::Timeout) if Instant::now() < end => {}
                Err(_) => return None,
            }
        }
    }

    fn drain(&mut self) {
        while let Ok(v) = self.rx.try_recv() {
            self.events.push(v);
        }
    }

    fn violations(&mut self) -> Vec<Value> {
        self.drain();
        self.events
            .iter()
            .filter(|e| e["event"] == "violation")
            .cloned()
            .collect()
    }

    /// Asks it to stop: it releases its lease and prints its summary.
    fn request_stop(&self) {
        std::fs::write(&self.stop, b"").unwrap();
    }

    /// Stops it (see `request_stop`) and returns its summary.
    fn finish(&mut self, limit: Duration) -> Value {
        self.request_stop();
        let (st, _) = self
            .proc
            .wait_exit(limit)
            .unwrap_or_else(|| panic!("{} did not stop", self.proc.what));
        assert!(st.success(), "{} exited with {st:?}", self.proc.what);
        self.wait_for("summary", Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{} printed no summary", self.proc.what))
    }
}

fn exit_signal(st: &ExitStatus) -> Option<i32> {
    st.signal()
}

/// Polls `f` every 20 ms until it returns `Some`, for up to `limit`.
fn poll<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ev_ns(e: &Value) -> u64 {
    e["mono_ns"].as_u64().unwrap()
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 4 hosts, 12 contender processes (3 per host) over 4 resources, until
/// 10,000 acquisitions: no holder ever sees another's write, and the
/// counters add up to the acquisitions.
#[test]
fn mutual_exclusion_10k() {
    const TARGET: u64 = 10_000;
    let _slot = exclusive_slot();
    let mut c = Cluster::new(4, 4, 8);
    let all: Vec<usize> = (0..4).collect();
    let mut contenders = Vec::new();
    for host in 1..=4 {
        for j in 0..3 {
            contenders.push(c.contender(host, host * 10 + j, &all, &[]));
        }
    }
    let started = Instant::now();
    let watch = LeaderWatch::start(&c.lease, 4);
    let total = |c: &Cluster| (0..4).map(|i| c.count(i).1).sum::<u64>();
    let mut last_report = Instant::now();
    loop {
        let n = total(&c);
        if n >= TARGET {
            break;
        }
        for k in &mut contenders {
            assert!(k.proc.running(), "{} died", k.proc.what);
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!(
                "{n} acquisitions after {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(170),
            "only {n} acquisitions in {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let reached = started.elapsed();
    for k in &contenders {
        k.request_stop();
    }
    let mut sum: HashMap<&str, u64> = HashMap::new();
    let mut acquire_errors = Vec::new();
    for k in &mut contenders {
        let s = k.finish(Duration::from_secs(20));
        for key in [
            "acquisitions",
            "busy",
            "acquire_errors",
            "errors",
            "violations",
            "invalid",
            "writes",
        ] {
            *sum.entry(key).or_default() += s[key].as_u64().unwrap();
        }
        let v = k.violations();
        assert!(v.is_empty(), "{}: {v:?}", k.proc.what);
        // Release and count-block I/O must not fail.
        assert_eq!(s["errors"], 0, "{}: {s}", k.proc.what);
        if s["acquire_errors"] != 0 {
            acquire_errors.push(s["error_samples"].clone());
        }
    }
    let elapsed = started.elapsed();
    let (reads, regressions) = watch.stop();
    let counted = total(&c);
    let per_resource: Vec<(u64, u64)> = (0..4).map(|i| c.count(i)).collect();
    eprintln!(
        "mutual_exclusion_10k: {} acquisitions ({} busy retries, {} failed acquires) by 12 processes \
         on 4 hosts over 4 resources; {TARGET} reached in {:.1} s, {:.0}/s overall; counters {per_resource:?}",
        sum["acquisitions"],
        sum["busy"],
        sum["acquire_errors"],
        reached.as_secs_f64(),
        sum["acquisitions"] as f64 / elapsed.as_secs_f64(),
    );
    eprintln!(
        "mutual_exclusion_10k: {} of {reads} leader reads saw the leader go back a version",
        regressions.len()
    );
    for r in regressions.iter().take(3) {
        eprintln!("  {r}");
    }
    for e in &acquire_errors {
        eprintln!("mutual_exclusion_10k: failed acquires: {e}");
    }
    // The safety properties.
    assert_eq!(sum["violations"], 0);
    assert_eq!(
        sum["invalid"], 0,
        "lease_valid() was false under a fresh lease"
    );
    assert_eq!(sum["writes"], sum["acquisitions"]);
    assert_eq!(
        counted, sum["acquisitions"],
        "the count blocks lost increments: two holders overlapped"
    );
    assert!(counted >= TARGET);
    // A failed acquire writes nothing, so it is no safety problem, but it
    // must stay rare. (When a release still marked its dblock RELEASED
    // before freeing the leader, a late leader write could send the leader
    // back a version, as `LeaderWatch` shows, and acquires then failed
    // with -229 "dblock ahead of the leader" about once per 10,000.)
    assert!(
        sum["acquire_errors"] * 500 <= sum["acquisitions"],
        "{} failed acquires: {acquire_errors:?}",
        sum["acquire_errors"]
    );
    for d in &c.daemons {
        let st = d.status();
        assert_eq!(st.lockspaces[0].state, "joined", "host {}", d.host_id);
        assert!(
            st.leases.is_empty(),
            "host {} still holds {:?}",
            d.host_id,
            st.leases
        );
    }
    drop(contenders);
    drop(c);
}

/// Reads the leaders of the first `n` resources every millisecond and
/// records each time one goes back to an older lease version.
struct LeaderWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl LeaderWatch {
    fn start(lease: &Path, n: usize) -> LeaderWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let dev = FileDev::open(lease, &OpenOptions::new().read_only(true)).unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut last: Vec<Option<Leader>> = vec![None; n];
            let mut regressions = Vec::new();
            let mut reads = 0u64;
            let mut buf = AlignedBuf::new(512, 4096);
            while !flag.load(Ordering::Relaxed) {
                for (i, prev) in last.iter_mut().enumerate() {
                    dev.read_at(&mut buf, (i as u64 + 1) * MIB).unwrap();
                    reads += 1;
                    let Ok(l) = Leader::decode(&buf, LeaderKind::Paxos, 512) else {
                        continue;
                    };
                    if let Some(p) = prev {
                        if l.lver < p.lver {
                            regressions.push(format!(
                                "r{i}: lver {} (owner {}, writer {}, timestamp {}) -> lver {} (owner {}, writer {}, timestamp {})",
                                p.lver, p.owner_id, p.write_id, p.timestamp,
                                l.lver, l.owner_id, l.write_id, l.timestamp
                            ));
                        }
                    }
                    *prev = Some(l);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (reads, regressions)
        });
        LeaderWatch { stop, thread }
    }

    /// (leader reads, regressions seen)
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A holder is kill -9'd: its daemon releases the lease at once, and a
/// contender on another host gets it within a few seconds, long before
/// host_dead.
#[test]
fn holder_killed() {
    let _slot = shared_slot();
    let mut c = Cluster::new(2, 1, 8);
    let mut h1 = c.contender(1, 1, &[0], &["--hold"]);
    let first = h1.wait_for("acquired", Duration::from_secs(10)).unwrap();
    let mut h2 = c.contender(2, 2, &[0], &["--hold"]);
    // h2 keeps being told the lease is busy.
    std::thread::sleep(Duration::from_millis(800));
    assert!(h2.events.iter().all(|e| e["event"] != "acquired"));
    assert_eq!(c.count(0).0, 1);
    let killed = mono();
    h1.proc.signal(libc::SIGKILL);
    let got = h2
        .wait_for("acquired", Duration::from_secs(10))
        .expect("host 2 never acquired after the holder died");
    let took = secs_between(killed, ev_ns(&got));
    eprintln!("holder_killed: host 2 acquired {took:.3} s after the holder was killed");
    assert!(took < 3.0, "took {took:.3} s");
    assert!(got["lver"].as_u64() > first["lver"].as_u64());
    assert!(c.d(1).status().leases.is_empty());
    // h2 now owns the count block.
    poll(Duration::from_secs(2), || (c.count(0).0 == 2).then_some(())).unwrap();
    let s = h2.finish(Duration::from_secs(5));
    assert_eq!(s["violations"], 0, "{s}");
    assert!(h2.violations().is_empty());
}

/// lockd is kill -9'd while its client holds a lease: the client kills
/// itself at once (it lost its daemon), and another host gets the lease
/// only after host_dead, in wait mode.
#[test]
fn lockd_killed() {
    let _slot = shared_slot();
    let t = timeouts();
    let mut c = Cluster::new(2, 1, 8);
    let mut h1 = c.contender(1, 1, &[0], &["--hold"]);
    h1.wait_for("acquired", Duration::from_secs(10)).unwrap();
    // Let host 2 see host 1 renew.
    std::thread::sleep(Duration::from_secs(1));
    c.d(1).just_renewed();
    let killed = mono();
    c.dm(1).proc.signal(libc::SIGKILL);
    let mut h2 = c.contender(2, 2, &[0], &["--hold", "--wait"]);
    let (st, died) = h1
        .proc
        .wait_exit(Duration::from_secs(2))
        .expect("the client outlived its daemon by 2 s");
    eprintln!(
        "lockd_killed: client died {:.3} s after its daemon ({st:?})",
        secs_between(killed, died)
    );
    assert_eq!(exit_signal(&st), Some(libc::SIGKILL), "{st:?}");
    assert!(secs_between(killed, died) < 1.0);
    let got = h2
        .wait_for("acquired", Duration::from_secs(25))
        .expect("host 2 never took the lease over");
    let took = secs_between(killed, ev_ns(&got));
    eprintln!(
        "lockd_killed: host 2 took over {took:.3} s after the kill (host_dead {:?})",
        t.own_host_dead()
    );
    // The last renewal was at most 0.2 s before the kill.
    assert!(
        took >= t.own_host_dead().as_secs_f64() - 0.5,
        "takeover after {took:.3} s: before host_dead"
    );
    assert!(took < t.own_host_dead().as_secs_f64() + 6.0, "{took:.3} s");
    let leader = c.leader(0);
    assert_eq!((leader.owner_id, leader.write_id), (2, 2));
    let s = h2.finish(Duration::from_secs(5));
    assert_eq!(s["violations"], 0, "{s}");
}

/// A whole host hangs (daemon and client SIGSTOPped) past host_dead;
/// another host takes the lease and writes. When the hung host resumes,
/// its client dies without writing, and its daemon reports the lockspace
/// failed and writes nothing: the leader still names the new owner.
#[test]
fn sigstop_host() {
    let _slot = shared_slot();
    let t = timeouts();
    let mut c = Cluster::new(2, 1, 8);
    let mut h1 = c.contender(1, 1, &[0], &["--hold", "--interval-ms", "20"]);
    h1.wait_for("acquired", Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let writes_before = c.d(1).just_renewed();
    let stopped = mono();
    h1.proc.signal(libc::SIGSTOP);
    c.dm(1).proc.signal(libc::SIGSTOP);
    let counter_at_stop = c.count(0);
    assert_eq!(counter_at_stop.0, 1);
    let mut h2 = c.contender(2, 2, &[0], &["--hold", "--wait", "--interval-ms", "20"]);
    let got = h2
        .wait_for("acquired", Duration::from_secs(25))
        .expect("host 2 never took the lease over");
    let took = secs_between(stopped, ev_ns(&got));
    eprintln!("sigstop_host: host 2 took over {took:.3} s after the stop");
    assert!(took >= t.own_host_dead().as_secs_f64() - 0.5, "{took:.3} s");
    // Host 2 bumps the count block.
    poll(Duration::from_secs(2), || (c.count(0).0 == 2).then_some(())).unwrap();
    // The hung host comes back.
    let resumed = mono();
    h1.proc.signal(libc::SIGCONT);
    c.dm(1).proc.signal(libc::SIGCONT);
    let (st, died) = h1
        .proc
        .wait_exit(Duration::from_secs(3))
        .expect("the resumed client kept running");
    eprintln!(
        "sigstop_host: resumed client died {:.3} s after SIGCONT ({st:?})",
        secs_between(resumed, died)
    );
    assert!(exit_signal(&st).is_some(), "{st:?}");
    let state = poll(Duration::from_secs(3), || {
        let o = c.client_cli(1, &["status", "--json"]);
        assert!(o.status.success(), "{}", stderr_of(&o));
        let st: Value = serde_json::from_slice(&o.stdout).unwrap();
        let s = st["lockspaces"][0]["state"].as_str().unwrap().to_string();
        s.starts_with("failed").then_some(s)
    })
    .expect("the resumed daemon does not report its lockspace failed");
    eprintln!("sigstop_host: host 1 status: {state}");
    // Host 2 keeps writing, and checks each time nobody else did.
    std::thread::sleep(Duration::from_secs(1));
    assert!(h2.violations().is_empty(), "{:?}", h2.violations());
    assert_eq!(c.count(0).0, 2);
    let st1 = c.d(1).status();
    assert_eq!(
        st1.lockspaces[0].io.writes, writes_before,
        "the resumed daemon wrote to the lease area"
    );
    assert!(st1.leases.is_empty());
    let lver = got["lver"].as_u64().unwrap();
    let leader = c.leader(0);
    assert_eq!(
        (leader.owner_id, leader.write_id, leader.lver),
        (2, 2, lver),
        "{leader:?}"
    );
    let entry = c
        .dump()
        .into_iter()
        .find(|e| e["kind"] == "resource" && e["resource"] == "r0")
        .unwrap();
    assert_eq!(entry["owner_id"], 2, "{entry}");
    assert_eq!(entry["lver"], lver, "{entry}");
    let s = h2.finish(Duration::from_secs(5));
    assert_eq!(s["violations"], 0, "{s}");
}

/// Lease I/O on one host becomes slower than io_timeout: its renewals
/// fail; at id_renewal_fail it fails the lockspace and stops its holder
/// (one that ignores SIGTERM is SIGKILLed after kill_grace); status says
/// so; another host takes over after host_dead, once the holder is dead.
#[test]
fn io_delay() {
    let _slot = shared_slot();
    let t = timeouts();
    let mut c = Cluster::new(2, 1, 8);
    let mut h1 = c.contender(
        1,
        1,
        &[0],
        &["--hold", "--ignore-sigterm", "--no-self-fence"],
    );
    h1.wait_for("acquired", Duration::from_secs(10)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.d(1).just_renewed();
    let slow = Duration::from_millis(1500);
    let faulted = mono();
    c.d(1)
        .client()
        .fault(&c.lease.display().to_string(), slow, slow, false)
        .unwrap();
    let mut h2 = c.contender(2, 2, &[0], &["--hold", "--wait"]);
    let (state, failed) = poll(Duration::from_secs(15), || {
        let s = c.d(1).ls_state();
        s.starts_with("failed").then(|| (s, mono()))
    })
    .expect("host 1 never failed its lockspace");
    let fail_after = secs_between(faulted, failed);
    eprintln!("io_delay: host 1 failed {fail_after:.3} s after the slowdown: {state}");
    assert!(state.contains("longer than"), "{state}");
    // The last renewal was at most 0.2 s before the slowdown; the failure
    // must come at id_renewal_fail after it, not when a stuck renewal
    // attempt gives up (up to 2·io_timeout later).
    let fail_s = t.id_renewal_fail().as_secs_f64();
    assert!(
        fail_after >= fail_s - 0.5 && fail_after < fail_s + 0.5,
        "{fail_after:.3} s"
    );
    let (st, died) = h1
        .proc
        .wait_exit(t.kill_grace() + Duration::from_secs(2))
        .expect("the holder survived lockd's SIGKILL");
    let kill_after = secs_between(failed, died);
    eprintln!("io_delay: holder died {kill_after:.3} s after the failure ({st:?})");
    assert_eq!(exit_signal(&st), Some(libc::SIGKILL), "{st:?}");
    assert!(
        kill_after >= t.kill_grace().as_secs_f64() - 0.3,
        "{kill_after:.3} s: it ignored SIGTERM, so only SIGKILL after kill_grace ends it"
    );
    // Dead with margin before host_dead, when other hosts may take over.
    let dead_after = secs_between(faulted, died);
    assert!(
        dead_after < t.own_host_dead().as_secs_f64() - 0.5,
        "the holder died {dead_after:.3} s after the slowdown (the last renewal)"
    );
    h1.drain();
    assert!(
        h1.events.iter().any(|e| e["event"] == "lease_invalid"),
        "{:?}",
        h1.events
    );
    let got = h2
        .wait_for("acquired", Duration::from_secs(20))
        .expect("host 2 never took the lease over");
    let took = secs_between(faulted, ev_ns(&got));
    eprintln!("io_delay: host 2 took over {took:.3} s after the slowdown");
    assert!(took >= t.own_host_dead().as_secs_f64() - 0.5, "{took:.3} s");
    assert!(
        ev_ns(&got) > died,
        "takeover before the old holder was dead"
    );
    let st1 = c.d(1).status();
    assert!(st1.lockspaces[0].state.starts_with("failed"));
    assert!(st1.leases.is_empty(), "{:?}", st1.leases);
    let s = h2.finish(Duration::from_secs(5));
    assert_eq!(s["violations"], 0, "{s}");
}

/// Bad checksums: another host's torn dblock is ignored and acquisitions
/// go on; a torn leader stops acquisition with a clear error (-228), and
/// `lockd direct dump` still runs.
#[test]
fn bad_checksums() {
    let _slot = shared_slot();
    let c = Cluster::new(2, 2, 8);
    let r0 = c.res(0);
    for h in [1, 2] {
        let o = c.client_cli(h, &["command", "-r", &r0, "--", "true"]);
        assert!(o.status.success(), "host {h}: {}", stderr_of(&o));
    }
    let dblock = |host: u64| c.res_offset(0) + (2 + host - 1) * 512;
    // Host 2's dblock: a flipped checksum byte. Host 3's (never written):
    // half a record of garbage.
    c.scribble(dblock(2) + 48, &[0x5a]);
    c.scribble(dblock(3), &[0xa5; 24]);
    for _ in 0..3 {
        let o = c.client_cli(1, &["command", "-r", &r0, "--", "true"]);
        assert!(o.status.success(), "{}", stderr_of(&o));
    }
    let o = c.client_cli(2, &["command", "-r", &r0, "--", "true"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let o = c.lockd(&["direct", "dump", &c.lease.display().to_string()]);
    assert!(o.status.success(), "{}", stderr_of(&o));

    // The leader: flip a byte of its checksum.
    c.scribble(c.res_offset(0) + 168, &[0xff]);
    let o = c.client_cli(1, &["command", "-r", &r0, "--", "true"]);
    let err = stderr_of(&o);
    eprintln!("bad_checksums: acquire over a torn leader: {err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("checksum") && err.contains("code -228"),
        "{err}"
    );
    match c
        .d(2)
        .client()
        .acquire(&c.spec(0), false, false, Some(c.d(2).proc.pid()))
    {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, -228, "{message}");
        }
        other => panic!("acquire over a torn leader: {other:?}"),
    }
    let o = c.lockd(&["direct", "dump", &c.lease.display().to_string()]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let dump = String::from_utf8_lossy(&o.stdout);
    assert!(
        dump.contains("DAMAGED: checksum"),
        "the torn leader is listed as damaged:\n{dump}"
    );
    // The other resource and both daemons are unaffected. The command's
    // lease is released when lockd sees its connection close, which may
    // come a little after the command's exit.
    let o = c.client_cli(2, &["command", "-r", &c.res(1), "--", "true"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    for d in &c.daemons {
        let st = poll(Duration::from_secs(5), || {
            let st = d.status();
            st.leases.is_empty().then_some(st)
        })
        .unwrap_or_else(|| panic!("host {} still holds {:?}", d.host_id, d.status().leases));
        assert_eq!(st.lockspaces[0].state, "joined");
    }
}

/// The command line: status, command (exit code passed through), acquire
/// and release for a pid, busy as exit code 2.
#[test]
fn cli() {
    let _slot = shared_slot();
    let c = Cluster::new(2, 1, 8);
    let r0 = c.res(0);
    // Each host lists the other live once it saw two renewals.
    let text = poll(Duration::from_secs(10), || {
        let o = c.client_cli(1, &["status"]);
        assert!(o.status.success(), "{}", stderr_of(&o));
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.contains(" live ").then_some(s)
    })
    .expect("host 1 never saw host 2 live");
    eprintln!("cli: status:\n{text}");
    assert!(
        text.contains(&format!("s {LS}:1:{}:0", c.lease.display())),
        "{text}"
    );
    assert!(text.contains("h 2 gen 1 live host2."), "{text}");
    let o = c.client_cli(2, &["status", "--json"]);
    let st: Status = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st.lockspaces.len(), 1);
    assert_eq!(
        (
            st.lockspaces[0].lockspace.as_str(),
            st.lockspaces[0].host_id
        ),
        (LS, 2)
    );
    assert_eq!(st.lockspaces[0].state, "joined");
    assert_eq!(st.io_timeout, IO_TIMEOUT);

    for (cmd, code) in [
        (vec!["true"], 0),
        (vec!["false"], 1),
        (vec!["sh", "-c", "exit 7"], 7),
    ] {
        let mut args = vec!["command", "-r", &r0, "--"];
        args.extend(cmd.iter().copied());
        let o = c.client_cli(1, &args);
        assert_eq!(o.status.code(), Some(code), "{cmd:?}: {}", stderr_of(&o));
    }

    let spawn_sleep = || {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        Proc::new(child, "sleep", None)
    };
    let mut p1 = spawn_sleep();
    let p2 = spawn_sleep();
    let (pid1, pid2) = (p1.pid().to_string(), p2.pid().to_string());
    let o = c.client_cli(1, &["acquire", "-r", &r0, "-p", &pid1]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let o = c.client_cli(1, &["inquire", "-p", &pid1]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&r0));
    let o = c.client_cli(1, &["status"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("r {r0} lver")));
    // Busy, from the other host and from the same one: exit code 2.
    for h in [2, 1] {
        let o = c.client_cli(h, &["acquire", "-r", &r0, "-p", &pid2]);
        assert_eq!(o.status.code(), Some(2), "host {h}: {}", stderr_of(&o));
        assert!(stderr_of(&o).contains("held by"), "{}", stderr_of(&o));
    }
    let o = c.client_cli(2, &["command", "-r", &r0, "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr_of(&o));
    // The holder exits: lockd releases; host 2 gets it.
    p1.signal(libc::SIGKILL);
    let _ = p1.wait_exit(Duration::from_secs(2));
    poll(Duration::from_secs(5), || {
        let o = c.client_cli(2, &["acquire", "-r", &r0, "-p", &pid2]);
        o.status.success().then_some(())
    })
    .expect("host 2 never got the lease after its holder exited");
    let o = c.client_cli(2, &["release", "-r", &r0, "-p", &pid2]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let o = c.client_cli(1, &["command", "-r", &r0, "--", "true"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
}

/// lockd is stopped (SIGTERM) while processes hold leases through it: it
/// must stop them before it releases their leases, or another host gets a
/// lease whose old holder still runs.
#[test]
fn lockd_sigterm_stops_holders_first() {
    let _slot = shared_slot();
    let mut c = Cluster::new(2, 3, 8);
    let (r0, r2) = (c.res(0), c.res(2));
    // `lockd client command` holding r2 for a command that records its pid.
    let pidfile = c.scratch.path().join("command.pid");
    let sock1 = c.d(1).socket.display().to_string();
    let script = format!("echo $$ > {}; exec sleep 60", pidfile.display());
    let cmd = Proc::new(
        Command::new(lockd_bin())
            .args(["client", "--socket", &sock1, "command", "-r", &r2, "--"])
            .args(["sh", "-c", &script])
            .spawn()
            .unwrap(),
        "lockd client command",
        None,
    );
    let cmd_pid: u32 = poll(Duration::from_secs(5), || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    })
    .expect("the command never ran");
    // A pid holder (`lockd client acquire -p`) of r0, a library client of r1.
    let mut sleeper = Proc::new(
        Command::new("sleep").arg("60").spawn().unwrap(),
        "sleep",
        None,
    );
    let o = c.client_cli(1, &["acquire", "-r", &r0, "-p", &sleeper.pid().to_string()]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let mut h1 = c.contender(1, 1, &[1], &["--hold"]);
    h1.wait_for("acquired", Duration::from_secs(10)).unwrap();
    let mut h2 = c.contender(2, 2, &[1], &["--hold"]);
    let other = Proc::new(
        Command::new("sleep").arg("60").spawn().unwrap(),
        "sleep",
        None,
    );
    c.dm(1).proc.signal(libc::SIGTERM);
    let acquired = poll(Duration::from_secs(10), || {
        let o = c.client_cli(2, &["acquire", "-r", &r0, "-p", &other.pid().to_string()]);
        o.status.success().then_some(())
    });
    assert!(acquired.is_some(), "host 2 never got r0");
    assert!(
        !sleeper.running(),
        "host 2 holds r0 while its holder on host 1 still runs"
    );
    let got = h2
        .wait_for("acquired", Duration::from_secs(10))
        .expect("host 2 never got r1");
    h1.proc.poll();
    let (st, _) = h1
        .proc
        .exited
        .expect("host 2 holds r1 while its holder on host 1 still runs");
    eprintln!("lockd_sigterm_stops_holders_first: host 1's client ended with {st:?}; host 2 got r1 at lver {}", got["lver"]);
    let acquired = poll(Duration::from_secs(10), || {
        let o = c.client_cli(2, &["acquire", "-r", &r2, "-p", &other.pid().to_string()]);
        o.status.success().then_some(())
    });
    assert!(acquired.is_some(), "host 2 never got r2");
    assert!(
        !lockd::daemon::alive(cmd_pid),
        "host 2 holds r2 while `lockd client command`'s command on host 1 still runs"
    );
    drop(cmd);
    let (st, _) = c
        .dm(1)
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("lockd did not exit");
    assert!(st.success(), "{st:?}");
    let s = h2.finish(Duration::from_secs(5));
    assert_eq!(s["violations"], 0, "{s}");
}

/// A release whose disk write fails (lockd retries it after its next
/// renewal) leaves the client holding nothing: its library must not fence
/// it later at the stale deadline of that lease.
#[test]
fn failed_release_does_not_fence_the_client() {
    let _slot = shared_slot();
    let t = timeouts();
    let c = Cluster::new(1, 1, 8);
    // This test process is the client; its fence only records.
    let client = c.d(1).client();
    let fenced = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let f = fenced.clone();
    client.on_fence(move |why| f.lock().unwrap().push(why));
    client.register(t.kill_grace()).unwrap();
    let spec = c.spec(0);
    client.acquire(&spec, false, false, None).unwrap();
    let path = c.lease.display().to_string();
    let ctl = c.d(1).client();
    ctl.fault(&path, Duration::ZERO, Duration::ZERO, true)
        .unwrap();
    let err = client.release(&spec, None).unwrap_err();
    ctl.fault(&path, Duration::ZERO, Duration::ZERO, false)
        .unwrap();
    assert!(
        matches!(err, ClientError::Refused { code: -5, .. }),
        "{err}"
    );
    // lockd retries the release after its next renewal.
    poll(Duration::from_secs(5), || {
        (c.leader(0).timestamp == 0).then_some(())
    })
    .expect("lockd never retried the release");
    // Past the deadline the acquire gave, plus the grace.
    std::thread::sleep(t.id_renewal_fail() + t.kill_grace() + Duration::from_secs(1));
    assert!(
        fenced.lock().unwrap().is_empty(),
        "{:?}",
        fenced.lock().unwrap()
    );
    assert!(client.lease_valid());
    client.acquire(&spec, false, false, None).unwrap();
    client.release(&spec, None).unwrap();
}

//! lockd's lease operations against sanlock 3.8.5's, on one lease file in
//! the same run: lockd in-process is host 2, a private sanlock daemon host 1
//! of the same lockspace, each on its own resources.
//!
//! Run: `cargo bench -p ssv-tests --bench lockd_ops` (root; needs sanlock,
//! libsanlock-dev and cc; strace to count sanlock's I/O).
//! `SSV_BENCH_SAMPLES=N` sets the latency sample count (default 200).
//!
//! - Exclusive acquire + release latency, in-process on both sides: the
//!   lockd library against sanlock's client API (`sanlock_acquire` and
//!   `sanlock_release` from a small C program, `shim/sanlk_acquire_loop.c`,
//!   built here), on resources made for 2000 and for 16 hosts.
//! - I/O per acquire and per release: lockd's own counters; sanlock's
//!   `io_submit` calls on the resource, traced with strace on the daemon.
//! - Joining a lockspace with a free host id: `HostId::acquire` against
//!   `sanlock client add_lockspace`, at io_timeout 10 (io_timeout 1 in the
//!   smoke run): both wait 2·io_timeout by design.
//! - CLI against CLI ([`cli_to_cli`]): sanlock's `client command -c
//!   /bin/true`, and lockd's once [`lockd_cli`] returns its command.

use anyhow::{bail, ensure, Context, Result};
use lockd::delta::{HostId, Renewer};
use lockd::direct;
use lockd::leaseio::LeaseDev;
use lockd::paxos::{AcquireOptions, Resource};
use lockd::record::Geometry;
use lockd::timing::Timeouts;
use ssv_tests::bench::{ms, ratio, stats, Stats};
use ssv_tests::leases::{join, lease_dev, JoinSpec};
use ssv_tests::sanlock::{
    build_acquire_loop, output_within, sanlock_skip_reason, InitOpts, LockspaceSpec, ResourceSpec,
    Sanlock, SanlockDaemon,
};
use ssv_tests::{find_tool, Scratch, MIB};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SPACE: &str = "bench";
/// Resources: name, offset, num_hosts, made by lockd (true) or sanlock.
const RESOURCES: [(&str, u64, u64, bool); 4] = [
    ("lockd2000", MIB, 2000, true),
    ("lockd16", 2 * MIB, 16, true),
    ("sanlk2000", 3 * MIB, 2000, false),
    ("sanlk16", 4 * MIB, 16, false),
];
const FILE_SIZE: u64 = 8 * MIB;

/// A RATIO line for a count or size (fewer is better), same format.
fn ratio_of(metric: &str, ours: f64, base: f64, unit: &str) {
    let speedup = base / ours.max(1e-9);
    println!("RATIO {metric} ours={ours:.1}{unit} baseline={base:.1}{unit} speedup={speedup:.1}");
}

/// Everything one run shares: the lease file, the sanlock daemon (host 1)
/// and the lockd host (host 2), both in lockspace `bench`.
struct Env {
    path: PathBuf,
    io_timeout: u64,
    daemon: SanlockDaemon,
    lockd: Arc<HostId>,
    _renew: Renewer,
    join_lockd: Duration,
    join_sanlock: Duration,
    bin_dir: tempfile::TempDir,
    _scratch: Scratch,
}

impl Env {
    fn new(io_timeout: u64) -> Result<Env> {
        let scratch = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR"))))?;
        let path = scratch.sparse_file("leases.img", FILE_SIZE)?;
        let sl = Sanlock::find()?;
        let dev = lease_dev(&path, Duration::from_secs(io_timeout))?;
        let g = Geometry::DEFAULT;
        direct::init_lockspace(&dev, g, 0, SPACE, io_timeout as u16)?;
        for (name, off, hosts, by_lockd) in RESOURCES {
            if by_lockd {
                direct::init_resource(&dev, g, off, SPACE, name, hosts)?;
            } else {
                let opts = InitOpts {
                    num_hosts: Some(hosts),
                    ..Default::default()
                };
                sl.direct_init_resource(&ResourceSpec::new(SPACE, name, &path, off), &opts)?;
            }
        }
        let daemon = SanlockDaemon::start("bench-sanlock-1")?;
        let timeouts = Timeouts::new(io_timeout, 60).map_err(anyhow::Error::msg)?;
        // Both join at once: each mostly sleeps 2·io_timeout.
        let lockd_join = {
            let p = path.clone();
            std::thread::spawn(move || {
                join(&p, 0, SPACE, &JoinSpec::new(2, "bench-lockd-2"), timeouts)
            })
        };
        let join_sanlock = daemon
            .add_lockspace(
                &LockspaceSpec::new(SPACE, 1, &path, 0),
                Some(io_timeout as u32),
            )
            .context("sanlock add_lockspace")?;
        let (lockd, join_lockd) = lockd_join
            .join()
            .map_err(|_| anyhow::anyhow!("lockd join panicked"))??;
        let bin_dir = tempfile::tempdir()?;
        Ok(Env {
            _renew: Renewer::start(lockd.clone()),
            path,
            io_timeout,
            daemon,
            lockd,
            join_lockd,
            join_sanlock,
            bin_dir,
            _scratch: scratch,
        })
    }

    fn spec(&self, name: &str) -> ResourceSpec {
        let off = RESOURCES.iter().find(|r| r.0 == name).unwrap().1;
        ResourceSpec::new(SPACE, name, &self.path, off)
    }

    /// A resource on its own device handle, so its counters see only its I/O.
    fn lockd_resource(&self, name: &str) -> Result<(Arc<LeaseDev>, Resource)> {
        let dev = lease_dev(&self.path, Duration::from_secs(self.io_timeout))?;
        let r = Resource::new(dev.clone(), self.spec(name).offset, SPACE, name)?;
        Ok((dev, r))
    }
}

/// lockd in-process: (acquire+release, acquire) latencies over `n`, after
/// two warm-up rounds.
fn lockd_latency(env: &Env, name: &str, n: usize) -> Result<(Stats, Stats)> {
    let (_dev, r) = env.lockd_resource(name)?;
    let mut total = Vec::with_capacity(n);
    let mut acq = Vec::with_capacity(n);
    for i in 0..n + 2 {
        let t = Instant::now();
        let held = r.acquire(&env.lockd, AcquireOptions::default())?;
        let a = t.elapsed();
        r.release(&env.lockd, &held)?;
        if i >= 2 {
            total.push(t.elapsed());
            acq.push(a);
        }
    }
    Ok((stats(total), stats(acq)))
}

/// sanlock in-process (libsanlock client, one registered connection):
/// (acquire+release, acquire) latencies over `n`, after two warm-up rounds.
fn sanlock_latency(env: &Env, prog: &Path, name: &str, n: usize) -> Result<(Stats, Stats)> {
    let mut cmd = Command::new(prog);
    let (k, v) = env.daemon.client_env();
    cmd.env(k, v)
        .arg(env.spec(name).to_string())
        .arg((n + 2).to_string());
    let out = output_within(cmd, Duration::from_secs(600))?;
    if !out.status.success() {
        bail!(
            "sanlk_acquire_loop: {}: {} {}",
            out.status,
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    let mut total = Vec::new();
    let mut acq = Vec::new();
    for line in out.stdout.lines().skip(2) {
        let t: Vec<&str> = line.split_whitespace().collect();
        let ["iter", a, r] = t.as_slice() else {
            bail!("sanlk_acquire_loop printed {line:?}");
        };
        let (a, r): (u64, u64) = (a.parse()?, r.parse()?);
        acq.push(Duration::from_nanos(a));
        total.push(Duration::from_nanos(a + r));
    }
    ensure!(
        total.len() == n,
        "sanlk_acquire_loop ran {} of {n}",
        total.len()
    );
    Ok((stats(total), stats(acq)))
}

/// I/O of one operation: (reads, writes, bytes read, bytes written).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Io {
    reads: f64,
    writes: f64,
    read_bytes: f64,
    write_bytes: f64,
}

impl Io {
    fn ios(&self) -> f64 {
        self.reads + self.writes
    }
    fn add(&mut self, o: &Io) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
    }
    fn scale(&self, k: f64) -> Io {
        Io {
            reads: self.reads * k,
            writes: self.writes * k,
            read_bytes: self.read_bytes * k,
            write_bytes: self.write_bytes * k,
        }
    }
}

impl std::fmt::Display for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} reads ({:.1} KiB) + {:.1} writes ({:.1} KiB)",
            self.reads,
            self.read_bytes / 1024.0,
            self.writes,
            self.write_bytes / 1024.0
        )
    }
}

/// lockd's I/O for one acquire and one release (after a warm-up round,
/// which learns num_hosts), from the device's counters.
fn lockd_io(env: &Env, name: &str) -> Result<(Io, Io)> {
    let (dev, r) = env.lockd_resource(name)?;
    let held = r.acquire(&env.lockd, AcquireOptions::default())?;
    r.release(&env.lockd, &held)?;
    let diff = |a: (u64, u64, u64, u64), b: (u64, u64, u64, u64)| Io {
        reads: (b.0 - a.0) as f64,
        writes: (b.1 - a.1) as f64,
        read_bytes: (b.2 - a.2) as f64,
        write_bytes: (b.3 - a.3) as f64,
    };
    let s0 = dev.stats.snapshot();
    let held = r.acquire(&env.lockd, AcquireOptions::default())?;
    let s1 = dev.stats.snapshot();
    r.release(&env.lockd, &held)?;
    let s2 = dev.stats.snapshot();
    Ok((diff(s0, s1), diff(s1, s2)))
}

/// sanlock's I/O for an acquire and a release, averaged over `rounds`:
/// strace follows the daemon's threads; every `sanlock client` call is one
/// `accept` on its socket, which splits the trace into operations, and only
/// `io_submit`s inside the resource's area count (renewals go to the
/// lockspace). `None` without strace.
fn sanlock_io(env: &Env, name: &str, rounds: usize) -> Result<Option<(Io, Io)>> {
    let Some(strace) = find_tool("strace") else {
        return Ok(None);
    };
    let spec = env.spec(name);
    let reg = env.daemon.register_process()?;
    // Warm-up: the daemon's first use of a resource reads its whole area.
    env.daemon.acquire(&spec, reg.pid())?;
    env.daemon.release(&spec, reg.pid())?;
    let trace = env.bin_dir.path().join(format!("strace-{name}.out"));
    let mut tracer = Command::new(strace)
        .args(["-f", "-qq", "-e", "trace=io_submit,accept,accept4", "-o"])
        .arg(&trace)
        .args(["-p", &env.daemon.pid().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting strace")?;
    let traced = || -> Result<bool> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", env.daemon.pid()))?;
        for t in tasks {
            let status = std::fs::read_to_string(t?.path().join("status"))?;
            if status.contains("TracerPid:\t0\n") {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !traced()? {
        if Instant::now() > deadline || tracer.try_wait()?.is_some() {
            let _ = tracer.kill();
            let _ = tracer.wait();
            eprintln!("# strace could not attach to the sanlock daemon; no I/O trace");
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = (|| -> Result<()> {
        for _ in 0..rounds {
            env.daemon.acquire(&spec, reg.pid())?;
            env.daemon.release(&spec, reg.pid())?;
        }
        Ok(())
    })();
    // SAFETY: kill has no memory-safety preconditions; the pid is the strace
    // we started and have not yet waited for.
    unsafe {
        libc::kill(tracer.id() as libc::pid_t, libc::SIGINT);
    }
    let _ = tracer.wait();
    run?;
    let text = std::fs::read_to_string(&trace)?;
    let area = spec.offset..spec.offset + MIB;
    let mut ops: Vec<Io> = Vec::new();
    for line in text.lines() {
        if line.contains(" accept(") || line.contains(" accept4(") {
            ops.push(Io::default());
            continue;
        }
        if !line.contains("io_submit(") {
            continue;
        }
        let field = |key: &str| -> Option<u64> {
            let at = line.find(key)? + key.len();
            let digits: String = line[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        };
        let (Some(len), Some(off)) = (field("aio_nbytes="), field("aio_offset=")) else {
            continue;
        };
        if !area.contains(&off) {
            continue;
        }
        let Some(op) = ops.last_mut() else {
            bail!("resource I/O before any client call in the trace: {line}");
        };
        if line.contains("IOCB_CMD_PREAD") {
            op.reads += 1.0;
            op.read_bytes += len as f64;
        } else if line.contains("IOCB_CMD_PWRITE") {
            op.writes += 1.0;
            op.write_bytes += len as f64;
        }
    }
    ensure!(
        ops.len() == 2 * rounds,
        "expected {} client calls in the trace, found {}",
        2 * rounds,
        ops.len()
    );
    let (mut acq, mut rel) = (Io::default(), Io::default());
    for pair in ops.chunks(2) {
        acq.add(&pair[0]);
        rel.add(&pair[1]);
    }
    let k = 1.0 / rounds as f64;
    Ok(Some((acq.scale(k), rel.scale(k))))
}

/// sanlock 3.8's own figure for a free exclusive acquire at 2000 hosts
/// ("6 I/Os: 3 × 1 MiB reads and 3 × 512 B writes", `src/paxos_lease.c`)
/// and for its release (3 small I/Os), used when strace is not installed.
fn sanlock_io_from_source() -> (Io, Io) {
    (
        Io {
            reads: 3.0,
            writes: 3.0,
            read_bytes: 3.0 * MIB as f64,
            write_bytes: 1536.0,
        },
        Io {
            reads: 1.0,
            writes: 2.0,
            read_bytes: 512.0,
            write_bytes: 1024.0,
        },
    )
}

/// The resource and host a CLI-to-CLI comparison works on.
pub struct CliTarget {
    pub path: PathBuf,
    pub lockspace: String,
    pub lockspace_offset: u64,
    pub resource: String,
    pub resource_offset: u64,
    /// lockd's host id in the lockspace (the sanlock daemon is host 1).
    pub host_id: u64,
}

/// lockd's counterpart of `sanlock client command -r RES -c /bin/true`:
/// `lockd client command -r RES -- /bin/true` against a lockd daemon that
/// joined the lockspace as host `target.host_id + 1` (the in-process lockd
/// is `target.host_id`). The daemon is stopped by pid on drop.
struct LockdCli {
    daemon: std::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for LockdCli {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers; the pid is our own child's.
        unsafe { libc::kill(self.daemon.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn lockd_cli(target: &CliTarget, io_timeout: u64) -> Result<(LockdCli, Command)> {
    let bin = ssv_tests::leases::lockd_bin();
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("lockd.sock");
    let daemon = Command::new(bin)
        .args(["daemon", "--socket"])
        .arg(&socket)
        .args(["-o", &io_timeout.to_string(), "--watchdog"])
        .arg(dir.path().join("no-watchdog"))
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting lockd daemon")?;
    let cli = LockdCli {
        daemon,
        socket,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli.socket.exists() {
        ensure!(Instant::now() < deadline, "lockd daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let path = target.path.display();
    let st = Command::new(bin)
        .args(["client", "--socket"])
        .arg(&cli.socket)
        .args([
            "add-lockspace",
            "-s",
            &format!(
                "{}:{}:{path}:{}",
                target.lockspace,
                target.host_id + 1,
                target.lockspace_offset
            ),
        ])
        .stdout(std::process::Stdio::null())
        .status()?;
    ensure!(st.success(), "lockd client add-lockspace: {st}");
    let mut cmd = Command::new(bin);
    cmd.args(["client", "--socket"]).arg(&cli.socket).args([
        "command",
        "-r",
        &format!(
            "{}:{}:{path}:{}",
            target.lockspace, target.resource, target.resource_offset
        ),
        "--",
        "/bin/true",
    ]);
    Ok((cli, cmd))
}

/// CLI against CLI: one process per acquire + release, as scripts and
/// operators use them. sanlock: `client command -r RES -c /bin/true`
/// (register, acquire, exec, exit; the daemon releases when the process
/// exits), retried when the previous run's release is still in flight
/// (-11). lockd: [`lockd_cli`]'s command, when it has one.
fn cli_to_cli(env: &Env, samples: usize) -> Result<()> {
    let spec = env.spec("sanlk2000");
    let mut sanlock = Vec::with_capacity(samples);
    let mut retries = 0;
    while sanlock.len() < samples {
        let t = Instant::now();
        let out = output_within(
            env.daemon
                .command(std::slice::from_ref(&spec), &["/bin/true"]),
            Duration::from_secs(60),
        )?;
        let took = t.elapsed();
        if out.status.success() {
            sanlock.push(took);
        } else if out.stdout.contains("acquire done -11") && retries < 10 * samples {
            retries += 1;
            std::thread::sleep(Duration::from_millis(5));
        } else {
            bail!(
                "sanlock client command: {} {}",
                out.status,
                out.stdout.trim()
            );
        }
    }
    let target = CliTarget {
        path: env.path.clone(),
        lockspace: SPACE.into(),
        lockspace_offset: 0,
        resource: "lockd2000".into(),
        resource_offset: env.spec("lockd2000").offset,
        host_id: 2,
    };
    let s = stats(sanlock);
    println!(
        "# cli: sanlock client command -c /bin/true p50 {} p99 {} over {samples} ({retries} retries on -11)",
        ms(s.p50),
        ms(s.p99)
    );
    let (_daemon, mut cmd) = lockd_cli(&target, env.io_timeout)?;
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut ours = Vec::with_capacity(samples);
    let mut busy = 0;
    while ours.len() < samples {
        let t = Instant::now();
        let st = cmd.status().context("running lockd's CLI")?;
        let took = t.elapsed();
        // Like sanlock's -11: the previous command's release (when it
        // exited) can still be in flight; exit code 2 = busy.
        if st.code() == Some(2) && busy < 10 * samples {
            busy += 1;
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        ensure!(st.success(), "lockd client command: {st}");
        ours.push(took);
    }
    println!("# cli: lockd client command -- /bin/true: {busy} retries on busy");
    let o = stats(ours);
    ratio("cli_acquire_release_p50_2000hosts", o.p50, s.p50);
    ratio("cli_acquire_release_p99_2000hosts", o.p99, s.p99);
    Ok(())
}

fn skip_reason() -> Option<String> {
    if let Some(why) = sanlock_skip_reason() {
        return Some(why);
    }
    if find_tool("cc").is_none() {
        return Some("no C compiler (`cc`) for the libsanlock client".into());
    }
    if !Path::new("/usr/include/sanlock_resource.h").exists() {
        return Some("libsanlock-dev is not installed (scripts/deps.sh installs it)".into());
    }
    None
}

fn main() -> Result<()> {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED lockd_ops bench: {why}");
        return Ok(());
    }
    // `cargo test --all-targets` runs this binary without `--bench`: a quick
    // smoke run (io_timeout 1, a few samples); figures only under `cargo bench`.
    let full = std::env::args().any(|a| a == "--bench");
    let samples: usize = if full {
        std::env::var("SSV_BENCH_SAMPLES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200)
    } else {
        5
    };
    let io_timeout = if full { 10 } else { 1 };
    let env = Env::new(io_timeout).context("setting up lockspace, daemon and lockd host")?;
    let prog = build_acquire_loop(env.bin_dir.path())?;

    let (l2000, la2000) = lockd_latency(&env, "lockd2000", samples)?;
    let (s2000, sa2000) = sanlock_latency(&env, &prog, "sanlk2000", samples)?;
    let (l16, _) = lockd_latency(&env, "lockd16", samples)?;
    let (s16, _) = sanlock_latency(&env, &prog, "sanlk16", samples)?;

    let (lacq, lrel) = lockd_io(&env, "lockd2000")?;
    let (lacq16, lrel16) = lockd_io(&env, "lockd16")?;
    // lockd reads only the dblocks a resource was made for, in one I/O.
    ensure!(
        (lacq.reads, lacq.writes, lacq.read_bytes) == (3.0, 3.0, 3.0 * MIB as f64),
        "lockd acquire at 2000 hosts: {lacq}"
    );
    ensure!(
        (lacq16.reads, lacq16.writes, lacq16.read_bytes) == (3.0, 3.0, 3.0 * 16384.0),
        "lockd acquire at 16 hosts: {lacq16}"
    );
    let rounds = if full { 10 } else { 2 };
    let traced = sanlock_io(&env, "sanlk2000", rounds)?;
    let traced16 = sanlock_io(&env, "sanlk16", rounds)?;
    let (sacq, srel, source) = match traced {
        Some((a, r)) => (a, r, format!("strace of the daemon, {rounds} rounds")),
        None => {
            let (a, r) = sanlock_io_from_source();
            (a, r, "sanlock's source comment (no strace)".to_string())
        }
    };

    println!(
        "# lockspace io_timeout {io_timeout}s; {samples} samples each; sanlock {} daemon ({}), host 1; lockd host 2",
        Sanlock::find()?.version()?,
        env.daemon.mode
    );
    println!("# lockd acquire 2000 hosts: {lacq}; release: {lrel}");
    println!("# lockd acquire 16 hosts: {lacq16}; release: {lrel16}");
    println!("# sanlock acquire 2000 hosts: {sacq}; release: {srel} (from {source})");
    if let Some((a, r)) = &traced16 {
        println!("# sanlock acquire 16 hosts: {a}; release: {r}");
    }
    println!(
        "# acquire only, p50: lockd {} sanlock {} (2000 hosts)",
        ms(la2000.p50),
        ms(sa2000.p50)
    );
    if !full {
        println!(
            "# smoke: acquire+release p50 lockd {} sanlock {}; join lockd {} sanlock {}",
            ms(l2000.p50),
            ms(s2000.p50),
            ms(env.join_lockd),
            ms(env.join_sanlock)
        );
        cli_to_cli(&env, 3)?;
        println!("lockd_ops: smoke run passed (figures only under `cargo bench`)");
        return Ok(());
    }
    ratio("acquire_release_p50_2000hosts", l2000.p50, s2000.p50);
    ratio("acquire_release_p99_2000hosts", l2000.p99, s2000.p99);
    ratio("acquire_release_p50_16hosts", l16.p50, s16.p50);
    ratio("acquire_release_p99_16hosts", l16.p99, s16.p99);
    ratio_of("acquire_ios_2000hosts", lacq.ios(), sacq.ios(), "");
    ratio_of("release_ios_2000hosts", lrel.ios(), srel.ios(), "");
    let kib = |io: &Io| io.read_bytes / 1024.0;
    ratio_of("acquire_read_kib_2000hosts", kib(&lacq), kib(&sacq), "KiB");
    if let Some((a, _)) = &traced16 {
        ratio_of("acquire_read_kib_16hosts", kib(&lacq16), kib(a), "KiB");
    }
    ratio_of(
        "acquire_read_kib_lockd16hosts_vs_sanlock2000hosts",
        kib(&lacq16),
        kib(&sacq),
        "KiB",
    );
    ratio(
        &format!("join_free_host_id_io{io_timeout}"),
        env.join_lockd,
        env.join_sanlock,
    );
    cli_to_cli(&env, 20)?;
    Ok(())
}

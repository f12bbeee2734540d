//! Real sanlock 3.8 as a test oracle and a peer for lockd.
//!
//! - [`Sanlock`]: `sanlock direct init/dump/read_leader`, with parsed output.
//! - [`SanlockDaemon`]: a private `sanlock daemon` (its own run dir through
//!   `SANLOCK_RUN_DIR`, no watchdog, no mlockall), stopped by pid on drop,
//!   with client helpers: add_lockspace, command, acquire/release for a
//!   registered pid.
//!
//! This machine has no `/dev/watchdog` and no wdmd, so the daemon runs with
//! `-w 0`. It still raises resource limits at start-up and exits when that
//! fails (no CAP_SYS_RESOURCE in a container); an `LD_PRELOAD` shim
//! (`shim/setrlimit_ok.c`, compiled here with `cc`) makes `setrlimit` succeed.
//! Without a C compiler the daemon runs with `SANLOCK_PRIVILEGED=0` instead,
//! which 3.8.5 also understands (it then skips those calls itself).

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::find_tool;

/// Source of the `setrlimit` shim, kept in the repository.
pub const SHIM_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/shim/setrlimit_ok.c");
/// Source of the timed libsanlock client (`iter <acquire ns> <release ns>`).
pub const ACQUIRE_LOOP_SOURCE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/shim/sanlk_acquire_loop.c");

/// Longest any single sanlock command may take here. add_lockspace waits
/// 2·io_timeout of the lockspace (20 s at the default 10), plus slack.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Why sanlock tests cannot run here, or `None` if they can.
pub fn sanlock_skip_reason() -> Option<String> {
    if find_tool("sanlock").is_none() {
        return Some(
            "`sanlock` not found in PATH, /usr/sbin or /sbin (scripts/deps.sh installs it)".into(),
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (the sanlock daemon runs as root here)".into());
    }
    None
}

/// Returns early from the calling test (with the given value, or `()`)
/// after printing why, when sanlock is not usable.
#[macro_export]
macro_rules! skip_unless_sanlock {
    () => {
        $crate::skip_unless_sanlock!(())
    };
    ($ret:expr) => {
        if let Some(reason) = $crate::sanlock::sanlock_skip_reason() {
            eprintln!("SKIPPED (sanlock harness): {reason}");
            return $ret;
        }
    };
}

/// `LOCKSPACE = name:host_id:path:offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockspaceSpec {
    pub name: String,
    pub host_id: u64,
    pub path: PathBuf,
    pub offset: u64,
}

impl LockspaceSpec {
    pub fn new(name: &str, host_id: u64, path: &Path, offset: u64) -> LockspaceSpec {
        LockspaceSpec {
            name: name.into(),
            host_id,
            path: path.into(),
            offset,
        }
    }
}

impl fmt::Display for LockspaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.name,
            self.host_id,
            self.path.display(),
            self.offset
        )
    }
}

/// `RESOURCE = lockspace:name:path:offset[:SH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    pub lockspace: String,
    pub name: String,
    pub path: PathBuf,
    pub offset: u64,
    pub shared: bool,
}

impl ResourceSpec {
    pub fn new(lockspace: &str, name: &str, path: &Path, offset: u64) -> ResourceSpec {
        ResourceSpec {
            lockspace: lockspace.into(),
            name: name.into(),
            path: path.into(),
            offset,
            shared: false,
        }
    }

    pub fn shared(mut self) -> ResourceSpec {
        self.shared = true;
        self
    }
}

impl fmt::Display for ResourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.lockspace,
            self.name,
            self.path.display(),
            self.offset
        )?;
        if self.shared {
            f.write_str(":SH")?;
        }
        Ok(())
    }
}

/// Options of `sanlock direct init`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitOpts {
    /// `-Z 512|4096`
    pub sector_size: Option<u32>,
    /// `-A 1M|2M|4M|8M`, in bytes.
    pub align_size: Option<u64>,
    /// `-o <sec>`: the io_timeout written into the free delta leases, which
    /// a joining daemon uses for its short delay (2·io_timeout).
    pub io_timeout: Option<u32>,
    /// `-n <num>`: dblocks a resource lease uses (≤ max_hosts).
    pub num_hosts: Option<u64>,
}

impl InitOpts {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(s) = self.sector_size {
            a.extend(["-Z".to_string(), s.to_string()]);
        }
        if let Some(al) = self.align_size {
            a.extend(["-A".to_string(), format!("{}M", al >> 20)]);
        }
        if let Some(io) = self.io_timeout {
            a.extend(["-o".to_string(), io.to_string()]);
        }
        if let Some(n) = self.num_hosts {
            a.extend(["-n".to_string(), n.to_string()]);
        }
        a
    }
}

/// One line (with its shared holders) of `sanlock direct dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpRecord {
    /// A delta lease that was acquired at least once (sanlock skips the
    /// others).
    Host {
        offset: u64,
        lockspace: String,
        /// The owner's unique host name (`resource_name` on disk).
        host_name: String,
        timestamp: u64,
        owner_id: u64,
        generation: u64,
    },
    /// A paxos leader, and the mode blocks that hold it shared:
    /// `(host_id, host generation)`.
    Resource {
        offset: u64,
        lockspace: String,
        resource: String,
        timestamp: u64,
        owner_id: u64,
        generation: u64,
        lver: u64,
        shared: Vec<(u64, u64)>,
    },
}

/// `sanlock direct read_leader` output: `key value` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderDump(pub BTreeMap<String, String>);

impl LeaderDump {
    pub fn parse(out: &str) -> Result<LeaderDump> {
        let mut map = BTreeMap::new();
        for line in out.lines() {
            if line.starts_with("read_leader done") {
                continue;
            }
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            if !k.is_empty() {
                map.insert(k.to_string(), v.trim().to_string());
            }
        }
        Ok(LeaderDump(map))
    }

    pub fn str(&self, key: &str) -> Result<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("read_leader printed no {key:?}: {:?}", self.0))
    }

    /// A number field, decimal or `0x` hex as sanlock prints it.
    pub fn u64(&self, key: &str) -> Result<u64> {
        let s = self.str(key)?;
        let v = match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        };
        v.with_context(|| format!("read_leader {key} = {s:?} is not a number"))
    }
}

/// The `sanlock` binary, for direct (daemon-less) commands.
#[derive(Debug, Clone)]
pub struct Sanlock {
    bin: PathBuf,
}

impl Sanlock {
    pub fn find() -> Result<Sanlock> {
        Ok(Sanlock {
            bin: find_tool("sanlock").context("sanlock not found")?,
        })
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `sanlock <args>`; stdout, or an error with the command and its output.
    pub fn run(&self, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        let out = output_within(cmd, COMMAND_LIMIT)?;
        if !out.status.success() {
            bail!(
                "sanlock {}: {}; stdout: {}; stderr: {}",
                args.join(" "),
                out.status,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    pub fn version(&self) -> Result<String> {
        Ok(self.run(&["version".into()])?.trim().to_string())
    }

    fn direct_init(&self, what: &str, spec: String, opts: &InitOpts) -> Result<()> {
        let mut args = vec!["direct".to_string(), "init".to_string()];
        args.extend(opts.args());
        args.extend([what.to_string(), spec]);
        let out = self.run(&args)?;
        expect_done(&out, "init done", &args)
    }

    /// `sanlock direct init -s NAME:0:PATH:OFFSET`.
    pub fn direct_init_lockspace(&self, ls: &LockspaceSpec, opts: &InitOpts) -> Result<()> {
        let spec = LockspaceSpec {
            host_id: 0,
            ..ls.clone()
        };
        self.direct_init("-s", spec.to_string(), opts)
    }

    /// `sanlock direct init -r LS:NAME:PATH:OFFSET`.
    pub fn direct_init_resource(&self, res: &ResourceSpec, opts: &InitOpts) -> Result<()> {
        self.direct_init("-r", res.to_string(), opts)
    }

    /// `sanlock direct dump PATH:OFFSET:SIZE`, parsed.
    pub fn direct_dump(&self, path: &Path, offset: u64, size: u64) -> Result<Vec<DumpRecord>> {
        let arg = format!("{}:{offset}:{size}", path.display());
        let out = self.run(&["direct".into(), "dump".into(), arg])?;
        parse_dump(&out)
    }

    /// `sanlock direct read_leader -s LS:HOST_ID:PATH:OFFSET`: host
    /// `host_id`'s delta lease.
    pub fn read_leader_lockspace(&self, ls: &LockspaceSpec) -> Result<LeaderDump> {
        self.read_leader("-s", ls.to_string())
    }

    /// `sanlock direct read_leader -r RESOURCE`: the paxos leader.
    pub fn read_leader_resource(&self, res: &ResourceSpec) -> Result<LeaderDump> {
        self.read_leader("-r", res.to_string())
    }

    fn read_leader(&self, what: &str, spec: String) -> Result<LeaderDump> {
        let args = vec![
            "direct".to_string(),
            "read_leader".to_string(),
            what.to_string(),
            spec,
        ];
        let out = self.run(&args)?;
        expect_done(&out, "read_leader done", &args)?;
        LeaderDump::parse(&out)
    }
}

/// Checks a `<what> <rv>` line says 0.
fn expect_done(out: &str, what: &str, args: &[String]) -> Result<()> {
    let rv = out
        .lines()
        .find_map(|l| l.strip_prefix(what))
        .map(|r| r.trim().parse::<i64>())
        .with_context(|| format!("sanlock {} printed no {what:?}: {out}", args.join(" ")))?
        .with_context(|| format!("sanlock {}: bad {what:?} line: {out}", args.join(" ")))?;
    if rv != 0 {
        bail!("sanlock {}: {what} {rv}; output: {out}", args.join(" "));
    }
    Ok(())
}

fn num(tok: &str, line: &str) -> Result<u64> {
    tok.parse()
        .with_context(|| format!("dump line {line:?}: {tok:?} is not a number"))
}

/// Parses `sanlock direct dump` output (names must not contain spaces, and
/// must not be empty).
pub fn parse_dump(out: &str) -> Result<Vec<DumpRecord>> {
    let mut recs: Vec<DumpRecord> = Vec::new();
    for line in out.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.as_slice() {
            [] => {}
            ["offset", ..] => {}
            [host, gen, "SH"] => match recs.last_mut() {
                Some(DumpRecord::Resource { shared, .. }) => {
                    shared.push((num(host, line)?, num(gen, line)?))
                }
                _ => bail!("shared holder line {line:?} follows no resource"),
            },
            [off, ls, name, ts, own, gen] => recs.push(DumpRecord::Host {
                offset: num(off, line)?,
                lockspace: ls.to_string(),
                host_name: name.to_string(),
                timestamp: num(ts, line)?,
                owner_id: num(own, line)?,
                generation: num(gen, line)?,
            }),
            [off, ls, name, ts, own, gen, lver] => recs.push(DumpRecord::Resource {
                offset: num(off, line)?,
                lockspace: ls.to_string(),
                resource: name.to_string(),
                timestamp: num(ts, line)?,
                owner_id: num(own, line)?,
                generation: num(gen, line)?,
                lver: num(lver, line)?,
                shared: Vec::new(),
            }),
            _ => bail!("unexpected sanlock dump line {line:?}"),
        }
    }
    Ok(recs)
}

/// A finished command's status and output.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with piped output; kills it (by pid) if it runs past `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> Result<CmdOutput> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {desc}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} did not finish within {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ok(CmdOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Compiles a C file with `cc` into `out` (extra args after the source,
/// e.g. `-lsanlock`).
pub fn compile_c(src: &Path, out: &Path, args: &[&str]) -> Result<()> {
    let cc = find_tool("cc").context("no C compiler (`cc`) found")?;
    let mut cmd = Command::new(cc);
    cmd.args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(out)
        .arg(src)
        .args(args);
    let res = output_within(cmd, Duration::from_secs(120))?;
    if !res.status.success() {
        bail!(
            "cc {} failed: {}: {}",
            src.display(),
            res.status,
            res.stderr.trim()
        );
    }
    Ok(())
}

/// Builds the timed libsanlock client ([`ACQUIRE_LOOP_SOURCE`]) into `dir`.
pub fn build_acquire_loop(dir: &Path) -> Result<PathBuf> {
    if !Path::new("/usr/include/sanlock_resource.h").exists() {
        bail!("sanlock_resource.h is missing: install libsanlock-dev (scripts/deps.sh)");
    }
    let out = dir.join("sanlk_acquire_loop");
    compile_c(Path::new(ACQUIRE_LOOP_SOURCE), &out, &["-lsanlock"])?;
    Ok(out)
}

fn process_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry: look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn process_cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; pid is a process we
    // started (checked by the callers).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Makes the child get SIGKILL when the thread that spawns it exits, so a
/// test process killed outright (no Drop) leaves no daemon behind. Keep a
/// [`SanlockDaemon`] on the thread that started it.
fn die_with_spawning_thread(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A running `sanlock daemon` with a private run dir (socket, pid file) and
/// its debug log in a file. Stopped on drop: `client shutdown -f 1`, then
/// SIGKILL by pid if it is still running; its helper child likewise.
pub struct SanlockDaemon {
    sanlock: Sanlock,
    child: Child,
    helper_pid: Option<u32>,
    run_dir: tempfile::TempDir,
    log_path: PathBuf,
    host_name: String,
    /// How the daemon got past setrlimit: "LD_PRELOAD shim" or "SANLOCK_PRIVILEGED=0".
    pub mode: &'static str,
}

impl SanlockDaemon {
    /// Starts `sanlock daemon -D -w 0 -l 0 -h 0 -U root -G root -e HOST_NAME`
    /// and waits until it answers `client status`.
    pub fn start(host_name: &str) -> Result<SanlockDaemon> {
        let sanlock = Sanlock::find()?;
        // A short path: the socket name must fit a sockaddr_un.
        let run_dir = tempfile::Builder::new()
            .prefix("ssv-sanlock-")
            .tempdir_in("/tmp")
            .context("creating the sanlock run dir")?;
        let log_path = run_dir.path().join("daemon.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(sanlock.bin());
        cmd.args(["daemon", "-D", "-w", "0", "-l", "0", "-h", "0"])
            .args(["-U", "root", "-G", "root", "-L", "-1", "-S", "-1"])
            .args(["-e", host_name])
            .env("SANLOCK_RUN_DIR", run_dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let shim = run_dir.path().join("setrlimit_ok.so");
        let mode = match compile_c(Path::new(SHIM_SOURCE), &shim, &["-shared", "-fPIC"]) {
            Ok(()) => {
                cmd.env("LD_PRELOAD", &shim);
                "LD_PRELOAD shim"
            }
            Err(e) => {
                eprintln!("ssv-tests: no setrlimit shim ({e:#}); using SANLOCK_PRIVILEGED=0");
                cmd.env("SANLOCK_PRIVILEGED", "0");
                "SANLOCK_PRIVILEGED=0"
            }
        };
        die_with_spawning_thread(&mut cmd);
        let child = cmd.spawn().context("starting sanlock daemon")?;
        let mut d = SanlockDaemon {
            sanlock,
            child,
            helper_pid: None,
            run_dir,
            log_path,
            host_name: host_name.to_string(),
            mode,
        };
        d.wait_ready(Duration::from_secs(10))?;
        d.helper_pid =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.child.id()))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
        Ok(d)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("sanlock daemon exited ({st}); log:\n{}", self.log());
            }
            let sock = self.run_dir.path().join("sanlock.sock");
            if sock.exists() && self.client_ok(&["status"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "sanlock daemon not answering after {limit:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn run_dir(&self) -> &Path {
        self.run_dir.path()
    }

    /// The unique host name it writes into its delta leases.
    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    /// The daemon's debug log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `sanlock client <args>` talking to this daemon (not yet run).
    pub fn client(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.sanlock.bin());
        cmd.arg("client")
            .args(args)
            .env("SANLOCK_RUN_DIR", self.run_dir.path());
        cmd
    }

    /// Environment that points libsanlock clients at this daemon.
    pub fn client_env(&self) -> (&'static str, &Path) {
        ("SANLOCK_RUN_DIR", self.run_dir.path())
    }

    /// Runs `sanlock client <args>`; its stdout, or an error with the output.
    pub fn client_ok(&self, args: &[&str]) -> Result<String> {
        let out = output_within(self.client(args), COMMAND_LIMIT)?;
        if !out.status.success() {
            bail!(
                "sanlock client {}: {}; stdout: {}; stderr: {}",
                args.join(" "),
                out.status,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        Ok(out.stdout)
    }

    /// `sanlock client add_lockspace -s LS [-o io_timeout]`: joins the
    /// lockspace as `ls.host_id`. Returns how long it took (about
    /// 2·io_timeout of the lockspace's free records for a free host id).
    pub fn add_lockspace(&self, ls: &LockspaceSpec, io_timeout: Option<u32>) -> Result<Duration> {
        let spec = ls.to_string();
        let io = io_timeout.map(|i| i.to_string());
        let mut args = vec!["add_lockspace", "-s", &spec];
        if let Some(io) = &io {
            args.extend(["-o", io]);
        }
        let t = Instant::now();
        let out = self.client_ok(&args)?;
        let took = t.elapsed();
        // `-o` other than the default 10 goes through add_lockspace_timeout.
        let done = if out.contains("add_lockspace_timeout done") {
            "add_lockspace_timeout done"
        } else {
            "add_lockspace done"
        };
        expect_done(
            &out,
            done,
            &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )?;
        Ok(took)
    }

    /// `sanlock client rem_lockspace -s LS`.
    pub fn rem_lockspace(&self, ls: &LockspaceSpec) -> Result<()> {
        let spec = ls.to_string();
        let args = ["rem_lockspace", "-s", &spec];
        let out = self.client_ok(&args)?;
        expect_done(&out, "rem_lockspace done", &args.map(String::from))
    }

    /// `sanlock client command -r RES... -c PROG ARGS`: registers, acquires
    /// the resources, then execs the program, which holds them until it
    /// exits (the daemon then releases them). Exits 1 with "acquire done
    /// <rv>" on stdout when the acquire fails.
    pub fn command(&self, res: &[ResourceSpec], prog: &[&str]) -> Command {
        let specs: Vec<String> = res.iter().map(|r| r.to_string()).collect();
        let mut args = vec!["command"];
        for s in &specs {
            args.extend(["-r", s.as_str()]);
        }
        args.push("-c");
        args.extend(prog);
        self.client(&args)
    }

    /// A process registered with the daemon and holding nothing (`client
    /// command -c /bin/sleep`), for [`SanlockDaemon::acquire`] with `-p`.
    pub fn register_process(&self) -> Result<Registered> {
        let mut cmd = self.command(&[], &["/bin/sleep", "3600"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_spawning_thread(&mut cmd);
        let child = cmd
            .spawn()
            .context("starting a registered sanlock client")?;
        let reg = Registered { child };
        let line = format!("p {} ", reg.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.client_ok(&["status"])?.contains(&line) {
            if Instant::now() > deadline {
                bail!("pid {} never registered with sanlock", reg.pid());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(reg)
    }

    /// `sanlock client acquire -r RES -p PID`; sanlock's return value (0 on
    /// success, e.g. -243 SANLK_ACQUIRE_IDLIVE when a live host holds it).
    pub fn try_acquire(&self, res: &ResourceSpec, pid: u32) -> Result<i64> {
        let spec = res.to_string();
        let pid = pid.to_string();
        let out = output_within(
            self.client(&["acquire", "-r", &spec, "-p", &pid]),
            COMMAND_LIMIT,
        )?;
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix("acquire done "))
            .and_then(|r| r.trim().parse().ok())
            .with_context(|| {
                format!(
                    "sanlock client acquire -r {spec} -p {pid}: {}; {} {}",
                    out.status, out.stdout, out.stderr
                )
            })
    }

    /// As [`SanlockDaemon::try_acquire`], failing unless it returned 0.
    pub fn acquire(&self, res: &ResourceSpec, pid: u32) -> Result<()> {
        match self.try_acquire(res, pid)? {
            0 => Ok(()),
            rv => bail!("sanlock acquire {res} for pid {pid}: {rv}"),
        }
    }

    /// `sanlock client release -r RES -p PID`.
    pub fn release(&self, res: &ResourceSpec, pid: u32) -> Result<()> {
        let spec = res.to_string();
        let pid = pid.to_string();
        let args = ["release", "-r", &spec, "-p", &pid];
        let out = self.client_ok(&args)?;
        expect_done(&out, "release done", &args.map(String::from))
    }

    fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Graceful first: it leaves its lockspaces (releasing host ids).
            let _ = output_within(
                self.client(&["shutdown", "-f", "1"]),
                Duration::from_secs(5),
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
        if let Some(h) = self.helper_pid.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while process_alive(h) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if process_alive(h) && process_cmdline(h).contains("sanlock") {
                signal(h, libc::SIGKILL);
            }
        }
    }
}

impl Drop for SanlockDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process registered with a [`SanlockDaemon`]; killed (by pid) on drop,
/// which makes the daemon release whatever it holds.
pub struct Registered {
    child: Child,
}

impl Registered {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_parses_hosts_resources_and_shared_holders() {
        let out = "  offset                            lockspace                                         resource  timestamp  own  gen lver
00000000                                   LS          f9fdf964-4247-4e62-b8aa-c950516006a3.vm 0000002283 0001 0001
01048576                                   LS                                               R1 0000000000 0001 0001 1
03145728                                  LS2                                               R2 0000002311 0001 0002 7
                                                                                                          0001 0001 SH
                                                                                                          0003 0004 SH
";
        let recs = parse_dump(out).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(
            recs[0],
            DumpRecord::Host {
                offset: 0,
                lockspace: "LS".into(),
                host_name: "f9fdf964-4247-4e62-b8aa-c950516006a3.vm".into(),
                timestamp: 2283,
                owner_id: 1,
                generation: 1
            }
        );
        let DumpRecord::Resource {
            offset,
            lver,
            generation,
            ref shared,
            ..
        } = recs[2]
        else {
            panic!("{:?}", recs[2])
        };
        assert_eq!((offset, lver, generation), (3 << 20, 7, 2));
        assert_eq!(shared, &[(1, 1), (3, 4)]);
        assert!(parse_dump("garbage line\n").is_err());
    }

    #[test]
    fn read_leader_parses_numbers_and_empty_names() {
        let d = LeaderDump::parse(
            "read_leader done 0\nmagic 0x6152010\nowner_id 3\nresource_name \nspace_name LS\n",
        )
        .unwrap();
        assert_eq!(d.u64("magic").unwrap(), 0x0615_2010);
        assert_eq!(d.u64("owner_id").unwrap(), 3);
        assert_eq!(d.str("resource_name").unwrap(), "");
        assert!(d.u64("lver").is_err());
    }

    #[test]
    fn specs_format_as_sanlock_expects() {
        let p = Path::new("/x/leases");
        assert_eq!(
            LockspaceSpec::new("LS", 2, p, 0).to_string(),
            "LS:2:/x/leases:0"
        );
        assert_eq!(
            ResourceSpec::new("LS", "R", p, 1 << 20)
                .shared()
                .to_string(),
            "LS:R:/x/leases:1048576:SH"
        );
    }
}

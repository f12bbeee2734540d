//! Real tgtd (Debian `tgt`, 1.0.85 here) as the iSCSI target of our tests:
//! private daemons on loopback, targets and LUNs with unique identities, and
//! the path faults of `../shared/specs/iscsi-multipath.md` §3.4.
//!
//! - [`Tgtd::start`] runs `tgtd -f -C <control port> --iscsi portal=ADDR:PORT`
//!   as our child (foreground, so the pid is ours) and waits until its control
//!   socket is held by that pid, `tgtadm` answers and the portal listens;
//!   tgtd's output is kept for errors ([`Tgtd::log`]).
//! - Set-up: [`Tgtd::add_portal`], [`Tgtd::add_target`], [`Tgtd::add_lun`]
//!   (always with an explicit, unique `scsi_id`/`scsi_sn`), [`Tgtd::bind_all`],
//!   CHAP accounts, target parameters (digests, NOP-Out).
//! - Path faults: [`Tgtd::kill_connection`] (one nexus, RST), [`Tgtd::pause`] /
//!   [`Tgtd::resume`] (hung array), [`Tgtd::delete_portal`] (no new logins),
//!   [`Tgtd::block_portal`] (iptables DROP: a silent blackhole).
//! - Drop: SIGCONT if paused; every target set offline, its connections
//!   closed and the target deleted with `--force` (retried for a few seconds:
//!   with commands in flight tgtd refuses even a forced delete, "this logical
//!   unit is still active"), then `--op delete --mode system`; SIGKILL by pid
//!   if tgtd is still there after a few seconds. tgtd ignores SIGTERM, and
//!   nothing is ever killed by name: other tests run their own tgtd at the
//!   same time. tgtd leaves `socket.N` and `socket.N.lock` behind in
//!   `/var/run/tgtd`; they are left alone (removing a lock file another tgtd
//!   may be opening would let two daemons share N).
//!
//! Isolation between daemons (test threads and several test binaries at once):
//! - **Control port** (`-C N`, the unix socket `/var/run/tgtd/socket.N`):
//!   tgtd itself takes a `lockf` lock on `/var/run/tgtd/socket.N.lock` before
//!   it binds the socket and exits with "another tgtd is using …" when the
//!   lock is held. We let that lock arbitrate: candidates start at a
//!   pseudo-random N and we move on to the next one when tgtd says so. No
//!   second lock of ours could be more exact than the daemon's own.
//! - **TCP port**: bind `0.0.0.0:0` (a port free on every address), release
//!   it, and use it on every portal address (127.0.0.1, 127.0.0.2, … are all
//!   local). tgtd does not fail when its command-line portal cannot be bound
//!   (it logs and keeps running without it), so start-up checks `--mode
//!   portal --op show` and retries with another port when ours is missing.
//!
//! tgtd is tied to the thread that starts it (`PR_SET_PDEATHSIG`), so a test
//! process killed outright leaves no daemon behind: keep a [`Tgtd`] on that
//! thread.

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::find_tool;
use crate::sanlock::{output_within, CmdOutput};

/// Longest a single `tgtadm` may take. It hangs while tgtd is paused.
const TGTADM_LIMIT: Duration = Duration::from_secs(10);
/// Shorter limit for the commands of `Drop`.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// Control ports we pick from (tgtd parses `-C` into a C `short`).
const CONTROL_PORT_MIN: u32 = 10_000;
const CONTROL_PORT_SPAN: u32 = 20_000;
/// What tgtd prints when another tgtd holds the control port's lock.
const LOCK_BUSY: &str = "another tgtd is using";

/// Spreads the candidates of threads of one process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why tgtd tests cannot run here, or `None` if they can.
pub fn tgtd_skip_reason() -> Option<String> {
    for tool in ["tgtd", "tgtadm"] {
        if find_tool(tool).is_none() {
            return Some(format!(
                "`{tool}` not found in PATH, /usr/sbin or /sbin (Debian package tgt; scripts/deps.sh installs it)"
            ));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "not running as root (tgtd needs /var/run/tgtd and tgtadm must match its uid)".into(),
        );
    }
    None
}

/// Returns early from the calling test (with the given value, or `()`)
/// after printing why, when tgtd is not usable.
#[macro_export]
macro_rules! skip_unless_tgtd {
    () => {
        $crate::skip_unless_tgtd!(())
    };
    ($ret:expr) => {
        if let Some(reason) = $crate::tgtd::Tgtd::available() {
            eprintln!("SKIPPED (tgtd harness): {reason}");
            return $ret;
        }
    };
}

/// How to start a [`Tgtd`].
#[derive(Debug, Clone)]
pub struct TgtdOpts {
    /// Address of the portal on tgtd's command line.
    pub portal: String,
    /// More portal addresses (same TCP port), added with `tgtadm --mode
    /// portal --op new` once tgtd answers.
    pub extra_portals: Vec<String>,
    /// How long to wait for tgtd to answer `tgtadm`.
    pub ready_timeout: Duration,
    /// `-d 1`: tgtd's debug log (into [`Tgtd::log`]).
    pub debug: bool,
}

impl Default for TgtdOpts {
    fn default() -> TgtdOpts {
        TgtdOpts {
            portal: "127.0.0.1".into(),
            extra_portals: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            debug: false,
        }
    }
}

impl TgtdOpts {
    /// Portals on `127.0.0.1` and the given further addresses.
    pub fn with_portals(extra: &[&str]) -> TgtdOpts {
        TgtdOpts {
            extra_portals: extra.iter().map(|s| s.to_string()).collect(),
            ..TgtdOpts::default()
        }
    }
}

/// Options of one LUN for [`Tgtd::add_lun`].
#[derive(Debug, Clone, Default)]
pub struct LunOpts {
    /// 32 hex digits; generated (unique, see [`unique_scsi_id`]) when `None`.
    pub scsi_id: Option<String>,
    /// VPD 0x80 serial; derived from the scsi_id when `None`.
    pub scsi_sn: Option<String>,
    /// `thin_provisioning=1`: UNMAP / WRITE SAME(UNMAP) punch holes, LBPME=1.
    pub thin: bool,
    /// `--bsoflags direct`: the rdwr backend opens the file with O_DIRECT.
    pub direct: bool,
    /// `--blocksize`: logical block size (default 512).
    pub block_size: Option<u32>,
}

/// The identity a LUN was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunIds {
    pub scsi_id: String,
    pub scsi_sn: String,
}

impl LunIds {
    /// The NAA-6 designator of VPD page 0x83 as 32 lowercase hex digits.
    pub fn naa6(&self) -> String {
        naa6_of_scsi_id(&self.scsi_id)
    }

    /// The Linux/udev WWID: designator type 3 (NAA) followed by the NAA value.
    pub fn wwid(&self) -> String {
        format!("3{}", self.naa6())
    }
}

/// The NAA-6 designator tgtd builds from `scsi_id` (VPD 0x83), as 32
/// lowercase hex digits.
///
/// tgtd (`update_vpd_83` in spc.c) shifts every character of the string, as
/// one hex digit (anything not hex counts as 0), into a right-adjusted
/// 128-bit number, then overwrites the top nibble with 6 (NAA IEEE Registered
/// Extended). So of a 32-digit scsi_id the **first digit is lost**, and only
/// the last 31 digits tell LUNs apart. [`unique_scsi_id`] therefore starts
/// with `6`, which makes the NAA value equal to the scsi_id.
pub fn naa6_of_scsi_id(scsi_id: &str) -> String {
    let mut v: u128 = 0;
    for c in scsi_id.chars() {
        v = (v << 4) | u128::from(c.to_digit(16).unwrap_or(0));
    }
    v = (v & !(0xf << 124)) | (0x6 << 124);
    format!("{v:032x}")
}

/// A fresh scsi_id: `6` and 31 digits from `1`–`f`, unique across live
/// daemons and runs (time, pid, a process-wide counter, control port, tid,
/// LUN, written in base 15).
///
/// Never rely on tgtd's default: it is `"IET     %04x%04x"` of tid and LUN,
/// so every daemon's tid 1 / LUN 1 has the same WWID, and a multipath layer
/// would merge LUNs of different daemons into one map. The leading `6` makes
/// the NAA value equal to the scsi_id ([`naa6_of_scsi_id`]); leaving out the
/// digit `0` means no byte of the designator is zero, so tools that print it
/// as a C string (libiscsi's `iscsi-inq`) show all 16 bytes.
pub fn unique_scsi_id(control_port: u32, tid: u32, lun: u32) -> String {
    const DIGITS: &[u8; 15] = b"123456789abcdef";
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // 28 + 22 + 16 + 15 + 16 + 16 = 113 bits < log2(15^31) ≈ 121.
    let mut v: u128 = u128::from(secs & 0xfff_ffff);
    for (x, bits) in [
        (std::process::id(), 22),
        (n, 16),
        (control_port, 15),
        (tid, 16),
        (lun, 16),
    ] {
        v = (v << bits) | u128::from(x & ((1u32 << bits) - 1));
    }
    let mut digits = [b'1'; 31];
    for d in digits.iter_mut().rev() {
        *d = DIGITS[(v % 15) as usize];
        v /= 15;
    }
    format!("6{}", std::str::from_utf8(&digits).expect("ASCII digits"))
}

/// One connection of an I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub cid: u32,
    /// The initiator's address (on loopback 127.0.0.1, whichever portal
    /// the connection went to).
    pub ip: String,
}

/// An I_T nexus (iSCSI session) as `tgtadm --mode target --op show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexus {
    /// The "I_T nexus" number: `--sid` of `--mode conn`.
    pub sid: u64,
    pub initiator: String,
    pub alias: Option<String>,
    pub connections: Vec<Connection>,
}

/// One LUN as `tgtadm --mode target --op show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LunInfo {
    pub lun: u64,
    /// "controller" (LUN 0) or "disk".
    pub kind: String,
    pub scsi_id: String,
    pub scsi_sn: String,
    /// As tgtd prints it: bytes / 1,000,000, rounded to the nearest.
    pub size_mb: u64,
    pub block_size: u32,
    pub thin: bool,
    pub backing_path: String,
    pub backing_flags: String,
}

/// One target as `tgtadm --mode target --op show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetInfo {
    pub tid: u32,
    pub name: String,
    pub state: String,
    pub nexuses: Vec<Nexus>,
    pub luns: Vec<LunInfo>,
    pub accounts: Vec<String>,
    pub acl: Vec<String>,
}

/// Parses `tgtadm --lld iscsi --mode target --op show`.
pub fn parse_target_show(text: &str) -> Result<Vec<TargetInfo>> {
    #[derive(PartialEq)]
    enum Sec {
        System,
        Nexus,
        Lun,
        Account,
        Acl,
    }
    let mut targets: Vec<TargetInfo> = Vec::new();
    let mut sec = Sec::System;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("Target ") {
            if !raw.starts_with(' ') && !raw.starts_with('\t') {
                let (tid, name) = rest
                    .split_once(": ")
                    .with_context(|| format!("bad target line {raw:?}"))?;
                targets.push(TargetInfo {
                    tid: tid.parse().with_context(|| format!("bad tid in {raw:?}"))?,
                    name: name.to_string(),
                    ..TargetInfo::default()
                });
                sec = Sec::System;
                continue;
            }
        }
        let Some(t) = targets.last_mut() else {
            bail!("tgtadm show: {raw:?} before any target");
        };
        match line {
            "System information:" => sec = Sec::System,
            "I_T nexus information:" => sec = Sec::Nexus,
            "LUN information:" => sec = Sec::Lun,
            "Account information:" => sec = Sec::Account,
            "ACL information:" => sec = Sec::Acl,
            _ => match sec {
                Sec::System => {
                    if let Some(s) = line.strip_prefix("State: ") {
                        t.state = s.to_string();
                    }
                }
                Sec::Account => t.accounts.push(line.to_string()),
                Sec::Acl => t.acl.push(line.to_string()),
                Sec::Nexus => parse_nexus_line(t, line, raw)?,
                Sec::Lun => parse_lun_line(t, line, raw)?,
            },
        }
    }
    Ok(targets)
}

fn parse_nexus_line(t: &mut TargetInfo, line: &str, raw: &str) -> Result<()> {
    let (key, val) = line.split_once(':').unwrap_or((line, ""));
    let val = val.trim();
    if key == "I_T nexus" {
        t.nexuses.push(Nexus {
            sid: val.parse().with_context(|| format!("bad sid in {raw:?}"))?,
            initiator: String::new(),
            alias: None,
            connections: Vec::new(),
        });
        return Ok(());
    }
    let Some(n) = t.nexuses.last_mut() else {
        return Ok(()); // a line we do not know, before any nexus
    };
    match key {
        "Initiator" => {
            let (name, alias) = match val.split_once(" alias: ") {
                Some((n, a)) => (n, Some(a.trim())),
                None => (val, None),
            };
            n.initiator = name.trim().to_string();
            n.alias = alias.filter(|a| *a != "none").map(String::from);
        }
        "Connection" => n.connections.push(Connection {
            cid: val.parse().with_context(|| format!("bad cid in {raw:?}"))?,
            ip: String::new(),
        }),
        "IP Address" => {
            if let Some(c) = n.connections.last_mut() {
                c.ip = val.to_string();
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_lun_line(t: &mut TargetInfo, line: &str, raw: &str) -> Result<()> {
    let (key, val) = line.split_once(':').unwrap_or((line, ""));
    let val = val.trim();
    if key == "LUN" {
        t.luns.push(LunInfo {
            lun: val.parse().with_context(|| format!("bad LUN in {raw:?}"))?,
            ..LunInfo::default()
        });
        return Ok(());
    }
    let Some(l) = t.luns.last_mut() else {
        return Ok(());
    };
    match key {
        "Type" => l.kind = val.to_string(),
        // Not trimmed: the default id has inner spaces ("IET     00010001").
        "SCSI ID" => l.scsi_id = line["SCSI ID:".len()..].trim_start().to_string(),
        "SCSI SN" => l.scsi_sn = val.to_string(),
        "Size" => {
            // "10737 MB, Block size: 512"
            let mut parts = val.split(',');
            let mb = parts.next().unwrap_or("").trim().trim_end_matches("MB");
            l.size_mb = mb
                .trim()
                .parse()
                .with_context(|| format!("bad size in {raw:?}"))?;
            if let Some(bs) = parts.next().and_then(|p| p.split(':').nth(1)) {
                l.block_size = bs
                    .trim()
                    .parse()
                    .with_context(|| format!("bad block size in {raw:?}"))?;
            }
        }
        "Thin-provisioning" => l.thin = val == "Yes",
        "Backing store path" => l.backing_path = val.to_string(),
        "Backing store flags" => l.backing_flags = val.to_string(),
        _ => {}
    }
    Ok(())
}

/// A private tgtd, stopped on drop (see the module documentation).
pub struct Tgtd {
    child: Child,
    tgtadm: PathBuf,
    control_port: u32,
    port: u16,
    portals: Vec<String>,
    targets: BTreeSet<u32>,
    paused: bool,
    log_dir: tempfile::TempDir,
}

enum Attempt {
    Up(Box<Tgtd>),
    ControlPortBusy,
    TcpPortBusy(String),
}

impl Tgtd {
    /// Why tgtd tests cannot run here (tgtd missing, not root), or `None`.
    pub fn available() -> Option<String> {
        tgtd_skip_reason()
    }

    /// Starts a private tgtd; see the module documentation for how control
    /// and TCP ports are chosen. Extra portals are added before it returns.
    pub fn start(opts: TgtdOpts) -> Result<Tgtd> {
        if let Some(why) = tgtd_skip_reason() {
            bail!("tgtd cannot run here: {why}");
        }
        let tgtd = find_tool("tgtd").context("tgtd not found")?;
        let tgtadm = find_tool("tgtadm").context("tgtadm not found")?;
        let seed = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(NEXT.fetch_add(101, Ordering::Relaxed))
            .wrapping_add(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.subsec_micros())
                    .unwrap_or(0),
            );
        let mut busy_ports = Vec::new();
        let mut tcp_failures = Vec::new();
        for i in 0..64u32 {
            let control_port = CONTROL_PORT_MIN + seed.wrapping_add(i * 37) % CONTROL_PORT_SPAN;
            let port = free_tcp_port()?;
            match Self::try_start(&tgtd, &tgtadm, control_port, port, &opts)? {
                Attempt::Up(mut d) => {
                    match opts.extra_portals.iter().try_for_each(|a| d.add_portal(a)) {
                        Ok(()) => return Ok(*d),
                        // Taken on another address: stop this one, try another port.
                        Err(e) => tcp_failures.push(format!("{e:#}")),
                    }
                }
                Attempt::ControlPortBusy => busy_ports.push(control_port),
                Attempt::TcpPortBusy(log) => {
                    tcp_failures.push(format!("{}:{port}: {}", opts.portal, log.trim()))
                }
            }
            if tcp_failures.len() >= 5 {
                break;
            }
        }
        bail!(
            "could not start tgtd: control ports in use: {busy_ports:?}; portals not bound: {}",
            tcp_failures.join(" | ")
        )
    }

    fn try_start(
        tgtd: &Path,
        tgtadm: &Path,
        control_port: u32,
        port: u16,
        opts: &TgtdOpts,
    ) -> Result<Attempt> {
        // tgtd's stdout and stderr go to a file in a private directory.
        let log_dir = tempfile::Builder::new()
            .prefix("ssv-tgtd-")
            .tempdir_in("/tmp")
            .context("creating the tgtd log dir")?;
        let log_path = log_dir.path().join("tgtd.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let portal = format!("{}:{port}", opts.portal);
        let mut cmd = Command::new(tgtd);
        cmd.arg("-f")
            .arg("-C")
            .arg(control_port.to_string())
            .arg("--iscsi")
            .arg(format!("portal={portal}"));
        if opts.debug {
            cmd.args(["-d", "1"]);
        }
        cmd.env_remove("TGT_IPC_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_spawning_thread(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", tgtd.display()))?;
        let mut d = Tgtd {
            child,
            tgtadm: tgtadm.to_path_buf(),
            control_port,
            port,
            portals: Vec::new(),
            targets: BTreeSet::new(),
            paused: false,
            log_dir,
        };
        let deadline = Instant::now() + opts.ready_timeout;
        loop {
            if let Some(st) = d.child.try_wait()? {
                let log = d.log();
                if log.contains(LOCK_BUSY) {
                    return Ok(Attempt::ControlPortBusy);
                }
                bail!(
                    "tgtd -f -C {control_port} --iscsi portal={portal} exited ({st}) before answering; its output:\n{log}"
                );
            }
            // The socket must be our child's: while ours has not yet found
            // the lock taken, tgtadm could be answered by the tgtd holding it.
            let last_err = match socket_owner(control_port) {
                Ok(pid) if pid == d.pid() => {
                    match d.adm_within(&["--mode", "sys", "--op", "show"], Duration::from_secs(5)) {
                        Ok(_) => break,
                        Err(e) => format!("{e:#}"),
                    }
                }
                Ok(pid) => format!("socket.{control_port} belongs to pid {pid}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                let log = d.log();
                d.kill_now();
                bail!(
                    "tgtd -f -C {control_port} --iscsi portal={portal} not answering tgtadm after {:?} (last: {last_err}); its output:\n{log}",
                    opts.ready_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // tgtd keeps running when it cannot bind its portal: check it did.
        if !d.show_portals()?.contains(&portal) {
            let log = d.log();
            d.kill_now();
            return Ok(Attempt::TcpPortBusy(log));
        }
        d.portals.push(opts.portal.clone());
        Ok(Attempt::Up(Box::new(d)))
    }

    /// tgtd's process id (our child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `-C` value: tgtadm talks to `/var/run/tgtd/socket.<control_port>`.
    pub fn control_port(&self) -> u32 {
        self.control_port
    }

    /// The TCP port of every portal of this daemon.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Addresses of the portals added through this harness (first: the
    /// command line's), without those deleted since.
    pub fn portal_addrs(&self) -> &[String] {
        &self.portals
    }

    /// `ADDR:PORT` of the portal on `addr`.
    pub fn portal(&self, addr: &str) -> String {
        format!("{addr}:{}", self.port)
    }

    /// `iscsi://ADDR:PORT`, for discovery (`iscsi-ls`).
    pub fn portal_url(&self, addr: &str) -> String {
        format!("iscsi://{addr}:{}", self.port)
    }

    /// `iscsi://ADDR:PORT/IQN/LUN`, for libiscsi's tools.
    pub fn lun_url(&self, addr: &str, iqn: &str, lun: u32) -> String {
        format!("iscsi://{addr}:{}/{iqn}/{lun}", self.port)
    }

    /// tgtd's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("tgtd.log")).unwrap_or_default()
    }

    /// The last `n` lines of [`Tgtd::log`].
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether [`Tgtd::pause`] is in effect.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// `tgtadm -C N --lld iscsi ARGS` (not yet run).
    pub fn tgtadm_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tgtadm);
        cmd.arg("-C")
            .arg(self.control_port.to_string())
            .args(["--lld", "iscsi"])
            .args(args)
            .env_remove("TGT_IPC_SOCKET");
        cmd
    }

    /// Runs `tgtadm -C N --lld iscsi ARGS`; its stdout, or an error with the
    /// command, its status and output.
    pub fn tgtadm(&self, args: &[&str]) -> Result<String> {
        self.adm_within(args, TGTADM_LIMIT)
    }

    /// As [`Tgtd::tgtadm`], killing tgtadm after `limit` (it hangs while
    /// tgtd is paused; the default limit is 10 s).
    pub fn tgtadm_within(&self, args: &[&str], limit: Duration) -> Result<String> {
        self.adm_within(args, limit)
    }

    fn adm_within(&self, args: &[&str], limit: Duration) -> Result<String> {
        let what = || {
            format!(
                "tgtadm -C {} --lld iscsi {}",
                self.control_port,
                args.join(" ")
            )
        };
        let out: CmdOutput = output_within(self.tgtadm_command(args), limit)
            .with_context(|| format!("{}{}", what(), self.paused_note()))?;
        if !out.status.success() {
            bail!(
                "{}: {}; stdout: {}; stderr: {}{}",
                what(),
                out.status,
                out.stdout.trim(),
                out.stderr.trim(),
                self.paused_note()
            );
        }
        Ok(out.stdout)
    }

    fn paused_note(&self) -> &'static str {
        if self.paused {
            " (tgtd is paused)"
        } else {
            ""
        }
    }

    /// `--mode portal --op new --param portal=ADDR:PORT`.
    pub fn add_portal(&mut self, addr: &str) -> Result<()> {
        let p = format!("portal={}", self.portal(addr));
        self.tgtadm(&["--mode", "portal", "--op", "new", "--param", &p])
            .with_context(|| {
                format!(
                    "adding portal {}; tgtd's log ends:\n{}",
                    self.portal(addr),
                    self.log_tail(10)
                )
            })?;
        if !self.portals.iter().any(|a| a == addr) {
            self.portals.push(addr.to_string());
        }
        Ok(())
    }

    /// `--mode portal --op delete`: new logins on `addr` get ECONNREFUSED,
    /// existing sessions through it keep working (spec §3.4).
    pub fn delete_portal(&mut self, addr: &str) -> Result<()> {
        let p = format!("portal={}", self.portal(addr));
        self.tgtadm(&["--mode", "portal", "--op", "delete", "--param", &p])?;
        self.portals.retain(|a| a != addr);
        Ok(())
    }

    /// The portals tgtd listens on (`ADDR:PORT`), per `--mode portal --op show`.
    pub fn show_portals(&self) -> Result<Vec<String>> {
        let out = self.tgtadm(&["--mode", "portal", "--op", "show"])?;
        // "Portal: 127.0.0.1:3260,1"
        Ok(out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Portal:"))
            .map(|p| p.trim().split(',').next().unwrap_or("").to_string())
            .collect())
    }

    /// `--mode target --op new --tid TID --targetname IQN`.
    pub fn add_target(&mut self, tid: u32, iqn: &str) -> Result<()> {
        let t = tid.to_string();
        self.tgtadm(&[
            "--mode",
            "target",
            "--op",
            "new",
            "--tid",
            &t,
            "--targetname",
            iqn,
        ])?;
        self.targets.insert(tid);
        Ok(())
    }

    /// `--mode target --op delete --force --tid TID` (closes its sessions).
    pub fn delete_target(&mut self, tid: u32) -> Result<()> {
        let t = tid.to_string();
        self.tgtadm(&["--mode", "target", "--op", "delete", "--force", "--tid", &t])?;
        self.targets.remove(&tid);
        Ok(())
    }

    /// Adds LUN `lun` (≥ 1; LUN 0 is tgtd's controller) backed by `backing`
    /// (rdwr backend), then sets its identity and options with `--op update
    /// --params scsi_id=…,scsi_sn=…[,thin_provisioning=1]`.
    ///
    /// The scsi_id is always explicit and unique: tgtd's default is derived
    /// from tid/LUN alone and collides across daemons, and only its last 31
    /// hex digits reach the NAA-6 designator ([`naa6_of_scsi_id`]). Call
    /// [`Tgtd::bind_all`] after adding the LUNs, so no initiator ever sees a
    /// LUN before it has its identity.
    pub fn add_lun(&self, tid: u32, lun: u32, backing: &Path, opts: &LunOpts) -> Result<LunIds> {
        let scsi_id = match &opts.scsi_id {
            Some(id) => {
                if id.len() != 32 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
                    bail!("scsi_id must be 32 hex digits, got {id:?}");
                }
                id.to_ascii_lowercase()
            }
            None => unique_scsi_id(self.control_port, tid, lun),
        };
        let scsi_sn = match &opts.scsi_sn {
            Some(sn) => {
                if sn.is_empty() || sn.len() > 32 || sn.contains([',', ' ', '=']) {
                    bail!("scsi_sn must be 1-32 characters without ',', ' ' or '=': {sn:?}");
                }
                sn.clone()
            }
            None => format!("ssv{}", &scsi_id[16..]),
        };
        let (t, l) = (tid.to_string(), lun.to_string());
        let path = backing
            .to_str()
            .with_context(|| format!("non-UTF-8 path {}", backing.display()))?;
        let mut args = vec![
            "--mode",
            "logicalunit",
            "--op",
            "new",
            "--tid",
            &t,
            "--lun",
            &l,
            "--backing-store",
            path,
        ];
        if opts.direct {
            args.extend(["--bsoflags", "direct"]);
        }
        let bs = opts.block_size.map(|b| b.to_string());
        if let Some(bs) = &bs {
            args.extend(["--blocksize", bs]);
        }
        self.tgtadm(&args)?;
        let mut params = format!("scsi_id={scsi_id},scsi_sn={scsi_sn}");
        if opts.thin {
            params.push_str(",thin_provisioning=1");
        }
        self.update_lun(tid, lun, &params)?;
        Ok(LunIds { scsi_id, scsi_sn })
    }

    /// `--mode logicalunit --op update --tid --lun --params PARAMS`.
    pub fn update_lun(&self, tid: u32, lun: u32, params: &str) -> Result<()> {
        let (t, l) = (tid.to_string(), lun.to_string());
        self.tgtadm(&[
            "--mode",
            "logicalunit",
            "--op",
            "update",
            "--tid",
            &t,
            "--lun",
            &l,
            "--params",
            params,
        ])?;
        Ok(())
    }

    /// `--mode target --op bind --tid TID --initiator-address ALL`.
    pub fn bind_all(&self, tid: u32) -> Result<()> {
        let t = tid.to_string();
        self.tgtadm(&[
            "--mode",
            "target",
            "--op",
            "bind",
            "--tid",
            &t,
            "--initiator-address",
            "ALL",
        ])?;
        Ok(())
    }

    /// `--mode account --op new --user USER --password PASSWORD`.
    pub fn add_account(&self, user: &str, password: &str) -> Result<()> {
        self.tgtadm(&[
            "--mode",
            "account",
            "--op",
            "new",
            "--user",
            user,
            "--password",
            password,
        ])?;
        Ok(())
    }

    /// `--mode account --op bind --tid TID --user USER [--outgoing]`: the
    /// target then requires CHAP with that account (outgoing: the target's
    /// own credentials, for mutual CHAP).
    pub fn bind_account(&self, tid: u32, user: &str, outgoing: bool) -> Result<()> {
        let t = tid.to_string();
        let mut args = vec![
            "--mode", "account", "--op", "bind", "--tid", &t, "--user", user,
        ];
        if outgoing {
            args.push("--outgoing");
        }
        self.tgtadm(&args)?;
        Ok(())
    }

    /// `--mode target --op update --tid TID --name NAME --value VALUE`, e.g.
    /// `HeaderDigest`/`DataDigest` = `None` | `CRC32C`, `nop_interval`,
    /// `nop_count`, `MaxRecvDataSegmentLength`.
    pub fn set_target_param(&self, tid: u32, name: &str, value: &str) -> Result<()> {
        let t = tid.to_string();
        self.tgtadm(&[
            "--mode", "target", "--op", "update", "--tid", &t, "--name", name, "--value", value,
        ])?;
        Ok(())
    }

    /// Every target with its nexuses, LUNs, accounts and ACL.
    pub fn targets(&self) -> Result<Vec<TargetInfo>> {
        let out = self.tgtadm(&["--mode", "target", "--op", "show"])?;
        parse_target_show(&out).with_context(|| format!("parsing tgtadm show:\n{out}"))
    }

    /// The I_T nexuses (sessions) of target `tid`.
    pub fn sessions(&self, tid: u32) -> Result<Vec<Nexus>> {
        Ok(self
            .targets()?
            .into_iter()
            .find(|t| t.tid == tid)
            .with_context(|| format!("no target {tid} in tgtd -C {}", self.control_port))?
            .nexuses)
    }

    /// Waits up to `limit` until target `tid` has a session from `initiator`.
    pub fn wait_session(&self, tid: u32, initiator: &str, limit: Duration) -> Result<Nexus> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.sessions(tid)?;
            if let Some(n) = all.iter().find(|n| n.initiator == initiator) {
                return Ok(n.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no session of {initiator} on target {tid} after {limit:?}; sessions: {all:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `--mode conn --op delete --tid --sid --cid`: closes that connection at
    /// once (the initiator sees RST/EOF); new logins still work.
    pub fn kill_connection(&self, tid: u32, sid: u64, cid: u32) -> Result<()> {
        let (t, s, c) = (tid.to_string(), sid.to_string(), cid.to_string());
        self.tgtadm(&[
            "--mode", "conn", "--op", "delete", "--tid", &t, "--sid", &s, "--cid", &c,
        ])?;
        Ok(())
    }

    /// SIGSTOP: every path hangs (TCP still accepts into the backlog, nothing
    /// answers); tgtadm calls time out until [`Tgtd::resume`].
    pub fn pause(&mut self) -> Result<()> {
        self.signal_checked(libc::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT after [`Tgtd::pause`].
    pub fn resume(&mut self) -> Result<()> {
        self.signal_checked(libc::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    fn signal_checked(&mut self, sig: libc::c_int) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("tgtd (pid {}) already exited: {st}", self.pid());
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // child, not yet reaped, so it cannot have been reused.
        if unsafe { libc::kill(self.pid() as libc::pid_t, sig) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("kill({}, {sig})", self.pid()));
        }
        Ok(())
    }

    /// An iptables DROP rule for TCP to `addr`:[`Tgtd::port`], removed when
    /// the guard drops: a silent blackhole (no RST; NOP-Outs and SYNs time
    /// out). Fails, with the reason, where iptables is missing or not
    /// permitted (see [`iptables_skip_reason`]).
    pub fn block_portal(&self, addr: &str) -> Result<PortalBlock> {
        PortalBlock::insert(addr, self.port)
    }

    /// Stops tgtd now, reporting failure (Drop only prints it).
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        if self.paused {
            let _ = self.signal_checked(libc::SIGCONT);
            self.paused = false;
        }
        let mut notes = Vec::new();
        // tid -> (sid, cid) of its connections
        let mut targets: BTreeMap<u32, Vec<(u64, u32)>> =
            self.targets.iter().map(|&t| (t, Vec::new())).collect();
        match self.adm_within(&["--mode", "target", "--op", "show"], STOP_LIMIT) {
            Ok(out) => {
                for t in parse_target_show(&out).unwrap_or_default() {
                    let conns = t
                        .nexuses
                        .iter()
                        .flat_map(|n| n.connections.iter().map(|c| (n.sid, c.cid)))
                        .collect();
                    targets.insert(t.tid, conns);
                }
            }
            Err(e) => notes.push(format!("{e:#}")),
        }
        for (tid, conns) in &targets {
            let t = tid.to_string();
            // A LUN with commands in flight makes even a forced delete fail
            // ("this logical unit is still active"): refuse new logins, close
            // the connections, and retry until the commands have drained.
            let _ = self.adm_within(
                &[
                    "--mode", "target", "--op", "update", "--tid", &t, "--name", "state",
                    "--value", "offline",
                ],
                STOP_LIMIT,
            );
            for (sid, cid) in conns {
                let (s, c) = (sid.to_string(), cid.to_string());
                let _ = self.adm_within(
                    &[
                        "--mode", "conn", "--op", "delete", "--tid", &t, "--sid", &s, "--cid", &c,
                    ],
                    STOP_LIMIT,
                );
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                match self.adm_within(
                    &["--mode", "target", "--op", "delete", "--force", "--tid", &t],
                    STOP_LIMIT,
                ) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        notes.push(format!("{e:#}"));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.targets.clear();
        if let Err(e) = self.adm_within(&["--mode", "system", "--op", "delete"], STOP_LIMIT) {
            notes.push(format!("{e:#}"));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let log = self.log();
                self.kill_now();
                bail!(
                    "tgtd (pid {}, -C {}) did not exit after delete --mode system; killed. {}; log:\n{log}",
                    self.pid(),
                    self.control_port,
                    notes.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL our child by pid and reap it.
    fn kill_now(&mut self) {
        if self.paused {
            let _ = self.signal_checked(libc::SIGCONT);
            self.paused = false;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("ssv-tests: warning: stopping tgtd: {e:#}");
        }
        self.kill_now(); // no-op unless something above failed early
    }
}

/// The pid of the process listening on tgtd's control socket
/// `/var/run/tgtd/socket.<control_port>` (SO_PEERCRED of a connection to it).
pub fn socket_owner(control_port: u32) -> Result<u32> {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/tgtd/socket.{control_port}");
    let s = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("connecting to {path}"))?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own;
    // the fd is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("SO_PEERCRED of {path}"));
    }
    Ok(cred.pid as u32)
}

/// A TCP port that is free on every local address right now (bound on
/// `0.0.0.0:0`, then released).
pub fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("0.0.0.0", 0)).context("binding 0.0.0.0:0")?;
    Ok(l.local_addr()?.port())
}

/// Makes the child get SIGKILL when the thread that spawns it exits.
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

/// Why iptables rules cannot be used here, or `None` if they can: the tool
/// must exist, we must be root, and `iptables -w -S INPUT` must work (it
/// fails in containers without netfilter access).
pub fn iptables_skip_reason() -> Option<String> {
    let Some(ipt) = find_tool("iptables") else {
        return Some("`iptables` not found (Debian package iptables; scripts/deps.sh)".into());
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (iptables needs CAP_NET_ADMIN)".into());
    }
    let mut cmd = Command::new(ipt);
    cmd.args(["-w", "-S", "INPUT"]);
    match output_within(cmd, Duration::from_secs(20)) {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "`iptables -w -S INPUT` failed ({}): {}",
            out.status,
            out.stderr.trim()
        )),
        Err(e) => Some(format!("`iptables -w -S INPUT`: {e:#}")),
    }
}

/// An iptables rule `INPUT -p tcp -d ADDR --dport PORT -j DROP`, deleted on
/// drop (see [`Tgtd::block_portal`]). The rule carries a comment naming this
/// process so a leaked one can be recognised.
#[derive(Debug)]
pub struct PortalBlock {
    iptables: PathBuf,
    rule: Vec<String>,
    active: bool,
}

impl PortalBlock {
    /// Inserts the DROP rule for TCP to `addr:port`.
    pub fn insert(addr: &str, port: u16) -> Result<PortalBlock> {
        if let Some(why) = iptables_skip_reason() {
            bail!("cannot block {addr}:{port} with iptables: {why}");
        }
        let iptables = find_tool("iptables").context("iptables not found")?;
        let base: Vec<String> = [
            "INPUT",
            "-p",
            "tcp",
            "-d",
            addr,
            "--dport",
            &port.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let comment = format!("ssv-tests tgtd pid {}", std::process::id());
        let with_comment: Vec<String> = base
            .iter()
            .cloned()
            .chain(["-m", "comment", "--comment", &comment].map(String::from))
            .chain(["-j", "DROP"].map(String::from))
            .collect();
        let plain: Vec<String> = base
            .iter()
            .cloned()
            .chain(["-j", "DROP"].map(String::from))
            .collect();
        let mut errors = Vec::new();
        for rule in [with_comment, plain] {
            let mut cmd = Command::new(&iptables);
            cmd.args(["-w", "-I"]).args(&rule);
            match output_within(cmd, Duration::from_secs(20)) {
                Ok(out) if out.status.success() => {
                    return Ok(PortalBlock {
                        iptables,
                        rule,
                        active: true,
                    })
                }
                Ok(out) => errors.push(format!(
                    "iptables -I {}: {}: {}",
                    rule.join(" "),
                    out.status,
                    out.stderr.trim()
                )),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("cannot block {addr}:{port}: {}", errors.join("; "))
    }

    /// The rule as given to `iptables -I` / `-D`.
    pub fn rule(&self) -> String {
        self.rule.join(" ")
    }

    /// Deletes the rule now, reporting failure (Drop only prints it).
    pub fn remove(mut self) -> Result<()> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        let mut cmd = Command::new(&self.iptables);
        cmd.args(["-w", "-D"]).args(&self.rule);
        let out = output_within(cmd, Duration::from_secs(20))?;
        if !out.status.success() {
            bail!(
                "iptables -D {}: {}: {}",
                self.rule(),
                out.status,
                out.stderr.trim()
            );
        }
        Ok(())
    }
}

impl Drop for PortalBlock {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            eprintln!("ssv-tests: warning: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Target 1: iqn.2026-11.test:one
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 3
            Initiator: iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-perf alias: none
            Connection: 0
                IP Address: 127.0.0.1
        I_T nexus: 4
            Initiator: iqn.1996-04.org.alpinelinux:01:c1f2 alias: host1
            Connection: 0
                IP Address: 127.0.0.2
            Connection: 1
                IP Address: 127.0.0.3
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags: 
        LUN: 1
            Type: disk
            SCSI ID: 6deadbeef00112233445566778899aa
            SCSI SN: ssv445566778899aa
            Size: 10737 MB, Block size: 512
            Online: Yes
            Thin-provisioning: Yes
            Backing store type: rdwr
            Backing store path: /var/tmp/x/lun1.img
            Backing store flags: direct
    Account information:
        alice
        bob (outgoing)
    ACL information:
        ALL
Target 2: iqn.2026-11.test:two
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00020000
            SCSI SN: beaf20
            Size: 0 MB, Block size: 1
    Account information:
    ACL information:
";

    #[test]
    fn target_show_parses_nexuses_luns_accounts_acl() {
        let ts = parse_target_show(SHOW).unwrap();
        assert_eq!(ts.len(), 2);
        let t = &ts[0];
        assert_eq!(
            (t.tid, t.name.as_str(), t.state.as_str()),
            (1, "iqn.2026-11.test:one", "ready")
        );
        assert_eq!(t.nexuses.len(), 2);
        assert_eq!(t.nexuses[0].sid, 3);
        assert_eq!(
            t.nexuses[0].initiator,
            "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-perf"
        );
        assert_eq!(t.nexuses[0].alias, None);
        assert_eq!(t.nexuses[1].alias.as_deref(), Some("host1"));
        assert_eq!(
            t.nexuses[1].connections,
            [
                Connection {
                    cid: 0,
                    ip: "127.0.0.2".into()
                },
                Connection {
                    cid: 1,
                    ip: "127.0.0.3".into()
                }
            ]
        );
        assert_eq!(t.luns.len(), 2);
        assert_eq!(t.luns[0].scsi_id, "IET     00010000");
        let l = &t.luns[1];
        assert_eq!(
            (l.lun, l.kind.as_str(), l.size_mb, l.block_size),
            (1, "disk", 10737, 512)
        );
        assert!(l.thin);
        assert_eq!(l.scsi_sn, "ssv445566778899aa");
        assert_eq!(l.backing_path, "/var/tmp/x/lun1.img");
        assert_eq!(l.backing_flags, "direct");
        assert_eq!(t.accounts, ["alice", "bob (outgoing)"]);
        assert_eq!(t.acl, ["ALL"]);
        assert!(ts[1].nexuses.is_empty() && ts[1].acl.is_empty());
        assert!(parse_target_show("    LUN: 1\n").is_err());
    }

    #[test]
    fn naa6_is_tgtd_rule() {
        // The spec's measurements (§3.2): defaults and an explicit id.
        assert_eq!(
            naa6_of_scsi_id("IET     00010002"),
            "60000000000000000e00000000010002"
        );
        assert_eq!(
            naa6_of_scsi_id("deadbeef00112233445566778899aabb"),
            "6eadbeef00112233445566778899aabb"
        );
        let ids = LunIds {
            scsi_id: "6abc".repeat(8),
            scsi_sn: "x".into(),
        };
        assert_eq!(ids.naa6(), ids.scsi_id);
        assert_eq!(ids.wwid(), format!("3{}", ids.scsi_id));
    }

    #[test]
    fn generated_ids_keep_their_value_in_naa6_and_differ() {
        let a = unique_scsi_id(12345, 1, 1);
        let b = unique_scsi_id(12345, 1, 1);
        assert_eq!(a.len(), 32);
        assert!(a.starts_with('6') && a.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!a.contains('0'), "{a}");
        assert_ne!(a, b);
        assert_eq!(naa6_of_scsi_id(&a), a);
        assert_ne!(
            unique_scsi_id(12345, 1, 2)[20..],
            unique_scsi_id(12345, 1, 3)[20..]
        );
        assert_ne!(unique_scsi_id(12345, 1, 2), unique_scsi_id(12346, 1, 2));
    }
}

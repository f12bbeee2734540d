//! The lockd daemon, one per host: joins lockspaces, renews their host id
//! leases, acquires and releases resource leases for local processes over a
//! Unix socket, and stops those processes when its leases are lost.

mod fence;
mod space;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use san::iscsi::{self, IscsiUri, MultipathOptions, Selector};
use san::{BlockDev, DevId, FaultControl, FaultDev, FileDev, OpenOptions};

use crate::delta::{HostId, HostState, Lockspace};
use crate::leaseio::LeaseDev;
use crate::paxos::{AcquireOptions, Resource};
use crate::proto::{
    Envelope, Event, HostStatus, IoCounts, LeaseInfo, LockspaceSpec, LockspaceStatus, Reply,
    Request, ResourceSpec, Status,
};
use crate::record::Name;
use crate::sync::lock;
use crate::timing::Timeouts;
use crate::{Error, Result};

pub use fence::{alive, stop_holders, Watchdog};
use space::{Holder, LocalLease, Notify, Space};

fn parse_uri(path: &str) -> Result<IscsiUri> {
    path.parse()
        .map_err(|e: iscsi::UriError| Error::InvalidArgument(e.to_string()))
}

/// Opens a lease area's device with writes that are on stable storage when
/// they return: a file or block device with O_DSYNC, or the LU an
/// `iscsi://` URI names (see `san::iscsi::uri`), logged in to as
/// `initiator_name` with lockd's ISID qualifier.
pub fn open_lease_dev(
    path: &str,
    initiator_name: &str,
    timeouts: &Timeouts,
) -> Result<Arc<dyn BlockDev>> {
    if !iscsi::is_iscsi_uri(path) {
        let file =
            FileDev::open(path, &OpenOptions::new().sync(true)).map_err(|source| Error::Io {
                dev: path.to_string(),
                offset: 0,
                source,
            })?;
        return Ok(Arc::new(file));
    }
    let uri = parse_uri(path)?;
    let mp = iscsi::open_uri(
        &uri,
        initiator_name,
        iscsi::LOCKD_ISID_QUALIFIER,
        multipath_options(timeouts),
    )
    .map_err(|e| Error::Io {
        dev: path.to_string(),
        offset: 0,
        source: san::Error::Open {
            path: path.into(),
            source: std::io::Error::other(e),
        },
    })?;
    log::info!(
        "{path}: LU {} as {initiator_name}, {} path(s) up",
        mp.wwid(),
        mp.status().iter().filter(|p| p.up).count()
    );
    Ok(Arc::new(SyncWrites(mp)))
}

/// Multipath settings for lease I/O. io_timeout per command, as every lease
/// I/O. no_path_retry (queueing while no path is up) of one io_timeout:
/// LeaseDev gives up on a request after io_timeout anyway, so queueing
/// longer would only let a write land after its caller counted it failed,
/// and renewals are retried by the renewal loop, not by the queue. That
/// keeps every lease I/O's end within a few io_timeouts of its start, far
/// inside id_renewal_fail (`no_path_retry_for`, VDSM's 80 s, is the most a
/// lease daemon could allow) and host_dead.
pub fn multipath_options(t: &Timeouts) -> MultipathOptions {
    let io = t.io();
    MultipathOptions {
        selector: Selector::ServiceTime,
        no_path_retry: io.min(iscsi::multipath::no_path_retry_for(io)),
        // Paths are checked (and failed ones logged in again) at least
        // once per io_timeout, as often as the initiator's default allows.
        polling_interval: io.min(iscsi::multipath::DEFAULT_POLLING_INTERVAL),
        io_timeout: io,
    }
}

/// Every write followed by SYNCHRONIZE CACHE before it returns: what
/// O_DSYNC gives a file, for a LU (our initiator has no FUA writes).
struct SyncWrites<D>(D);

impl<D: BlockDev> BlockDev for SyncWrites<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> san::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> san::Result<()> {
        self.0.write_at(buf, offset)?;
        self.0.flush()
    }
    fn flush(&self) -> san::Result<()> {
        self.0.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> san::Result<()> {
        self.0.write_zeroes(offset, len)?;
        self.0.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> san::Result<()> {
        self.0.discard(offset, len)
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn logical_sector_size(&self) -> u32 {
        self.0.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.0.physical_sector_size()
    }
    fn identity(&self) -> &DevId {
        self.0.identity()
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub timeouts: Timeouts,
    /// Unique name written in our delta leases; a restart with the same
    /// name re-acquires its host ids without waiting.
    pub host_name: String,
    /// Accept `fault` requests (tests only).
    pub fault_injection: bool,
    pub watchdog: PathBuf,
    /// Our iSCSI initiator name for lease areas named by `iscsi://` URIs;
    /// never ssvd's (see `san::iscsi::uri`: one name per daemon).
    pub initiator_name: String,
}

struct Conn {
    pid: Mutex<Option<u32>>,
    writer: Mutex<UnixStream>,
}

struct Dev {
    lease: Arc<LeaseDev>,
    fault: Option<FaultControl>,
}

pub struct Daemon {
    cfg: Config,
    host_name: Name,
    devs: Mutex<HashMap<String, Arc<Dev>>>,
    /// Resources seen, by spec: each remembers its leader's num_hosts, so
    /// an acquire reads leader and dblocks in one I/O.
    resources: Mutex<HashMap<String, Arc<Resource>>>,
    spaces: Mutex<HashMap<String, Arc<Space>>>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_conn: AtomicU64,
    watchdog_state: Mutex<String>,
}

struct Notifier(Arc<Daemon>);

impl Notify for Notifier {
    fn event(&self, holder: Holder, ev: &Event) {
        self.0.send_event(holder, ev);
    }
}

impl Daemon {
    pub fn new(cfg: Config) -> anyhow::Result<Arc<Daemon>> {
        cfg.timeouts
            .check_fencing()
            .map_err(|e| anyhow::anyhow!("timeouts: {e}"))?;
        let host_name = Name::new(&cfg.host_name).map_err(|e| anyhow::anyhow!("host name: {e}"))?;
        Ok(Arc::new(Daemon {
            cfg,
            host_name,
            devs: Mutex::new(HashMap::new()),
            resources: Mutex::new(HashMap::new()),
            spaces: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            watchdog_state: Mutex::new("not started".into()),
        }))
    }

    fn send_event(&self, holder: Holder, ev: &Event) {
        let conns: Vec<Arc<Conn>> = match holder {
            Holder::Conn(id) => lock(&self.conns).get(&id).cloned().into_iter().collect(),
            Holder::Pid(p) => lock(&self.conns)
                .values()
                .filter(|c| *lock(&c.pid) == Some(p))
                .cloned()
                .collect(),
        };
        if let Ok(mut line) = serde_json::to_string(ev) {
            line.push('\n');
            for c in conns {
                let _ = lock(&c.writer).write_all(line.as_bytes());
            }
        }
    }

    fn dev(&self, path: &str) -> Result<Arc<Dev>> {
        // Two spellings of one iSCSI LU share one device: two maps would
        // log in with the same name and ISIDs and reinstate each other.
        let key = if iscsi::is_iscsi_uri(path) {
            parse_uri(path)?.canonical()
        } else {
            path.to_string()
        };
        if let Some(d) = lock(&self.devs).get(&key) {
            return Ok(d.clone());
        }
        let base = open_lease_dev(path, &self.cfg.initiator_name, &self.cfg.timeouts)?;
        let (dev, fault): (Arc<dyn BlockDev>, _) = if self.cfg.fault_injection {
            let ctl = FaultControl::new();
            (Arc::new(FaultDev::new(base, ctl.clone())), Some(ctl))
        } else {
            (base, None)
        };
        let d = Arc::new(Dev {
            lease: Arc::new(LeaseDev::new(dev, path, self.cfg.timeouts.io())),
            fault,
        });
        Ok(lock(&self.devs).entry(key).or_insert(d).clone())
    }

    fn resource(&self, spec: &ResourceSpec) -> Result<Arc<Resource>> {
        let key = spec.to_string();
        if let Some(r) = lock(&self.resources).get(&key) {
            return Ok(r.clone());
        }
        let dev = self.dev(&spec.path)?;
        let r = Arc::new(Resource::new(
            dev.lease.clone(),
            spec.offset,
            &spec.lockspace,
            &spec.resource,
        )?);
        Ok(lock(&self.resources).entry(key).or_insert(r).clone())
    }

    /// The joined lockspaces, outside the map's lock.
    fn spaces(&self) -> Vec<Arc<Space>> {
        lock(&self.spaces).values().cloned().collect()
    }

    fn space(&self, name: &str) -> Result<Arc<Space>> {
        lock(&self.spaces).get(name).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "lockspace {name} is not joined on this host; run `lockd client add-lockspace -s {name}:HOST_ID:PATH:OFFSET`"
            ))
        })
    }

    fn add_lockspace(self: &Arc<Self>, spec: LockspaceSpec) -> Result<serde_json::Value> {
        if lock(&self.spaces).contains_key(&spec.lockspace) {
            return Err(Error::InvalidArgument(format!(
                "lockspace {} is already joined",
                spec.lockspace
            )));
        }
        let dev = self.dev(&spec.path)?;
        let ls = Lockspace::open(dev.lease.clone(), spec.offset, &spec.lockspace)?;
        log::info!(
            "joining lockspace {} as host {} ({} s: the delta lease wait)",
            spec.lockspace,
            spec.host_id,
            self.cfg.timeouts.delta_short_delay().as_secs()
        );
        let host = Arc::new(HostId::acquire(
            ls,
            spec.host_id,
            self.host_name,
            self.cfg.timeouts,
        )?);
        let generation = host.generation;
        let space = Space::new(spec.clone(), host, dev.lease.clone());
        {
            let mut spaces = lock(&self.spaces);
            if spaces.contains_key(&spec.lockspace) {
                let _ = space.host.release();
                return Err(Error::InvalidArgument(format!(
                    "lockspace {} was joined meanwhile",
                    spec.lockspace
                )));
            }
            spaces.insert(spec.lockspace.clone(), space.clone());
        }
        let notify: Arc<dyn Notify> = Arc::new(Notifier(self.clone()));
        std::thread::Builder::new()
            .name(format!("renew-{}", spec.lockspace))
            .spawn(move || space.run_renewal(notify))
            .map_err(|e| Error::Internal(format!("cannot start the renewal thread: {e}")))?;
        Ok(serde_json::json!({ "generation": generation }))
    }

    fn rem_lockspace(&self, name: &str) -> Result<serde_json::Value> {
        let space = self.space(name)?;
        if space.failed().is_none() && !space.leases().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "lockspace {name} still has leases held on this host; release them first"
            )));
        }
        space.stop();
        lock(&self.spaces).remove(name);
        if space.failed().is_none() {
            space.host.release()?;
        }
        Ok(serde_json::Value::Null)
    }

    fn acquire(
        &self,
        conn: u64,
        spec: ResourceSpec,
        shared: bool,
        wait: bool,
        pid: Option<u32>,
    ) -> Result<LeaseInfo> {
        let space = self.space(&spec.lockspace)?;
        if let Some(reason) = space.failed() {
            return Err(Error::LeaseExpired {
                space: format!("{} ({reason})", spec.lockspace),
                since: space.host.renewal_age(),
            });
        }
        let (holder, hpid) = match pid {
            Some(p) => (Holder::Pid(p), p),
            None => {
                let p = lock(&self.conns)
                    .get(&conn)
                    .and_then(|c| *lock(&c.pid))
                    .ok_or_else(|| {
                        Error::InvalidArgument(
                            "register the connection (or give a pid) before acquiring".into(),
                        )
                    })?;
                (Holder::Conn(conn), p)
            }
        };
        let key = spec.resource.clone();
        let local_busy = || Error::HeldByLiveHost {
            resource: format!("{}:{}", spec.lockspace, spec.resource),
            owner_id: space.host.host_id,
            owner_generation: space.host.generation,
        };
        // A local acquire or release of this resource in flight (a holder
        // that just exited is being released) ends within a few I/Os: wait
        // for it rather than report the lease busy.
        let settle = Instant::now() + self.cfg.timeouts.io() * 2;
        loop {
            let mut leases = space.leases();
            if let Some(l) = leases.get_mut(&key) {
                if l.held.shared && shared && !l.holders.iter().any(|(h, _)| *h == holder) {
                    l.holders.push((holder, hpid));
                    return Ok(space.info(l, hpid));
                }
                return Err(local_busy());
            }
            if space.try_mark_busy(&key) {
                break;
            }
            drop(leases);
            if Instant::now() >= settle {
                return Err(local_busy());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let result = (|| {
            let res = self.resource(&spec)?;
            let held = res.acquire(
                &space.host,
                AcquireOptions {
                    shared,
                    owner_nowait: !wait,
                },
            )?;
            Ok((res, held))
        })();
        let (res, held) = match result {
            Ok(v) => v,
            Err(e) => {
                space.unmark_busy(&key);
                return Err(e);
            }
        };
        let lease = LocalLease {
            spec,
            res,
            held,
            holders: vec![(holder, hpid)],
        };
        let info = space.info(&lease, hpid);
        {
            // Into the table before the resource stops being "acquiring",
            // under the table's lock: in between, a second local acquire
            // would find neither, ballot for the next lease version over ours
            // (the leader names this host, so it does not wait) and both
            // local holders would think they hold the lease.
            let mut leases = space.leases();
            leases.insert(key.clone(), lease);
            space.unmark_busy(&key);
        }
        // The lockspace may have failed while we were acquiring, after
        // `fail` collected the holders to stop: this one would not be
        // stopped, so it must not get the lease. (`fail` sets the flag
        // before it reads the table, and we read the flag after inserting.)
        if let Some(reason) = space.failed() {
            space.leases().remove(&key);
            return Err(Error::LeaseExpired {
                space: format!("{} ({reason})", space.spec.lockspace),
                since: space.host.renewal_age(),
            });
        }
        // The holder may have died while we were acquiring.
        if !self.holder_alive(holder, hpid) {
            space.drop_holder(holder);
        }
        Ok(info)
    }

    fn holder_alive(&self, holder: Holder, pid: u32) -> bool {
        match holder {
            Holder::Conn(id) => lock(&self.conns).contains_key(&id),
            Holder::Pid(_) => alive(pid),
        }
    }

    fn release(
        &self,
        conn: u64,
        spec: &ResourceSpec,
        pid: Option<u32>,
    ) -> Result<serde_json::Value> {
        let space = self.space(&spec.lockspace)?;
        let holder = pid.map_or(Holder::Conn(conn), Holder::Pid);
        let freed = {
            let mut leases = space.leases();
            let Some(l) = leases.get_mut(&spec.resource) else {
                return Err(Error::InvalidArgument(format!(
                    "{spec} is not held on this host"
                )));
            };
            let before = l.holders.len();
            l.holders.retain(|(h, _)| *h != holder);
            if l.holders.len() == before {
                return Err(Error::InvalidArgument(format!(
                    "{spec} is held on this host, but not by this client"
                )));
            }
            if l.holders.is_empty() {
                // Busy for local acquirers until the release is on disk
                // (`Space::release_on_disk`).
                space.mark_busy(&spec.resource);
                leases.remove(&spec.resource)
            } else {
                None
            }
        };
        if let Some(l) = freed {
            space.release_on_disk(l.res, l.held)?;
        }
        Ok(serde_json::Value::Null)
    }

    fn inquire(&self, conn: u64, pid: Option<u32>) -> Vec<LeaseInfo> {
        let holder = pid.map_or(Holder::Conn(conn), Holder::Pid);
        self.all_leases()
            .into_iter()
            .filter(|(h, _)| *h == holder)
            .map(|(_, i)| i)
            .collect()
    }

    fn all_leases(&self) -> Vec<(Holder, LeaseInfo)> {
        let spaces = self.spaces();
        let mut out = Vec::new();
        for s in spaces {
            for l in s.leases().values() {
                for (h, p) in &l.holders {
                    out.push((*h, s.info(l, *p)));
                }
            }
        }
        out
    }

    fn request(&self, spec: &ResourceSpec, force_mode: u32) -> Result<serde_json::Value> {
        let space = self.space(&spec.lockspace)?;
        let dev = self.dev(&spec.path)?;
        let res = Resource::new(
            dev.lease.clone(),
            spec.offset,
            &spec.lockspace,
            &spec.resource,
        )?;
        let l = res.request(&space.host, force_mode)?;
        Ok(serde_json::json!({ "owner_id": l.owner_id, "lver": l.lver }))
    }

    pub fn status(&self) -> Status {
        let spaces = self.spaces();
        let mut lockspaces: Vec<LockspaceStatus> = spaces
            .iter()
            .map(|s| {
                let (reads, writes, read_bytes, write_bytes) = s.dev.stats.snapshot();
                LockspaceStatus {
                    lockspace: s.spec.lockspace.clone(),
                    host_id: s.host.host_id,
                    generation: s.host.generation,
                    path: s.spec.path.clone(),
                    offset: s.spec.offset,
                    state: match s.failed() {
                        Some(r) => format!("failed: {r}"),
                        None => "joined".into(),
                    },
                    renewal_age_ms: s.host.renewal_age().as_millis() as u64,
                    hosts: s
                        .host
                        .hosts()
                        .into_iter()
                        .map(|(id, l, st)| HostStatus {
                            host_id: id,
                            generation: l.owner_generation,
                            name: l.resource_name.to_string(),
                            state: match st {
                                HostState::Free => "free",
                                HostState::Unknown => "unknown",
                                HostState::Live => "live",
                                HostState::Fail => "fail",
                                HostState::Dead => "dead",
                            }
                            .into(),
                        })
                        .collect(),
                    io: IoCounts {
                        reads,
                        writes,
                        read_bytes,
                        write_bytes,
                        timeouts: s.dev.stats.timeouts.load(Ordering::Relaxed),
                    },
                }
            })
            .collect();
        lockspaces.sort_by(|a, b| a.lockspace.cmp(&b.lockspace));
        Status {
            pid: std::process::id(),
            io_timeout: self.cfg.timeouts.io_timeout,
            watchdog_fire: self.cfg.timeouts.watchdog_fire,
            watchdog: lock(&self.watchdog_state).clone(),
            lockspaces,
            leases: self.all_leases().into_iter().map(|(_, i)| i).collect(),
        }
    }

    fn fault(
        &self,
        path: &str,
        read_ms: u64,
        write_ms: u64,
        fail: bool,
    ) -> Result<serde_json::Value> {
        let dev = self.dev(path)?;
        let ctl = dev.fault.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "fault injection is off; start the daemon with --fault-injection".into(),
            )
        })?;
        ctl.set_delay(
            Duration::from_millis(read_ms),
            Duration::from_millis(write_ms),
        );
        ctl.fail_reads(fail.then_some(0..u64::MAX));
        ctl.fail_writes(fail.then_some(0..u64::MAX));
        Ok(serde_json::Value::Null)
    }

    fn handle(self: &Arc<Self>, conn: u64, req: Request) -> Result<serde_json::Value> {
        match req {
            Request::Register { pid } => {
                if let Some(c) = lock(&self.conns).get(&conn) {
                    *lock(&c.pid) = Some(pid);
                }
                Ok(serde_json::Value::Null)
            }
            Request::AddLockspace { spec } => self.add_lockspace(spec),
            Request::RemLockspace { lockspace } => self.rem_lockspace(&lockspace),
            Request::Acquire {
                spec,
                shared,
                wait,
                pid,
            } => self
                .acquire(conn, spec, shared, wait, pid)
                .map(|i| json(&i)),
            Request::Release { spec, pid } => self.release(conn, &spec, pid),
            Request::Request { spec, force_mode } => self.request(&spec, force_mode),
            Request::Inquire { pid } => Ok(json(&self.inquire(conn, pid))),
            Request::Status => Ok(json(&self.status())),
            Request::Fault {
                path,
                read_delay_ms,
                write_delay_ms,
                fail,
            } => self.fault(&path, read_delay_ms, write_delay_ms, fail),
        }
    }

    fn serve_conn(self: Arc<Self>, stream: UnixStream) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let Ok(writer) = stream.try_clone() else {
            return;
        };
        lock(&self.conns).insert(
            id,
            Arc::new(Conn {
                pid: Mutex::new(None),
                writer: Mutex::new(writer),
            }),
        );
        let reader = BufReader::new(stream);
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let reply = match serde_json::from_str::<Envelope>(&line) {
                Ok(env) => match self.handle(id, env.request) {
                    Ok(result) => Reply {
                        id: env.id,
                        ok: true,
                        error: None,
                        code: 0,
                        result,
                    },
                    Err(e) => Reply {
                        id: env.id,
                        ok: false,
                        error: Some(e.to_string()),
                        code: e.code(),
                        result: serde_json::Value::Null,
                    },
                },
                Err(e) => Reply {
                    id: 0,
                    ok: false,
                    error: Some(format!("bad request: {e}")),
                    code: -22,
                    result: serde_json::Value::Null,
                },
            };
            let Ok(mut out) = serde_json::to_string(&reply) else {
                break;
            };
            out.push('\n');
            let conn = lock(&self.conns).get(&id).cloned();
            if let Some(c) = conn {
                if lock(&c.writer).write_all(out.as_bytes()).is_err() {
                    break;
                }
            }
        }
        // The client is gone: its leases go with it.
        lock(&self.conns).remove(&id);
        let spaces = self.spaces();
        for s in spaces {
            s.drop_holder(Holder::Conn(id));
        }
    }

    /// Releases leases of pid holders that exited, every half second.
    fn reap_pids(self: Arc<Self>) {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let spaces = self.spaces();
            for s in spaces {
                for p in s.dead_pid_holders() {
                    log::info!("lease holder pid {p} exited; releasing its leases");
                    s.drop_holder(Holder::Pid(p));
                }
            }
        }
    }

    /// Pings the watchdog while every lockspace is healthy (or failed with
    /// all its holders stopped); says clearly when there is no watchdog.
    fn run_watchdog(self: Arc<Self>) {
        let fire = Duration::from_secs(self.cfg.timeouts.watchdog_fire);
        let wd = match Watchdog::open(&self.cfg.watchdog, fire) {
            Ok(Some(wd)) => {
                *lock(&self.watchdog_state) = self.cfg.watchdog.display().to_string();
                wd
            }
            Ok(None) => {
                let msg = format!(
                    "none: {} does not exist; a host where lockd hangs is fenced only by its clients' own lease deadlines (load softdog or a hardware watchdog driver)",
                    self.cfg.watchdog.display()
                );
                log::warn!("watchdog {msg}");
                *lock(&self.watchdog_state) = msg;
                return;
            }
            Err(e) => {
                let msg = format!("none: cannot open {}: {e}", self.cfg.watchdog.display());
                log::error!("watchdog {msg}");
                *lock(&self.watchdog_state) = msg;
                return;
            }
        };
        let mut wd = wd;
        let interval = (fire / 6).max(Duration::from_secs(1));
        loop {
            let spaces = self.spaces();
            if spaces.iter().all(|s| s.watchdog_ok()) {
                wd.ping();
            } else {
                log::error!("not pinging the watchdog: a lockspace failed and its holders are still running");
            }
            std::thread::sleep(interval);
        }
    }

    /// Serves until SIGTERM or SIGINT, then releases every lease and host
    /// id and removes the socket.
    pub fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let signals = block_signals()?;
        let sock = &self.cfg.socket;
        if let Some(dir) = sock.parent() {
            std::fs::create_dir_all(dir)?;
        }
        if sock.exists() {
            if UnixStream::connect(sock).is_ok() {
                anyhow::bail!("{} is in use: another lockd is running", sock.display());
            }
            std::fs::remove_file(sock)?;
        }
        let listener = UnixListener::bind(sock)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", sock.display()))?;
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))?;
        log::info!(
            "lockd {} listening on {} (io_timeout {} s, watchdog fire {} s)",
            std::process::id(),
            sock.display(),
            self.cfg.timeouts.io_timeout,
            self.cfg.timeouts.watchdog_fire
        );
        let me = self.clone();
        std::thread::spawn(move || me.run_watchdog());
        let me = self.clone();
        std::thread::spawn(move || me.reap_pids());
        let me = self.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let d = me.clone();
                        std::thread::spawn(move || d.serve_conn(s));
                    }
                    Err(e) => log::warn!("accept: {e}"),
                }
            }
        });
        let sig = wait_signal(&signals);
        log::info!("signal {sig}: releasing leases and leaving lockspaces");
        self.shutdown();
        let _ = std::fs::remove_file(sock);
        Ok(())
    }

    /// Stops every lease holder (SIGTERM, SIGKILL after kill_grace), then
    /// releases the leases and host ids.
    ///
    /// Fix: this used to release first and leave the holders running. A
    /// pid holder (`lockd client acquire -p`) has no connection to notice
    /// lockd is gone, and a library client notices only once lockd has
    /// exited, so another host could acquire a lease whose old holder was
    /// still writing. A lease whose holder survives SIGKILL is not released,
    /// nor is its host id: other hosts then wait out host_dead.
    fn shutdown(&self) {
        // Renewals go on while the holders are stopped; no new acquires.
        let spaces: Vec<Arc<Space>> = lock(&self.spaces).drain().map(|(_, s)| s).collect();
        let mut pids: Vec<u32> = spaces
            .iter()
            .flat_map(|s| {
                s.leases()
                    .values()
                    .flat_map(|l| l.holders.iter().map(|(_, p)| *p))
                    .collect::<Vec<_>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        if !pids.is_empty() {
            log::warn!("stopping lease holders {pids:?} before releasing their leases");
        }
        let left = fence::stop_holders(&pids, self.cfg.timeouts.kill_grace());
        for s in spaces {
            s.stop();
            if s.failed().is_some() {
                continue;
            }
            let leases: Vec<LocalLease> = s.leases().drain().map(|(_, l)| l).collect();
            let mut kept = false;
            for l in leases {
                if l.holders.iter().any(|(_, p)| left.contains(p)) {
                    log::error!(
                        "lockspace {}: not releasing {} (holder survived SIGKILL)",
                        s.spec.lockspace,
                        l.spec.resource
                    );
                    kept = true;
                    continue;
                }
                let _ = s.release_on_disk(l.res, l.held);
            }
            if kept {
                continue;
            }
            if let Err(e) = s.host.release() {
                log::warn!("lockspace {}: releasing our host id: {e}", s.spec.lockspace);
            }
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Blocks SIGTERM/SIGINT in this and every later thread, so one thread can
/// wait for them synchronously.
fn block_signals() -> anyhow::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // through a valid pointer, and pthread_sigmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            anyhow::bail!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads the initialised set and writes one int.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn lease_multipath_queues_no_longer_than_the_lease_timing_allows() {
        for io in [1, 2, 10, 60] {
            for fire in [3, 60] {
                let Ok(t) = Timeouts::new(io, fire) else {
                    continue;
                };
                let o = multipath_options(&t);
                assert_eq!(o.io_timeout, t.io());
                assert!(o.no_path_retry <= t.io(), "io {io}");
                assert!(o.no_path_retry <= t.id_renewal_fail());
                assert!(o.polling_interval <= t.io());
            }
        }
    }

    /// Counts flushes.
    struct Counting(FileDev, AtomicUsize);

    impl BlockDev for Counting {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> san::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> san::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn flush(&self) -> san::Result<()> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.flush()
        }
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn logical_sector_size(&self) -> u32 {
            self.0.logical_sector_size()
        }
        fn physical_sector_size(&self) -> u32 {
            self.0.physical_sector_size()
        }
        fn identity(&self) -> &DevId {
            self.0.identity()
        }
    }

    #[test]
    fn every_lu_write_is_flushed_before_it_returns() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let dev = FileDev::open(f.path(), &OpenOptions::new()).unwrap();
        let d = SyncWrites(Counting(dev, AtomicUsize::new(0)));
        let sector = d.logical_sector_size() as usize;
        d.write_at(&vec![7u8; sector], 0).unwrap();
        assert_eq!(d.0 .1.load(Ordering::Relaxed), 1);
        d.write_zeroes(0, sector as u64).unwrap();
        assert_eq!(d.0 .1.load(Ordering::Relaxed), 2);
        let mut back = vec![1u8; sector];
        d.read_at(&mut back, 0).unwrap();
        assert_eq!(d.0 .1.load(Ordering::Relaxed), 2);
        assert!(back.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_bad_uri_is_named_not_opened_as_a_file() {
        let e = open_lease_dev(
            "iscsi://127.0.0.1/iqn.x:y/1",
            "iqn.x:z",
            &Timeouts::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("HOST:PORT"), "{e}");
    }
}

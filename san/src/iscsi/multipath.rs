//! Native multipath over iSCSI sessions, dm-multipath's semantics in
//! userspace (spec: shared/specs/iscsi-multipath.md §4): paths to one LU
//! (same VPD 0x83 identity, checked), a path selector, a TEST UNIT READY
//! checker that also logs failed paths back in (same ISID: the target
//! reinstates the session), failover of in-flight I/O, and queueing while
//! no path is up, bounded by `no_path_retry` (VDSM's 80 s, matched to the
//! lease timeouts), after which I/O fails with a clear error until a path
//! returns. RESERVATION CONFLICT and target errors are never path errors.

use super::lun::{zero_range, IscsiLun};
use super::session::{Session, SessionOptions};
use super::{login, IscsiError, LoginOptions};
use crate::scsi::{Action, PrType, Status};
use crate::{BlockDev, DevId, Error, Result};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long I/O queues with no path, for a lease daemon with `io_timeout`:
/// its renewal-failure window (8 × io_timeout, lockd's `id_renewal_fail`,
/// as sanlock's), so I/O queues exactly as long as a lease can still be
/// valid; after that the leases are gone anyway. VDSM's choice: no_path_retry
/// 16 × polling_interval 5 s = 80 s for sanlock's io_timeout of 10 s.
pub const fn no_path_retry_for(io_timeout: Duration) -> Duration {
    Duration::from_secs(8 * io_timeout.as_secs())
}

/// For lockd's default io_timeout of 10 s.
pub const DEFAULT_NO_PATH_RETRY: Duration = no_path_retry_for(Duration::from_secs(10));
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(5);
/// Per-command limit on a path before it is declared failed (multipathd
/// sets fast_io_fail_tmo 5 s; a bit more for loaded hosts).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One way to reach the LU.
#[derive(Clone, Debug)]
pub struct PathConfig {
    pub portal: SocketAddr,
    pub target: String,
    pub lun: u16,
    /// Its ISID must differ from every other path's (one I_T nexus each).
    pub login: LoginOptions,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    /// All I/O on the first path that is up (in configuration order):
    /// failback is immediate when a better path returns.
    Failover,
    RoundRobin,
    /// The path with the fewest requests in flight.
    ServiceTime,
}

#[derive(Clone, Debug)]
pub struct MultipathOptions {
    pub selector: Selector,
    pub no_path_retry: Duration,
    pub polling_interval: Duration,
    pub io_timeout: Duration,
}

impl Default for MultipathOptions {
    fn default() -> Self {
        MultipathOptions {
            selector: Selector::ServiceTime,
            no_path_retry: DEFAULT_NO_PATH_RETRY,
            polling_interval: DEFAULT_POLLING_INTERVAL,
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathEvent {
    Up {
        path: usize,
        portal: SocketAddr,
    },
    Down {
        path: usize,
        portal: SocketAddr,
        reason: String,
    },
    /// The last path went down: I/O queues for `no_path_retry`.
    Queueing,
    /// `no_path_retry` passed with no path: I/O fails until one returns.
    Failing,
    /// Our reservation key is gone from the LU: another host preempted
    /// us. We never register again by ourselves; writes get RESERVATION
    /// CONFLICT until an operator acts.
    Fenced,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathStatus {
    pub portal: SocketAddr,
    pub up: bool,
    /// Why it is down.
    pub reason: Option<String>,
    pub in_flight: usize,
    pub failures: usize,
}

struct Path {
    cfg: PathConfig,
    lun: Mutex<Option<Arc<IscsiLun>>>,
    reason: Mutex<Option<String>>,
    in_flight: AtomicUsize,
    failures: AtomicUsize,
}

/// What identifies the LU; every path must agree.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    wwid: String,
    serial: String,
    size: u64,
    block: u32,
    phys: u32,
}

impl Identity {
    fn of(l: &IscsiLun) -> Identity {
        Identity {
            wwid: l.wwid().to_string(),
            serial: l.serial().to_string(),
            size: l.size(),
            block: l.logical_sector_size(),
            phys: l.physical_sector_size(),
        }
    }
}

struct Inner {
    paths: Vec<Path>,
    opts: MultipathOptions,
    id: Identity,
    dev: DevId,
    /// When the last path went down (None while one is up).
    all_down_since: Mutex<Option<Instant>>,
    /// Signalled when a path comes up or the map stops.
    changed: Condvar,
    rr: AtomicUsize,
    stop: AtomicBool,
    listeners: Mutex<Vec<Sender<PathEvent>>>,
    /// Our persistent-reservation key, once registered.
    pr_key: Mutex<Option<u64>>,
    fenced: AtomicBool,
    /// The LU refused WRITE SAME: zero with writes from then on.
    no_write_same: AtomicBool,
}

/// One LU reached over several paths, as a [`BlockDev`].
pub struct Multipath {
    inner: Arc<Inner>,
    checker: Option<JoinHandle<()>>,
}

fn connect(cfg: &PathConfig, io_timeout: Duration) -> Result<IscsiLun, IscsiError> {
    let c = login::login(cfg.portal, Some(&cfg.target), &cfg.login)?;
    let opts = SessionOptions {
        command_timeout: io_timeout,
        ..SessionOptions::default()
    };
    IscsiLun::open(Session::with_options(c, opts), cfg.lun)
}

impl Multipath {
    /// Logs in on every path; at least one must come up, and all that do
    /// must be the same LU. Paths that fail now are retried by the checker.
    pub fn open(paths: Vec<PathConfig>, opts: MultipathOptions) -> Result<Multipath, IscsiError> {
        if paths.is_empty() {
            return Err(IscsiError::Protocol(
                "a multipath map needs at least one path".into(),
            ));
        }
        // tgtd puts every portal in one portal group, so the same ISID on
        // two portals is one nexus: each login would reinstate over the other.
        let mut isids: Vec<_> = paths.iter().map(|p| p.login.isid).collect();
        isids.sort();
        isids.dedup();
        if isids.len() != paths.len() {
            return Err(IscsiError::Protocol(
                "two paths share an ISID: each path needs its own (the target would reinstate one session over the other)".into(),
            ));
        }
        let mut id: Option<(Identity, SocketAddr)> = None;
        let mut slots = Vec::new();
        let mut errors = Vec::new();
        for cfg in paths {
            let (lun, reason) = match connect(&cfg, opts.io_timeout) {
                Ok(l) => {
                    let this = Identity::of(&l);
                    match &id {
                        None => id = Some((this, cfg.portal)),
                        Some((first, at)) => check_same(first, *at, &this, cfg.portal)?,
                    }
                    (Some(Arc::new(l)), None)
                }
                Err(e) => {
                    errors.push(format!("{}: {e}", cfg.portal));
                    (None, Some(e.to_string()))
                }
            };
            slots.push(Path {
                cfg,
                lun: Mutex::new(lun),
                reason: Mutex::new(reason),
                in_flight: AtomicUsize::new(0),
                failures: AtomicUsize::new(0),
            });
        }
        let Some((id, _)) = id else {
            return Err(IscsiError::Protocol(format!(
                "no path to the LU could log in: {}",
                errors.join("; ")
            )));
        };
        let inner = Arc::new(Inner {
            paths: slots,
            dev: DevId(format!("wwid:{}", id.wwid)),
            id,
            opts,
            all_down_since: Mutex::new(None),
            changed: Condvar::new(),
            rr: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            pr_key: Mutex::new(None),
            fenced: AtomicBool::new(false),
            no_write_same: AtomicBool::new(false),
        });
        let i = inner.clone();
        let checker = std::thread::Builder::new()
            .name(format!("mpath {}", inner.id.wwid))
            .spawn(move || check_loop(&i))
            .map_err(|e| IscsiError::Protocol(format!("cannot start the path checker: {e}")))?;
        Ok(Multipath {
            inner,
            checker: Some(checker),
        })
    }

    pub fn wwid(&self) -> &str {
        &self.inner.id.wwid
    }

    /// Receives every path event from now on.
    pub fn subscribe(&self, tx: Sender<PathEvent>) {
        lock(&self.inner.listeners).push(tx);
    }

    pub fn status(&self) -> Vec<PathStatus> {
        self.inner
            .paths
            .iter()
            .map(|p| PathStatus {
                portal: p.cfg.portal,
                up: lock(&p.lun).is_some(),
                reason: lock(&p.reason).clone(),
                in_flight: p.in_flight.load(Ordering::Relaxed),
                failures: p.failures.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Registers `key` on every path that is up (registrations belong to
    /// an I_T nexus); paths that return later register when they log in
    /// again, as long as the key is still on the LU.
    pub fn register(&self, key: u64) -> Result<(), IscsiError> {
        *lock(&self.inner.pr_key) = Some(key);
        self.inner.fenced.store(false, Ordering::Release);
        for p in &self.inner.paths {
            let l = lock(&p.lun).clone();
            if let Some(l) = l {
                l.pr_register(key)?;
            }
        }
        Ok(())
    }

    fn key(&self) -> Result<u64, IscsiError> {
        lock(&self.inner.pr_key)
            .ok_or_else(|| IscsiError::Protocol("register a reservation key first".into()))
    }

    /// Takes the reservation of `pr_type` with our key.
    pub fn reserve(&self, pr_type: PrType) -> Result<(), IscsiError> {
        let key = self.key()?;
        self.run(&|l| l.pr_reserve(key, pr_type))
    }

    /// Fences the host registered with `victim`: its registrations go and
    /// its writes fail from now on.
    pub fn preempt(&self, victim: u64, pr_type: PrType) -> Result<(), IscsiError> {
        let key = self.key()?;
        self.run(&|l| l.pr_preempt(key, victim, pr_type))
    }

    pub fn read_keys(&self) -> Result<Vec<u64>, IscsiError> {
        let keys = Mutex::new(Vec::new());
        self.run(&|l| {
            *lock(&keys) = l.pr_read_keys()?.keys;
            Ok(())
        })?;
        Ok(keys
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Whether another host removed our key (see [`PathEvent::Fenced`]).
    pub fn fenced(&self) -> bool {
        self.inner.fenced.load(Ordering::Acquire)
    }

    /// Runs `op` on a path, failing over on path errors and queueing while
    /// no path is up.
    fn run(&self, op: &dyn Fn(&IscsiLun) -> Result<(), IscsiError>) -> Result<(), IscsiError> {
        let inner = &self.inner;
        loop {
            if let Some((i, lun)) = inner.pick() {
                let p = &inner.paths[i];
                p.in_flight.fetch_add(1, Ordering::Relaxed);
                let r = op(&lun);
                p.in_flight.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Err(e) if is_path_error(&e) => inner.fail_path(i, &lun, e.to_string()),
                    r => return r,
                }
                continue;
            }
            inner.wait_for_path()?;
        }
    }
}

impl Drop for Multipath {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.changed.notify_all();
        if let Some(h) = self.checker.take() {
            h.join().ok();
        }
    }
}

fn check_same(
    a: &Identity,
    at: SocketAddr,
    b: &Identity,
    bt: SocketAddr,
) -> Result<(), IscsiError> {
    if a == b {
        return Ok(());
    }
    let what = if a.wwid != b.wwid {
        "different LUs (WWIDs differ): check the target and LUN of each path"
    } else {
        "two different LUs claim the same WWID: set a unique identity per LUN on the array (tgtd: scsi_id/scsi_sn)"
    };
    Err(IscsiError::Protocol(format!(
        "paths {at} and {bt} reach {what}; {at}: {a:?}, {bt}: {b:?}"
    )))
}

/// Errors after which the same I/O may succeed on another path.
fn is_path_error(e: &IscsiError) -> bool {
    match e {
        IscsiError::Connect { .. }
        | IscsiError::Pdu(_)
        | IscsiError::PathDown { .. }
        | IscsiError::Protocol(_)
        | IscsiError::TargetFailure { .. }
        | IscsiError::LoginRejected { .. } => true,
        IscsiError::Scsi { status, sense, .. } => {
            *status != Status::RESERVATION_CONFLICT
                && matches!(
                    crate::scsi::classify((*status).into(), sense.as_ref()),
                    Action::PathDown | Action::RetryAnyPath
                )
        }
        IscsiError::Text(_) | IscsiError::Decode(_) => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn emit(&self, e: PathEvent) {
        log::info!("multipath {}: {e:?}", self.id.wwid);
        lock(&self.listeners).retain(|tx| tx.send(e.clone()).is_ok());
    }

    fn pick(&self) -> Option<(usize, Arc<IscsiLun>)> {
        let up: Vec<(usize, Arc<IscsiLun>)> = self
            .paths
            .iter()
            .enumerate()
            .filter_map(|(i, p)| lock(&p.lun).clone().map(|l| (i, l)))
            .collect();
        if up.is_empty() {
            return None;
        }
        let k = match self.opts.selector {
            Selector::Failover => 0,
            Selector::RoundRobin => self.rr.fetch_add(1, Ordering::Relaxed) % up.len(),
            Selector::ServiceTime => (0..up.len())
                .min_by_key(|&k| self.paths[up[k].0].in_flight.load(Ordering::Relaxed))
                .unwrap_or(0),
        };
        up.into_iter().nth(k)
    }

    /// Marks path `i` failed if `lun` is still its session.
    fn fail_path(&self, i: usize, lun: &Arc<IscsiLun>, reason: String) {
        let p = &self.paths[i];
        {
            let mut cur = lock(&p.lun);
            match &*cur {
                Some(l) if Arc::ptr_eq(l, lun) => *cur = None,
                _ => return,
            }
        }
        p.failures.fetch_add(1, Ordering::Relaxed);
        *lock(&p.reason) = Some(reason.clone());
        self.emit(PathEvent::Down {
            path: i,
            portal: p.cfg.portal,
            reason,
        });
        if self.paths.iter().all(|p| lock(&p.lun).is_none()) {
            self.all_down(&mut lock(&self.all_down_since));
        }
    }

    /// When every path went down (`since`), set now and said as
    /// `Queueing` if not yet: by whichever sees it first, the failing
    /// path's own check or an I/O that found no path before it.
    fn all_down(&self, since: &mut Option<Instant>) -> Instant {
        *since.get_or_insert_with(|| {
            self.emit(PathEvent::Queueing);
            Instant::now()
        })
    }

    fn path_up(&self, i: usize, lun: IscsiLun) {
        let p = &self.paths[i];
        *lock(&p.lun) = Some(Arc::new(lun));
        *lock(&p.reason) = None;
        *lock(&self.all_down_since) = None;
        self.changed.notify_all();
        self.emit(PathEvent::Up {
            path: i,
            portal: p.cfg.portal,
        });
    }

    /// A path that logs in again is a new I_T nexus: it registers our key
    /// again, but only if the key is still on the LU. If it is gone, another
    /// host fenced us, and registering would undo that.
    fn reregister(&self, l: &IscsiLun) -> Result<(), IscsiError> {
        let Some(key) = *lock(&self.pr_key) else {
            return Ok(());
        };
        if self.fenced.load(Ordering::Acquire) {
            return Ok(());
        }
        if l.pr_read_keys()?.keys.contains(&key) {
            l.pr_register(key)
        } else {
            self.fenced.store(true, Ordering::Release);
            self.emit(PathEvent::Fenced);
            Ok(())
        }
    }

    /// Waits while no path is up, until `no_path_retry` after the last one
    /// went down; then fails.
    fn wait_for_path(&self) -> Result<(), IscsiError> {
        let mut since = lock(&self.all_down_since);
        loop {
            if self.paths.iter().any(|p| lock(&p.lun).is_some()) {
                return Ok(());
            }
            let start = self.all_down(&mut since);
            let left = self.opts.no_path_retry.saturating_sub(start.elapsed());
            if left.is_zero() || self.stop.load(Ordering::Acquire) {
                let reasons: Vec<String> = self
                    .paths
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {}",
                            p.cfg.portal,
                            lock(&p.reason).clone().unwrap_or_else(|| "down".into())
                        )
                    })
                    .collect();
                return Err(IscsiError::PathDown {
                    addr: self.paths[0].cfg.portal,
                    why: format!(
                        "no path to LU {} for {:.0} s (no_path_retry), I/O fails until a path returns; {}",
                        self.id.wwid,
                        start.elapsed().as_secs_f64(),
                        reasons.join("; ")
                    ),
                });
            }
            since = self
                .changed
                .wait_timeout(since, left.min(Duration::from_millis(500)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

/// Every polling interval: TUR on up paths, login again on failed ones.
fn check_loop(inner: &Inner) {
    let mut failing_reported = false;
    while !inner.stop.load(Ordering::Acquire) {
        for (i, p) in inner.paths.iter().enumerate() {
            if inner.stop.load(Ordering::Acquire) {
                return;
            }
            let cur = lock(&p.lun).clone();
            match cur {
                Some(l) => {
                    if let Err(e) = l.test_unit_ready() {
                        if is_path_error(&e) {
                            inner.fail_path(i, &l, format!("path checker: {e}"));
                        }
                    }
                }
                None => match connect(&p.cfg, inner.opts.io_timeout) {
                    Ok(l) if Identity::of(&l) == inner.id => {
                        if let Err(e) = inner.reregister(&l) {
                            *lock(&p.reason) = Some(format!("registering again: {e}"));
                            continue;
                        }
                        inner.path_up(i, l)
                    }
                    Ok(l) => {
                        let why =
                            format!("now reaches another LU ({:?}); not used", Identity::of(&l));
                        *lock(&p.reason) = Some(why);
                    }
                    Err(e) => *lock(&p.reason) = Some(e.to_string()),
                },
            }
        }
        let down_for = lock(&inner.all_down_since).map(|t| t.elapsed());
        match down_for {
            Some(d) if d >= inner.opts.no_path_retry && !failing_reported => {
                failing_reported = true;
                inner.emit(PathEvent::Failing);
            }
            None => failing_reported = false,
            _ => {}
        }
        let guard = lock(&inner.all_down_since);
        let _ = inner
            .changed
            .wait_timeout(guard, inner.opts.polling_interval)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

impl Multipath {
    fn io_err(&self, op: &'static str, offset: u64, len: usize, e: IscsiError) -> Error {
        Error::Io {
            op,
            dev: format!("multipath {}", self.inner.id.wwid),
            offset,
            len: len as u64,
            source: std::io::Error::other(e),
        }
    }
}

impl BlockDev for Multipath {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        crate::check_range(
            self.inner.id.block,
            self.inner.id.size,
            offset,
            buf.len() as u64,
        )?;
        let n = buf.len();
        let cell = Mutex::new(buf);
        self.run(&|l| l.read(&mut lock(&cell), offset))
            .map_err(|e| self.io_err("read", offset, n, e))
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        crate::check_range(
            self.inner.id.block,
            self.inner.id.size,
            offset,
            buf.len() as u64,
        )?;
        self.run(&|l| l.write(buf, offset))
            .map_err(|e| self.io_err("write", offset, buf.len(), e))
    }

    fn flush(&self) -> Result<()> {
        self.run(&|l| l.sync())
            .map_err(|e| self.io_err("flush", 0, 0, e))
    }

    /// WRITE SAME on whichever path is up, as the LUN's own
    /// `write_zeroes` does; zero buffers once the LU has refused it.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        crate::check_range(self.inner.id.block, self.inner.id.size, offset, len)?;
        zero_range(
            self,
            &format_args!("multipath {}", self.inner.id.wwid),
            &self.inner.no_write_same,
            (offset, len),
            || self.run(&|l| l.write_same_zeroes(offset, len)),
            |e| self.io_err("write zeroes", offset, len as usize, e),
        )
    }

    fn zeroes_cheaply(&self) -> bool {
        !self.inner.no_write_same.load(Ordering::Relaxed)
    }

    fn size(&self) -> u64 {
        self.inner.id.size
    }

    fn logical_sector_size(&self) -> u32 {
        self.inner.id.block
    }

    fn physical_sector_size(&self) -> u32 {
        self.inner.id.phys
    }

    fn identity(&self) -> &DevId {
        &self.inner.dev
    }
}

//! The client library for ssvd, the VMM and the CLI.
//!
//! A registered client holds leases for as long as its connection lives.
//! It also fences itself: lockd tells it, at every renewal, until when its
//! leases are valid. [`Client::lease_valid`] says whether lease-protected
//! I/O may still be issued, and if the deadline passes by kill_grace (lockd
//! hung or stopped) or the connection to lockd drops while leases are held,
//! the fence handler runs: by default it kills this process, which is what
//! keeps a late write from landing after another host took over.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::monotime_ns;
use crate::proto::{
    Envelope, Event, LeaseInfo, LockspaceSpec, Reply, Request, ResourceSpec, Status,
};
use crate::sync::lock;

/// Default socket path; `LOCKD_SOCKET` overrides it.
pub const DEFAULT_SOCKET: &str = "/run/lockd/lockd.sock";

pub fn default_socket() -> std::path::PathBuf {
    std::env::var_os("LOCKD_SOCKET").map_or_else(|| DEFAULT_SOCKET.into(), Into::into)
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach lockd at {path}: {source} (is the daemon running? start it with `lockd daemon`)")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("lost the connection to lockd: {0}")]
    Disconnected(String),
    /// The daemon refused; `code` is sanlock's number for the condition.
    #[error("{message} (code {code})")]
    Refused { code: i32, message: String },
    #[error("unexpected reply from lockd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Someone else holds the lease: worth retrying later.
    pub fn is_busy(&self) -> bool {
        matches!(self, ClientError::Refused { code, .. } if matches!(code, -243 | -244 | -245 | -247 | -11 | -213))
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Why the fence handler ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceReason {
    /// Leases held and the connection to lockd closed.
    DaemonGone,
    /// The lease deadline passed by kill_grace without a renewal.
    Expired,
    /// lockd reported the lockspace failed.
    LockspaceFailed(String),
}

type Handler = Box<dyn Fn(FenceReason) + Send + Sync>;

struct Shared {
    /// Lockspace → CLOCK_MONOTONIC ns until which leases in it are valid.
    valid_until: Mutex<HashMap<String, u64>>,
    /// Leases this connection holds, by lockspace.
    held: Mutex<HashMap<String, usize>>,
    connected: AtomicBool,
    fenced: AtomicBool,
    grace_ns: AtomicU64,
    handler: Mutex<Option<Handler>>,
    events: Mutex<Option<Sender<Event>>>,
}

impl Shared {
    fn holding(&self) -> bool {
        lock(&self.held).values().any(|&n| n > 0)
    }

    fn fence(&self, why: FenceReason) {
        if self.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        log::error!("lockd lease fence: {why:?}");
        match &*lock(&self.handler) {
            Some(h) => h(why),
            None => {
                // SAFETY: raise takes a plain signal number.
                unsafe { libc::raise(libc::SIGKILL) };
            }
        }
    }
}

pub struct Client {
    writer: Mutex<UnixStream>,
    replies: Mutex<Receiver<Reply>>,
    next_id: AtomicU64,
    shared: Arc<Shared>,
    /// Serialises request/reply pairs.
    call: Mutex<()>,
}

impl Client {
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let reader = stream
            .try_clone()
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            valid_until: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(true),
            fenced: AtomicBool::new(false),
            grace_ns: AtomicU64::new(0),
            handler: Mutex::new(None),
            events: Mutex::new(None),
        });
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("lockd-client".into())
            .spawn(move || read_loop(reader, tx, sh))
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        Ok(Client {
            writer: Mutex::new(stream),
            replies: Mutex::new(rx),
            next_id: AtomicU64::new(1),
            shared,
            call: Mutex::new(()),
        })
    }

    fn call(&self, request: Request) -> Result<serde_json::Value> {
        let _one = lock(&self.call);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_string(&Envelope { id, request })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        lock(&self.writer)
            .write_all(line.as_bytes())
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        let reply = lock(&self.replies)
            .recv()
            .map_err(|_| ClientError::Disconnected("lockd closed the connection".into()))?;
        if reply.id != id {
            return Err(ClientError::Protocol(format!(
                "reply {} to request {id}",
                reply.id
            )));
        }
        if !reply.ok {
            return Err(ClientError::Refused {
                code: reply.code,
                message: reply.error.unwrap_or_default(),
            });
        }
        Ok(reply.result)
    }

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Makes this connection a lease holder for this process and starts the
    /// self-fencing watch. `kill_grace` is how long past the lease deadline
    /// the fence handler waits (lockd's SIGKILL comes at the same time).
    pub fn register(&self, kill_grace: Duration) -> Result<()> {
        self.call(Request::Register {
            pid: std::process::id(),
        })?;
        self.shared
            .grace_ns
            .store(kill_grace.as_nanos() as u64, Ordering::Relaxed);
        let sh = self.shared.clone();
        std::thread::Builder::new()
            .name("lockd-fence".into())
            .spawn(move || watch(sh))
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        Ok(())
    }

    /// Lets the connection survive `exec`, so the program exec'd becomes the
    /// lease holder (it keeps the pid we registered) and its exit closes
    /// the connection, which releases its leases.
    pub fn keep_across_exec(&self) -> std::io::Result<()> {
        let fd = lock(&self.writer).as_raw_fd();
        // SAFETY: fcntl on an fd this client owns, with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Replaces the default fence action (SIGKILL of this process), e.g. to
    /// stop a VM's disk I/O instead.
    pub fn on_fence(&self, handler: impl Fn(FenceReason) + Send + Sync + 'static) {
        *lock(&self.shared.handler) = Some(Box::new(handler));
    }

    /// A channel of daemon events (renewals, requests, failures).
    pub fn events(&self) -> Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        *lock(&self.shared.events) = Some(tx);
        rx
    }

    pub fn add_lockspace(&self, spec: &LockspaceSpec) -> Result<u64> {
        let v = self.call(Request::AddLockspace { spec: spec.clone() })?;
        Ok(v.get("generation").and_then(|g| g.as_u64()).unwrap_or(0))
    }

    pub fn rem_lockspace(&self, lockspace: &str) -> Result<()> {
        self.call(Request::RemLockspace {
            lockspace: lockspace.into(),
        })
        .map(drop)
    }

    /// Acquires for this connection (after [`Client::register`]) or, with
    /// `pid`, on behalf of that process.
    pub fn acquire(
        &self,
        spec: &ResourceSpec,
        shared: bool,
        wait: bool,
        pid: Option<u32>,
    ) -> Result<LeaseInfo> {
        let info: LeaseInfo = Self::parse(self.call(Request::Acquire {
            spec: spec.clone(),
            shared,
            wait,
            pid,
        })?)?;
        if pid.is_none() {
            *lock(&self.shared.held)
                .entry(spec.lockspace.clone())
                .or_default() += 1;
            lock(&self.shared.valid_until).insert(spec.lockspace.clone(), info.valid_until_ns);
        }
        Ok(info)
    }

    pub fn release(&self, spec: &ResourceSpec, pid: Option<u32>) -> Result<()> {
        let r = self.call(Request::Release {
            spec: spec.clone(),
            pid,
        });
        // Fix: the count used to drop only on success. lockd takes the
        // lease out of its table before the disk release, so after a failed
        // disk write (which it retries later) we hold nothing, get no more
        // renewal events, and the fence watch would kill this process at the
        // stale deadline. Only -22 (not held by us: nothing changed) keeps it.
        let dropped = match &r {
            Ok(_) => true,
            Err(ClientError::Refused { code, .. }) => *code != -22,
            Err(_) => false,
        };
        if pid.is_none() && dropped {
            if let Some(n) = lock(&self.shared.held).get_mut(&spec.lockspace) {
                *n = n.saturating_sub(1);
            }
        }
        r.map(drop)
    }

    pub fn request(&self, spec: &ResourceSpec, force_mode: u32) -> Result<()> {
        self.call(Request::Request {
            spec: spec.clone(),
            force_mode,
        })
        .map(drop)
    }

    pub fn inquire(&self, pid: Option<u32>) -> Result<Vec<LeaseInfo>> {
        Self::parse(self.call(Request::Inquire { pid })?)
    }

    pub fn status(&self) -> Result<Status> {
        Self::parse(self.call(Request::Status)?)
    }

    /// Test builds of the daemon only: delay or fail its I/O to `path`.
    pub fn fault(
        &self,
        path: &str,
        read_delay: Duration,
        write_delay: Duration,
        fail: bool,
    ) -> Result<()> {
        self.call(Request::Fault {
            path: path.into(),
            read_delay_ms: read_delay.as_millis() as u64,
            write_delay_ms: write_delay.as_millis() as u64,
            fail,
        })
        .map(drop)
    }

    /// Whether lease-protected I/O may be issued now: connected, not fenced,
    /// and every lockspace we hold leases in renewed recently enough.
    pub fn lease_valid(&self) -> bool {
        let sh = &self.shared;
        if !sh.connected.load(Ordering::SeqCst) || sh.fenced.load(Ordering::SeqCst) {
            return false;
        }
        let now = monotime_ns();
        let held = lock(&sh.held);
        let until = lock(&sh.valid_until);
        held.iter()
            .filter(|(_, &n)| n > 0)
            .all(|(ls, _)| until.get(ls).is_some_and(|&u| now < u))
    }
}

fn read_loop(stream: UnixStream, replies: Sender<Reply>, sh: Arc<Shared>) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        if let Ok(ev) = serde_json::from_str::<Event>(&line) {
            match &ev {
                Event::Renewed {
                    lockspace,
                    valid_until_ns,
                } => {
                    lock(&sh.valid_until).insert(lockspace.clone(), *valid_until_ns);
                }
                Event::LockspaceFailed { lockspace, reason } => {
                    lock(&sh.valid_until).insert(lockspace.clone(), 0);
                    if lock(&sh.held).get(lockspace).is_some_and(|&n| n > 0) {
                        sh.fence(FenceReason::LockspaceFailed(reason.clone()));
                    }
                }
                Event::Requested { .. } => {}
            }
            if let Some(tx) = &*lock(&sh.events) {
                let _ = tx.send(ev);
            }
            continue;
        }
        match serde_json::from_str::<Reply>(&line) {
            Ok(r) => {
                if replies.send(r).is_err() {
                    break;
                }
            }
            Err(e) => log::warn!("lockd sent an unreadable line: {e}"),
        }
    }
    sh.connected.store(false, Ordering::SeqCst);
    if sh.holding() {
        sh.fence(FenceReason::DaemonGone);
    }
}

/// Fences this process when a held lockspace's deadline passes by the grace.
fn watch(sh: Arc<Shared>) {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if sh.fenced.load(Ordering::SeqCst) {
            return;
        }
        let now = monotime_ns();
        let grace = sh.grace_ns.load(Ordering::Relaxed);
        let expired = {
            let held = lock(&sh.held);
            let until = lock(&sh.valid_until);
            held.iter().filter(|(_, &n)| n > 0).any(|(ls, _)| {
                until
                    .get(ls)
                    .is_some_and(|&u| now > u.saturating_add(grace))
            })
        };
        if expired {
            sh.fence(FenceReason::Expired);
            return;
        }
        if !sh.connected.load(Ordering::SeqCst) && !sh.holding() {
            return;
        }
    }
}

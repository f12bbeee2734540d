//! What the target server knows about its live connections and sessions:
//! TSIH assignment, session reinstatement (a new login of the same I_T
//! nexus to the same target closes the old session, RFC 7143 §6.3.5),
//! closing connections on demand (stop, a removed target, fault hooks) and
//! the connection threads, joined to count panics.

use super::nexus::Nexus;
use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a reinstating login (or a removed target) waits for the old
/// session's thread to let go (it may be inside a slow BlockDev call);
/// after that it goes on.
const REINSTATE_WAIT: Duration = Duration::from_secs(10);

/// One live connection, as others need to see it.
pub(crate) struct ConnCtl {
    pub id: u64,
    pub portal: usize,
    stream: TcpStream,
    closing: AtomicBool,
}

impl ConnCtl {
    /// Asks the connection to end: its blocked reads and writes fail at once.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.stream.shutdown(Shutdown::Both).ok();
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

/// Counters for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted since start (refused ones excluded).
    pub accepted: u64,
    /// Connections whose thread is still running.
    pub live: usize,
    /// Connection threads that panicked (a bug: input must never cause one).
    pub panics: u64,
}

struct Session {
    tsih: u16,
    conn: Arc<ConnCtl>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    last_tsih: u16,
    conns: Vec<Arc<ConnCtl>>,
    /// By target name and nexus: the same initiator port may have a
    /// session with each target of the server.
    sessions: HashMap<(String, Nexus), Session>,
    /// TSIHs of discovery sessions, which have no nexus to reinstate.
    discovery: HashMap<u64, u16>,
    threads: Vec<JoinHandle<()>>,
    accepted: u64,
    panics: u64,
}

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    gone: Condvar,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a new connection; `stream` is a clone used only to shut it down.
    pub fn add(&self, portal: usize, stream: TcpStream) -> Arc<ConnCtl> {
        let mut g = self.lock();
        g.next_id += 1;
        g.accepted += 1;
        let c = Arc::new(ConnCtl {
            id: g.next_id,
            portal,
            stream,
            closing: AtomicBool::new(false),
        });
        g.conns.push(c.clone());
        c
    }

    /// The connection's thread is about to end: forget it and its session.
    pub fn remove(&self, id: u64) {
        let mut g = self.lock();
        g.conns.retain(|c| c.id != id);
        g.sessions.retain(|_, s| s.conn.id != id);
        g.discovery.remove(&id);
        drop(g);
        self.gone.notify_all();
    }

    pub fn add_thread(&self, h: JoinHandle<()>) {
        self.lock().threads.push(h);
        self.reap(false);
    }

    /// Joins finished connection threads (all of them with `all`), counting
    /// panics. Joining happens outside the lock: a thread ending needs it.
    pub fn reap(&self, all: bool) {
        let done: Vec<JoinHandle<()>> = {
            let mut g = self.lock();
            let (done, running) = std::mem::take(&mut g.threads)
                .into_iter()
                .partition(|h| all || h.is_finished());
            g.threads = running;
            done
        };
        let panics = done.into_iter().fold(0, |n, h| {
            let name = h.thread().name().unwrap_or("connection").to_string();
            match h.join() {
                Ok(()) => n,
                Err(_) => {
                    log::error!("{name} panicked (a target bug)");
                    n + 1
                }
            }
        });
        self.lock().panics += panics;
    }

    pub fn close_portal(&self, portal: usize) {
        for c in self.lock().conns.iter().filter(|c| c.portal == portal) {
            c.close();
        }
    }

    pub fn close_all(&self) {
        for c in self.lock().conns.iter() {
            c.close();
        }
    }

    fn new_tsih(g: &mut Inner) -> u16 {
        loop {
            g.last_tsih = g.last_tsih.wrapping_add(1);
            let t = g.last_tsih;
            let used = t == 0
                || g.sessions.values().any(|s| s.tsih == t)
                || g.discovery.values().any(|&d| d == t);
            if !used {
                return t;
            }
        }
    }

    /// A TSIH for a discovery session on `conn`.
    pub fn open_discovery(&self, conn: &ConnCtl) -> u16 {
        let mut g = self.lock();
        let t = Self::new_tsih(&mut g);
        g.discovery.insert(conn.id, t);
        t
    }

    /// Waits (the lock released meanwhile) until connection `id` has ended,
    /// up to [`REINSTATE_WAIT`]; `what` names it in the warning.
    fn wait_gone<'g>(
        &'g self,
        mut g: MutexGuard<'g, Inner>,
        id: u64,
        what: &dyn std::fmt::Display,
    ) -> MutexGuard<'g, Inner> {
        let deadline = Instant::now() + REINSTATE_WAIT;
        while g.conns.iter().any(|c| c.id == id) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!("{what}: connection {id} did not end within {REINSTATE_WAIT:?}");
                break;
            }
            g = self
                .gone
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        g
    }

    /// Binds `nexus` to `conn` for `target` with a new TSIH. An existing
    /// session of the nexus with that target is reinstated: its connection
    /// is closed and waited for, so none of its commands run after the new
    /// session starts.
    pub fn open_session(&self, target: &str, nexus: &Nexus, conn: &Arc<ConnCtl>) -> u16 {
        let key = (target.to_string(), nexus.clone());
        let mut g = self.lock();
        if let Some(old) = g.sessions.get(&key).map(|s| s.conn.clone()) {
            log::info!(
                "{nexus}: new login reinstates the session of connection {}",
                old.id
            );
            old.close();
            g = self.wait_gone(g, old.id, nexus);
        }
        let tsih = Self::new_tsih(&mut g);
        g.sessions.insert(
            key,
            Session {
                tsih,
                conn: conn.clone(),
            },
        );
        tsih
    }

    /// Closes every session with `target` and waits for their connections
    /// to end (each up to [`REINSTATE_WAIT`]).
    pub fn close_target(&self, target: &str) {
        let mut g = self.lock();
        let conns: Vec<Arc<ConnCtl>> = g
            .sessions
            .iter()
            .filter(|((t, _), _)| t == target)
            .map(|(_, s)| s.conn.clone())
            .collect();
        for c in &conns {
            c.close();
        }
        for c in conns {
            g = self.wait_gone(g, c.id, &target);
        }
    }

    /// Whether a session with this TSIH exists (a login adding a connection to it).
    pub fn has_tsih(&self, tsih: u16) -> bool {
        let g = self.lock();
        g.sessions.values().any(|s| s.tsih == tsih) || g.discovery.values().any(|&d| d == tsih)
    }

    pub fn stats(&self) -> ServerStats {
        let g = self.lock();
        ServerStats {
            accepted: g.accepted,
            live: g.conns.len(),
            panics: g.panics,
        }
    }
}

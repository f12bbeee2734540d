//! The server's live connections: closing them on demand (stop, export
//! removal), waiting for them to end, and their threads, joined to count
//! panics.

use super::stream::Stream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// One live connection, as others need to see it.
pub(crate) struct ConnCtl {
    pub id: u64,
    /// A clone of the socket, used only to shut it down.
    stream: Stream,
    /// Id of the export in use once negotiated; 0 before.
    export: AtomicU64,
    closing: AtomicBool,
}

impl ConnCtl {
    /// Asks the connection to end: its blocked reads and writes fail at once.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.stream.shutdown();
    }

    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    pub fn set_export(&self, id: u64) {
        self.export.store(id, Ordering::SeqCst);
    }

    fn export(&self) -> u64 {
        self.export.load(Ordering::SeqCst)
    }
}

/// Counters for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections whose thread is still running.
    pub live: usize,
    /// Connection threads that panicked (a bug: input must never cause one).
    pub panics: u64,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    conns: Vec<Arc<ConnCtl>>,
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
    pub fn add(&self, stream: Stream) -> Arc<ConnCtl> {
        let mut g = self.lock();
        g.next_id += 1;
        g.accepted += 1;
        let ctl = Arc::new(ConnCtl {
            id: g.next_id,
            stream,
            export: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        });
        g.conns.push(ctl.clone());
        ctl
    }

    /// Forgets a connection (its thread is ending) and wakes waiters.
    pub fn remove(&self, id: u64) {
        self.lock().conns.retain(|c| c.id != id);
        self.gone.notify_all();
    }

    pub fn add_thread(&self, h: JoinHandle<()>) {
        self.lock().threads.push(h);
        self.reap(false);
    }

    /// Joins finished connection threads (all of them if `all`), counting
    /// panics.
    pub fn reap(&self, all: bool) {
        let done: Vec<JoinHandle<()>> = {
            let mut g = self.lock();
            let (done, keep) = g
                .threads
                .drain(..)
                .partition(|h: &JoinHandle<()>| all || h.is_finished());
            g.threads = keep;
            done
        };
        let mut panics = 0;
        for h in done {
            if h.join().is_err() {
                panics += 1;
            }
        }
        if panics > 0 {
            log::error!("{panics} NBD connection thread(s) panicked");
            self.lock().panics += panics;
        }
    }

    pub fn close_all(&self) {
        for c in self.lock().conns.iter() {
            c.close();
        }
    }

    /// Closes the connections using export `id` and waits until every one
    /// of them has ended (no more I/O to its device).
    pub fn close_export(&self, id: u64) {
        let mut g = self.lock();
        loop {
            let mut any = false;
            for c in g.conns.iter().filter(|c| c.export() == id) {
                c.close();
                any = true;
            }
            if !any {
                return;
            }
            g = self.gone.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub fn stats(&self) -> NbdStats {
        let g = self.lock();
        NbdStats {
            accepted: g.accepted,
            live: g.threads.iter().filter(|h| !h.is_finished()).count(),
            panics: g.panics,
        }
    }
}

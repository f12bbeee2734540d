//! The running server: listeners (a thread per socket), connection threads,
//! the export table, and an orderly stop that closes listeners and
//! connections and joins every thread.

use super::connection;
use super::export::{valid_name, Export};
use super::registry::{NbdStats, Registry};
use super::stream::Stream;
use super::{NbdConfig, NbdError, MAX_WORKERS};
use crate::BlockDev;
use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often a listener looks for new connections and stop requests.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// Pause after a failed accept (out of file descriptors, …).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What every connection of the server shares.
pub(crate) struct Shared {
    exports: RwLock<BTreeMap<String, Arc<Export>>>,
    next_export: AtomicU64,
    pub registry: Registry,
    pub workers: usize,
    stop: AtomicBool,
}

impl Shared {
    pub fn export(&self, name: &str) -> Option<Arc<Export>> {
        self.exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    pub fn export_names(&self) -> Vec<String> {
        self.exports
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), a.to_string())),
            Listener::Unix(l) => l.accept().map(|(s, _)| (Stream::Unix(s), "unix".into())),
        }
    }
}

/// A started NBD server; dropping it stops it.
pub struct NbdServer {
    shared: Arc<Shared>,
    listeners: Vec<JoinHandle<()>>,
    unix: Option<PathBuf>,
    tcp: Option<SocketAddr>,
}

impl NbdServer {
    /// Binds the configured sockets (a TCP port 0 is resolved, see
    /// [`NbdServer::tcp_addr`]; a Unix socket path must not exist yet),
    /// then serves on background threads. Starts with no exports.
    pub fn start(config: NbdConfig) -> Result<NbdServer, NbdError> {
        if config.unix.is_none() && config.tcp.is_none() {
            return Err(NbdError::Config(
                "no Unix socket path and no TCP address".into(),
            ));
        }
        if config.workers == 0 || config.workers > MAX_WORKERS {
            return Err(NbdError::Config(format!(
                "workers per connection must be 1..={MAX_WORKERS}, not {}",
                config.workers
            )));
        }
        let mut bound = Vec::new();
        let mut tcp = None;
        if let Some(addr) = config.tcp {
            let bind_err = |source| NbdError::Bind {
                addr: addr.to_string(),
                source,
            };
            let l = TcpListener::bind(addr).map_err(bind_err)?;
            l.set_nonblocking(true).map_err(bind_err)?;
            let local = l.local_addr().map_err(bind_err)?;
            tcp = Some(local);
            bound.push((Listener::Tcp(l), local.to_string()));
        }
        let mut unix = None;
        if let Some(path) = &config.unix {
            let bind_err = |source| NbdError::Bind {
                addr: path.display().to_string(),
                source,
            };
            let l = UnixListener::bind(path).map_err(bind_err)?;
            // From here on the socket file is ours; `Drop` removes it.
            unix = Some(path.clone());
            if let Err(e) = l.set_nonblocking(true) {
                let _ = std::fs::remove_file(path);
                return Err(bind_err(e));
            }
            bound.push((Listener::Unix(l), path.display().to_string()));
        }
        let shared = Arc::new(Shared {
            exports: RwLock::new(BTreeMap::new()),
            next_export: AtomicU64::new(1),
            registry: Registry::default(),
            workers: config.workers,
            stop: AtomicBool::new(false),
        });
        let mut server = NbdServer {
            shared: shared.clone(),
            listeners: Vec::new(),
            unix,
            tcp,
        };
        for (l, label) in bound {
            let sh = shared.clone();
            let name = format!("nbd-listen-{label}");
            let l2 = label.clone();
            let h = thread::Builder::new()
                .name(name)
                .spawn(move || accept_loop(&sh, &l, &l2))
                .map_err(NbdError::Spawn)?;
            server.listeners.push(h);
            log::info!("NBD server listening on {label}");
        }
        Ok(server)
    }

    /// Exports `dev` as `name` (at most 4096 bytes, no NUL; "" is the
    /// default export of clients that give no name). Read-only exports
    /// refuse writes with EPERM and say so in their flags.
    pub fn add_export(
        &self,
        name: &str,
        dev: Arc<dyn BlockDev>,
        read_only: bool,
    ) -> Result<(), NbdError> {
        if !valid_name(name) {
            return Err(NbdError::BadExportName(name.into()));
        }
        let mut exports = self
            .shared
            .exports
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if exports.contains_key(name) {
            return Err(NbdError::ExportExists(name.into()));
        }
        let id = self.shared.next_export.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "NBD export {name:?}: {} ({} bytes{})",
            dev.identity(),
            dev.size(),
            if read_only { ", read-only" } else { "" }
        );
        let export = Export::new(id, name.into(), dev, read_only);
        exports.insert(name.into(), Arc::new(export));
        Ok(())
    }

    /// Removes an export and closes its connections; returns when none of
    /// them runs any more (no further I/O reaches the device). False if
    /// there was no such export.
    pub fn remove_export(&self, name: &str) -> bool {
        let removed = self
            .shared
            .exports
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let Some(export) = removed else {
            return false;
        };
        export.mark_removed();
        self.shared.registry.close_export(export.id);
        log::info!("NBD export {name:?} removed");
        true
    }

    /// Names of the current exports, sorted.
    pub fn export_names(&self) -> Vec<String> {
        self.shared.export_names()
    }

    /// The Unix socket path, if listening on one.
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// The bound TCP address (port 0 resolved), if listening on TCP.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    pub fn stats(&self) -> NbdStats {
        self.shared.registry.reap(false);
        self.shared.registry.stats()
    }

    /// Stops listening, closes every connection and joins every thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for h in self.listeners.drain(..) {
            if h.join().is_err() {
                log::error!("an NBD listener panicked");
            }
        }
        if let Some(path) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
        self.shared.registry.close_all();
        self.shared.registry.reap(true);
        log::info!("NBD server stopped");
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(sh: &Arc<Shared>, l: &Listener, label: &str) {
    while !sh.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, peer)) => {
                if let Err(e) = spawn_connection(sh, s) {
                    log::warn!("NBD {label}: cannot serve a connection from {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) => {
                log::warn!("NBD {label}: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// Forgets the connection when its thread ends, even by a panic.
struct Leave<'a>(&'a Registry, u64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
    }
}

fn spawn_connection(sh: &Arc<Shared>, s: Stream) -> io::Result<()> {
    s.prepare()?;
    let ctl = sh.registry.add(s.try_clone()?);
    let id = ctl.id;
    let sh2 = sh.clone();
    let spawned = thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .spawn(move || {
            let _leave = Leave(&sh2.registry, ctl.id);
            connection::serve(&sh2, s, &ctl);
        });
    match spawned {
        Ok(h) => {
            sh.registry.add_thread(h);
            Ok(())
        }
        Err(e) => {
            sh.registry.remove(id);
            Err(e)
        }
    }
}

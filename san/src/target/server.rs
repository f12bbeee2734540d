//! The running target: listeners (one thread per portal), connection
//! threads, and an orderly stop that closes listeners and connections and
//! joins every thread.

use super::config::{TargetConfig, TargetParams};
use super::connection;
use super::faults::Faults;
use super::lu::LogicalUnit;
use super::registry::{Registry, ServerStats};
use super::{TargetError, TICK};
use crate::iscsi::Chap;
use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often a listener looks for new connections and stop requests.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// One portal: where it listens and its target portal group tag (each
/// portal is its own group, tags 1, 2, … in configuration order; the tag
/// is also the relative target port identifier).
pub(crate) struct Portal {
    pub addr: SocketAddr,
    pub tpgt: u16,
}

/// What every connection of the target shares.
pub(crate) struct Target {
    pub iqn: String,
    pub portals: Vec<Portal>,
    pub chap: Option<Chap>,
    pub params: TargetParams,
    pub lus: BTreeMap<u16, LogicalUnit>,
    pub registry: Arc<Registry>,
    pub faults: Faults,
    stop: AtomicBool,
}

impl Target {
    pub fn tpgts(&self) -> Vec<u16> {
        self.portals.iter().map(|p| p.tpgt).collect()
    }
}

/// A started target; dropping it stops it.
pub struct TargetServer {
    target: Arc<Target>,
    listeners: Vec<JoinHandle<()>>,
}

impl TargetServer {
    /// Binds every portal, then serves on background threads.
    pub fn start(config: TargetConfig) -> Result<TargetServer, TargetError> {
        config.validate()?;
        let mut bound = Vec::new();
        for &addr in &config.portals {
            let l = TcpListener::bind(addr).map_err(|source| TargetError::Bind { addr, source })?;
            l.set_nonblocking(true)
                .map_err(|source| TargetError::Bind { addr, source })?;
            let local = l
                .local_addr()
                .map_err(|source| TargetError::Bind { addr, source })?;
            bound.push((l, local));
        }
        let registry = Arc::new(Registry::default());
        let target = Arc::new(Target {
            iqn: config.iqn.clone(),
            portals: bound
                .iter()
                .enumerate()
                .map(|(i, (_, addr))| Portal {
                    addr: *addr,
                    tpgt: (i + 1) as u16,
                })
                .collect(),
            chap: config.chap.clone(),
            params: config.params.clone(),
            lus: config
                .luns
                .iter()
                .map(|l| (l.lun, LogicalUnit::new(l)))
                .collect(),
            faults: Faults::new(bound.len(), registry.clone()),
            registry,
            stop: AtomicBool::new(false),
        });
        let mut server = TargetServer {
            target: target.clone(),
            listeners: Vec::new(),
        };
        for (i, (l, addr)) in bound.into_iter().enumerate() {
            let t = target.clone();
            let h = thread::Builder::new()
                .name(format!("iscsi-portal-{addr}"))
                .spawn(move || accept_loop(&t, i, l))
                .map_err(TargetError::Spawn)?;
            server.listeners.push(h);
            log::info!("{}: listening on {addr} (tpgt {})", target.iqn, i + 1);
        }
        Ok(server)
    }

    /// The portals' bound addresses, in configuration order (port 0 resolved).
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.target.portals.iter().map(|p| p.addr).collect()
    }

    pub fn iqn(&self) -> &str {
        &self.target.iqn
    }

    pub fn faults(&self) -> Faults {
        self.target.faults.clone()
    }

    pub fn stats(&self) -> ServerStats {
        self.target.registry.reap(false);
        self.target.registry.stats()
    }

    /// Stops listening, closes every connection and joins every thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.target.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for h in self.listeners.drain(..) {
            if h.join().is_err() {
                log::error!("a portal listener panicked");
            }
        }
        self.target.registry.close_all();
        self.target.registry.reap(true);
        log::info!("{}: stopped", self.target.iqn);
    }
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(t: &Arc<Target>, portal: usize, l: TcpListener) {
    while !t.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, peer)) => {
                if t.faults.refusing(portal) {
                    log::info!("portal {portal}: refusing the connection from {peer} (fault hook)");
                    continue;
                }
                if let Err(e) = spawn_connection(t, portal, s) {
                    log::warn!("portal {portal}: cannot serve {peer}: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) => {
                log::warn!("portal {portal}: accept failed: {e}");
                thread::sleep(TICK);
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

fn spawn_connection(t: &Arc<Target>, portal: usize, s: TcpStream) -> io::Result<()> {
    s.set_nonblocking(false)?;
    let ctl = t.registry.add(portal, s.try_clone()?);
    let id = ctl.id;
    let t2 = t.clone();
    let spawned = thread::Builder::new()
        .name(format!("iscsi-conn-{id}"))
        .spawn(move || {
            let _leave = Leave(&t2.registry, ctl.id);
            connection::serve(&t2, s, &ctl);
        });
    match spawned {
        Ok(h) => {
            t.registry.add_thread(h);
            Ok(())
        }
        Err(e) => {
            t.registry.remove(id);
            Err(e)
        }
    }
}

//! The running target server: listeners (one thread per portal),
//! connection threads, the targets its portals lead to (added and removed
//! while it runs), and an orderly stop that closes listeners and
//! connections and joins every thread.
//!
//! Several targets share one server (its portals, CHAP account, limits
//! and fault hooks) rather than each having its own: a portal is a TCP
//! port, and an exporter with one target per volume must serve all of
//! them on the one port initiators are told about. A login names its
//! target; a discovery session lists them all.

use super::config::{check_target, LunConfig, TargetConfig, TargetParams};
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
use std::sync::{Arc, PoisonError, RwLock};
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

/// One target: its name and LUs, reached through every portal of its server.
pub(crate) struct Target {
    pub iqn: String,
    pub lus: BTreeMap<u16, LogicalUnit>,
    /// The server's portal group tags (reported by VPD 0x83 and PR).
    tpgts: Vec<u16>,
    /// Set when the target is removed: a login that found it just before
    /// then is refused instead of starting a session.
    removed: AtomicBool,
}

impl Target {
    pub fn tpgts(&self) -> Vec<u16> {
        self.tpgts.clone()
    }

    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }
}

/// What every connection of the server shares.
pub(crate) struct Server {
    pub portals: Vec<Portal>,
    pub chap: Option<Chap>,
    pub params: TargetParams,
    pub registry: Arc<Registry>,
    pub faults: Faults,
    targets: RwLock<BTreeMap<String, Arc<Target>>>,
    stop: AtomicBool,
}

impl Server {
    /// The target a login names, while it is served.
    pub fn target(&self, iqn: &str) -> Option<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(iqn)
            .cloned()
    }

    /// Every target, by name (SendTargets=All).
    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.targets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn new_target(&self, iqn: &str, luns: &[LunConfig]) -> Arc<Target> {
        Arc::new(Target {
            iqn: iqn.to_string(),
            lus: luns.iter().map(|l| (l.lun, LogicalUnit::new(l))).collect(),
            tpgts: self.portals.iter().map(|p| p.tpgt).collect(),
            removed: AtomicBool::new(false),
        })
    }
}

/// A started target server (the target it was started with, and any
/// added since); dropping it stops it.
pub struct TargetServer {
    server: Arc<Server>,
    /// The target it was started with (`iqn()`).
    first: String,
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
        let server = Arc::new(Server {
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
            faults: Faults::new(bound.len(), registry.clone()),
            registry,
            targets: RwLock::default(),
            stop: AtomicBool::new(false),
        });
        let first = server.new_target(&config.iqn, &config.luns);
        server
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(config.iqn.clone(), first);
        let mut server = TargetServer {
            server,
            first: config.iqn.clone(),
            listeners: Vec::new(),
        };
        for (i, (l, addr)) in bound.into_iter().enumerate() {
            let t = server.server.clone();
            let h = thread::Builder::new()
                .name(format!("iscsi-portal-{addr}"))
                .spawn(move || accept_loop(&t, i, l))
                .map_err(TargetError::Spawn)?;
            server.listeners.push(h);
            log::info!("{}: listening on {addr} (tpgt {})", server.first, i + 1);
        }
        Ok(server)
    }

    /// The portals' bound addresses, in configuration order (port 0 resolved).
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.server.portals.iter().map(|p| p.addr).collect()
    }

    /// The target the server was started with.
    pub fn iqn(&self) -> &str {
        &self.first
    }

    /// Serves one more target on the same portals, with the same CHAP
    /// account and parameters; its LUs start with no sessions.
    pub fn add_target(&self, iqn: &str, luns: Vec<LunConfig>) -> Result<(), TargetError> {
        check_target(iqn, &luns)?;
        let t = self.server.new_target(iqn, &luns);
        let mut g = self
            .server
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if g.contains_key(iqn) {
            return Err(TargetError::Config(format!(
                "target {iqn:?} is served already"
            )));
        }
        g.insert(iqn.to_string(), t);
        drop(g);
        log::info!("{iqn}: added ({} LUNs)", luns.len());
        Ok(())
    }

    /// Stops serving a target: later logins to it are refused, and its
    /// sessions are closed and waited for (up to 10 s each), so none of
    /// its commands runs after this returns. `false` when it was not served.
    pub fn remove_target(&self, iqn: &str) -> bool {
        let t = self
            .server
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(iqn);
        let Some(t) = t else {
            return false;
        };
        // Before closing: a login that found the target and registers its
        // session after the close below sees this and gives up.
        t.removed.store(true, Ordering::SeqCst);
        self.server.registry.close_target(iqn);
        self.server.registry.reap(false);
        log::info!("{iqn}: removed");
        true
    }

    /// The names of the targets served, in order.
    pub fn targets(&self) -> Vec<String> {
        self.server
            .targets()
            .iter()
            .map(|t| t.iqn.clone())
            .collect()
    }

    pub fn faults(&self) -> Faults {
        self.server.faults.clone()
    }

    pub fn stats(&self) -> ServerStats {
        self.server.registry.reap(false);
        self.server.registry.stats()
    }

    /// Stops listening, closes every connection and joins every thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.server.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for h in self.listeners.drain(..) {
            if h.join().is_err() {
                log::error!("a portal listener panicked");
            }
        }
        self.server.registry.close_all();
        self.server.registry.reap(true);
        log::info!("{}: stopped", self.first);
    }
}

impl Drop for TargetServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(t: &Arc<Server>, portal: usize, l: TcpListener) {
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

fn spawn_connection(t: &Arc<Server>, portal: usize, s: TcpStream) -> io::Result<()> {
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

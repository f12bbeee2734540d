//! One thread per queue. It sleeps in epoll on the queue's notify eventfd,
//! the device's stop eventfd and the fence, serves every available chain
//! when woken, and signals the guest once per batch that used something.
//!
//! A request that finds the pool full is held: the queue stops taking new
//! chains (later writes would find it full as well, and the VM is about to
//! pause), the request is retried every `retry` interval, and the VM hears
//! `no_space`/`space_back` through the shared [`SpaceWatch`].

use super::chain::{self, Chain};
use super::events::SpaceWatch;
use super::execute::{Executor, Outcome};
use super::request::{self, Limits, Request};
use super::spec::{SECTOR_SIZE, S_IOERR};
use crate::devices::virtio::{InterruptKind, VirtioInterrupt};
use crate::memory::GuestMemory;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// A request waiting for space.
struct Held {
    chain: Chain,
    request: Request,
    next_try: Instant,
}

/// Serves one queue; the thread around it is [`run`].
pub struct QueueServer {
    pub index: u16,
    queue: Queue,
    mem: GuestMemory,
    exec: Executor,
    limits: Limits,
    disk_capacity: Box<dyn Fn() -> u64 + Send>,
    interrupt: Arc<dyn VirtioInterrupt>,
    space: Arc<SpaceWatch>,
    retry: Duration,
    held: Option<Held>,
}

impl QueueServer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        index: u16,
        queue: Queue,
        mem: GuestMemory,
        exec: Executor,
        limits: Limits,
        disk_capacity: Box<dyn Fn() -> u64 + Send>,
        interrupt: Arc<dyn VirtioInterrupt>,
        space: Arc<SpaceWatch>,
        retry: Duration,
    ) -> QueueServer {
        QueueServer {
            index,
            queue,
            mem,
            exec,
            limits,
            disk_capacity,
            interrupt,
            space,
            retry,
            held: None,
        }
    }

    /// A request is held for space.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// How long until the held request is due again.
    fn retry_in(&self) -> Option<Duration> {
        self.held
            .as_ref()
            .map(|h| h.next_try.saturating_duration_since(Instant::now()))
    }

    /// Writes the status and returns the chain to the guest.
    fn complete(&mut self, head: u16, status: Option<GuestAddress>, code: u8, written: u32) {
        let mut used = 0u32;
        if let Some(at) = status {
            match self.mem.write_obj(code, at) {
                Ok(()) => used = written.saturating_add(1),
                Err(e) => log::debug!("queue {}: status of chain {head}: {e}", self.index),
            }
        }
        if let Err(e) = self.queue.add_used(&self.mem, head, used) {
            log::debug!("queue {}: returning chain {head}: {e}", self.index);
        }
    }

    /// Walks, parses and runs the chain at `head`; false when it was held.
    fn handle(&mut self, head: u16) -> bool {
        let table = GuestAddress(self.queue.desc_table());
        let chain = match chain::walk(&self.mem, table, self.queue.size(), head) {
            Ok(c) => c,
            Err(m) => {
                log::debug!("queue {}: chain {head}: {}", self.index, m.error);
                self.complete(head, m.status, S_IOERR, 0);
                return true;
            }
        };
        let mut limits = self.limits.clone();
        limits.capacity = (self.disk_capacity)() / SECTOR_SIZE * SECTOR_SIZE;
        let request = match request::parse(&self.mem, &chain, &limits) {
            Ok(r) => r,
            Err(refused) => {
                log::debug!("queue {}: chain {head}: {}", self.index, refused.why);
                self.complete(head, Some(chain.status), refused.status, 0);
                return true;
            }
        };
        self.run(chain, request)
    }

    fn run(&mut self, chain: Chain, request: Request) -> bool {
        match self.exec.execute(&self.mem, &chain, &request) {
            Outcome::Done { status, written } => {
                self.complete(chain.head, Some(chain.status), status, written);
                true
            }
            Outcome::NoSpace(e) => {
                self.space.hold(&e);
                self.held = Some(Held {
                    chain,
                    request,
                    next_try: retry_at(self.retry),
                });
                false
            }
        }
    }

    /// Tries the held request again when it is due (at once when the fence
    /// tripped, which fails it). True when it completed.
    fn retry_held(&mut self) -> bool {
        let Some(h) = self.held.take() else {
            return false;
        };
        if self.exec.fence().is_tripped() {
            self.complete(h.chain.head, Some(h.chain.status), S_IOERR, 0);
            self.space.release(false);
            return true;
        }
        if Instant::now() < h.next_try {
            self.held = Some(h);
            return false;
        }
        match self.exec.execute(&self.mem, &h.chain, &h.request) {
            Outcome::Done { status, written } => {
                self.complete(h.chain.head, Some(h.chain.status), status, written);
                self.space.release(true);
                true
            }
            Outcome::NoSpace(_) => {
                self.held = Some(Held {
                    next_try: retry_at(self.retry),
                    ..h
                });
                false
            }
        }
    }

    /// Serves the held request if due, then every available chain unless
    /// one is held; signals the guest if anything was used.
    pub fn serve(&mut self) {
        let mut used = self.retry_held();
        if self.held.is_none() {
            used |= self.serve_available();
        }
        if used {
            // Without EVENT_IDX this is always true; with it, the driver's
            // used_event decides.
            if self.queue.needs_notification(&self.mem).unwrap_or(true) {
                if let Err(e) = self.interrupt.trigger(InterruptKind::Queue(self.index)) {
                    log::warn!("queue {}: interrupting the guest: {e}", self.index);
                }
            }
        }
    }

    fn serve_available(&mut self) -> bool {
        let mut used = false;
        loop {
            if let Err(e) = self.queue.disable_notification(&self.mem) {
                log::debug!("queue {}: {e}", self.index);
            }
            let mut popped = false;
            while let Some(dc) = self.queue.pop_descriptor_chain(&self.mem) {
                popped = true;
                if !self.handle(dc.head_index()) {
                    // Held: it completes later, the rest waits behind it.
                    return used;
                }
                used = true;
            }
            match self.queue.enable_notification(&self.mem) {
                // More arrived meanwhile; a broken avail index that yields
                // nothing must not spin here.
                Ok(true) if popped => continue,
                _ => return used,
            }
        }
    }
}

/// When a request held now is tried again; an interval too long for the
/// clock means a day, which is never in practice.
fn retry_at(interval: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(interval)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

const STOP: u64 = 0;
const NOTIFY: u64 = 1;
const FENCE: u64 = 2;

/// The thread body: serves `server` until `stop` becomes readable.
pub fn run(mut server: QueueServer, notify: EventFd, stop: Arc<EventFd>) {
    crate::seccomp::install_or_log(crate::seccomp::ThreadKind::BlockIo);
    let fence_fd = server.exec.fence().wake_fd();
    let setup = || -> std::io::Result<Epoll> {
        let ep = Epoll::new()?;
        for (fd, token) in [
            (stop.as_raw_fd(), STOP),
            (notify.as_raw_fd(), NOTIFY),
            (fence_fd, FENCE),
        ] {
            ep.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        Ok(ep)
    };
    let ep = match setup() {
        Ok(ep) => ep,
        Err(e) => {
            log::error!("queue {}: cannot wait for notifications: {e}", server.index);
            return;
        }
    };
    // Chains made available before the queue started are served too.
    server.serve();
    let mut events = [EpollEvent::default(); 4];
    loop {
        let timeout = match server.retry_in() {
            // Rounded up, so a due retry is not spun on.
            Some(d) => i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX),
            None => -1,
        };
        let n = match ep.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("queue {}: epoll: {e}", server.index);
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                STOP => return,
                NOTIFY => {
                    // Readable, so this does not block.
                    let _ = notify.read();
                }
                FENCE => {
                    // It stays readable: wake on it once, then rely on
                    // the flag, which every request checks.
                    let _ = ep.ctl(ControlOperation::Delete, fence_fd, EpollEvent::default());
                }
                _ => {}
            }
        }
        server.serve();
    }
}

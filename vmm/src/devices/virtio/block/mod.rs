//! virtio-blk on thin volumes.
//!
//! What the device offers, and why:
//! - `VERSION_1` only (modern drivers), any descriptor layout.
//! - `MQ` with as many queues as the VM asks, each served by its own thread
//!   woken by the queue's notify eventfd: disk I/O never runs on a vCPU
//!   thread, and queues of one disk proceed in parallel (a thin volume is
//!   shared by all its users' threads).
//! - `FLUSH`: a thin volume caches qcow2 metadata, so the guest's flushes
//!   are what makes its writes durable.
//! - `DISCARD` and `WRITE_ZEROES` (not on read-only disks): both free whole
//!   clusters of the thin volume, which is how a guest gives space back to
//!   the pool. The discard alignment is the volume's cluster.
//! - `SEG_MAX` (the queue size less header and status) and `BLK_SIZE`.
//!   `SIZE_MAX` is not offered: data is copied in bounded chunks whatever
//!   the buffers' sizes.
//! - `RO` for read-only layers; writes to them fail with IOERR.
//! - `RING_EVENT_IDX`, so a busy queue interrupts the guest less often.
//! - `GET_ID`, the disk's serial (always available, no feature bit).
//!
//! A write that needs the volume's LV to grow blocks in `thin` on the
//! queue's thread until the extension is done; the guest sees the request
//! complete a little later. When the pool is really full the request is
//! held and retried and the VM is told ([`DiskEvents`]); when the disk's
//! lease is lost the [`Fence`] trips and no request reaches the disk again.
//!
//! Everything in a queue is guest-controlled: chains are walked with loops
//! and lengths bounded ([`chain`]), every buffer is checked to lie in guest
//! memory, every disk range is checked with overflow caught ([`request`]),
//! and a malformed request gets IOERR or UNSUPP, never a panic.

pub mod chain;
pub mod config;
pub mod disk;
pub mod events;
pub mod execute;
pub mod request;
pub mod spec;
pub mod worker;

#[cfg(test)]
mod tests;

pub use config::BlockConfig;
pub use disk::{Disk, DiskError, FileDisk, ThinDisk};
pub use events::{DiskEvents, Fence, LogEvents};

use super::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, F_VERSION_1, TYPE_BLOCK};
use crate::memory::GuestMemory;
use events::SpaceWatch;
use execute::Executor;
use request::Limits;
use spec::*;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use worker::QueueServer;

/// Queues a device may have; more would only be threads.
pub const MAX_QUEUES: u16 = 64;
/// Ranges in one discard or write-zeroes request.
pub const MAX_RANGES: u32 = 32;
/// Sectors in one discard or write-zeroes range (1 GiB): a discard holds
/// the volume's mapping exclusively while it runs.
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;

/// How the device is set up.
#[derive(Clone)]
pub struct BlockOptions {
    /// The disk's name in events and logs.
    pub id: String,
    /// What GET_ID answers (cut to 20 bytes).
    pub serial: String,
    pub num_queues: u16,
    /// Largest size of each queue, a power of two.
    pub queue_size: u16,
    /// Logical block size the guest is told, a power of two, 512..=4096.
    pub block_size: u32,
    /// How often a request held for space is tried again.
    pub retry_interval: Duration,
    pub events: Arc<dyn DiskEvents>,
}

impl BlockOptions {
    pub fn new(id: &str) -> BlockOptions {
        BlockOptions {
            id: id.to_string(),
            serial: id.to_string(),
            num_queues: 1,
            queue_size: 256,
            block_size: 512,
            retry_interval: Duration::from_secs(1),
            events: Arc::new(LogEvents),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {id}: {what}")]
    Invalid { id: String, what: String },
    #[error("disk {id}: {source}")]
    Io {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

/// Threads serving the queues of an activated device.
struct Running {
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Running {
    fn stop(self) {
        self.signal();
        self.join();
    }

    fn signal(&self) {
        if let Err(e) = self.stop.write(1) {
            log::error!("stopping a disk's queue threads: {e}");
        }
    }

    fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                log::error!("a disk's queue thread panicked");
            }
        }
    }
}

pub struct Block {
    disk: Arc<dyn Disk>,
    opts: BlockOptions,
    fence: Fence,
    queue_sizes: Vec<u16>,
    offered: u64,
    acked: u64,
    space: Arc<SpaceWatch>,
    running: Option<Running>,
    /// The thread joining the workers after a reset.
    stopping: Option<std::thread::JoinHandle<()>>,
}

impl Block {
    pub fn new(disk: Arc<dyn Disk>, opts: BlockOptions, fence: Fence) -> Result<Block, BlockError> {
        let invalid = |what: String| BlockError::Invalid {
            id: opts.id.clone(),
            what,
        };
        if opts.num_queues == 0 || opts.num_queues > MAX_QUEUES {
            return Err(invalid(format!(
                "{} queues, 1 to {MAX_QUEUES} allowed",
                opts.num_queues
            )));
        }
        if !opts.queue_size.is_power_of_two() || opts.queue_size < 4 {
            return Err(invalid(format!(
                "queue size {}, a power of two of at least 4 needed",
                opts.queue_size
            )));
        }
        if !opts.block_size.is_power_of_two() || !(512..=4096).contains(&opts.block_size) {
            return Err(invalid(format!(
                "block size {}, a power of two from 512 to 4096 needed",
                opts.block_size
            )));
        }
        let mut offered = F_VERSION_1 | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_MQ | F_RING_EVENT_IDX;
        if disk.read_only() {
            offered |= F_RO;
        } else {
            offered |= F_DISCARD | F_WRITE_ZEROES;
        }
        Ok(Block {
            space: Arc::new(SpaceWatch::new(&opts.id, opts.events.clone())),
            queue_sizes: vec![opts.queue_size; usize::from(opts.num_queues)],
            disk,
            opts,
            fence,
            offered,
            acked: 0,
            running: None,
            stopping: None,
        })
    }

    /// The configuration space as it reads now.
    pub fn config(&self) -> BlockConfig {
        let granularity = self.disk.discard_granularity().max(SECTOR_SIZE) / SECTOR_SIZE;
        let alignment = u32::try_from(granularity).unwrap_or(u32::MAX);
        // Whole granules per range, so a range frees what it names.
        let max_range = (MAX_RANGE_SECTORS / alignment.max(1)).max(1) * alignment.max(1);
        let writable = !self.disk.read_only();
        BlockConfig {
            capacity: self.disk.capacity() / SECTOR_SIZE,
            size_max: 0,
            seg_max: u32::from(self.opts.queue_size - 2),
            blk_size: self.opts.block_size,
            num_queues: self.opts.num_queues,
            max_discard_sectors: if writable { max_range } else { 0 },
            max_discard_seg: if writable { MAX_RANGES } else { 0 },
            discard_sector_alignment: if writable { alignment } else { 0 },
            max_write_zeroes_sectors: if writable { max_range } else { 0 },
            max_write_zeroes_seg: if writable { MAX_RANGES } else { 0 },
            write_zeroes_may_unmap: writable,
        }
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The driver's features as accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    fn limits(&self) -> Limits {
        let c = self.config();
        Limits {
            capacity: self.disk.capacity() / SECTOR_SIZE * SECTOR_SIZE,
            read_only: self.disk.read_only(),
            discard: self.acked & F_DISCARD != 0,
            write_zeroes: self.acked & F_WRITE_ZEROES != 0,
            max_discard_sectors: c.max_discard_sectors,
            max_discard_seg: c.max_discard_seg,
            max_write_zeroes_sectors: c.max_write_zeroes_sectors,
            max_write_zeroes_seg: c.max_write_zeroes_seg,
        }
    }

    /// A server for one queue, without its thread (tests drive it directly).
    fn server(
        &self,
        mem: &GuestMemory,
        interrupt: &Arc<dyn VirtioInterrupt>,
        q: ActiveQueue,
    ) -> (QueueServer, EventFd) {
        let mut queue = q.queue;
        queue.set_event_idx(self.acked & F_RING_EVENT_IDX != 0);
        let disk = self.disk.clone();
        let server = QueueServer::new(
            q.index,
            queue,
            mem.clone(),
            Executor::new(
                &self.opts.id,
                disk.clone(),
                self.fence.clone(),
                &self.opts.serial,
            ),
            self.limits(),
            Box::new(move || disk.capacity()),
            interrupt.clone(),
            self.space.clone(),
            self.opts.retry_interval,
        );
        (server, q.notify)
    }

    fn check_queues(&self, mem: &GuestMemory, queues: &[ActiveQueue]) -> Result<(), ActivateError> {
        let max = usize::from(self.opts.num_queues);
        if queues.is_empty() || queues.len() > max {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                max,
            });
        }
        let mut seen = vec![false; max];
        for q in queues {
            let i = usize::from(q.index);
            if i >= max || seen[i] {
                return Err(ActivateError::Other(format!(
                    "disk {}: queue index {} twice or past {max}",
                    self.opts.id, q.index
                )));
            }
            seen[i] = true;
            if !q.queue.is_valid(mem) {
                return Err(ActivateError::Other(format!(
                    "disk {}: queue {} is not ready or not in guest memory",
                    self.opts.id, q.index
                )));
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn reset_done(&self) -> bool {
        self.stopping.as_ref().is_none_or(|t| t.is_finished())
    }

    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        self.offered
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.offered;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // `writeback` is the only writable field, and only with CONFIG_WCE,
        // which is not offered.
        log::debug!(
            "disk {}: ignored config write of {} bytes at {offset}",
            self.opts.id,
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        self.reset();
        // A driver that did not wait for its reset waits here: the old
        // workers must not touch the new queues' memory.
        if let Some(t) = self.stopping.take() {
            let _ = t.join();
        }
        self.check_queues(&mem, &queues)?;
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Thread)?);
        let mut running = Running {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for q in queues {
            let (server, notify) = self.server(&mem, &interrupt, q);
            let stop = stop.clone();
            // Through the spawner: this runs on a vCPU (DRIVER_OK).
            let name = format!("vblk-{}-q{}", self.opts.id, server.index);
            let spawned = crate::threads::spawn(name, move || worker::run(server, notify, stop));
            match spawned {
                Ok(t) => running.threads.push(t),
                Err(e) => {
                    running.stop();
                    return Err(ActivateError::Thread(e));
                }
            }
        }
        self.running = Some(running);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(r) = self.running.take() {
            // Joined off the vCPU thread: a worker may be in a write that
            // waits for the LV to grow.
            r.signal();
            let name = format!("vblk-{}-reset", self.opts.id);
            let stopping = crate::threads::spawn(name, move || r.join());
            match stopping {
                Ok(t) => {
                    if let Some(old) = self.stopping.replace(t) {
                        let _ = old.join();
                    }
                }
                Err(e) => log::error!("stopping disk {} off the vCPU: {e}", self.opts.id),
            }
        }
        // Requests held for space are dropped with the queues.
        self.space = Arc::new(SpaceWatch::new(&self.opts.id, self.opts.events.clone()));
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
        if let Some(t) = self.stopping.take() {
            let _ = t.join();
        }
    }
}

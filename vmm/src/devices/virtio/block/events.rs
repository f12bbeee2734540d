//! What the device tells the VM about its disk, and the switch the VM
//! throws when the disk's lease is lost.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The pool under a disk filled up, or has room again. The VM pauses its
/// vCPUs on the first and resumes on the second; both are events for its
/// API. Called from the disk's I/O threads.
pub trait DiskEvents: Send + Sync {
    /// A request of `disk` could not get space and is held (retried until
    /// it fits). Called once when the first request is held.
    fn no_space(&self, disk: &str, error: &str);
    /// Every held request of `disk` went through.
    fn space_back(&self, disk: &str);
}

/// Logs only: for disks whose VM does not listen.
pub struct LogEvents;

impl DiskEvents for LogEvents {
    fn no_space(&self, disk: &str, error: &str) {
        log::warn!("disk {disk}: pool full, I/O held: {error}");
    }
    fn space_back(&self, disk: &str) {
        log::info!("disk {disk}: space is back, I/O goes on");
    }
}

/// Once tripped (the disk's lease is lost), no request reaches the disk
/// again: every request, held ones included, completes with IOERR. Clones
/// share the switch; the device's threads wake as it trips.
#[derive(Clone)]
pub struct Fence(Arc<FenceInner>);

struct FenceInner {
    tripped: AtomicBool,
    /// Readable once tripped (never read: it stays readable).
    wake: EventFd,
}

impl Fence {
    pub fn new() -> io::Result<Fence> {
        Ok(Fence(Arc::new(FenceInner {
            tripped: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })))
    }

    /// Stops all I/O through this fence; idempotent.
    pub fn trip(&self) {
        if !self.0.tripped.swap(true, Ordering::SeqCst) {
            if let Err(e) = self.0.wake.write(1) {
                // The flag alone still stops every request; threads see it
                // at their next wake-up instead of at once.
                log::warn!("waking I/O threads after a fence trip: {e}");
            }
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.0.tripped.load(Ordering::SeqCst)
    }

    pub(crate) fn wake_fd(&self) -> RawFd {
        self.0.wake.as_raw_fd()
    }
}

/// How many requests of one disk are held for space, so the VM hears
/// `no_space` once when the first is held and `space_back` once when the
/// last goes through, however many queues are involved.
pub(crate) struct SpaceWatch {
    disk: String,
    events: Arc<dyn DiskEvents>,
    held: Mutex<usize>,
}

impl SpaceWatch {
    pub fn new(disk: &str, events: Arc<dyn DiskEvents>) -> SpaceWatch {
        SpaceWatch {
            disk: disk.to_string(),
            events,
            held: Mutex::new(0),
        }
    }

    /// The lock is held across the callback so that the VM hears the two
    /// in the order they happened.
    pub fn hold(&self, error: &str) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if *held == 0 {
            self.events.no_space(&self.disk, error);
        }
        *held += 1;
    }

    /// A held request is done: it went through (`announce`), or was failed
    /// or dropped (fence, reset), which is no sign that space came back.
    pub fn release(&self, announce: bool) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        *held = held.saturating_sub(1);
        if *held == 0 && announce {
            self.events.space_back(&self.disk);
        }
    }
}

//! The device against real guest memory, real split queues laid out in it
//! and its real queue threads, woken through the notify eventfd.

mod device;
mod driver;
mod hostile;
mod on_thin;

use super::*;
use driver::{Driver, Irq};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use vm_memory::{Bytes, GuestAddress};

/// A device with its queues activated and a driver for each.
pub struct Harness {
    pub dev: Block,
    pub drivers: Vec<Driver>,
    pub irq: Arc<Irq>,
    pub mem: GuestMemory,
}

const HEAP: u64 = 8 << 20;

/// The device over `disk` with every offered feature accepted but
/// `without`, and `opts.num_queues` queues running.
pub fn start_with(disk: Arc<dyn Disk>, opts: BlockOptions, fence: Fence, without: u64) -> Harness {
    let n = u64::from(opts.num_queues);
    let size = opts.queue_size;
    let mem = driver::memory(((1 + n) * HEAP) as usize);
    let mut dev = Block::new(disk, opts, fence).unwrap();
    dev.ack_features(dev.features() & !without);
    let mut drivers = Vec::new();
    let mut queues = Vec::new();
    for i in 0..n {
        let (d, q) = Driver::new(
            &mem,
            i as u16,
            0x10000 * (i + 1),
            size,
            ((1 + i) * HEAP, HEAP),
        );
        drivers.push(d);
        queues.push(q);
    }
    let irq = Arc::new(Irq::default());
    dev.activate(mem.clone(), irq.clone(), queues).unwrap();
    Harness {
        dev,
        drivers,
        irq,
        mem,
    }
}

pub fn start(disk: Arc<dyn Disk>, opts: BlockOptions) -> Harness {
    start_with(disk, opts, Fence::new().unwrap(), 0)
}

/// A real disk with every call counted and the threads that made them.
pub struct Spy {
    pub inner: Arc<dyn Disk>,
    pub calls: AtomicU64,
    pub threads: Mutex<BTreeSet<String>>,
}

impl Spy {
    pub fn new(inner: Arc<dyn Disk>) -> Arc<Spy> {
        Arc::new(Spy {
            inner,
            calls: AtomicU64::new(0),
            threads: Mutex::new(BTreeSet::new()),
        })
    }
    fn saw(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().insert(name);
    }
}

impl Disk for Spy {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn discard_granularity(&self) -> u64 {
        self.inner.discard_granularity()
    }
    fn read(&self, buf: &mut [u8], offset: u64) -> disk::DiskResult {
        self.saw();
        self.inner.read(buf, offset)
    }
    fn write(&self, buf: &[u8], offset: u64) -> disk::DiskResult {
        self.saw();
        self.inner.write(buf, offset)
    }
    fn flush(&self) -> disk::DiskResult {
        self.saw();
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> disk::DiskResult {
        self.saw();
        self.inner.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> disk::DiskResult {
        self.saw();
        self.inner.write_zeroes(offset, len, may_unmap)
    }
}

/// What the VM heard, in order.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<String>>);

impl Recorder {
    pub fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl DiskEvents for Recorder {
    fn no_space(&self, disk: &str, _error: &str) {
        self.0.lock().unwrap().push(format!("no_space {disk}"));
    }
    fn space_back(&self, disk: &str) {
        self.0.lock().unwrap().push(format!("space_back {disk}"));
    }
}

/// A file disk of `len` bytes holding `fill`.
pub fn file_disk(dir: &Path, name: &str, fill: &[u8], read_only: bool) -> Arc<FileDisk> {
    let p = dir.join(name);
    std::fs::write(&p, fill).unwrap();
    Arc::new(FileDisk::open(&p, read_only).unwrap())
}

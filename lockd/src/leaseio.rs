//! Lease I/O bounded by io_timeout.
//!
//! Each request runs on a worker thread that owns its buffer. When a request
//! times out the caller gets [`Error::Timeout`] and the worker is abandoned
//! with the buffer: the buffer is freed only after the kernel has finished
//! with it, and never handed to another request (a late DMA into a reused
//! buffer would corrupt a later record). The next request gets a new worker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use san::{AlignedBuf, BlockDev};

use crate::sync::lock;
use crate::{Error, Result};

/// Memory alignment of lease buffers (O_DIRECT on 4Kn devices).
const BUF_ALIGN: usize = 4096;

enum Op {
    Read,
    Write,
}

struct Job {
    op: Op,
    offset: u64,
    buf: AlignedBuf,
    reply: SyncSender<(AlignedBuf, san::Result<()>)>,
}

/// Counters of lease I/O, for benchmarks and status.
#[derive(Debug, Default)]
pub struct IoStats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub timeouts: AtomicU64,
}

impl IoStats {
    /// (reads, writes, bytes read, bytes written)
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.read_bytes.load(Ordering::Relaxed),
            self.write_bytes.load(Ordering::Relaxed),
        )
    }
}

/// A device with timed lease I/O. Cheap to share (`Arc`).
pub struct LeaseDev {
    dev: Arc<dyn BlockDev>,
    name: String,
    timeout: Duration,
    /// Idle workers; a timed-out worker is never put back.
    workers: Mutex<Vec<SyncSender<Job>>>,
    pub stats: IoStats,
}

impl std::fmt::Debug for LeaseDev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseDev")
            .field("name", &self.name)
            .finish()
    }
}

impl LeaseDev {
    /// `name` labels errors (usually the path).
    pub fn new(dev: Arc<dyn BlockDev>, name: impl Into<String>, timeout: Duration) -> LeaseDev {
        LeaseDev {
            dev,
            name: name.into(),
            timeout,
            workers: Mutex::new(Vec::new()),
            stats: IoStats::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sector_size(&self) -> u32 {
        self.dev.logical_sector_size()
    }

    pub fn size(&self) -> u64 {
        self.dev.size()
    }

    pub fn device(&self) -> &Arc<dyn BlockDev> {
        &self.dev
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Reads `len` bytes at `offset` into a fresh buffer.
    pub fn read(&self, offset: u64, len: usize) -> Result<AlignedBuf> {
        self.read_within(offset, len, self.timeout())
    }

    /// As [`LeaseDev::read`] with an explicit time limit.
    pub fn read_within(&self, offset: u64, len: usize, limit: Duration) -> Result<AlignedBuf> {
        let buf = AlignedBuf::new(len, BUF_ALIGN);
        let buf = self.submit(Op::Read, offset, buf, limit)?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        self.stats
            .read_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(buf)
    }

    /// Writes `data` at `offset` (a copy; the caller keeps its bytes).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.write_within(offset, data, self.timeout())
    }

    pub fn write_within(&self, offset: u64, data: &[u8], limit: Duration) -> Result<()> {
        let mut buf = AlignedBuf::new(data.len(), BUF_ALIGN);
        buf.copy_from_slice(data);
        self.submit(Op::Write, offset, buf, limit)?;
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .write_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn submit(&self, op: Op, offset: u64, buf: AlignedBuf, limit: Duration) -> Result<AlignedBuf> {
        let worker = self.take_worker();
        let (reply, done) = mpsc::sync_channel(1);
        let job = Job {
            op,
            offset,
            buf,
            reply,
        };
        if worker.send(job).is_err() {
            return Err(Error::Internal(format!(
                "{}: lease I/O worker is gone",
                self.name
            )));
        }
        match done.recv_timeout(limit) {
            Ok((buf, result)) => {
                self.put_worker(worker);
                result.map_err(|source| Error::Io {
                    dev: self.name.clone(),
                    offset,
                    source,
                })?;
                Ok(buf)
            }
            Err(RecvTimeoutError::Timeout) => {
                // The worker keeps the buffer until the kernel is done with it.
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::Timeout {
                    dev: self.name.clone(),
                    offset,
                    limit,
                })
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::Internal(format!(
                "{}: lease I/O worker died",
                self.name
            ))),
        }
    }

    fn take_worker(&self) -> SyncSender<Job> {
        let idle = lock(&self.workers).pop();
        idle.unwrap_or_else(|| spawn_worker(self.dev.clone()))
    }

    fn put_worker(&self, w: SyncSender<Job>) {
        lock(&self.workers).push(w);
    }
}

fn spawn_worker(dev: Arc<dyn BlockDev>) -> SyncSender<Job> {
    let (tx, rx): (SyncSender<Job>, Receiver<Job>) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("lease-io".into())
        .spawn(move || {
            while let Ok(mut job) = rx.recv() {
                let r = match job.op {
                    Op::Read => dev.read_at(&mut job.buf, job.offset),
                    Op::Write => dev.write_at(&job.buf, job.offset),
                };
                // The requester may have given up; then the buffer drops here,
                // after the I/O finished.
                let _ = job.reply.send((job.buf, r));
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start a lease I/O thread: {e}");
    }
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use san::{FaultControl, FaultDev, FileDev, OpenOptions};

    fn dev() -> (tempfile::TempDir, FaultControl, LeaseDev) {
        let dir = tempfile::tempdir().unwrap();
        let f = FileDev::open(
            dir.path().join("lease"),
            &OpenOptions::new().create_size(Some(1 << 20)),
        )
        .unwrap();
        let ctl = FaultControl::new();
        let fd = FaultDev::new(Arc::new(f), ctl.clone());
        (
            dir,
            ctl,
            LeaseDev::new(Arc::new(fd), "lease", Duration::from_millis(200)),
        )
    }

    #[test]
    fn round_trip_and_counts() {
        let (_d, _ctl, dev) = dev();
        let data = vec![7u8; 1024];
        dev.write(4096, &data).unwrap();
        assert_eq!(&dev.read(4096, 1024).unwrap()[..], &data[..]);
        assert_eq!(dev.stats.snapshot(), (1, 1, 1024, 1024));
    }

    #[test]
    fn a_slow_io_times_out_and_the_next_one_uses_a_new_worker() {
        let (_d, ctl, dev) = dev();
        ctl.set_delay(Duration::from_millis(600), Duration::ZERO);
        let t = std::time::Instant::now();
        assert!(matches!(dev.read(0, 512), Err(Error::Timeout { .. })));
        assert!(t.elapsed() < Duration::from_millis(500));
        ctl.set_delay(Duration::ZERO, Duration::ZERO);
        // The stuck worker is still sleeping; this request must not wait for it.
        dev.write(0, &[1u8; 512]).unwrap();
        assert_eq!(dev.read(0, 512).unwrap()[0], 1);
        assert_eq!(dev.stats.timeouts.load(Ordering::Relaxed), 1);
    }
}

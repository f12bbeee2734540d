//! A bound on the bytes of data one host keeps in flight to a device.
//!
//! A LUN serves its queue roughly in order, so a small synchronous I/O (an
//! LVM commit, the growth mailbox) waits behind every byte already queued.
//! Past the depth that keeps the device busy, more data in flight adds no
//! throughput, only that wait. In ssvd's growth bench (8 hosts, 8 MiB each
//! in flight from their writers) a bound of 1 MiB per host left the writing
//! as fast and cut extensions from about 50 ms to 9 ms at p50
//! (BENCHMARKS.md). Data I/O goes through a [`Budgeted`] device and waits
//! its turn in the [`IoBudget`] instead, where small I/O that does not use
//! the budget passes it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::{BlockDev, DevId, Result};

/// Bytes in flight, shared by every device of one budget. Requests are
/// admitted in arrival order; one larger than the whole budget goes alone.
pub struct IoBudget {
    limit: u64,
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Default)]
struct State {
    in_flight: u64,
    /// Tickets: the next one handed out, and the one whose turn it is.
    /// Those in between are waiting.
    next: u64,
    serving: u64,
}

impl State {
    fn anyone_waiting(&self) -> bool {
        self.next != self.serving
    }
}

impl IoBudget {
    /// A budget of `limit` bytes (at least 1).
    pub fn new(limit: u64) -> Arc<IoBudget> {
        Arc::new(IoBudget {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
            turn: Condvar::new(),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes in flight now.
    pub fn in_flight(&self) -> u64 {
        self.lock().in_flight
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the turn of `len` bytes; they are in flight until the
    /// returned guard drops.
    fn admit(&self, len: u64) -> Admitted<'_> {
        let len = len.min(self.limit);
        let mut st = self.lock();
        let ticket = st.next;
        st.next += 1;
        while st.serving != ticket || (st.in_flight > 0 && st.in_flight + len > self.limit) {
            st = self.turn.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.serving += 1;
        st.in_flight += len;
        if st.anyone_waiting() {
            // The next ticket may fit beside this one.
            self.turn.notify_all();
        }
        Admitted { budget: self, len }
    }
}

struct Admitted<'a> {
    budget: &'a IoBudget,
    len: u64,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut st = self.budget.lock();
        st.in_flight -= self.len;
        if st.anyone_waiting() {
            self.budget.turn.notify_all();
        }
    }
}

/// A device whose reads and writes take their bytes from an [`IoBudget`]
/// for as long as they are in flight. Everything else passes straight on.
pub struct Budgeted {
    inner: Arc<dyn BlockDev>,
    budget: Arc<IoBudget>,
}

impl Budgeted {
    pub fn new(inner: Arc<dyn BlockDev>, budget: Arc<IoBudget>) -> Budgeted {
        Budgeted { inner, budget }
    }
}

impl std::fmt::Debug for Budgeted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgeted")
            .field("id", self.inner.identity())
            .field("limit", &self.budget.limit)
            .finish()
    }
}

impl BlockDev for Budgeted {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let _turn = self.budget.admit(buf.len() as u64);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _turn = self.budget.admit(buf.len() as u64);
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.write_zeroes(offset, len)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.inner.discard(offset, len)
    }
    fn zeroes_cheaply(&self) -> bool {
        self.inner.zeroes_cheaply()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn logical_sector_size(&self) -> u32 {
        self.inner.logical_sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn identity(&self) -> &DevId {
        self.inner.identity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A device that records the most bytes it ever had in flight at once.
    struct Gauge {
        now: AtomicU64,
        peak: AtomicU64,
        id: DevId,
    }

    impl Gauge {
        fn new() -> Arc<Gauge> {
            Arc::new(Gauge {
                now: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                id: DevId("gauge".into()),
            })
        }
        fn io(&self, len: usize) -> Result<()> {
            let now = self.now.fetch_add(len as u64, Ordering::SeqCst) + len as u64;
            self.peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(2));
            self.now.fetch_sub(len as u64, Ordering::SeqCst);
            Ok(())
        }
    }

    impl BlockDev for Gauge {
        fn read_at(&self, buf: &mut [u8], _: u64) -> Result<()> {
            self.io(buf.len())
        }
        fn write_at(&self, buf: &[u8], _: u64) -> Result<()> {
            self.io(buf.len())
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn size(&self) -> u64 {
            1 << 30
        }
        fn logical_sector_size(&self) -> u32 {
            512
        }
        fn physical_sector_size(&self) -> u32 {
            512
        }
        fn identity(&self) -> &DevId {
            &self.id
        }
    }

    fn run(budget: u64, threads: usize, len: usize) -> u64 {
        let gauge = Gauge::new();
        let dev = Budgeted::new(gauge.clone(), IoBudget::new(budget));
        std::thread::scope(|s| {
            for t in 0..threads {
                let dev = &dev;
                s.spawn(move || {
                    let mut buf = vec![0u8; len];
                    for i in 0..10 {
                        if (t + i) % 2 == 0 {
                            dev.write_at(&buf, 0).unwrap();
                        } else {
                            dev.read_at(&mut buf, 0).unwrap();
                        }
                    }
                });
            }
        });
        gauge.peak.load(Ordering::SeqCst)
    }

    #[test]
    fn data_in_flight_stays_within_the_budget() {
        assert!(run(4 << 20, 8, 1 << 20) <= 4 << 20);
        // Smaller requests share it: several go at once.
        let peak = run(64 << 10, 16, 4096);
        assert!(peak <= 64 << 10 && peak > 4096, "peak {peak}");
    }

    #[test]
    fn a_request_larger_than_the_budget_goes_alone() {
        assert_eq!(run(1 << 20, 4, 2 << 20), 2 << 20);
    }

    #[test]
    fn without_contention_nothing_waits_and_the_budget_empties() {
        let budget = IoBudget::new(1 << 20);
        let dev = Budgeted::new(Gauge::new(), budget.clone());
        dev.write_at(&[0u8; 4096], 0).unwrap();
        assert_eq!(budget.in_flight(), 0);
        assert_eq!(dev.size(), 1 << 30);
    }
}

//! The guest's side of a split virtqueue, for tests: descriptor table,
//! available and used rings laid out in real guest memory, written the way
//! a driver writes them.

use crate::devices::virtio::block::spec::*;
use crate::devices::virtio::{ActiveQueue, InterruptKind, VirtioInterrupt};
use crate::memory::GuestMemory;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory of `len` bytes from address 0.
pub fn memory(len: usize) -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), len)]).unwrap()
}

/// Where a split queue of `size` entries lies from `base`.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub size: u16,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
}

impl Layout {
    pub fn new(base: u64, size: u16) -> Layout {
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n).div_ceil(4) * 4;
        Layout {
            size,
            desc: GuestAddress(base),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
        }
    }
    /// The used ring's bytes, avail_event included.
    pub fn used_range(&self) -> (u64, u64) {
        (self.used.0, 6 + 8 * u64::from(self.size))
    }
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }
}

/// One buffer of a chain as the driver lays it out.
#[derive(Clone, Copy, Debug)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A request in flight.
#[derive(Clone, Debug)]
pub struct Pending {
    pub head: u16,
    /// The device-writable data buffers (reads, GET_ID).
    pub data_in: Vec<Buf>,
    pub status: u64,
}

/// A completed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    pub status: u8,
    pub used_len: u32,
    pub data: Vec<u8>,
}

pub struct Driver {
    pub mem: GuestMemory,
    pub layout: Layout,
    pub notify: EventFd,
    next_desc: u16,
    /// Descriptors of each chain in flight, by head.
    in_flight: std::collections::HashMap<u16, usize>,
    avail_idx: u16,
    used_seen: u16,
    heap: (u64, u64),
    heap_next: u64,
    /// Data is split into buffers of this many bytes, as a guest's pages.
    pub seg_size: usize,
}

impl Driver {
    /// A driver for queue `index` at `base`, with buffers taken from `heap`.
    pub fn new(
        mem: &GuestMemory,
        index: u16,
        base: u64,
        size: u16,
        heap: (u64, u64),
    ) -> (Driver, ActiveQueue) {
        let layout = Layout::new(base, size);
        // A driver starts from zeroed rings.
        let (used_at, used_len) = layout.used_range();
        let rings = (used_at + used_len - base) as usize;
        mem.write_slice(&vec![0u8; rings], GuestAddress(base))
            .unwrap();
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let active = ActiveQueue {
            index,
            queue: layout.queue(),
            notify: notify.try_clone().unwrap(),
        };
        let d = Driver {
            mem: mem.clone(),
            layout,
            notify,
            next_desc: 0,
            in_flight: Default::default(),
            avail_idx: 0,
            used_seen: 0,
            heap,
            heap_next: heap.0,
            seg_size: 4096,
        };
        (d, active)
    }

    pub fn alloc(&mut self, len: usize) -> u64 {
        let len = (len.max(1) as u64).div_ceil(16) * 16;
        assert!(len <= self.heap.1, "test heap too small for {len} bytes");
        if self.heap_next + len > self.heap.0 + self.heap.1 {
            self.heap_next = self.heap.0;
        }
        let at = self.heap_next;
        self.heap_next += len;
        at
    }

    /// Writes `bufs` as one chain into the table and makes it available
    /// (without notifying).
    pub fn add(&mut self, bufs: &[Buf]) -> u16 {
        let size = self.layout.size;
        let busy: usize = self.in_flight.values().sum();
        assert!(
            busy + bufs.len() <= usize::from(size),
            "the chain does not fit the queue's free descriptors"
        );
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % size;
            let last = i + 1 == bufs.len();
            let mut flags = if b.write { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            let next = (idx + 1) % size;
            self.write_desc(idx, b.addr, b.len, flags, next);
        }
        self.next_desc = (head + bufs.len() as u16) % size;
        self.in_flight.insert(head, bufs.len());
        self.publish(head);
        head
    }

    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.layout.desc.0 + 16 * u64::from(idx);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(at)).unwrap();
    }

    /// Puts `head` in the available ring and publishes it.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.layout.size);
        self.mem
            .write_obj(
                head.to_le(),
                self.layout.avail.unchecked_add_raw(4 + 2 * slot),
            )
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .store(
                self.avail_idx.to_le(),
                self.layout.avail.unchecked_add_raw(2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// The driver's `used_event` (EVENT_IDX): interrupt once the device
    /// used entry `idx`.
    pub fn set_used_event(&self, idx: u16) {
        let at = self.layout.avail.0 + 4 + 2 * u64::from(self.layout.size);
        self.mem.write_obj(idx.to_le(), GuestAddress(at)).unwrap();
    }

    pub fn kick(&self) {
        self.notify.write(1).unwrap();
    }

    /// Buffers of `seg_size` bytes, larger if the chain would not fit the
    /// queue otherwise (header and status take two descriptors).
    fn seg_for(&self, total: usize) -> usize {
        let room = usize::from(self.layout.size) - 2;
        self.seg_size.max(1).max(total.div_ceil(room))
    }

    /// Bytes of `data` as readable buffers.
    fn put_out(&mut self, data: &[u8], seg: usize, bufs: &mut Vec<Buf>) {
        for piece in data.chunks(seg) {
            let at = self.alloc(piece.len());
            self.mem.write_slice(piece, GuestAddress(at)).unwrap();
            bufs.push(Buf {
                addr: at,
                len: piece.len() as u32,
                write: false,
            });
        }
    }

    /// A request: header, `out` data the device reads, `in_len` bytes the
    /// device writes, and the status byte.
    pub fn submit(&mut self, kind: u32, sector: u64, out: &[u8], in_len: usize) -> Pending {
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        let h = self.alloc(16);
        self.mem.write_slice(&hdr, GuestAddress(h)).unwrap();
        let mut bufs = vec![Buf {
            addr: h,
            len: 16,
            write: false,
        }];
        let seg = self.seg_for(out.len() + in_len);
        self.put_out(out, seg, &mut bufs);
        let mut data_in = Vec::new();
        let mut left = in_len;
        while left > 0 {
            let n = left.min(seg);
            let at = self.alloc(n);
            // Poison, so a read that writes nothing shows.
            self.mem
                .write_slice(&vec![0xee; n], GuestAddress(at))
                .unwrap();
            let b = Buf {
                addr: at,
                len: n as u32,
                write: true,
            };
            data_in.push(b);
            bufs.push(b);
            left -= n;
        }
        let status = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        bufs.push(Buf {
            addr: status,
            len: 1,
            write: true,
        });
        let head = self.add(&bufs);
        Pending {
            head,
            data_in,
            status,
        }
    }

    pub fn used_idx(&self) -> u16 {
        self.mem
            .load::<u16>(self.layout.used.unchecked_add_raw(2), Ordering::Acquire)
            .map(u16::from_le)
            .unwrap()
    }

    /// The next used entry, if the device returned one within `timeout`.
    pub fn try_next_used(&mut self, timeout: Duration) -> Option<(u32, u32)> {
        let deadline = Instant::now() + timeout;
        while self.used_idx() == self.used_seen {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let slot = u64::from(self.used_seen % self.layout.size);
        let at = self.layout.used.0 + 4 + 8 * slot;
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        self.used_seen = self.used_seen.wrapping_add(1);
        if let Ok(head) = u16::try_from(u32::from_le(id)) {
            self.in_flight.remove(&head);
        }
        Some((u32::from_le(id), u32::from_le(len)))
    }

    /// Waits for `p` (requests of one queue complete in order).
    pub fn complete(&mut self, p: &Pending) -> Done {
        let (id, used_len) = self
            .try_next_used(Duration::from_secs(30))
            .expect("the device did not complete the request");
        assert_eq!(id, u32::from(p.head), "completed out of order");
        self.result(p, used_len)
    }

    pub fn result(&self, p: &Pending, used_len: u32) -> Done {
        let mut data = Vec::new();
        for b in &p.data_in {
            let mut v = vec![0u8; b.len as usize];
            self.mem.read_slice(&mut v, GuestAddress(b.addr)).unwrap();
            data.extend_from_slice(&v);
        }
        let status: u8 = self.mem.read_obj(GuestAddress(p.status)).unwrap();
        Done {
            status,
            used_len,
            data,
        }
    }

    /// Submits, kicks and waits.
    pub fn run(&mut self, kind: u32, sector: u64, out: &[u8], in_len: usize) -> Done {
        let p = self.submit(kind, sector, out, in_len);
        self.kick();
        self.complete(&p)
    }

    pub fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        self.run(T_OUT, sector, data, 0).status
    }

    pub fn read(&mut self, sector: u64, len: usize) -> (u8, Vec<u8>) {
        let d = self.run(T_IN, sector, &[], len);
        (d.status, d.data)
    }

    /// Discard or write-zeroes ranges: (sector, sectors, flags).
    pub fn ranges(&mut self, kind: u32, ranges: &[(u64, u32, u32)]) -> u8 {
        let mut out = Vec::new();
        for (s, n, f) in ranges {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&f.to_le_bytes());
        }
        self.run(kind, 0, &out, 0).status
    }
}

trait AddRaw {
    fn unchecked_add_raw(&self, n: u64) -> GuestAddress;
}
impl AddRaw for GuestAddress {
    fn unchecked_add_raw(&self, n: u64) -> GuestAddress {
        GuestAddress(self.0 + n)
    }
}

/// Counts interrupts per queue.
#[derive(Default)]
pub struct Irq {
    counts: Mutex<Vec<u64>>,
    cv: Condvar,
}

impl Irq {
    pub fn count(&self, queue: u16) -> u64 {
        let c = self.counts.lock().unwrap();
        c.get(usize::from(queue)).copied().unwrap_or(0)
    }
}

impl VirtioInterrupt for Irq {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let mut c = self.counts.lock().unwrap();
        if let InterruptKind::Queue(q) = kind {
            let q = usize::from(q);
            if c.len() <= q {
                c.resize(q + 1, 0);
            }
            c[q] += 1;
        }
        self.cv.notify_all();
        Ok(())
    }
}

/// A deterministic byte pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

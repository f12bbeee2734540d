//! A small virtio device that records what its transport hands it, for the
//! transports' tests.

use super::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, F_VERSION_1};
use crate::memory::GuestMemory;
use std::sync::{Arc, Mutex};
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

pub const MEM: usize = 0x10_0000;
pub const FEATURE_X: u64 = 1 << 3;

/// A queue as handed over: (index, size, desc, avail, used).
pub type SeenQueue = (u16, u16, u64, u64, u64);

#[derive(Default)]
pub struct Log {
    pub acked: Option<u64>,
    /// Per activation: (index, size, desc, avail, used) of each queue.
    pub activations: Vec<Vec<SeenQueue>>,
    pub resets: usize,
    pub interrupt: Option<Arc<dyn VirtioInterrupt>>,
    pub notify: Vec<EventFd>,
}

pub struct TestDev {
    pub log: Arc<Mutex<Log>>,
    pub config: [u8; 8],
}

impl VirtioDevice for TestDev {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | FEATURE_X
    }
    fn ack_features(&mut self, features: u64) {
        self.log.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::read_image(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(c) = offset
                .checked_add(i as u64)
                .and_then(|o| self.config.get_mut(o as usize))
            {
                *c = *b;
            }
        }
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let mut log = self.log.lock().unwrap();
        let mut seen = Vec::new();
        for q in &queues {
            // What the transport promises every device.
            assert!(
                q.queue.ready() && q.queue.is_valid(&mem),
                "bad queue handed over"
            );
            seen.push((
                q.index,
                q.queue.size(),
                q.queue.desc_table(),
                q.queue.avail_ring(),
                q.queue.used_ring(),
            ));
        }
        log.activations.push(seen);
        log.interrupt = Some(interrupt);
        log.notify = queues.into_iter().map(|q| q.notify).collect();
        Ok(())
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().resets += 1;
    }
}

/// A test device with two queues (16 and 8 entries) in `MEM` bytes of
/// guest memory, and its log.
pub fn test_device() -> (Box<TestDev>, GuestMemory, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let dev = TestDev {
        log: log.clone(),
        config: *b"ssvconf!",
    };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    (Box::new(dev), mem, log)
}

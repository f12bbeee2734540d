//! What every virtio transport does alike: feature negotiation, the device
//! status state machine, queue setup, activation and reset (virtio 1.2 §2,
//! §3.1). A transport ([`super::mmio`], [`super::pci`]) maps its registers
//! onto [`DeviceState`] and keeps only its own registers (selectors, its
//! interrupt) itself.
//!
//! Every value comes from the guest: selectors out of range, sizes that are
//! no power of two, queue changes after DRIVER_OK and status bits taken
//! back are ignored, and a device is only activated with queues valid in
//! guest memory.

use super::{ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt, F_VERSION_1};
use crate::memory::GuestMemory;
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// `VIRTIO_F_RING_EVENT_IDX`: the queues use event indexes once accepted.
const F_EVENT_IDX: u64 = 1 << 29;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("device queue {index} has an invalid maximum size {max}")]
    QueueSize { index: usize, max: u16 },
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// A device and the state the driver sets up through any transport.
pub struct DeviceState {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    driver_features: u64,
    status: u32,
    active: bool,
}

impl DeviceState {
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory) -> Result<Self, TransportError> {
        let mut queues = Vec::new();
        let mut notify = Vec::new();
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|_| TransportError::QueueSize { index, max })?);
            notify.push(EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        Ok(DeviceState {
            device,
            mem,
            queues,
            notify,
            driver_features: 0,
            status: 0,
            active: false,
        })
    }

    pub fn device(&self) -> &dyn VirtioDevice {
        &*self.device
    }

    /// Each queue's notification eventfd, for the transport's ioeventfds.
    pub fn notify_fds(&self) -> &[EventFd] {
        &self.notify
    }

    /// Queue `index` was notified through an exit rather than an ioeventfd.
    pub fn notify(&self, index: u32) {
        if let Some(fd) = self.notify.get(index as usize) {
            if let Err(e) = fd.write(1) {
                log::warn!("virtio: queue {index} notification: {e}");
            }
        }
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    pub fn queue(&self, index: u32) -> Option<&Queue> {
        self.queues.get(index as usize)
    }

    /// Queue `index`, while its registers may still change: before
    /// DRIVER_OK and before the queue is enabled.
    pub fn queue_for_setup(&mut self, index: u32) -> Option<&mut Queue> {
        if self.active || self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(index as usize).filter(|q| !q.ready())
    }

    pub fn set_queue_ready(&mut self, index: u32, ready: bool) {
        if self.active || self.status & status::DRIVER_OK != 0 {
            return;
        }
        if let Some(q) = self.queues.get_mut(index as usize) {
            q.set_ready(ready);
        }
    }

    /// 32 bits of the offered features: word `select` (0 or 1).
    pub fn device_features_word(&self, select: u32) -> u32 {
        let features = self.device.features();
        match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    /// What the driver wrote of its features, word `select`.
    pub fn driver_features_word(&self, select: u32) -> u32 {
        match select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver's features, word `select`; fixed once FEATURES_OK is set.
    pub fn set_driver_features_word(&mut self, select: u32, v: u32) {
        if self.status & status::FEATURES_OK != 0 {
            return;
        }
        let f = &mut self.driver_features;
        match select {
            0 => *f = (*f & !0xffff_ffff) | u64::from(v),
            1 => *f = (*f & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
    }

    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// The status the driver reads; a reset still under way reads as not
    /// done (non-zero), which tells the driver to wait (virtio 1.2 §2.4).
    pub fn status(&self) -> u32 {
        if self.device.reset_done() {
            self.status
        } else {
            status::ACKNOWLEDGE
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        self.device.read_config(offset, data);
    }

    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.status & status::FAILED == 0 {
            self.device.write_config(offset, data);
        }
    }

    /// The driver wrote `v` to the status; 0 resets the device (the caller
    /// resets its own registers too). A device that cannot be activated
    /// gets DEVICE_NEEDS_RESET and a configuration interrupt.
    pub fn set_status(&mut self, v: u32, interrupt: &Arc<dyn VirtioInterrupt>) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added by the driver; only a reset clears them.
        if v & self.status != self.status {
            log::debug!("virtio: status {v:#x} clears bits of {:#x}", self.status);
            return;
        }
        let new = v & !self.status & !status::DEVICE_NEEDS_RESET;
        let mut grant = new & (status::ACKNOWLEDGE | status::DRIVER | status::FAILED);
        if new & status::FEATURES_OK != 0 && self.status & status::DRIVER != 0 {
            let offered = self.device.features();
            let f = self.driver_features;
            if f & !offered == 0 && f & F_VERSION_1 != 0 {
                self.device.ack_features(f);
                grant |= status::FEATURES_OK;
            }
        }
        self.status |= grant;
        if new & status::DRIVER_OK != 0 && self.status & status::FEATURES_OK != 0 {
            match self.activate(interrupt) {
                Ok(()) => self.status |= status::DRIVER_OK,
                Err(e) => {
                    log::warn!(
                        "virtio: device {} not activated: {e}",
                        self.device.device_type()
                    );
                    self.status |= status::DEVICE_NEEDS_RESET;
                    let _ = interrupt.trigger(InterruptKind::Config);
                }
            }
        }
    }

    fn activate(&mut self, interrupt: &Arc<dyn VirtioInterrupt>) -> Result<(), String> {
        let event_idx = self.driver_features & F_EVENT_IDX != 0;
        let mut active = Vec::new();
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                return Err(format!("queue {index} is not valid in guest memory"));
            }
            let mut queue = copy_queue(q).map_err(|e| format!("queue {index}: {e:?}"))?;
            queue.set_event_idx(event_idx);
            let notify = self.notify[index]
                .try_clone()
                .map_err(|e| format!("queue {index} eventfd: {e}"))?;
            active.push(ActiveQueue {
                index: index as u16,
                queue,
                notify,
            });
        }
        self.device
            .activate(self.mem.clone(), interrupt.clone(), active)
            .map_err(|e| e.to_string())?;
        self.active = true;
        Ok(())
    }

    /// Stops the device and forgets everything the driver set up.
    pub fn reset(&mut self) {
        if self.status != 0 || self.active {
            self.device.reset();
        }
        self.active = false;
        for q in &mut self.queues {
            q.reset();
        }
        for fd in &self.notify {
            // Drop notifications left from before the reset.
            let _ = fd.read();
        }
        self.status = 0;
        self.driver_features = 0;
    }
}

/// A queue with `q`'s registers, for the device to own.
fn copy_queue(q: &Queue) -> Result<Queue, virtio_queue::Error> {
    let mut c = Queue::new(q.max_size())?;
    c.try_set_size(q.size())?;
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (l, h) = split(q.desc_table());
    c.set_desc_table_address(l, h);
    let (l, h) = split(q.avail_ring());
    c.set_avail_ring_address(l, h);
    let (l, h) = split(q.used_ring());
    c.set_used_ring_address(l, h);
    c.set_ready(q.ready());
    Ok(c)
}

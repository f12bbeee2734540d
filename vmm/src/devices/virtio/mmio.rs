//! The virtio-mmio transport (virtio 1.2 §4.2.2, version 2 registers).
//!
//! MMIO rather than PCI: a handful of registers the guest reaches from any
//! mode (the real-mode test guest included, below 1 MiB), no PCI host
//! bridge, config space or MSI-X to emulate, and the same transport on
//! x86_64 (kernel command line `virtio_mmio.device=`) and aarch64 (a device
//! tree node). Queue notifications should arrive on the queues' eventfds
//! through ioeventfds registered by the VMM ([`MmioTransport::notify_fds`]);
//! a notification that exits to the VMM instead (another access width, no
//! ioeventfd) is written to the same eventfd. Interrupts leave through an
//! irqfd when one is given, and the interrupt status register is kept right
//! in every case so a polling guest works.
//!
//! Every register write is guest input: out-of-range selectors, widths,
//! sizes and addresses are ignored or refused, never trusted.

use super::{ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt, F_VERSION_1};
use crate::memory::GuestMemory;
use crate::vm::bus::BusDevice;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Bytes of address space each device's window takes.
pub const WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, for ioeventfds.
pub const QUEUE_NOTIFY: u64 = 0x050;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = u32::from_le_bytes(*b"ssv\0");
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Interrupt status bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// `VIRTIO_F_RING_EVENT_IDX`: the queues use event indexes once accepted.
const F_EVENT_IDX: u64 = 1 << 29;

/// The device's interrupt: the status register the guest reads and acks,
/// and the irqfd that raises its line.
pub struct MmioInterrupt {
    status: AtomicU32,
    irq: Option<EventFd>,
}

impl MmioInterrupt {
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let bit = match kind {
            InterruptKind::Queue(_) => INT_VRING,
            InterruptKind::Config => INT_CONFIG,
        };
        self.status.fetch_or(bit, Ordering::SeqCst);
        match &self.irq {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("device queue {index} has an invalid maximum size {max}")]
    QueueSize { index: usize, max: u16 },
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// One virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    notify: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    active: bool,
}

impl MmioTransport {
    /// `irq`: the irqfd of the device's interrupt line, if the VM has one.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: Option<EventFd>,
    ) -> Result<MmioTransport, TransportError> {
        let mut queues = Vec::new();
        let mut notify = Vec::new();
        for (index, &max) in device.queue_max_sizes().iter().enumerate() {
            queues.push(Queue::new(max).map_err(|_| TransportError::QueueSize { index, max })?);
            notify.push(EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd)?);
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                irq,
            }),
            queues,
            notify,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// Queue `i`'s notification eventfd: register it as an ioeventfd at
    /// `base + QUEUE_NOTIFY` with datamatch `i` (32 bits).
    pub fn notify_fds(&self) -> &[EventFd] {
        &self.notify
    }

    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    pub fn device_status(&self) -> u32 {
        self.status
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The selected queue, while its registers may still change.
    fn queue_for_setup(&mut self) -> Option<&mut Queue> {
        if self.active || self.status & status::DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(self.queue_sel as usize)
            .filter(|q| !q.ready())
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        let features = self.device.features();
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device.device_type(),
            0x00c => VENDOR_ID,
            0x010 => match self.device_features_sel {
                0 => features as u32,
                1 => (features >> 32) as u32,
                _ => 0,
            },
            0x034 => q.map_or(0, |q| u32::from(q.max_size())),
            0x044 => q.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            // A reset still under way reads as not done.
            0x070 if !self.device.reset_done() => status::ACKNOWLEDGE,
            0x070 => self.status,
            // No shared memory regions: their lengths read as all ones.
            0x0b0..=0x0bc => u32::MAX,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 => {
                if self.status & status::FEATURES_OK == 0 {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xffff_ffff) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                        }
                        _ => {}
                    }
                }
            }
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let (Some(q), Ok(size)) = (self.queue_for_setup(), u16::try_from(v)) {
                    // A size that is not a power of two up to the maximum is refused.
                    let _ = q.try_set_size(size);
                }
            }
            0x044 => {
                if self.active || self.status & status::DRIVER_OK != 0 {
                    return;
                }
                if let Some(q) = self.queues.get_mut(self.queue_sel as usize) {
                    q.set_ready(v == 1);
                }
            }
            0x050 => {
                if let Some(fd) = self.notify.get(v as usize) {
                    if let Err(e) = fd.write(1) {
                        log::warn!("virtio-mmio: queue {v} notification: {e}");
                    }
                }
            }
            0x064 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x070 => self.set_status(v),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if let Some(q) = self.queue_for_setup() {
                    let (low, high) = if offset & 4 == 0 {
                        (Some(v), None)
                    } else {
                        (None, Some(v))
                    };
                    match offset & !4 {
                        0x080 => q.set_desc_table_address(low, high),
                        0x090 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => log::debug!("virtio-mmio: write {v:#x} to register {offset:#x} ignored"),
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // Bits are only ever added by the driver; only a reset clears them.
        if v & self.status != self.status {
            log::debug!(
                "virtio-mmio: status {v:#x} clears bits of {:#x}",
                self.status
            );
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
            match self.activate() {
                Ok(()) => self.status |= status::DRIVER_OK,
                Err(e) => {
                    log::warn!(
                        "virtio-mmio: device {} not activated: {e}",
                        self.device.device_type()
                    );
                    self.status |= status::DEVICE_NEEDS_RESET;
                    let _ = self.interrupt.trigger(InterruptKind::Config);
                }
            }
        }
    }

    fn activate(&mut self) -> Result<(), String> {
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
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device
            .activate(self.mem.clone(), interrupt, active)
            .map_err(|e| e.to_string())?;
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
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
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
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

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            data.fill(0);
            self.device.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            // Registers are 32 bits wide; other widths read as zero.
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            if self.status & status::FAILED == 0 {
                self.device.write_config(offset - CONFIG_SPACE, data);
            }
        } else if let Ok(word) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(word));
        } else {
            log::debug!(
                "virtio-mmio: {}-byte write to {offset:#x} ignored",
                data.len()
            );
        }
    }
}

#[cfg(test)]
mod tests;

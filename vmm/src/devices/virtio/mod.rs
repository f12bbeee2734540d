//! Virtio devices and their transport.
//!
//! The seam is [`VirtioDevice`]: a transport (MMIO, [`mmio`], or PCI,
//! [`pci`], both on [`transport::DeviceState`]) negotiates features, sets up
//! the queues and then hands them to the device, which serves them on its
//! own threads and signals the guest through a [`VirtioInterrupt`]. A
//! device never sees the transport, so it is tested alone against guest
//! memory.

pub mod block;
pub mod mmio;
pub mod pci;
#[cfg(test)]
mod test_device;
pub mod transport;

use crate::memory::GuestMemory;
use std::sync::Arc;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Virtio device ids (virtio 1.2 §5).
pub const TYPE_BLOCK: u32 = 2;

/// `VIRTIO_F_VERSION_1`: we offer modern devices only.
pub const F_VERSION_1: u64 = 1 << 32;

/// Why the device interrupts the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Buffers were put in a used ring.
    Queue(u16),
    /// The device's configuration space changed (e.g. a resize).
    Config,
}

/// How a device tells the guest something happened.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()>;
}

/// A queue the driver set up, with the eventfd the guest's notifications of
/// that queue arrive on.
pub struct ActiveQueue {
    pub index: u16,
    pub queue: Queue,
    pub notify: EventFd,
}

/// A virtio device as seen by its transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// Largest size of each queue; the number of queues is its length.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered (including [`F_VERSION_1`]).
    fn features(&self) -> u64;
    /// The subset of [`Self::features`] the driver accepted.
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific configuration space; bytes past its end
    /// read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes to the configuration space; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving `queues`.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop serving and drop the queues. It
    /// runs on a vCPU thread, so it only starts the stop when that can wait
    /// (a write parked for growth); [`Self::reset_done`] tells when it ended.
    fn reset(&mut self);
    /// Whether the last reset has finished; until then the device's status
    /// reads non-zero, which tells the driver to wait (virtio 1.2 §2.4).
    fn reset_done(&self) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("device activated with {got} queues, it has {max}")]
    QueueCount { got: usize, max: usize },
    #[error("cannot start the device's I/O thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("{0}")]
    Other(String),
}

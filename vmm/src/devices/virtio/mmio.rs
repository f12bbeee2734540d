//! The virtio-mmio transport (virtio 1.2 §4.2.2, version 2 registers).
//!
//! Where MMIO rather than PCI ([`super::pci`]): a handful of registers the
//! guest reaches from any mode (the real-mode test guest, below 1 MiB), and
//! on aarch64 (a device tree node), where MSI-X would need a GICv3 ITS. Its
//! cost: one interrupt per device, whatever the number of queues, and a
//! status read and acknowledge (two exits) per interrupt.
//!
//! Queue notifications should arrive on the queues' eventfds through
//! ioeventfds registered by the VMM ([`MmioTransport::notify_fds`]);
//! a notification that exits to the VMM instead (another access width, no
//! ioeventfd) is written to the same eventfd. Interrupts leave through an
//! irqfd when one is given, and the interrupt status register is kept right
//! in every case so a polling guest works.
//!
//! Every register write is guest input: out-of-range selectors, widths,
//! sizes and addresses are ignored or refused, never trusted.

use super::transport::{DeviceState, TransportError};
use super::{InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;
use crate::vm::bus::BusDevice;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

/// Bytes of address space each device's window takes.
pub const WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register, for ioeventfds.
pub const QUEUE_NOTIFY: u64 = 0x050;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = u32::from_le_bytes(*b"ssv\0");
const CONFIG_SPACE: u64 = 0x100;

/// Interrupt status bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

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

/// One virtio device behind its MMIO registers.
pub struct MmioTransport {
    state: DeviceState,
    interrupt: Arc<MmioInterrupt>,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
}

impl MmioTransport {
    /// `irq`: the irqfd of the device's interrupt line, if the VM has one.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: Option<EventFd>,
    ) -> Result<MmioTransport, TransportError> {
        Ok(MmioTransport {
            state: DeviceState::new(device, mem)?,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                irq,
            }),
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
        })
    }

    /// Queue `i`'s notification eventfd: register it as an ioeventfd at
    /// `base + QUEUE_NOTIFY` with datamatch `i` (32 bits).
    pub fn notify_fds(&self) -> &[EventFd] {
        self.state.notify_fds()
    }

    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    pub fn device_status(&self) -> u32 {
        self.state.status()
    }

    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }

    fn read_register(&self, offset: u64) -> u32 {
        let q = self.state.queue(self.queue_sel);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.state.device().device_type(),
            0x00c => VENDOR_ID,
            0x010 => self.state.device_features_word(self.device_features_sel),
            0x034 => q.map_or(0, |q| u32::from(q.max_size())),
            0x044 => q.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.state.status(),
            // No shared memory regions: their lengths read as all ones.
            0x0b0..=0x0bc => u32::MAX,
            // The configuration space never changes under the driver.
            0x0fc => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 => self
                .state
                .set_driver_features_word(self.driver_features_sel, v),
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 => {
                if let (Some(q), Ok(size)) =
                    (self.state.queue_for_setup(self.queue_sel), u16::try_from(v))
                {
                    // A size that is not a power of two up to the maximum is refused.
                    let _ = q.try_set_size(size);
                }
            }
            0x044 => self.state.set_queue_ready(self.queue_sel, v == 1),
            0x050 => self.state.notify(v),
            0x064 => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            0x070 => {
                let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
                self.state.set_status(v, &interrupt);
                if v == 0 {
                    self.reset_registers();
                }
            }
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 => {
                if let Some(q) = self.state.queue_for_setup(self.queue_sel) {
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

    fn reset_registers(&mut self) {
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.state.read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            // Registers are 32 bits wide; other widths read as zero.
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.state.write_config(offset - CONFIG_SPACE, data);
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

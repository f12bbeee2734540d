//! A PCI bus 0 of conventional (type 0) functions, reached through
//! configuration mechanism #1 on ports 0xcf8/0xcfc, with a host bridge at
//! 00.0 and each device's memory BAR in one MMIO window.
//!
//! Why a bus at all when virtio-mmio exists: MSI-X. A virtio-mmio device
//! has one interrupt, so all its queues' completions land on one vCPU, and
//! each costs the guest a status read and an acknowledge, both exits to the
//! VMM. Over PCI each queue has its own MSI-X vector, steered to the vCPU
//! that submitted, and nothing to read or acknowledge.
//!
//! - Configuration space: [`ConfigSpace`] holds the 256 bytes with a mask
//!   of the bits the guest may write, so BAR sizing (write all ones, read
//!   the size mask back) and read-only fields need no code per register.
//! - Devices: [`PciFunction`]; the bus serialises accesses per bus (setup
//!   and rare device-config accesses exit here; the data path does not).
//! - BARs are placed by the VMM, as firmware would; a guest that moves one
//!   is followed ([`PciWindow`] decodes by the current BAR values).

pub mod msix;

use crate::vm::bus::BusDevice;
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use std::sync::{Arc, Mutex, PoisonError};
use vmm_sys_util::eventfd::EventFd;

/// The two ports of configuration mechanism #1: CONFIG_ADDRESS at 0xcf8,
/// CONFIG_DATA at 0xcfc..0xd00.
pub const CONFIG_PORTS: u64 = 0xcf8;
pub const CONFIG_PORTS_LEN: u64 = 8;
/// Slots on bus 0.
pub const SLOTS: usize = 32;

/// Configuration-space offsets (PCI 3.0 §6.1).
pub mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const CLASS_PROG: usize = 0x09;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    pub const SUBSYSTEM_ID: usize = 0x2e;
    pub const CAPABILITIES: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3c;
}

/// COMMAND: memory space decoding and bus mastering.
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_MASTER: u16 = 1 << 2;
/// COMMAND: INTx disabled (we have no INTx to disable, but the bit is RW).
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// STATUS: a capability list starts at CAPABILITIES.
pub const STATUS_CAP_LIST: u16 = 1 << 4;
/// BAR low bits: 64-bit memory.
const BAR_MEM64: u32 = 0b100;

/// Configuration space size of a conventional function.
pub const CONFIG_SIZE: usize = 256;

/// A function's configuration space: the values and the guest-writable
/// bits. One 64-bit memory BAR (BAR0/1) at most, which is all we need.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SIZE],
    writable: [u8; CONFIG_SIZE],
    /// Size of the 64-bit memory BAR at 0x10, if any (a power of two).
    bar_size: Option<u64>,
    /// Where the next capability goes, and the previous one's next pointer.
    next_cap: usize,
    last_cap_next: Option<usize>,
}

/// Identity of a function.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Class, subclass, programming interface.
    pub class: [u8; 3],
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

impl ConfigSpace {
    pub fn new(id: Identity) -> ConfigSpace {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SIZE],
            writable: [0; CONFIG_SIZE],
            bar_size: None,
            next_cap: 0x40,
            last_cap_next: None,
        };
        c.set16(reg::VENDOR_ID, id.vendor);
        c.set16(reg::DEVICE_ID, id.device);
        c.bytes[reg::REVISION] = id.revision;
        c.bytes[reg::CLASS_PROG] = id.class[2];
        c.bytes[reg::CLASS_PROG + 1] = id.class[1];
        c.bytes[reg::CLASS_PROG + 2] = id.class[0];
        c.set16(reg::SUBSYSTEM_VENDOR_ID, id.subsystem_vendor);
        c.set16(reg::SUBSYSTEM_ID, id.subsystem);
        let command = COMMAND_MEMORY | COMMAND_MASTER | COMMAND_INTX_DISABLE;
        c.writable[reg::COMMAND..reg::COMMAND + 2].copy_from_slice(&command.to_le_bytes());
        // The interrupt line is a scratch byte for the OS.
        c.writable[reg::INTERRUPT_LINE] = 0xff;
        c
    }

    /// Gives the function a 64-bit memory BAR of `size` bytes (a power of
    /// two, at least 16) at `addr`, with memory decoding on, as firmware
    /// leaves it.
    pub fn set_bar(&mut self, addr: u64, size: u64) {
        debug_assert!(size.is_power_of_two() && size >= 16 && addr % size == 0);
        self.bar_size = Some(size);
        let mask = !(size - 1);
        self.writable[reg::BAR0..reg::BAR0 + 8].copy_from_slice(&mask.to_le_bytes());
        self.writable[reg::BAR0] &= 0xf0;
        self.set32(reg::BAR0, addr as u32 & 0xffff_fff0 | BAR_MEM64);
        self.set32(reg::BAR0 + 4, (addr >> 32) as u32);
        let command = self.get16(reg::COMMAND) | COMMAND_MEMORY;
        self.set16(reg::COMMAND, command);
    }

    /// Where the BAR is decoded now: None while memory decoding is off or
    /// the function has no BAR.
    pub fn bar(&self) -> Option<(u64, u64)> {
        let size = self.bar_size?;
        if self.get16(reg::COMMAND) & COMMAND_MEMORY == 0 {
            return None;
        }
        let low = u64::from(self.get32(reg::BAR0) & 0xffff_fff0);
        let addr = low | u64::from(self.get32(reg::BAR0 + 4)) << 32;
        Some((addr, size))
    }

    /// Appends a capability with `body` (after its id and next bytes) and
    /// `writable` bits over the same bytes; returns its offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8], writable: &[u8]) -> usize {
        let at = self.next_cap;
        let len = 2 + body.len();
        debug_assert!(at + len <= CONFIG_SIZE && writable.len() <= body.len());
        self.bytes[at] = id;
        self.bytes[at + 2..at + len].copy_from_slice(body);
        self.writable[at + 2..at + 2 + writable.len()].copy_from_slice(writable);
        match self.last_cap_next {
            Some(prev) => self.bytes[prev] = at as u8,
            None => {
                self.bytes[reg::CAPABILITIES] = at as u8;
                let status = self.get16(reg::STATUS) | STATUS_CAP_LIST;
                self.set16(reg::STATUS, status);
            }
        }
        self.last_cap_next = Some(at + 1);
        // Capabilities start dword-aligned.
        self.next_cap = (at + len + 3) & !3;
        at
    }

    /// Reads `data.len()` bytes at `offset`; beyond the space reads zero.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        super::read_image(&self.bytes, offset as u64, data);
    }

    /// Writes what the writable mask lets through.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SIZE) else {
                return;
            };
            let m = self.writable[o];
            self.bytes[o] = (self.bytes[o] & !m) | (b & m);
        }
    }

    pub fn get16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.bytes[offset], self.bytes[offset + 1]])
    }

    pub fn get32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[offset..offset + 4]);
        u32::from_le_bytes(b)
    }

    fn set16(&mut self, offset: usize, v: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn set32(&mut self, offset: usize, v: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// Turns a guest write at an MMIO address into an eventfd signal in the
/// kernel, for doorbells that must not exit to the VMM.
pub trait IoEvents: Send + Sync {
    /// Writes of any width and value at `addr` signal `fd`.
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()>;
}

impl IoEvents for VmFd {
    fn register(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(std::io::Error::from)
    }
    fn unregister(&self, fd: &EventFd, addr: u64) -> std::io::Result<()> {
        self.unregister_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(std::io::Error::from)
    }
}

/// A function on the bus.
pub trait PciFunction: Send {
    fn config(&self) -> &ConfigSpace;
    /// A configuration write (most functions pass it to
    /// [`ConfigSpace::write`] and look at what changed).
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// An access at `offset` in the function's BAR.
    fn read_bar(&mut self, offset: u64, data: &mut [u8]);
    fn write_bar(&mut self, offset: u64, data: &[u8]);
}

/// The host bridge at 00.0: nothing but an identity, which Linux looks for
/// before it trusts mechanism #1 on a machine without DMI.
pub struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    pub fn new() -> HostBridge {
        HostBridge {
            // Red Hat's generic host bridge id (as QEMU's), class 06.00.00.
            config: ConfigSpace::new(Identity {
                vendor: 0x1b36,
                device: 0x0008,
                revision: 0,
                class: [0x06, 0x00, 0x00],
                subsystem_vendor: 0,
                subsystem: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn read_bar(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_bar(&mut self, _: u64, _: &[u8]) {}
}

pub type SharedFunction = Arc<Mutex<dyn PciFunction>>;

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("bus 0 is full: {SLOTS} slots")]
    Full,
}

/// Bus 0: a function (function 0 only) per slot.
#[derive(Clone, Default)]
pub struct PciBus {
    slots: Vec<SharedFunction>,
}

impl PciBus {
    /// A bus with its host bridge at 00.0.
    pub fn new() -> PciBus {
        PciBus {
            slots: vec![Arc::new(Mutex::new(HostBridge::new()))],
        }
    }

    /// The slot the next device will take.
    pub fn next_slot(&self) -> usize {
        self.slots.len()
    }

    pub fn add(&mut self, f: SharedFunction) -> Result<usize, PciError> {
        if self.slots.len() >= SLOTS {
            return Err(PciError::Full);
        }
        self.slots.push(f);
        Ok(self.slots.len() - 1)
    }

    fn slot(&self, slot: usize) -> Option<std::sync::MutexGuard<'_, dyn PciFunction + 'static>> {
        let f = self.slots.get(slot)?;
        Some(f.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Configuration mechanism #1: CONFIG_ADDRESS selects bus, device,
/// function and register; CONFIG_DATA accesses it, at any width.
pub struct ConfigPorts {
    bus: PciBus,
    address: u32,
}

const ADDRESS_ENABLE: u32 = 1 << 31;

impl ConfigPorts {
    pub fn new(bus: PciBus) -> ConfigPorts {
        ConfigPorts { bus, address: 0 }
    }

    /// The slot and register offset CONFIG_ADDRESS selects on bus 0,
    /// function 0; None for anything else (which reads as no device).
    fn selected(&self) -> Option<(usize, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        let slot = (a >> 11) & 0x1f;
        let function = (a >> 8) & 0x7;
        (a & ADDRESS_ENABLE != 0 && bus == 0 && function == 0)
            .then_some((slot as usize, (a & 0xfc) as usize))
    }
}

impl BusDevice for ConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => {
                let byte = offset as usize - 4;
                let f = self
                    .selected()
                    .and_then(|(s, r)| Some((self.bus.slot(s)?, r)));
                match f {
                    Some((f, r)) => f.config().read(r + byte, data),
                    // No device: all ones, which is how the guest tells.
                    None => data.fill(0xff),
                }
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 => {
                if let Ok(word) = <[u8; 4]>::try_from(data) {
                    self.address = u32::from_le_bytes(word);
                }
            }
            4..=7 => {
                let byte = offset as usize - 4;
                if let Some((s, r)) = self.selected() {
                    if let Some(mut f) = self.bus.slot(s) {
                        f.write_config(r + byte, data);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The MMIO window the BARs live in: an access goes to the function whose
/// BAR holds it now.
pub struct PciWindow {
    bus: PciBus,
    base: u64,
}

impl PciWindow {
    /// `base`: where the window starts (bus offsets are relative to it).
    pub fn new(bus: PciBus, base: u64) -> PciWindow {
        PciWindow { bus, base }
    }

    fn access(&self, offset: u64, len: usize, f: impl FnOnce(&mut dyn PciFunction, u64)) -> bool {
        let Some(addr) = self.base.checked_add(offset) else {
            return false;
        };
        for slot in 0..self.bus.slots.len() {
            let Some(mut dev) = self.bus.slot(slot) else {
                continue;
            };
            if let Some((bar, size)) = dev.config().bar() {
                let end = addr.checked_add(len as u64);
                if addr >= bar && end.is_some_and(|e| e <= bar.saturating_add(size)) {
                    f(&mut *dev, addr - bar);
                    return true;
                }
            }
        }
        false
    }
}

impl BusDevice for PciWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len();
        if !self.access(offset, len, |d, o| d.read_bar(o, data)) {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.access(offset, data.len(), |d, o| d.write_bar(o, data));
    }
}

#[cfg(test)]
mod tests;

//! The virtio-pci transport, modern only (virtio 1.2 §4.1): a PCI function
//! whose one 64-bit memory BAR holds the common configuration, the ISR,
//! the device configuration, one notification address per queue and the
//! MSI-X table, each found through a vendor capability.
//!
//! Why PCI next to MMIO: each queue gets its own MSI-X vector, so the guest
//! steers a queue's completions to the vCPU that uses it and acknowledges
//! nothing (see [`crate::devices::pci`]). Notifications arrive on the
//! queues' eventfds through ioeventfds the transport registers at the
//! BAR's current address ([`IoEvents`]); a notification that exits here
//! instead is written to the same eventfd. Interrupts go out as MSI-X
//! messages ([`MsiSink`]); the device has no INTx pin, so a driver that
//! cannot enable MSI-X gets no interrupts.
//!
//! Not offered: the PCI configuration access capability (a window onto the
//! BAR through configuration space, for firmware that cannot map BARs); no
//! driver we run uses it.
//!
//! Every access is guest input: widths and offsets that match no field,
//! out-of-range selectors and vectors are ignored or read as none.

use super::transport::{DeviceState, TransportError};
use super::{InterruptKind, VirtioDevice, VirtioInterrupt};
use crate::devices::pci::msix::{self, MsiSink, Msix};
use crate::devices::pci::{ConfigSpace, Identity, IoEvents, PciFunction};
use crate::memory::GuestMemory;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use virtio_queue::QueueT;

/// Red Hat's vendor id, which virtio devices carry; modern device ids are
/// 0x1040 + the virtio device type.
pub const VENDOR: u16 = 0x1af4;
const DEVICE_ID_BASE: u16 = 0x1040;
/// The BAR: six 4 KiB regions.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
/// Queue `i` is notified at `NOTIFY + i * NOTIFY_MULTIPLIER`.
pub const NOTIFY: u64 = 0x3000;
pub const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE: u64 = 0x4000;
const MSIX_PBA: u64 = 0x5000;
const REGION: u64 = 0x1000;
/// A vector field's value for "no interrupt".
pub const NO_VECTOR: u16 = 0xffff;

/// Capability `cfg_type`s (virtio 1.2 §4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// PCI capability id of a vendor-specific capability.
const CAP_VENDOR: u8 = 0x09;

/// Common configuration fields (virtio 1.2 §4.1.4.3), by offset.
mod common {
    pub const DEVICE_FEATURE_SELECT: u64 = 0x00;
    pub const DEVICE_FEATURE: u64 = 0x04;
    pub const DRIVER_FEATURE_SELECT: u64 = 0x08;
    pub const DRIVER_FEATURE: u64 = 0x0c;
    pub const CONFIG_MSIX_VECTOR: u64 = 0x10;
    pub const NUM_QUEUES: u64 = 0x12;
    pub const DEVICE_STATUS: u64 = 0x14;
    pub const CONFIG_GENERATION: u64 = 0x15;
    pub const QUEUE_SELECT: u64 = 0x16;
    pub const QUEUE_SIZE: u64 = 0x18;
    pub const QUEUE_MSIX_VECTOR: u64 = 0x1a;
    pub const QUEUE_ENABLE: u64 = 0x1c;
    pub const QUEUE_NOTIFY_OFF: u64 = 0x1e;
    pub const QUEUE_DESC: u64 = 0x20;
    pub const QUEUE_DRIVER: u64 = 0x28;
    pub const QUEUE_DEVICE: u64 = 0x30;
    /// Size of the structure, `queue_notify_data` and `queue_reset` (both
    /// not offered, reading zero) included.
    pub const LEN: usize = 0x3c;
}

/// ISR bits: a used buffer, a configuration change.
const ISR_QUEUE: u8 = 1;
const ISR_CONFIG: u8 = 2;

/// The device's interrupts: the MSI-X table, which vector each source
/// uses, and the ISR (kept right for a driver that reads it).
pub struct PciInterrupt {
    msix: Mutex<Msix>,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    isr: AtomicU8,
    sink: Arc<dyn MsiSink>,
}

impl PciInterrupt {
    fn msix(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, msgs: Vec<msix::MsiMessage>) {
        for m in msgs {
            if let Err(e) = self.sink.send(m) {
                log::warn!("virtio-pci: delivering an MSI: {e}");
            }
        }
    }

    /// A vector the driver asked for: kept if the table has it, else the
    /// field reads NO_VECTOR, which tells the driver it was refused.
    fn checked(&self, vector: u16) -> u16 {
        if vector < self.msix().vectors() {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn reset_vectors(&self) {
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        for v in &self.queue_vectors {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
        self.isr.store(0, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let (bit, vector) = match kind {
            InterruptKind::Queue(i) => (
                ISR_QUEUE,
                self.queue_vectors
                    .get(usize::from(i))
                    .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst)),
            ),
            InterruptKind::Config => (ISR_CONFIG, self.config_vector.load(Ordering::SeqCst)),
        };
        self.isr.fetch_or(bit, Ordering::SeqCst);
        if vector == NO_VECTOR {
            return Ok(());
        }
        let msg = self.msix().fire(vector);
        match msg {
            Some(m) => self.sink.send(m),
            None => Ok(()),
        }
    }
}

/// One virtio device as a PCI function.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    /// Offset of the MSI-X capability in configuration space.
    msix_cap: usize,
    state: DeviceState,
    interrupt: Arc<PciInterrupt>,
    ioevents: Option<Arc<dyn IoEvents>>,
    /// Where the queues' ioeventfds are registered now.
    notify_registered: Option<u64>,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u16,
}

/// Why a virtio-pci device could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PciTransportError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("registering queue {queue}'s ioeventfd at {addr:#x}: {source}")]
    IoEvent {
        queue: usize,
        addr: u64,
        #[source]
        source: std::io::Error,
    },
}

impl VirtioPciDevice {
    /// `bar`: where the BAR is placed (aligned to [`BAR_SIZE`]); `ioevents`
    /// registers the queues' notification addresses (None: every
    /// notification exits to the VMM).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        bar: u64,
        sink: Arc<dyn MsiSink>,
        ioevents: Option<Arc<dyn IoEvents>>,
    ) -> Result<VirtioPciDevice, PciTransportError> {
        let device_type = device.device_type();
        let state = DeviceState::new(device, mem)?;
        let queues = state.num_queues();
        // One vector per queue and one for configuration changes.
        let msix = Msix::new(queues as u16 + 1);
        let mut config = ConfigSpace::new(Identity {
            vendor: VENDOR,
            device: DEVICE_ID_BASE + device_type as u16,
            revision: 1,
            class: class_of(device_type),
            subsystem_vendor: VENDOR,
            subsystem: 0x40,
        });
        config.set_bar(bar, BAR_SIZE);
        let (body, writable) = msix.capability(MSIX_TABLE as u32, MSIX_PBA as u32);
        let msix_cap = config.add_capability(msix::CAP_ID, &body, &writable);
        for (cfg_type, offset, extra) in [
            (CAP_COMMON, COMMON, None),
            (CAP_NOTIFY, NOTIFY, Some(NOTIFY_MULTIPLIER)),
            (CAP_ISR, ISR, None),
            (CAP_DEVICE, DEVICE, None),
        ] {
            config.add_capability(CAP_VENDOR, &virtio_cap(cfg_type, offset, extra), &[]);
        }
        let interrupt = Arc::new(PciInterrupt {
            msix: Mutex::new(msix),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            isr: AtomicU8::new(0),
            sink,
        });
        let mut dev = VirtioPciDevice {
            config,
            msix_cap,
            state,
            interrupt,
            ioevents,
            notify_registered: None,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
        };
        dev.follow_bar()?;
        Ok(dev)
    }

    pub fn device_status(&self) -> u32 {
        self.state.status()
    }

    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }

    /// Moves the queues' ioeventfds to where the BAR is decoded now.
    fn follow_bar(&mut self) -> Result<(), PciTransportError> {
        let want = self.config.bar().map(|(addr, _)| addr + NOTIFY);
        if want == self.notify_registered {
            return Ok(());
        }
        let Some(io) = &self.ioevents else {
            return Ok(());
        };
        let at = |base: u64, q: usize| base + q as u64 * u64::from(NOTIFY_MULTIPLIER);
        if let Some(old) = self.notify_registered.take() {
            for (q, fd) in self.state.notify_fds().iter().enumerate() {
                if let Err(e) = io.unregister(fd, at(old, q)) {
                    log::warn!("virtio-pci: unregistering queue {q}'s ioeventfd: {e}");
                }
            }
        }
        if let Some(new) = want {
            for (q, fd) in self.state.notify_fds().iter().enumerate() {
                let addr = at(new, q);
                io.register(fd, addr)
                    .map_err(|source| PciTransportError::IoEvent {
                        queue: q,
                        addr,
                        source,
                    })?;
            }
            self.notify_registered = Some(new);
        }
        Ok(())
    }

    fn read_common(&self, offset: u64, data: &mut [u8]) {
        let q = self.state.queue(u32::from(self.queue_sel));
        let qv = self
            .interrupt
            .queue_vectors
            .get(usize::from(self.queue_sel))
            .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst));
        let mut c = [0u8; common::LEN];
        let mut put = |at: u64, bytes: &[u8]| {
            c[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        };
        put(
            common::DEVICE_FEATURE_SELECT,
            &self.device_features_sel.to_le_bytes(),
        );
        put(
            common::DEVICE_FEATURE,
            &self
                .state
                .device_features_word(self.device_features_sel)
                .to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE_SELECT,
            &self.driver_features_sel.to_le_bytes(),
        );
        put(
            common::DRIVER_FEATURE,
            &self
                .state
                .driver_features_word(self.driver_features_sel)
                .to_le_bytes(),
        );
        put(
            common::CONFIG_MSIX_VECTOR,
            &self
                .interrupt
                .config_vector
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        put(
            common::NUM_QUEUES,
            &(self.state.num_queues() as u16).to_le_bytes(),
        );
        put(common::DEVICE_STATUS, &[self.state.status() as u8]);
        // The configuration space never changes under the driver.
        put(common::CONFIG_GENERATION, &[0]);
        put(common::QUEUE_SELECT, &self.queue_sel.to_le_bytes());
        if let Some(q) = q {
            put(common::QUEUE_SIZE, &q.size().to_le_bytes());
            put(common::QUEUE_MSIX_VECTOR, &qv.to_le_bytes());
            put(common::QUEUE_ENABLE, &u16::from(q.ready()).to_le_bytes());
            put(common::QUEUE_NOTIFY_OFF, &self.queue_sel.to_le_bytes());
            put(common::QUEUE_DESC, &q.desc_table().to_le_bytes());
            put(common::QUEUE_DRIVER, &q.avail_ring().to_le_bytes());
            put(common::QUEUE_DEVICE, &q.used_ring().to_le_bytes());
        }
        crate::devices::read_image(&c, offset, data);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut v = [0u8; 8];
        if data.len() > 8 {
            return;
        }
        v[..data.len()].copy_from_slice(data);
        let v64 = u64::from_le_bytes(v);
        let (v32, v16) = (v64 as u32, v64 as u16);
        let sel = u32::from(self.queue_sel);
        match (offset, data.len()) {
            (common::DEVICE_FEATURE_SELECT, 4) => self.device_features_sel = v32,
            (common::DRIVER_FEATURE_SELECT, 4) => self.driver_features_sel = v32,
            (common::DRIVER_FEATURE, 4) => self
                .state
                .set_driver_features_word(self.driver_features_sel, v32),
            (common::CONFIG_MSIX_VECTOR, 2) => {
                let v = self.interrupt.checked(v16);
                self.interrupt.config_vector.store(v, Ordering::SeqCst);
            }
            (common::DEVICE_STATUS, 1) => {
                let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
                self.state.set_status(u32::from(data[0]), &interrupt);
                if data[0] == 0 {
                    self.device_features_sel = 0;
                    self.driver_features_sel = 0;
                    self.queue_sel = 0;
                    self.interrupt.reset_vectors();
                }
            }
            (common::QUEUE_SELECT, 2) => self.queue_sel = v16,
            (common::QUEUE_SIZE, 2) => {
                if let Some(q) = self.state.queue_for_setup(sel) {
                    // A size that is not a power of two up to the maximum is refused.
                    let _ = q.try_set_size(v16);
                }
            }
            (common::QUEUE_MSIX_VECTOR, 2) => {
                let v = self.interrupt.checked(v16);
                if let Some(slot) = self
                    .interrupt
                    .queue_vectors
                    .get(usize::from(self.queue_sel))
                {
                    slot.store(v, Ordering::SeqCst);
                }
            }
            (common::QUEUE_ENABLE, 2) => self.state.set_queue_ready(sel, v16 == 1),
            (o @ common::QUEUE_DESC..=0x37, 4 | 8) if o % 4 == 0 => {
                let Some(q) = self.state.queue_for_setup(sel) else {
                    return;
                };
                let (low, high) = match (o % 8, data.len()) {
                    (0, 8) => (Some(v32), Some((v64 >> 32) as u32)),
                    (0, _) => (Some(v32), None),
                    (4, 4) => (None, Some(v32)),
                    _ => return,
                };
                match o & !7 {
                    common::QUEUE_DESC => q.set_desc_table_address(low, high),
                    common::QUEUE_DRIVER => q.set_avail_ring_address(low, high),
                    _ => q.set_used_ring_address(low, high),
                }
            }
            _ => log::debug!(
                "virtio-pci: {}-byte write to common config {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

/// A virtio vendor capability's body after its id and next bytes.
fn virtio_cap(cfg_type: u8, offset: u64, notify_multiplier: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if notify_multiplier.is_some() { 20 } else { 16 };
    let mut b = vec![cap_len, cfg_type, 0 /* bar */, 0 /* id */, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(REGION as u32).to_le_bytes());
    if let Some(m) = notify_multiplier {
        b.extend_from_slice(&m.to_le_bytes());
    }
    b
}

/// PCI class of a virtio device type: a block device is mass storage.
fn class_of(device_type: u32) -> [u8; 3] {
    match device_type {
        super::TYPE_BLOCK => [0x01, 0x00, 0x00],
        _ => [0xff, 0x00, 0x00],
    }
}

impl PciFunction for VirtioPciDevice {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let control = self.config.get16(self.msix_cap + 2);
        let due = self.interrupt.msix().set_control(control);
        self.interrupt.send(due);
        if let Err(e) = self.follow_bar() {
            log::warn!("virtio-pci: {e}; its notifications now exit to the VMM");
        }
    }

    fn read_bar(&mut self, offset: u64, data: &mut [u8]) {
        let at = offset % REGION;
        match offset - at {
            COMMON => self.read_common(at, data),
            ISR => {
                data.fill(0);
                if let Some(b) = data.first_mut() {
                    // Reading the ISR acknowledges it.
                    *b = self.interrupt.isr.swap(0, Ordering::SeqCst);
                }
            }
            DEVICE => self.state.read_config(at, data),
            MSIX_TABLE => self.interrupt.msix().read_table(at, data),
            MSIX_PBA => self.interrupt.msix().read_pba(at, data),
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, offset: u64, data: &[u8]) {
        let at = offset % REGION;
        match offset - at {
            COMMON => self.write_common(at, data),
            DEVICE => self.state.write_config(at, data),
            NOTIFY => self
                .state
                .notify((at / u64::from(NOTIFY_MULTIPLIER)) as u32),
            MSIX_TABLE => {
                let due = self.interrupt.msix().write_table(at, data);
                self.interrupt.send(due);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;

//! MSI-X (PCI 3.0 §6.8.2): a table of messages the guest programs, one per
//! vector, each maskable, with a pending bit for what fired while masked.
//!
//! A message is delivered by an [`MsiSink`]: under KVM the VM fd's
//! KVM_SIGNAL_MSI, which hands the address and data to the in-kernel local
//! APICs without a GSI route to keep in step with the table.

use kvm_ioctls::VmFd;

/// Capability id of MSI-X.
pub const CAP_ID: u8 = 0x11;
/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: usize = 16;
/// Message control: MSI-X enable and function mask.
pub const CONTROL_ENABLE: u16 = 1 << 15;
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the entry is masked.
const VECTOR_MASKED: u8 = 1;
/// Offset of vector control in an entry.
const VECTOR_CONTROL: usize = 12;

/// An interrupt message as the guest programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// Where messages go.
pub trait MsiSink: Send + Sync {
    fn send(&self, msg: MsiMessage) -> std::io::Result<()>;
}

impl MsiSink for VmFd {
    fn send(&self, msg: MsiMessage) -> std::io::Result<()> {
        let m = kvm_bindings::kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        // 0: the guest had the interrupt blocked (e.g. an APIC disabled);
        // that is the guest's business, not an error.
        self.signal_msi(m).map(drop).map_err(std::io::Error::from)
    }
}

/// A function's MSI-X table and pending bits.
pub struct Msix {
    table: Vec<[u8; ENTRY_SIZE]>,
    pending: Vec<bool>,
    control: u16,
}

impl Msix {
    /// `vectors` entries (1..=2048), all masked, MSI-X disabled: the state
    /// after a reset.
    pub fn new(vectors: u16) -> Msix {
        let n = usize::from(vectors.clamp(1, 2048));
        let mut entry = [0u8; ENTRY_SIZE];
        entry[VECTOR_CONTROL] = VECTOR_MASKED;
        Msix {
            table: vec![entry; n],
            pending: vec![false; n],
            control: 0,
        }
    }

    pub fn vectors(&self) -> u16 {
        self.table.len() as u16
    }

    /// The capability's body after its id and next bytes (message control,
    /// table and PBA offsets, both in BAR 0) and its writable bits: only
    /// enable and function mask.
    pub fn capability(&self, table_offset: u32, pba_offset: u32) -> ([u8; 10], [u8; 2]) {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset & !7).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset & !7).to_le_bytes());
        let writable = (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes();
        (body, writable)
    }

    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// The guest wrote message control; returns what was pending and may
    /// now be delivered.
    pub fn set_control(&mut self, control: u16) -> Vec<MsiMessage> {
        self.control = control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        self.due()
    }

    fn masked(&self, v: usize) -> bool {
        self.control & CONTROL_FUNCTION_MASK != 0
            || self.table[v][VECTOR_CONTROL] & VECTOR_MASKED != 0
    }

    fn message(&self, v: usize) -> MsiMessage {
        let e = &self.table[v];
        let word = |o: usize| u32::from_le_bytes([e[o], e[o + 1], e[o + 2], e[o + 3]]);
        MsiMessage {
            address: u64::from(word(0)) | u64::from(word(4)) << 32,
            data: word(8),
        }
    }

    /// Pending vectors that are no longer masked: their messages, and their
    /// pending bits cleared.
    fn due(&mut self) -> Vec<MsiMessage> {
        if !self.enabled() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for v in 0..self.table.len() {
            if self.pending[v] && !self.masked(v) {
                self.pending[v] = false;
                out.push(self.message(v));
            }
        }
        out
    }

    /// The device raises `vector`: its message if it can go now; if masked
    /// it is left pending. Nothing for a vector outside the table or while
    /// MSI-X is off.
    pub fn fire(&mut self, vector: u16) -> Option<MsiMessage> {
        let v = usize::from(vector);
        if !self.enabled() || v >= self.table.len() {
            return None;
        }
        if self.masked(v) {
            self.pending[v] = true;
            return None;
        }
        Some(self.message(v))
    }

    /// Table bytes at `offset`; outside the table reads zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64) as usize;
            *b = self
                .table
                .get(o / ENTRY_SIZE)
                .map_or(0, |e| e[o % ENTRY_SIZE]);
        }
    }

    /// The guest writes the table; returns messages an unmask made due.
    /// Of vector control only the mask bit is writable.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<MsiMessage> {
        for (i, &b) in data.iter().enumerate() {
            let o = offset.saturating_add(i as u64) as usize;
            if let Some(e) = self.table.get_mut(o / ENTRY_SIZE) {
                e[o % ENTRY_SIZE] = match o % ENTRY_SIZE {
                    VECTOR_CONTROL => b & VECTOR_MASKED,
                    13..=15 => 0,
                    _ => b,
                };
            }
        }
        self.due()
    }

    /// Pending-bit array bytes at `offset` (read-only).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = offset.saturating_add(i as u64).saturating_mul(8) as usize;
            *b = (0..8)
                .filter(|bit| self.pending.get(first + bit).copied().unwrap_or(false))
                .fold(0, |acc, bit| acc | 1 << bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(m: &mut Msix, v: u64, address: u64, data: u32) -> Vec<MsiMessage> {
        let base = v * ENTRY_SIZE as u64;
        m.write_table(base, &(address as u32).to_le_bytes());
        m.write_table(base + 4, &((address >> 32) as u32).to_le_bytes());
        m.write_table(base + 8, &data.to_le_bytes());
        m.write_table(base + 12, &0u32.to_le_bytes())
    }

    #[test]
    fn a_vector_fires_once_enabled_and_unmasked_and_what_fired_masked_waits() {
        let mut m = Msix::new(3);
        // Disabled: nothing, and nothing pending either.
        assert_eq!(m.fire(1), None);
        assert!(program(&mut m, 1, 0xfee0_1000, 0x41).is_empty());
        assert_eq!(m.fire(1), None);
        assert!(m.set_control(CONTROL_ENABLE).is_empty());
        let msg = MsiMessage {
            address: 0xfee0_1000,
            data: 0x41,
        };
        assert_eq!(m.fire(1), Some(msg));
        // Vector 2 is still masked (the reset state): it goes pending.
        assert_eq!(m.fire(2), None);
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b100);
        // Unmasking delivers it, once.
        let due = program(&mut m, 2, 0xfee0_0000, 0x42);
        assert_eq!(
            due,
            vec![MsiMessage {
                address: 0xfee0_0000,
                data: 0x42
            }]
        );
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        // The function mask holds every vector; clearing it delivers.
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(m.fire(1), None);
        assert_eq!(m.set_control(CONTROL_ENABLE), vec![msg]);
        // Outside the table: nothing.
        assert_eq!(m.fire(3), None);
        assert_eq!(m.fire(u16::MAX), None);
    }

    #[test]
    fn the_capability_reads_the_table_size_and_offsets() {
        let m = Msix::new(5);
        let (body, writable) = m.capability(0x4000, 0x5000);
        assert_eq!(u16::from_le_bytes([body[0], body[1]]), 4, "N-1");
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x4000);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x5000);
        assert_eq!(u16::from_le_bytes(writable), 0xc000);
    }

    #[test]
    fn vector_control_keeps_only_the_mask_bit_and_reads_back() {
        let mut m = Msix::new(2);
        m.write_table(16 + 12, &[0xff, 0xff, 0xff, 0xff]);
        let mut d = [0u8; 4];
        m.read_table(16 + 12, &mut d);
        assert_eq!(d, [1, 0, 0, 0]);
        // Beyond the table: reads zero, writes go nowhere.
        m.write_table(32, &[9; 16]);
        m.read_table(32, &mut d);
        assert_eq!(d, [0; 4]);
        m.read_table(u64::MAX - 1, &mut d);
    }
}

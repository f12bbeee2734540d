//! Address ranges the guest's exits are dispatched to: one bus for MMIO,
//! one for x86 port I/O. A device sees offsets into its own range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A device on a bus. Accesses come from vCPU threads; the bus serialises
/// them per device.
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset` in the range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest wrote `data` at `offset` in the range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Non-overlapping `[base, base + len)` ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::BadRange { base, len }),
        };
        // The nearest range at or below `end - 1` is the only one that can overlap.
        if let Some((&other, e)) = self.ranges.range(..end).next_back() {
            if other + e.len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// The device whose range holds the whole access, and the offset in it.
    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (&base, e) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= e.len).then_some((e, offset))
    }

    /// Reads from the device at `addr`; false (and `data` untouched) when no
    /// device holds the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                let mut dev = e.device.lock().unwrap_or_else(PoisonError::into_inner);
                dev.read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Writes to the device at `addr`; false when no device holds the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                let mut dev = e.device.lock().unwrap_or_else(PoisonError::into_inner);
                dev.write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access it saw.
    #[derive(Default)]
    struct Probe {
        last: Option<(u64, Vec<u8>)>,
    }
    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_holding_them_at_their_offset() {
        let a = Arc::new(Mutex::new(Probe::default()));
        let b = Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x100, a.clone()).unwrap();
        bus.insert(0x1100, 0x10, b.clone()).unwrap();
        assert!(bus.write(0x1010, &[1, 2]));
        assert_eq!(a.lock().unwrap().last, Some((0x10, vec![1, 2])));
        assert!(bus.write(0x110c, &[7; 4]));
        assert_eq!(b.lock().unwrap().last, Some((0xc, vec![7; 4])));
        let mut d = [0u8; 4];
        assert!(bus.read(0x10fc, &mut d));
        assert_eq!(d, [0xfc; 4]);
        // Straddling the end of a range, or outside every range: nobody.
        assert!(!bus.write(0x110e, &[0; 4]));
        assert!(!bus.read(0xfff, &mut d));
        assert!(!bus.read(0x1110, &mut d));
        assert!(!bus.read(u64::MAX - 1, &mut d));
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let p = || Arc::new(Mutex::new(Probe::default()));
        let mut bus = Bus::new();
        bus.insert(0x100, 0x100, p()).unwrap();
        assert!(bus.insert(0x1ff, 1, p()).is_err());
        assert!(bus.insert(0x80, 0x81, p()).is_err());
        assert!(bus.insert(0x0, 0x1000, p()).is_err());
        assert!(bus.insert(0x300, 0, p()).is_err());
        assert!(bus.insert(u64::MAX, 2, p()).is_err());
        bus.insert(0x80, 0x80, p()).unwrap();
        bus.insert(0x200, 0x80, p()).unwrap();
    }
}

//! The hardware-reduced ACPI sleep registers (FADT `SLEEP_CONTROL_REG` and
//! `SLEEP_STATUS_REG`), one byte each on port I/O. The kernel powers off by
//! writing the `_S5_` sleep type with SLP_EN to the control register; that
//! stops the VM as a shutdown. Other sleep states are not offered (the DSDT
//! names only `_S5_`), so any other write is ignored.

use crate::vm::bus::BusDevice;
use crate::vm::{Control, VmExit};
use std::sync::Arc;

/// Sleep control register; the status register follows it.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
pub const SLEEP_STATUS_PORT: u16 = SLEEP_CONTROL_PORT + 1;
/// Ports the device answers on.
pub const PORTS: u64 = 2;
/// SLP_TYP of `_S5_` (soft off), as the DSDT gives it.
pub const SLP_TYP_S5: u8 = 5;

/// Sleep control: SLP_TYP in bits 2..=4, SLP_EN in bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;
const SLP_EN: u8 = 1 << 5;

pub struct SleepRegisters {
    control: Arc<Control>,
}

impl SleepRegisters {
    pub fn new(control: Arc<Control>) -> SleepRegisters {
        SleepRegisters { control }
    }
}

/// Whether a byte written to the control register asks for soft off.
pub fn is_power_off(value: u8) -> bool {
    value & SLP_EN != 0 && (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_S5
}

impl BusDevice for SleepRegisters {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: never woken (WAK_STS clear); control reads as zero.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first().copied().is_some_and(is_power_off) {
            self.control.request_exit(VmExit::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_slp_en_with_the_s5_type_powers_off() {
        // What Linux writes: (SLP_TYP << 2) & 0x1c | SLP_EN.
        assert!(is_power_off((SLP_TYP_S5 << 2) | SLP_EN));
        assert!(!is_power_off(SLP_TYP_S5 << 2), "SLP_EN clear");
        assert!(!is_power_off((3 << 2) | SLP_EN), "S3");
        assert!(!is_power_off(0));
        for v in 0..=u8::MAX {
            assert_eq!(is_power_off(v), v & 0x20 != 0 && v & 0x1c == 0x14, "{v:#x}");
        }
    }
}

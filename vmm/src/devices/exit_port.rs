//! A one-byte port the guest writes its exit code to: the VM stops with
//! [`VmExit::Guest`]. Test guests use it to end the VM (with the in-kernel
//! irqchip, HLT does not leave KVM). On x86 it sits at port 0x501, where
//! QEMU's isa-debug-exit device is by default.

use crate::vm::bus::BusDevice;
use crate::vm::{Control, VmExit};
use std::sync::Arc;

pub const EXIT_PORT: u64 = 0x501;

pub struct ExitPort {
    control: Arc<Control>,
}

impl ExitPort {
    pub fn new(control: Arc<Control>) -> ExitPort {
        ExitPort { control }
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.control.request_exit(VmExit::Guest(code));
        }
    }
}

//! The serial console: a 16550 UART (vm-superio) on x86's COM1 ports
//! (0x3f8, IRQ 4), whose output goes to a file or stdout. The Linux guest
//! finds it with `console=ttyS0`. Input is not wired yet.

use crate::vm::bus::BusDevice;
use std::io::Write;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's port range and interrupt line.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// The UART's interrupt: an irqfd on its line, or nothing when the VM has
/// no interrupt controller (the guest then polls the line status register).
pub struct IrqLine(Option<EventFd>);

impl Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        match &self.0 {
            Some(fd) => fd.write(1),
            None => Ok(()),
        }
    }
}

pub struct Serial {
    uart: Uart<IrqLine, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(out: Box<dyn Write + Send>, irq: Option<EventFd>) -> Serial {
        Serial {
            uart: Uart::new(IrqLine(irq), out),
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(off, b) {
                log::warn!("serial: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_the_data_register_reach_the_output_and_raise_the_irq() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(Box::new(sink.clone()), Some(irq.try_clone().unwrap()));
        // Transmit-empty interrupts on, as a Linux driver does.
        s.write(1, &[0x02]);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert!(irq.read().unwrap() >= 1);
        // Line status: transmitter empty, so a polling guest may send.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x20, 0x20);
    }
}

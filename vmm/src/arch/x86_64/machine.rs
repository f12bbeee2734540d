//! What every x86_64 VM gets before its vCPUs exist.

use kvm_ioctls::VmFd;

/// KVM needs three pages of guest address space for a TSS when it emulates
/// real mode; they go just under the BIOS at the top of 4 GiB, where
/// nothing else is.
const TSS_ADDR: usize = 0xfffb_d000;

/// The real-mode TSS, the in-kernel PIC/IOAPIC/LAPIC (irqfds need them)
/// and the PIT.
pub fn setup_vm(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    vm.set_tss_address(TSS_ADDR)?;
    vm.create_irq_chip()?;
    vm.create_pit2(kvm_bindings::kvm_pit_config {
        flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    })?;
    Ok(())
}

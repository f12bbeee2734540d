//! x86_64: real mode for the test guest, the Linux 64-bit boot protocol.
//!
//! Booting Linux takes two calls:
//! 1. [`linux::load`] once, after guest memory exists: kernel, initrd,
//!    command line, zero page, page tables, GDT and ACPI tables.
//! 2. [`regs::setup_vcpu`] for each vCPU, after `create_irq_chip` and
//!    `create_pit2` and after the vCPU is created: CPUID, MSRs, FPU, LAPIC,
//!    and for vCPU 0 the long-mode registers at the kernel's entry.
//!
//! Guest RAM must be laid out by [`layout::ram_ranges`] (by
//! [`realmode::ram_ranges`] for a real-mode guest, whose devices sit below
//! 1 MiB). [`machine::setup_vm`] makes the irqchip and PIT either way.

pub mod acpi;
pub mod acpi_pm;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod linux;
pub mod machine;
pub mod paging;
pub mod realmode;
pub mod regs;

/// Why a boot could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the {0} to guest memory: {1}")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error("cannot read the {0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("cannot load the kernel: {0}")]
    KernelLoad(#[source] linux_loader::loader::Error),
    #[error("unsupported kernel: {0}")]
    Kernel(&'static str),
    #[error("invalid command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("the command line takes {len} bytes with its NUL; the limit is {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("an initrd of {size} bytes does not fit between the kernel's end {kernel_end:#x} and {limit:#x}")]
    InitrdDoesNotFit {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("guest layout: {0}")]
    Layout(&'static str),
    #[error("{0} vCPUs: 1 to {max} are supported", max = layout::MAX_VCPUS)]
    VcpuCount(usize),
    #[error("KVM did not take MSR {0:#x}")]
    MsrRejected(u32),
    #[error("KVM {0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

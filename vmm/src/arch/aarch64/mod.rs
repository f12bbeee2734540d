//! aarch64: Image + FDT boot, GICv3, PSCI.
//!
//! The layout, the device tree and the boot placement are pure and tested
//! on any host; what calls KVM (and linux-loader's `Image` loader, built
//! for aarch64 only) is compiled on aarch64 alone.
//!
//! Order of calls on aarch64 hosts:
//! 1. [`boot::load`]: kernel, initrd and device tree into guest memory;
//! 2. create every vCPU, then [`regs::setup_vcpu`] on each
//!    (KVM_ARM_VCPU_INIT with in-kernel PSCI, secondaries powered off; the
//!    boot vCPU gets PC, X0 and PSTATE from the `BootSetup` of step 1);
//! 3. [`gic::create`] once all vCPUs exist, before any runs.
//!
//! Interrupts: the UART and each virtio-mmio device have an SPI number
//! ([`layout`]); that number is the GSI for KVM's irqfd.
//!
//! Guest RAM must be laid out by [`layout::ram_ranges`].

pub mod boot;
pub mod fdt;
#[cfg(target_arch = "aarch64")]
pub mod gic;
pub mod layout;
pub mod regs;

/// Why a boot could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the {0} to guest memory: {1}")]
    GuestWrite(&'static str, #[source] vm_memory::GuestMemoryError),
    #[error("cannot read the {0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[cfg(target_arch = "aarch64")]
    #[error("cannot load the kernel: {0}")]
    KernelLoad(#[source] linux_loader::loader::Error),
    #[error("not an arm64 Image: {0}")]
    Kernel(&'static str),
    #[error("cannot build the device tree: {0}")]
    Fdt(#[source] vm_fdt::Error),
    #[error("the device tree takes {0} bytes; at most {max} are allowed", max = layout::FDT_MAX_SIZE)]
    FdtTooLarge(usize),
    #[error("guest layout: {0}")]
    Layout(&'static str),
    #[error("{0} vCPUs: 1 to {max} are supported", max = layout::MAX_VCPUS)]
    VcpuCount(usize),
    #[error("vCPU {index} has MPIDR {found:#x}, the device tree says {expected:#x}")]
    Mpidr {
        index: usize,
        found: u64,
        expected: u64,
    },
    #[error("KVM {0}: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
}

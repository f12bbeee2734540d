//! GICv3 through KVM's device API: the distributor and the redistributors
//! at the addresses the device tree gives, the number of interrupts, then
//! initialisation. Call once all vCPUs exist (each gets a redistributor)
//! and before any runs.

use super::layout::{gic_redist_size, GIC_DIST_ADDR, GIC_NR_IRQS, GIC_REDIST_ADDR, MAX_VCPUS};
use super::Error;
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CTRL,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};

fn set_attr(
    gic: &DeviceFd,
    group: u32,
    attr: u32,
    addr: u64,
    what: &'static str,
) -> Result<(), Error> {
    let attr = kvm_device_attr {
        group,
        attr: u64::from(attr),
        addr,
        flags: 0,
    };
    gic.set_device_attr(&attr).map_err(|e| Error::Kvm(what, e))
}

/// Creates and initialises the VM's GICv3 for `vcpus` vCPUs. Keep the
/// returned fd for the VM's life.
pub fn create(vm: &VmFd, vcpus: usize) -> Result<DeviceFd, Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount(vcpus));
    }
    let mut device = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let gic = vm
        .create_device(&mut device)
        .map_err(|e| Error::Kvm("KVM_CREATE_DEVICE (vGICv3)", e))?;

    // The kernel reads the address attributes through these pointers
    // during the ioctl; the locals outlive it.
    let dist: u64 = GIC_DIST_ADDR;
    let redist: u64 = GIC_REDIST_ADDR;
    let nr_irqs: u32 = GIC_NR_IRQS;
    debug_assert!(GIC_REDIST_ADDR + gic_redist_size(vcpus) <= super::layout::VIRTIO_MMIO_BASE);
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_DIST,
        &dist as *const u64 as u64,
        "vGICv3 distributor address",
    )?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        KVM_VGIC_V3_ADDR_TYPE_REDIST,
        &redist as *const u64 as u64,
        "vGICv3 redistributor address",
    )?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        &nr_irqs as *const u32 as u64,
        "vGICv3 interrupt count",
    )?;
    set_attr(
        &gic,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        KVM_DEV_ARM_VGIC_CTRL_INIT,
        0,
        "vGICv3 init",
    )?;
    Ok(gic)
}

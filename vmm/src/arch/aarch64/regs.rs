//! vCPU state for the arm64 Image entry: every vCPU is initialised with
//! KVM's in-kernel PSCI (0.2 and later); the secondaries start powered off
//! and are brought up by the kernel's PSCI CPU_ON. The boot vCPU starts at
//! the kernel with X0 = the device tree, at EL1h with D, A, I, F masked.

/// KVM one-reg id spaces (`KVM_REG_ARM64 | KVM_REG_SIZE_U64 | ...`): ABI
/// values, kept here so the ids can be checked on any host.
const KVM_REG_ARM64: u64 = 0x6000_0000_0000_0000;
const KVM_REG_SIZE_U64: u64 = 0x0030_0000_0000_0000;
const KVM_REG_ARM_CORE: u64 = 0x0010 << 16;
const KVM_REG_ARM64_SYSREG: u64 = 0x0013 << 16;

/// Byte offsets in `struct kvm_regs` (`user_pt_regs` first: x0..x30, sp,
/// pc, pstate).
const CORE_X0: u64 = 0;
const CORE_PC: u64 = 32 * 8;
const CORE_PSTATE: u64 = 33 * 8;

/// Id of a 64-bit core register at byte `offset` of `struct kvm_regs`.
pub const fn core_reg_id(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (offset / 4)
}

/// Id of a system register by its encoding.
pub const fn sys_reg_id(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

pub const REG_X0: u64 = core_reg_id(CORE_X0);
pub const REG_PC: u64 = core_reg_id(CORE_PC);
pub const REG_PSTATE: u64 = core_reg_id(CORE_PSTATE);
pub const REG_MPIDR_EL1: u64 = sys_reg_id(3, 0, 0, 0, 5);

/// PSTATE at entry: EL1 on SP_EL1, debug, SError, IRQ and FIQ masked.
pub const PSTATE_EL1H_MASKED: u64 = 0x5 | (0xf << 6);

#[cfg(target_arch = "aarch64")]
pub use kvm::setup_vcpu;

#[cfg(target_arch = "aarch64")]
mod kvm {
    use super::*;
    use crate::arch::aarch64::boot::BootSetup;
    use crate::arch::aarch64::layout::{vcpu_mpidr, MAX_VCPUS, MPIDR_AFFINITY_MASK};
    use crate::arch::aarch64::Error;
    use kvm_bindings::{
        kvm_regs, kvm_vcpu_init, user_pt_regs, PSR_MODE_EL1h, KVM_ARM_VCPU_POWER_OFF,
        KVM_ARM_VCPU_PSCI_0_2, PSR_A_BIT, PSR_D_BIT, PSR_F_BIT, PSR_I_BIT,
    };
    use kvm_ioctls::{VcpuFd, VmFd};
    use std::mem::offset_of;

    // The ids above agree with the kernel's headers.
    const _: () = assert!(KVM_REG_ARM64 == kvm_bindings::KVM_REG_ARM64);
    const _: () = assert!(KVM_REG_SIZE_U64 == kvm_bindings::KVM_REG_SIZE_U64);
    const _: () = assert!(KVM_REG_ARM_CORE == kvm_bindings::KVM_REG_ARM_CORE as u64);
    const _: () = assert!(KVM_REG_ARM64_SYSREG == kvm_bindings::KVM_REG_ARM64_SYSREG as u64);
    const _: () =
        assert!(CORE_PC == (offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc)) as u64);
    const _: () = assert!(
        CORE_PSTATE == (offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate)) as u64
    );
    const _: () = assert!(
        PSTATE_EL1H_MASKED
            == (PSR_MODE_EL1h | PSR_D_BIT | PSR_A_BIT | PSR_I_BIT | PSR_F_BIT) as u64
    );

    fn set(vcpu: &VcpuFd, id: u64, value: u64) -> Result<(), Error> {
        vcpu.set_one_reg(id, &value.to_le_bytes())
            .map(|_| ())
            .map_err(|e| Error::Kvm("KVM_SET_ONE_REG", e))
    }

    /// Reads the vCPU's MPIDR_EL1.
    pub fn read_mpidr(vcpu: &VcpuFd) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        vcpu.get_one_reg(REG_MPIDR_EL1, &mut b)
            .map_err(|e| Error::Kvm("KVM_GET_ONE_REG MPIDR_EL1", e))?;
        Ok(u64::from_le_bytes(b))
    }

    /// Initialises vCPU `index` (KVM_ARM_VCPU_INIT with PSCI, secondaries
    /// powered off), checks its MPIDR is the one the device tree names, and
    /// for vCPU 0 sets PC, X0 and PSTATE for `boot`.
    pub fn setup_vcpu(
        vm: &VmFd,
        vcpu: &VcpuFd,
        boot: &BootSetup,
        index: usize,
        vcpus: usize,
    ) -> Result<(), Error> {
        if vcpus == 0 || vcpus > MAX_VCPUS || index >= vcpus {
            return Err(Error::VcpuCount(vcpus.max(index + 1)));
        }
        let mut kvi = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut kvi)
            .map_err(|e| Error::Kvm("KVM_ARM_PREFERRED_TARGET", e))?;
        kvi.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        if index > 0 {
            kvi.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        vcpu.vcpu_init(&kvi)
            .map_err(|e| Error::Kvm("KVM_ARM_VCPU_INIT", e))?;

        let found = read_mpidr(vcpu)? & MPIDR_AFFINITY_MASK;
        let expected = vcpu_mpidr(index);
        if found != expected {
            return Err(Error::Mpidr {
                index,
                found,
                expected,
            });
        }

        if index == 0 {
            set(vcpu, REG_PSTATE, PSTATE_EL1H_MASKED)?;
            set(vcpu, REG_PC, boot.entry)?;
            set(vcpu, REG_X0, boot.fdt)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_are_the_abi_values() {
        // As listed in the KVM API documentation for arm64.
        assert_eq!(REG_X0, 0x6030_0000_0010_0000);
        assert_eq!(REG_PC, 0x6030_0000_0010_0040);
        assert_eq!(REG_PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(REG_MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(PSTATE_EL1H_MASKED, 0x3c5);
    }
}

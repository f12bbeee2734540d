//! vCPU state for the 64-bit Linux entry: CPUID, MSRs, FPU, LAPIC on every
//! vCPU; long-mode registers on vCPU 0. The others wait in the in-kernel
//! LAPIC for the INIT/SIPI the kernel sends them, which resets their
//! registers anyway.

use super::gdt::{self, BOOT_CS, BOOT_DS, BOOT_TSS, GDT_LIMIT, IDT_LIMIT};
use super::layout::{BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, MAX_VCPUS, PML4_ADDR};
use super::linux::BootSetup;
use super::{cpuid, Error};
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_DEFAULT_WB: u64 = (1 << 11) | 6;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// LAPIC register offsets and delivery modes.
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
const APIC_MODE_NMI: u32 = 0x400;
const APIC_MODE_EXTINT: u32 = 0x700;

/// FPU control word at reset (all exceptions masked, extended precision).
const FPU_FCW: u16 = 0x37f;
/// MXCSR at reset: all SSE exceptions masked.
const FPU_MXCSR: u32 = 0x1f80;

/// The MSRs a vCPU boots with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_DEFAULT_WB),
    ]
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *byte as _;
    }
}

/// LINT0 delivers the PIC's ExtINT, LINT1 the NMI, as on a PC.
pub fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    for (reg, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let v = lapic_reg(lapic, reg);
        set_lapic_reg(lapic, reg, (v & !APIC_DELIVERY_MODE_MASK) | mode);
    }
}

/// Reads a LAPIC register (offset in the 4 KiB register page).
pub fn lapic_register(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    lapic_reg(lapic, offset)
}

/// Sets up vCPU `index` of `vcpus` for booting `boot`. `supported_cpuid` is
/// [`cpuid::supported`], read once per VM.
/// The VM's in-kernel irqchip must exist already.
pub fn setup_vcpu(
    vcpu: &VcpuFd,
    boot: &BootSetup,
    supported_cpuid: &CpuId,
    index: usize,
    vcpus: usize,
) -> Result<(), Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS || index >= vcpus {
        return Err(Error::VcpuCount(vcpus.max(index + 1)));
    }
    let cpuid = cpuid::for_vcpu(supported_cpuid, index as u8, vcpus as u8);
    vcpu.set_cpuid2(&cpuid)
        .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::Layout("too many MSRs"))?;
    let set = vcpu
        .set_msrs(&msrs)
        .map_err(|e| Error::Kvm("KVM_SET_MSRS", e))?;
    if let Some(rejected) = entries.get(set) {
        return Err(Error::MsrRejected(rejected.index));
    }

    let fpu = kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: FPU_MXCSR,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| Error::Kvm("KVM_SET_FPU", e))?;

    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| Error::Kvm("KVM_GET_LAPIC", e))?;
    set_lint_modes(&mut lapic);
    vcpu.set_lapic(&lapic)
        .map_err(|e| Error::Kvm("KVM_SET_LAPIC", e))?;

    if index == 0 {
        setup_boot_cpu(vcpu, boot)?;
    }
    Ok(())
}

/// Long mode at the kernel's 64-bit entry, `rsi` = the zero page.
fn setup_boot_cpu(vcpu: &VcpuFd, boot: &BootSetup) -> Result<(), Error> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| Error::Kvm("KVM_GET_SREGS", e))?;
    let data = gdt::boot_segment(BOOT_DS);
    sregs.cs = gdt::boot_segment(BOOT_CS);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::boot_segment(BOOT_TSS);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = IDT_LIMIT;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(|e| Error::Kvm("KVM_SET_SREGS", e))?;

    let regs = kvm_regs {
        // Bit 1 of RFLAGS is reserved and always set; interrupts are off.
        rflags: 0x2,
        rip: boot.entry.0,
        rsp: BOOT_STACK_TOP,
        rbp: BOOT_STACK_TOP,
        rsi: boot.zero_page.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| Error::Kvm("KVM_SET_REGS", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::ZERO_PAGE_ADDR;
    use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES};
    use kvm_ioctls::Kvm;
    use vm_memory::GuestAddress;

    #[test]
    fn lint_modes_keep_the_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x0001_0000 | 0x400);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x0001_0000);
        set_lint_modes(&mut lapic);
        assert_eq!(lapic_register(&lapic, APIC_LVT_LINT0), 0x0001_0700);
        assert_eq!(lapic_register(&lapic, APIC_LVT_LINT1), 0x0001_0400);
    }

    /// Against this machine's /dev/kvm: the state we set is the state KVM
    /// reports back.
    #[test]
    fn kvm_accepts_and_reports_the_boot_state() {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                eprintln!("SKIP: /dev/kvm not usable: {e}");
                return;
            }
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        vm.create_pit2(kvm_pit_config::default()).unwrap();
        let supported = cpuid::supported(&kvm).unwrap();
        let boot = BootSetup {
            entry: GuestAddress(0x10_0200),
            zero_page: GuestAddress(ZERO_PAGE_ADDR),
            kernel_start: GuestAddress(0x10_0000),
            kernel_end: GuestAddress(0x90_0000),
            initrd: None,
            acpi_rsdp: GuestAddress(0xe_0000),
        };
        let vcpus: Vec<VcpuFd> = (0..2).map(|i| vm.create_vcpu(i).unwrap()).collect();
        for (i, vcpu) in vcpus.iter().enumerate() {
            setup_vcpu(vcpu, &boot, &supported, i, 2).unwrap();
        }

        let bsp = &vcpus[0];
        let regs = bsp.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rsi, regs.rflags),
            (0x10_0200, ZERO_PAGE_ADDR, 2)
        );
        let sregs = bsp.get_sregs().unwrap();
        assert_eq!(sregs.cs.selector, BOOT_CS);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(sregs.ds.selector, BOOT_DS);
        assert_eq!(sregs.cr3, PML4_ADDR);
        assert_ne!(sregs.cr0 & CR0_PG, 0);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (GDT_ADDR, GDT_LIMIT));

        for (i, vcpu) in vcpus.iter().enumerate() {
            let cpuid = vcpu.get_cpuid2(KVM_MAX_CPUID_ENTRIES).unwrap();
            let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
            assert_eq!(leaf1.ebx >> 24, i as u32, "APIC id of vCPU {i}");
            assert_ne!(leaf1.ecx & cpuid::ECX_HYPERVISOR, 0);

            let lapic = vcpu.get_lapic().unwrap();
            assert_eq!(
                lapic_register(&lapic, APIC_LVT_LINT0) & APIC_DELIVERY_MODE_MASK,
                APIC_MODE_EXTINT
            );
            assert_eq!(
                lapic_register(&lapic, APIC_LVT_LINT1) & APIC_DELIVERY_MODE_MASK,
                APIC_MODE_NMI
            );
            // The in-kernel LAPIC's id follows the vCPU id, as CPUID says.
            assert_eq!(lapic_register(&lapic, 0x20) >> 24, i as u32);

            let mut msrs = Msrs::from_entries(&[
                kvm_msr_entry {
                    index: MSR_MTRR_DEF_TYPE,
                    ..Default::default()
                },
                kvm_msr_entry {
                    index: MSR_IA32_MISC_ENABLE,
                    ..Default::default()
                },
            ])
            .unwrap();
            assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), 2);
            assert_eq!(msrs.as_slice()[0].data, MTRR_ENABLE_DEFAULT_WB);
            assert_ne!(msrs.as_slice()[1].data & MISC_ENABLE_FAST_STRING, 0);

            let fpu = vcpu.get_fpu().unwrap();
            assert_eq!(fpu.fcw, FPU_FCW);
            // KVM_GET_FPU leaves mxcsr at 0 on XSAVE hosts; the XSAVE
            // area (legacy region, byte 24) has the value the guest sees.
            let xsave = vcpu.get_xsave().unwrap();
            assert_eq!(xsave.region[6], FPU_MXCSR);
        }
        assert!(matches!(
            setup_vcpu(&vcpus[1], &boot, &supported, 2, 2),
            Err(Error::VcpuCount(_))
        ));
    }
}

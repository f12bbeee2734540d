//! The CPUID a vCPU shows its guest: what KVM supports on this host
//! ([`supported`]), with the leaves that describe one CPU among several set per vCPU (its APIC id,
//! the topology: one package, one thread per core, a core per vCPU) and the
//! hypervisor bit set, so the kernel takes its paravirtual paths.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// Leaf 1 ECX: running under a hypervisor.
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: the LAPIC timer's TSC-deadline mode.
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: EBX[23:16] (logical processors per package) is valid.
pub const EDX_HTT: u32 = 1 << 28;

/// Leaf 0xb/0x1f level types.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of the APIC id that number the cores: ceil(log2(vcpus)).
fn core_shift(vcpus: u8) -> u32 {
    u32::from(vcpus.max(1)).next_power_of_two().trailing_zeros()
}

fn fix_entry(e: &mut kvm_cpuid_entry2, apic_id: u8, vcpus: u8) {
    let apic = u32::from(apic_id);
    let n = u32::from(vcpus);
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (n << 16);
            e.ecx |= ECX_HYPERVISOR;
            if vcpus > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        // A cache type of 0 ends the list: leave such subleaves alone.
        LEAF_CACHE if e.eax & 0x1f != 0 => {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { n - 1 } else { 0 };
            e.eax = (e.eax & 0x0000_3fff) | ((n - 1).min(63) << 26) | (sharing.min(0xfff) << 14);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = apic;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = core_shift(vcpus);
                    e.ebx = n;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_AMD_SIZE => {
            e.ecx = (e.ecx & !0xf0ff) | (core_shift(vcpus) << 12) | (n - 1);
        }
        LEAF_AMD_TOPOLOGY => {
            e.eax = apic;
            // Core id; threads per core - 1 = 0.
            e.ebx = apic;
            // Node 0, one node per package.
            e.ecx = 0;
        }
        _ => {}
    }
}

/// What a vCPU of this VM may show: KVM's supported CPUID, plus the
/// TSC-deadline timer, which KVM emulates in its in-kernel LAPIC (every VM
/// here has one) but which older kernels (the lab's 6.1) report only
/// through `KVM_CAP_TSC_DEADLINE_TIMER`.
/// Without it the guest programs its timer through the LAPIC's one-shot
/// count, which it must first calibrate; QEMU, Firecracker and Cloud
/// Hypervisor all offer the deadline mode, and guests compared with them
/// should see the same timer.
pub fn supported(kvm: &kvm_ioctls::Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    let mut cpuid = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        for e in cpuid.as_mut_slice() {
            if e.function == LEAF_FEATURES {
                e.ecx |= ECX_TSC_DEADLINE;
            }
        }
    }
    Ok(cpuid)
}

/// The CPUID of vCPU `index` (also its APIC id) out of `vcpus`, from the
/// VM's [`supported`] CPUID.
pub fn for_vcpu(supported: &CpuId, index: u8, vcpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        fix_entry(e, index, vcpus.max(1));
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    fn find(c: &CpuId, function: u32, index: u32) -> Option<kvm_cpuid_entry2> {
        c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .copied()
    }

    fn synthetic() -> CpuId {
        let mut entries = vec![
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0f08_0800,
                ecx: 0,
                edx: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 2,
                ecx: 0x3ff,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                index: 0,
                // L1 data cache shared by 2 threads, 8 cores per package.
                eax: (7 << 26) | (1 << 14) | (1 << 5) | 1,
                ..Default::default()
            },
        ];
        entries.push(kvm_cpuid_entry2 {
            function: 4,
            index: 3,
            eax: (7 << 26) | (15 << 14) | (3 << 5) | 3,
            ..Default::default()
        });
        CpuId::from_entries(&entries).unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_one_package_topology() {
        let base = synthetic();
        for index in 0..6u8 {
            let c = for_vcpu(&base, index, 6);
            let l1 = find(&c, 1, 0).unwrap();
            assert_eq!(l1.ebx >> 24, u32::from(index));
            assert_eq!((l1.ebx >> 16) & 0xff, 6);
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
            assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(l1.edx & EDX_HTT, 0);
            let smt = find(&c, 0xb, 0).unwrap();
            assert_eq!(
                (smt.eax, smt.ebx, smt.ecx, smt.edx),
                (0, 1, 0x100, u32::from(index))
            );
            let core = find(&c, 0xb, 1).unwrap();
            // 6 vCPUs need 3 bits of APIC id.
            assert_eq!(
                (core.eax, core.ebx, core.ecx, core.edx),
                (3, 6, 0x201, u32::from(index))
            );
            let end = find(&c, 0xb, 2).unwrap();
            assert_eq!((end.ebx, end.ecx & 0xff00), (0, 0));
            let l1d = find(&c, 4, 0).unwrap();
            assert_eq!((l1d.eax >> 26, (l1d.eax >> 14) & 0xfff), (5, 0));
            let l3 = find(&c, 4, 3).unwrap();
            assert_eq!((l3.eax >> 26, (l3.eax >> 14) & 0xfff), (5, 5));
        }
        // The base is left as it was.
        assert_eq!(find(&base, 1, 0).unwrap().ebx, 0x0f08_0800);
        let single = for_vcpu(&base, 0, 1);
        assert_eq!(find(&single, 1, 0).unwrap().edx & EDX_HTT, 0);
        assert_eq!(find(&single, 0xb, 1).unwrap().eax, 0);
    }

    #[test]
    fn the_tsc_deadline_timer_is_offered_when_kvm_emulates_it() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("SKIP: /dev/kvm not usable here");
            return;
        };
        let emulated = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        let c = for_vcpu(&supported(&kvm).unwrap(), 1, 2);
        assert_eq!(
            find(&c, 1, 0).unwrap().ecx & ECX_TSC_DEADLINE != 0,
            emulated
        );
    }

    #[test]
    fn real_supported_cpuid_is_fixed_up() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(e) => {
                eprintln!("SKIP: /dev/kvm not usable here: {e}");
                return;
            }
        };
        let base = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        let c = for_vcpu(&base, 3, 4);
        assert_eq!(c.as_slice().len(), base.as_slice().len());
        let l1 = find(&c, 1, 0).unwrap();
        assert_eq!(l1.ebx >> 24, 3);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        // KVM advertises its own leaf; it must survive.
        let kvm_leaf = find(&c, 0x4000_0000, 0).unwrap();
        let mut sig = Vec::new();
        for r in [kvm_leaf.ebx, kvm_leaf.ecx, kvm_leaf.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
    }
}

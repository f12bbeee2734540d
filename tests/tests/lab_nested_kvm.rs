//! Nested KVM in the lab VMs: Debian's QEMU with -enable-kvm, inside a lab
//! VM under software emulation, boots the inner guest (the lab's kernel and
//! busybox initramfs) to its init. This is what the VMM's own lab tests and
//! its QEMU/KVM baseline stand on. Not in CI, for its time: `lab_vmm` and
//! the `vmm_lab` smoke round there stand on nested KVM in the lab. Run with:
//!   cargo test -p ssv-tests --test lab_nested_kvm -- --ignored --nocapture
//! (about 30 s per architecture once built; the first build downloads
//! Debian packages). Skips, saying why, where QEMU or the kernel package
//! cannot be had.

use ssv_tests::lab::{scripts_dir, Arch, Payload};
use ssv_tests::lab_or_skip;
use std::time::Duration;

fn nested_qemu_kvm_boots_the_inner_guest(arch: Arch) {
    let lab = lab_or_skip!(arch);
    let payload = Payload::new(Some(env!("CARGO_TARGET_TMPDIR").as_ref())).unwrap();
    payload.add_qemu(arch).unwrap();
    payload.add_guest(&lab).unwrap();
    let run_sh = std::fs::read_to_string(scripts_dir().join("nested-kvm-run.sh")).unwrap();
    payload.set_run_script(&run_sh).unwrap();

    let run = lab.run(&payload, Duration::from_secs(600)).unwrap();
    let console = &run.console;
    assert!(console.contains("SSV-LAB: /dev/kvm present"), "{console}");
    assert_eq!(run.status, 0, "nested QEMU/KVM failed:\n{console}");
    // The line comes from the inner guest's init, relayed by the payload.
    assert!(
        console.contains("inner| SSV-GUEST: init reached"),
        "{console}"
    );
    assert!(
        console.contains(&format!("on {}", arch.name())),
        "{console}"
    );
    let inner = std::fs::read_to_string(run.results.join("inner.log")).unwrap();
    assert!(inner.contains("SSV-GUEST: init reached"), "{inner}");

    let outer = run.time_of("SSV-LAB: init at").unwrap();
    let qemu_start = run.time_of("SSV-NESTED: starting QEMU/KVM").unwrap();
    let inner_init = run.time_of("inner| SSV-GUEST: init reached").unwrap();
    eprintln!(
        "{}: lab VM init at {outer:.1} s; nested QEMU/KVM boot to init {:.1} s; whole run {:.1} s",
        arch.name(),
        inner_init - qemu_start,
        run.elapsed.as_secs_f64()
    );
}

#[test]
#[ignore = "lab self-test, not in CI for its time (lab_vmm covers it there): cargo test -p ssv-tests --test lab_nested_kvm -- --ignored"]
fn x86_64_nested_qemu_kvm_boots_the_inner_guest() {
    nested_qemu_kvm_boots_the_inner_guest(Arch::X86_64);
}

#[test]
#[ignore = "lab self-test, not in CI for its time (lab_vmm covers it there): cargo test -p ssv-tests --test lab_nested_kvm -- --ignored"]
fn aarch64_nested_qemu_kvm_boots_the_inner_guest() {
    nested_qemu_kvm_boots_the_inner_guest(Arch::Aarch64);
}

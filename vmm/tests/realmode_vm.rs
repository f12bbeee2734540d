//! The VM core under /dev/kvm with tiny real-mode programs: vCPU threads
//! pause (the guest's counter stands still), resume (it moves again) and
//! stop (threads joined); the exit port ends the VM with the guest's code;
//! a triple fault ends it as a reset, never as a power-off.
//! Skips when /dev/kvm is absent.
// Real mode is x86; the guest and its setup exist for x86_64 only.
#![cfg(target_arch = "x86_64")]

use std::sync::{Arc, Mutex};
use std::time::Duration;
use vm_memory::{Bytes, GuestAddress};
use vmm::arch::x86_64::{machine, realmode};
use vmm::devices::exit_port::{ExitPort, EXIT_PORT};
use vmm::vm::{RunningVm, Vm, VmExit};

fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: /dev/kvm is absent or not usable");
    }
    ok
}

fn start(code: &[u8]) -> (RunningVm, vmm::memory::GuestMemory) {
    let mut vm = Vm::new(&realmode::ram_ranges(1 << 20)).unwrap();
    machine::setup_vm(vm.fd()).unwrap();
    let exit = ExitPort::new(vm.control().clone());
    vm.pio_bus()
        .insert(EXIT_PORT, 1, Arc::new(Mutex::new(exit)))
        .unwrap();
    realmode::load(vm.memory(), code).unwrap();
    let mem = vm.memory().clone();
    let running = vm
        .start(1, &|_, fd, _| {
            realmode::setup_vcpu(fd).map_err(|e| e.to_string())
        })
        .unwrap();
    (running, mem)
}

fn counter(mem: &vmm::memory::GuestMemory) -> u32 {
    mem.read_obj(GuestAddress(0x600)).unwrap()
}

#[test]
fn vcpus_pause_resume_and_stop() {
    if !kvm_usable() {
        return;
    }
    // 1: inc dword [0x600]; jmp 1b
    let (mut vm, mem) = start(&[0x66, 0xff, 0x06, 0x00, 0x06, 0xeb, 0xf9]);
    std::thread::sleep(Duration::from_millis(100));
    assert!(counter(&mem) > 0, "the guest runs");
    vm.pause().unwrap();
    let c1 = counter(&mem);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counter(&mem), c1, "a paused guest does not run");
    vm.resume().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(counter(&mem) > c1, "a resumed guest runs again");
    // Pausing again works as often as asked.
    vm.pause().unwrap();
    vm.resume().unwrap();
    assert_eq!(vm.stop(), VmExit::Stopped);
    let c2 = counter(&mem);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counter(&mem), c2, "a stopped guest does not run");
    assert!(vm.pause().is_err(), "a stopped VM cannot be paused");
}

#[test]
fn the_exit_port_ends_the_vm_with_the_guests_code() {
    if !kvm_usable() {
        return;
    }
    // mov al, 7; mov dx, 0x501; out dx, al; 1: hlt; jmp 1b
    let (mut vm, _) = start(&[0xb0, 0x07, 0xba, 0x01, 0x05, 0xee, 0xf4, 0xeb, 0xfd]);
    assert_eq!(vm.wait(), VmExit::Guest(7));
    assert_eq!(vm.stop(), VmExit::Guest(7), "the first reason stays");
}

#[test]
fn a_triple_fault_ends_the_vm_as_a_reset() {
    if !kvm_usable() {
        return;
    }
    // lidt [0x700] (zeroes: an empty IDT); int3 -> #GP -> #DF -> triple fault
    let (mut vm, _) = start(&[0x0f, 0x01, 0x1e, 0x00, 0x07, 0xcc]);
    // Hardware KVM reports KVM_EXIT_SHUTDOWN (a reset); the instruction
    // emulator of a /dev/kvm without hardware virtualisation gives up with
    // an internal error instead. Either way it is not a power-off.
    let why = vm.wait();
    assert!(
        matches!(&why, VmExit::Reset)
            || matches!(&why, VmExit::Error(e) if e.contains("InternalError")),
        "{why:?}"
    );
    assert_eq!(vm.stop(), why, "the first reason stays");
}

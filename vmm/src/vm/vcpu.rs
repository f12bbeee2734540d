//! One thread per vCPU: KVM_RUN, and each exit dispatched to the buses.
//!
//! Pause and stop reach a vCPU sleeping in KVM_RUN through a signal whose
//! handler sets the vCPU's `immediate_exit`: if the signal lands between the
//! thread's check of the run state and its KVM_RUN, that KVM_RUN returns at
//! once instead of sleeping, so no kick is lost.

use super::bus::Bus;
use super::{Control, VmExit};
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The device buses every vCPU dispatches to.
pub struct Buses {
    pub mmio: Bus,
    pub pio: Bus,
}

thread_local! {
    /// This thread's vCPU run structure, for the kick handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialised thread local: no allocation or lock here.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer is this thread's mapped kvm_run, set while its
        // VcpuFd lives on this thread and cleared before it is dropped; a
        // volatile byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick signal's handler (idempotent).
pub(super) fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(std::io::Error::from)
}

/// Makes the vCPU thread `t` leave (or not enter) KVM_RUN.
pub(super) fn kick(t: libc::pthread_t) {
    // SAFETY: `t` is a vCPU thread that has not been joined yet (the list
    // of kickable threads is cleared before joining); a signal with a
    // handler installed does not end the process.
    unsafe { libc::pthread_kill(t, kick_signal()) };
}

pub(super) fn spawn(
    id: u8,
    fd: VcpuFd,
    buses: Arc<Buses>,
    control: Arc<Control>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            crate::seccomp::install_or_log(crate::seccomp::ThreadKind::Vcpu);
            run(id, fd, &buses, &control);
            control.thread_done();
        })
}

fn run(id: u8, mut fd: VcpuFd, buses: &Buses, control: &Control) {
    KVM_RUN.with(|p| p.set(fd.get_kvm_run()));
    while control.runnable() {
        let outcome = match fd.run() {
            Ok(exit) => dispatch(exit, buses),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VmExit::Error(format!("vCPU {id}: KVM_RUN: {e}"))),
        };
        if let Some(why) = outcome {
            log::info!("vCPU {id}: {why:?}");
            control.request_exit(why);
        }
    }
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
}

/// Serves one exit; `Some` when the VM must stop.
fn dispatch(exit: VcpuExit<'_>, buses: &Buses) -> Option<VmExit> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.pio.read(u64::from(port), data) {
                // An ISA bus with nothing on it reads all ones.
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.pio.write(u64::from(port), data) {
                log::debug!("port {port:#x}: write {data:x?} to no device");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                log::debug!(
                    "mmio {addr:#x}: read of {} bytes from no device",
                    data.len()
                );
                data.fill(0);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                log::debug!("mmio {addr:#x}: write {data:x?} to no device");
            }
        }
        VcpuExit::Hlt => return Some(VmExit::Halted),
        // KVM's "shutdown" exit is the x86 triple fault.
        VcpuExit::Shutdown => return Some(VmExit::Reset),
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VmExit::Shutdown,
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
                other => VmExit::Error(format!("system event {other}")),
            })
        }
        other => return Some(VmExit::Error(format!("unhandled exit {other:?}"))),
    }
    None
}

//! Threads that a vCPU causes: a virtio device's I/O workers start when the
//! guest's driver sets DRIVER_OK, which is an MMIO write served on a vCPU.
//!
//! A thread inherits its parent's seccomp filter, and filters stack. A block
//! worker started on a vCPU would run under the vCPU's list as well as its
//! own, which lacks fsync, fallocate and the ssvd socket that growth needs.
//! So such threads are started by a spawner thread that has no filter,
//! itself started with the VM before any vCPU ([`start_spawner`]). Without a
//! spawner (device unit tests) [`spawn`] starts the thread directly.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Sender<Job>> = OnceLock::new();

/// Starts the process's spawner thread; later calls do nothing. Call it
/// from a thread without a seccomp filter, before any filter is installed.
pub fn start_spawner() -> io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("vmm-spawner".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })?;
    // A racing caller's spawner is simply never used; its thread ends when
    // its sender drops here.
    let _ = SPAWNER.set(tx);
    Ok(())
}

/// Starts `f` on a new thread named `name`, from the spawner when there is
/// one, so the new thread inherits no filter from the caller.
pub fn spawn<F, T>(name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let Some(spawner) = SPAWNER.get() else {
        return std::thread::Builder::new().name(name).spawn(f);
    };
    let (reply, handle) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(std::thread::Builder::new().name(name).spawn(f));
    });
    let gone = || io::Error::other("the VMM's spawner thread has ended");
    spawner.send(job).map_err(|_| gone())?;
    handle.recv().map_err(|_| gone())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread started through the spawner runs without the caller's
    /// filter: here the caller may not open files, the new thread may.
    #[test]
    fn a_spawned_thread_does_not_inherit_the_callers_filter() {
        start_spawner().unwrap();
        let opened = std::thread::spawn(|| {
            crate::seccomp::install_with(
                crate::seccomp::ThreadKind::Vcpu,
                seccompiler::SeccompAction::Errno(libc::EPERM as u32),
            )
            .unwrap();
            let here = std::fs::File::open("/proc/self/status").is_ok();
            let there = spawn("open-test".into(), || {
                std::fs::File::open("/proc/self/status").is_ok()
            })
            .unwrap()
            .join()
            .unwrap();
            (here, there)
        })
        .join()
        .unwrap();
        assert_eq!(opened, (false, true));
    }
}

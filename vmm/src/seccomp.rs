//! Seccomp filters per kind of VMM thread. Each thread installs its own
//! filter as it starts ([`install`]), after the process has opened what it
//! needs (KVM, disks, sockets), so the lists hold what a running VM does and
//! nothing it only did while starting (no `open`, no `execve`).
//!
//! A filter is inherited by threads its thread starts: a block worker's
//! growth threads (which ask ssvd over its socket) run under the block
//! worker's list, an API connection under the API's. The block workers
//! themselves start on a vCPU, so they are started through
//! [`crate::threads`] and inherit nothing.
//!
//! A syscall outside the list kills the process (`SIGSYS`): a VMM doing
//! what it never does has been subverted. `SSV_VMM_SECCOMP=log` makes the
//! filters log such calls instead (to find a missing entry), `off` skips
//! them.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs the guest: KVM_RUN and the exits it handles.
    Vcpu,
    /// Serves a disk's queues: disk I/O, eventfds, epoll, and growth
    /// requests to ssvd.
    BlockIo,
    /// The control API: its socket, ssvd (online snapshots), the disks.
    Api,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the {0:?} seccomp filter: {1}")]
    Build(ThreadKind, String),
    #[error("installing the {0:?} seccomp filter: {1}")]
    Install(ThreadKind, String),
}

/// What every kind of thread does: memory, threads, time, locks, signals
/// and logging, reads and writes on descriptors it holds.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_prctl,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_ioctl,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_nanosleep,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
];

/// Durable disk I/O and talking to ssvd (growth, snapshots) over its socket.
const DISK: &[libc::c_long] = &[
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    // A `dir=` disk (files as layers) grows by extending its file and
    // opening it again.
    libc::SYS_openat,
    libc::SYS_ftruncate,
    // A `vg=` disk's growth commits VG metadata, which records the host name.
    libc::SYS_uname,
];

/// Serving the API socket.
const API: &[libc::c_long] = &[libc::SYS_accept4];

fn allowed(kind: ThreadKind) -> Vec<libc::c_long> {
    let mut v = COMMON.to_vec();
    match kind {
        ThreadKind::Vcpu => {}
        ThreadKind::BlockIo => v.extend_from_slice(DISK),
        ThreadKind::Api => {
            v.extend_from_slice(DISK);
            v.extend_from_slice(API);
        }
    }
    v
}

/// The filter of `kind`, with `mismatch` for syscalls outside its list.
pub fn filter(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed(kind)
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    BpfProgram::try_from(f).map_err(|e| SeccompError::Build(kind, e.to_string()))
}

/// The action for syscalls outside the lists, from `SSV_VMM_SECCOMP`
/// (`kill`, the default; `log`; `off` → `None`).
pub fn configured_action() -> Option<SeccompAction> {
    match std::env::var("SSV_VMM_SECCOMP").as_deref() {
        Ok("off") => None,
        Ok("log") => Some(SeccompAction::Log),
        _ => Some(SeccompAction::KillProcess),
    }
}

/// Installs `kind`'s filter on the calling thread (and the threads it
/// starts from now on).
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(action) = configured_action() else {
        return Ok(());
    };
    install_with(kind, action)
}

/// [`install`] at a thread's start: a filter that cannot be installed is
/// logged and the thread goes on without it.
pub fn install_or_log(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        log::error!("{e}; this thread runs without its filter");
    }
}

pub fn install_with(kind: ThreadKind, mismatch: SeccompAction) -> Result<(), SeccompError> {
    let prog = filter(kind, mismatch)?;
    seccompiler::apply_filter(&prog).map_err(|e| SeccompError::Install(kind, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child and returns how it ended: the filters
    /// must not touch the test process. `f` must not allocate (another
    /// test thread may hold the allocator's lock at the fork).
    fn in_child(f: impl FnOnce() -> i32) -> libc::c_int {
        // SAFETY: fork in a test; the child only makes raw syscalls in `f`
        // and _exits, taking no lock another thread could hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = f();
            // SAFETY: ends the child without running the parent's atexit state.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child we forked, status into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        status
    }

    #[test]
    fn a_thread_is_killed_on_a_syscall_outside_its_list() {
        for kind in [ThreadKind::Vcpu, ThreadKind::BlockIo, ThreadKind::Api] {
            let prog = filter(kind, SeccompAction::KillProcess).unwrap();
            let status = in_child(|| {
                if seccompiler::apply_filter(&prog).is_err() {
                    return 3;
                }
                // Allowed: the thread goes on.
                // SAFETY: getpid has no arguments.
                unsafe { libc::getpid() };
                // Not in any list: a VM never runs a program.
                // SAFETY: execve of a path that does not matter; the filter
                // stops it before the kernel looks at the arguments.
                unsafe { libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null()) };
                4
            });
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "{kind:?}: child ended with status {status:#x}, not killed by SIGSYS"
            );
        }
    }

    #[test]
    fn the_vcpu_list_has_no_sockets_and_the_api_list_has_accept() {
        let prog = filter(ThreadKind::Vcpu, SeccompAction::Errno(libc::EPERM as u32)).unwrap();
        let status = in_child(|| {
            if seccompiler::apply_filter(&prog).is_err() {
                return 3;
            }
            // SAFETY: socket with integer arguments; fails under the filter.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            let err = std::io::Error::last_os_error().raw_os_error();
            if fd == -1 && err == Some(libc::EPERM) {
                0
            } else {
                5
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        assert!(allowed(ThreadKind::Api).contains(&libc::SYS_accept4));
        assert!(!allowed(ThreadKind::BlockIo).contains(&libc::SYS_accept4));
    }
}

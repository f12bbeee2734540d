//! I/O priority of the calling thread. Lease and metadata I/O are a few
//! sectors that every host waits on; queued behind a host's bulk data
//! writes they take tens of milliseconds, so their threads ask the block
//! layer (mq-deadline and bfq honour it) to dispatch them first.

/// ioprio_set(2) constants (linux/ioprio.h).
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;
const IOPRIO_CLASS_RT: u32 = 1;
const IOPRIO_CLASS_BE: u32 = 2;

fn set(class: u32, level: u32) -> std::io::Result<()> {
    let prio = (class << IOPRIO_CLASS_SHIFT) | level;
    // SAFETY: ioprio_set takes three integers; who = 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            prio as libc::c_int,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Real-time class for this thread (and threads it starts later); needs
/// CAP_SYS_ADMIN, else the highest best-effort level. Returns the class
/// obtained, for the log.
pub fn urgent() -> &'static str {
    match set(IOPRIO_CLASS_RT, 0) {
        Ok(()) => "real-time",
        Err(_) => match set(IOPRIO_CLASS_BE, 0) {
            Ok(()) => "best-effort 0",
            Err(_) => "default",
        },
    }
}

/// Back to the default (best-effort, level from the CPU nice value).
pub fn normal() {
    // Class NONE: the kernel derives the priority from the nice value.
    let _ = set(0, 0);
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_thread_can_ask_and_give_back() {
        std::thread::spawn(|| {
            let got = super::urgent();
            assert!(["real-time", "best-effort 0", "default"].contains(&got));
            super::normal();
        })
        .join()
        .unwrap();
    }
}

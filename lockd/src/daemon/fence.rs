//! Stopping lease holders, and the hardware watchdog.
//!
//! When our host id lease cannot be renewed for id_renewal_fail, every
//! process holding a lease in that lockspace gets SIGTERM, then SIGKILL after
//! kill_grace: all before host_dead, when other hosts may take the leases
//! over (`Timeouts::check_fencing`). If lockd itself hangs, the watchdog
//! (where there is one) resets the host, and the client library kills its
//! own process at the same deadline.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

/// Whether `pid` still runs (a zombie has stopped: it can do no more I/O).
pub fn alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for the process; no memory is
    // involved.
    let rc = unsafe { libc::kill(p, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
        return false;
    }
    // /proc/PID/stat: "pid (comm) S ..."; the state follows the last ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return;
    };
    // Never signal ourselves, init, or a process group.
    if p <= 1 || pid == std::process::id() {
        return;
    }
    // SAFETY: kill takes plain integers; a stale pid at worst gets ESRCH.
    unsafe { libc::kill(p, sig) };
}

/// SIGTERM to every pid, then SIGKILL to those alive after `grace`. Returns
/// the pids that were still alive after SIGKILL (should be none).
pub fn stop_holders(pids: &[u32], grace: Duration) -> Vec<u32> {
    for &p in pids {
        log::warn!("stopping lease holder pid {p} (SIGTERM)");
        signal(p, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        log::warn!("lease holder pid {p} ignored SIGTERM for {grace:?}; SIGKILL");
        signal(p, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(100));
    left.into_iter().filter(|&p| alive(p)).collect()
}

/// `_IOWR('W', 6, int)`: set the timeout in seconds.
const WDIOC_SETTIMEOUT: libc::Ioctl = (3 << 30 | 4 << 16 | (b'W' as u32) << 8 | 6) as libc::Ioctl;

/// An open /dev/watchdog: it resets the host unless pinged within the fire
/// timeout. Closed with the magic 'V' on clean shutdown so it stops.
pub struct Watchdog {
    file: File,
}

impl Watchdog {
    /// Opens the device if it exists; `Ok(None)` when there is none.
    pub fn open(path: &Path, fire: Duration) -> std::io::Result<Option<Watchdog>> {
        if !path.exists() {
            return Ok(None);
        }
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        let mut secs = libc::c_int::try_from(fire.as_secs()).unwrap_or(libc::c_int::MAX);
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the
        // pointer, which points to a live local; the fd is open.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                WDIOC_SETTIMEOUT,
                &mut secs as *mut libc::c_int,
            )
        };
        if rc < 0 {
            log::warn!(
                "{}: cannot set the watchdog timeout to {fire:?}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Some(Watchdog { file }))
    }

    pub fn ping(&mut self) {
        if let Err(e) = self.file.write_all(b"\0") {
            log::error!("watchdog ping failed: {e}");
        }
    }

    /// Stops the watchdog (clean shutdown only).
    pub fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_that_ignore_sigterm_are_killed() {
        let mut stubborn = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .spawn()
            .unwrap();
        let mut polite = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        let left = stop_holders(&[stubborn.id(), polite.id()], Duration::from_millis(500));
        assert!(left.is_empty());
        assert!(t.elapsed() >= Duration::from_millis(500));
        let _ = polite.wait();
        let _ = stubborn.wait();
        assert!(!alive(polite.id()) && !alive(stubborn.id()));
    }

    /// A regular file stands in for /dev/watchdog (none exists here): each
    /// ping writes a byte, disarm writes the magic 'V' that stops a real one.
    #[test]
    fn watchdog_pings_and_disarms_with_the_magic_close() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none");
        assert!(Watchdog::open(&missing, Duration::from_secs(60))
            .unwrap()
            .is_none());
        let path = dir.path().join("watchdog");
        std::fs::write(&path, b"").unwrap();
        let mut wd = Watchdog::open(&path, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        wd.ping();
        wd.ping();
        wd.disarm();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0\0V");
    }
}

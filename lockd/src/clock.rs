//! Clocks and randomness. Timestamps written to disk are this host's
//! CLOCK_MONOTONIC seconds: other hosts only ever look for a change, never
//! compare them with their own clock.

use std::time::Duration;

/// CLOCK_MONOTONIC in whole seconds, at least 1 (0 on disk means "free").
pub fn monotime() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer to a
    // live local; CLOCK_MONOTONIC is always supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).max(1)
}

/// A random u64 (not for secrets).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: time is good enough to de-synchronise retries.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_le_bytes(b)
}

/// A random duration in `[0, max)`.
pub fn jitter(max: Duration) -> Duration {
    let ns = max.as_nanos().max(1) as u64;
    Duration::from_nanos(random_u64() % ns)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock every process on this host
/// shares, so a deadline passes between daemon and clients as a number.
pub fn monotime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `monotime`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An `Instant` as CLOCK_MONOTONIC nanoseconds (Rust's `Instant` is that
/// clock on Linux, but opaque).
pub fn instant_ns(t: std::time::Instant) -> u64 {
    let now_i = std::time::Instant::now();
    let now_ns = monotime_ns();
    if t >= now_i {
        now_ns + (t - now_i).as_nanos() as u64
    } else {
        now_ns.saturating_sub((now_i - t).as_nanos() as u64)
    }
}

//! Every lease timeout derives from io_timeout, as in sanlock, so hosts only
//! need to agree on the watchdog fire timeout; each host advertises its own
//! io_timeout in its delta lease and others judge it by that.

use std::time::Duration;

/// sanlock 3.8's fixed watchdog fire timeout.
pub const DEFAULT_WATCHDOG_FIRE: u64 = 60;
pub const DEFAULT_IO_TIMEOUT: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Seconds one lease I/O may take; on disk as a u16.
    pub io_timeout: u64,
    /// Seconds from the last watchdog ping to the reset (same on all hosts).
    pub watchdog_fire: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            io_timeout: DEFAULT_IO_TIMEOUT,
            watchdog_fire: DEFAULT_WATCHDOG_FIRE,
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Timeouts {
    /// Checked construction: the fencing inequality must hold.
    pub fn new(io_timeout: u64, watchdog_fire: u64) -> Result<Timeouts, String> {
        let t = Timeouts {
            io_timeout,
            watchdog_fire,
        };
        t.check_fencing()?;
        Ok(t)
    }

    pub fn io(&self) -> Duration {
        secs(self.io_timeout)
    }
    /// Interval between delta-lease renewals.
    pub fn id_renewal(&self) -> Duration {
        secs(2 * self.io_timeout)
    }
    /// Renewal late enough to log a warning.
    pub fn id_renewal_warn(&self) -> Duration {
        secs(6 * self.io_timeout)
    }
    /// No successful renewal for this long: the local host gives up its
    /// leases and stops their holders.
    pub fn id_renewal_fail(&self) -> Duration {
        secs(8 * self.io_timeout)
    }
    /// SIGTERM at `id_renewal_fail`, SIGKILL this much later: two thirds
    /// of the fire timeout (sanlock's 40 s of 60), so holders are dead before
    /// the watchdog would reset the host.
    pub fn kill_grace(&self) -> Duration {
        secs(self.watchdog_fire * 2 / 3)
    }
    /// Another host's delta lease unchanged this long (on the local clock):
    /// that host is dead and its leases may be taken over. Uses the owner's
    /// io_timeout, read from its delta lease.
    pub fn host_dead(&self, owner_io_timeout: u64) -> Duration {
        secs(8 * owner_io_timeout + self.watchdog_fire)
    }
    /// Our own host_dead_seconds, as others compute it for us.
    pub fn own_host_dead(&self) -> Duration {
        self.host_dead(self.io_timeout)
    }
    /// Wait after writing a free host id before trusting it is ours.
    pub fn delta_short_delay(&self) -> Duration {
        secs(2 * self.io_timeout)
    }
    /// Wait before claiming a host id someone else held.
    pub fn delta_large_delay(&self) -> Duration {
        self.own_host_dead()
            .max(self.id_renewal() + secs(6 * self.io_timeout))
    }
    /// How long a request bit stays set in our delta lease.
    pub fn set_bitmap(&self) -> Duration {
        secs(6 * self.io_timeout)
    }

    /// The fencing inequality. With T the start of our last successful
    /// renewal: we stop our lease holders from T + id_renewal_fail, they are
    /// SIGKILLed by T + id_renewal_fail + kill_grace, and a watchdog (where
    /// there is one) resets the host by T + id_renewal_fail + watchdog_fire.
    /// Another host saw our renewal no earlier than T and takes over only
    /// when our lease stayed unchanged for more than host_dead on its clock.
    /// Both deadlines must come no later than that takeover.
    pub fn check_fencing(&self) -> Result<(), String> {
        if self.io_timeout == 0 || self.io_timeout > u64::from(u16::MAX) {
            return Err(format!(
                "io_timeout {} s: use 1 to {} seconds",
                self.io_timeout,
                u16::MAX
            ));
        }
        if self.watchdog_fire < 3 {
            return Err(format!(
                "watchdog fire timeout {} s: use at least 3 seconds",
                self.watchdog_fire
            ));
        }
        let takeover = self.own_host_dead();
        if self.id_renewal_fail() + self.watchdog_fire_dur() > takeover {
            return Err("watchdog reset would come after another host may take over".into());
        }
        if self.id_renewal_fail() + self.kill_grace() >= takeover {
            return Err("lease holders would be killed after another host may take over".into());
        }
        if self.id_renewal() + self.io() >= self.id_renewal_fail() {
            return Err("a renewal could not be retried before the lease fails".into());
        }
        Ok(())
    }

    fn watchdog_fire_dur(&self) -> Duration {
        secs(self.watchdog_fire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_sanlock() {
        let t = Timeouts::default();
        assert_eq!(t.id_renewal(), secs(20));
        assert_eq!(t.id_renewal_warn(), secs(60));
        assert_eq!(t.id_renewal_fail(), secs(80));
        assert_eq!(t.own_host_dead(), secs(140));
        assert_eq!(t.kill_grace(), secs(40));
        assert_eq!(t.delta_short_delay(), secs(20));
        assert_eq!(t.delta_large_delay(), secs(140));
        assert_eq!(t.set_bitmap(), secs(60));
        t.check_fencing().unwrap();
    }

    #[test]
    fn inequality_holds_for_every_valid_setting() {
        for io in 1..=120 {
            for fire in 3..=300 {
                let t = Timeouts {
                    io_timeout: io,
                    watchdog_fire: fire,
                };
                t.check_fencing().unwrap();
                // The property itself, stated independently of the code above.
                let stop_by = t.id_renewal_fail() + t.kill_grace();
                let reset_by = t.id_renewal_fail() + secs(fire);
                assert!(stop_by < t.own_host_dead(), "io {io} fire {fire}");
                assert!(reset_by <= t.own_host_dead(), "io {io} fire {fire}");
            }
        }
    }

    #[test]
    fn a_remote_host_with_a_longer_io_timeout_is_waited_for_longer() {
        let t = Timeouts::new(1, 3).unwrap();
        assert_eq!(t.host_dead(10), secs(83));
        assert_eq!(t.host_dead(1), secs(11));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Timeouts::new(0, 60).is_err());
        assert!(Timeouts::new(70_000, 60).is_err());
        assert!(Timeouts::new(1, 2).is_err());
    }
}

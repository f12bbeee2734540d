//! Delta leases (Chockler & Malkhi): a lockspace is one sector per host id;
//! host N writes only sector N−1 and renews it every 2·io_timeout. Others
//! judge it alive while its timestamp keeps changing on *their* clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::monotime;
use crate::leaseio::LeaseDev;
use crate::record::{bitmap_bit, Geometry, Leader, LeaderKind, Name, BITMAP_LEN, BITMAP_OFFSET};
use crate::sync::lock;
use crate::timing::Timeouts;
use crate::{Error, Result};

/// A lockspace area on a device: `geom.max_hosts()` delta-lease sectors
/// from `offset`.
#[derive(Debug, Clone)]
pub struct Lockspace {
    pub dev: Arc<LeaseDev>,
    pub offset: u64,
    pub geom: Geometry,
    pub name: Name,
}

/// One host's delta lease as read from disk.
#[derive(Debug, Clone)]
pub struct DeltaRecord {
    pub leader: Leader,
    pub bitmap: [u8; BITMAP_LEN],
}

impl DeltaRecord {
    /// Whether this host asks `host_id` to look at its requests.
    pub fn requests(&self, host_id: u64) -> bool {
        bitmap_bit(host_id)
            .is_some_and(|(byte, mask)| self.bitmap[byte - BITMAP_OFFSET] & mask != 0)
    }
}

impl Lockspace {
    /// Opens the lockspace `name` at `offset`, learning its geometry from
    /// host 1's record.
    pub fn open(dev: Arc<LeaseDev>, offset: u64, name: &str) -> Result<Lockspace> {
        let name = Name::new(name).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let sector = dev.sector_size();
        let buf = dev.read(offset, sector as usize)?;
        let bad = |source| Error::BadRecord {
            what: "lockspace record of host 1",
            dev: dev.name().to_string(),
            offset,
            source,
        };
        let l = Leader::decode(&buf, LeaderKind::Delta, sector).map_err(bad)?;
        let geom = l.geometry().map_err(bad)?;
        if l.space_name != name {
            return Err(Error::InvalidArgument(format!(
                "{} offset {offset} holds lockspace {}, not {name}",
                dev.name(),
                l.space_name
            )));
        }
        if offset % geom.align_size != 0 {
            return Err(Error::InvalidArgument(format!(
                "lockspace offset {offset} is not a multiple of the align size {}",
                geom.align_size
            )));
        }
        Ok(Lockspace {
            dev,
            offset,
            geom,
            name,
        })
    }

    fn check_host_id(&self, host_id: u64) -> Result<()> {
        if host_id == 0 || host_id > self.geom.max_hosts() {
            return Err(Error::InvalidArgument(format!(
                "host id {host_id} is outside 1..={} for this lockspace",
                self.geom.max_hosts()
            )));
        }
        Ok(())
    }

    pub fn host_offset(&self, host_id: u64) -> u64 {
        self.offset + (host_id - 1) * self.geom.sector()
    }

    fn decode(&self, host_id: u64, sector: &[u8]) -> Result<DeltaRecord> {
        let offset = self.host_offset(host_id);
        let leader =
            Leader::decode(sector, LeaderKind::Delta, self.geom.sector_size).map_err(|source| {
                Error::BadRecord {
                    what: "delta lease",
                    dev: self.dev.name().to_string(),
                    offset,
                    source,
                }
            })?;
        if leader.space_name != self.name {
            return Err(Error::BadRecord {
                what: "delta lease",
                dev: self.dev.name().to_string(),
                offset,
                source: crate::record::RecordError::Field(format!(
                    "lockspace name {} instead of {}",
                    leader.space_name, self.name
                )),
            });
        }
        let mut bitmap = [0u8; BITMAP_LEN];
        if sector.len() >= BITMAP_OFFSET + BITMAP_LEN {
            bitmap.copy_from_slice(&sector[BITMAP_OFFSET..BITMAP_OFFSET + BITMAP_LEN]);
        }
        Ok(DeltaRecord { leader, bitmap })
    }

    /// Reads one host's delta lease (one sector).
    pub fn read_host(&self, host_id: u64) -> Result<DeltaRecord> {
        self.check_host_id(host_id)?;
        let s = self.geom.sector_size as usize;
        let buf = self.dev.read(self.host_offset(host_id), s)?;
        self.decode(host_id, &buf)
    }

    /// Reads every host's delta lease in one I/O; unreadable records are
    /// errors in their slot (another host's torn write must not stop us).
    pub fn read_all(&self) -> Result<Vec<Result<DeltaRecord>>> {
        let s = self.geom.sector_size as usize;
        let n = self.geom.max_hosts() as usize;
        let buf = self.dev.read(self.offset, n * s)?;
        Ok((0..n)
            .map(|i| self.decode(i as u64 + 1, &buf[i * s..(i + 1) * s]))
            .collect())
    }

    fn write_host(&self, host_id: u64, rec: &Leader, bitmap: &[u8; BITMAP_LEN]) -> Result<()> {
        let mut buf = vec![0u8; self.geom.sector_size as usize];
        rec.encode(&mut buf);
        buf[BITMAP_OFFSET..BITMAP_OFFSET + BITMAP_LEN].copy_from_slice(bitmap);
        self.dev.write(self.host_offset(host_id), &buf)
    }
}

/// What we know of another host, from the delta leases our renewals read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Timestamp 0: no host holds the id.
    Free,
    /// Seen once, no change yet: monitoring just started.
    Unknown,
    /// Its timestamp changed within the last host_dead on our clock.
    Live,
    /// No change for id_renewal_fail: it is failing, not yet dead.
    Fail,
    /// No change for host_dead: its leases may be taken over.
    Dead,
}

#[derive(Debug, Clone)]
struct Seen {
    leader: Leader,
    /// Local time we first saw this exact record.
    since: Instant,
    /// Whether we have seen it change at least once.
    changed: bool,
}

/// Per-lockspace memory of other hosts' delta leases.
#[derive(Debug, Default)]
pub struct Liveness {
    hosts: HashMap<u64, Seen>,
}

impl Liveness {
    pub fn observe(&mut self, host_id: u64, leader: &Leader, now: Instant) {
        match self.hosts.get_mut(&host_id) {
            Some(seen) if seen.leader == *leader => {}
            Some(seen) => {
                seen.leader = *leader;
                seen.since = now;
                seen.changed = true;
            }
            None => {
                self.hosts.insert(
                    host_id,
                    Seen {
                        leader: *leader,
                        since: now,
                        changed: false,
                    },
                );
            }
        }
    }

    /// Local time the host's record last changed, or we started watching it.
    pub fn last_change(&self, host_id: u64) -> Option<(Leader, Instant)> {
        self.hosts.get(&host_id).map(|s| (s.leader, s.since))
    }

    pub fn state(&self, host_id: u64, t: &Timeouts, now: Instant) -> Option<HostState> {
        let seen = self.hosts.get(&host_id)?;
        if seen.leader.timestamp == 0 {
            return Some(HostState::Free);
        }
        let quiet = now.saturating_duration_since(seen.since);
        let io = u64::from(seen.leader.io_timeout).max(1);
        let owner = Timeouts {
            io_timeout: io,
            watchdog_fire: t.watchdog_fire,
        };
        Some(if quiet > t.host_dead(io) {
            HostState::Dead
        } else if quiet > owner.id_renewal_fail() {
            HostState::Fail
        } else if seen.changed {
            HostState::Live
        } else {
            HostState::Unknown
        })
    }
}

/// Outcome of one renewal.
#[derive(Debug, Default)]
pub struct Renewal {
    /// Hosts whose bitmap asks us to look at our resources' request records.
    pub requested_by: Vec<u64>,
    /// Records that did not decode (torn or foreign), by host id.
    pub bad_records: Vec<(u64, String)>,
}

#[derive(Debug)]
struct HeldState {
    leader: Leader,
    /// Local time our last successful renewal write was issued.
    renewed_at: Instant,
    /// Request bits we set, and until when.
    bits: HashMap<u64, Instant>,
    liveness: Liveness,
    /// Set once renewals stopped for id_renewal_fail: never renew again.
    dead: bool,
}

/// Our host id lease in one lockspace, shared by the renewal thread and
/// resource acquirers.
#[derive(Debug)]
pub struct HostId {
    pub ls: Lockspace,
    pub host_id: u64,
    pub generation: u64,
    pub host_name: Name,
    pub timeouts: Timeouts,
    state: Mutex<HeldState>,
}

impl HostId {
    /// Acquires host id `host_id`: waits out a previous owner unless the id
    /// is free or was ours (same unique `host_name`), writes our record,
    /// waits delta_short_delay and checks nobody wrote over it.
    pub fn acquire(
        ls: Lockspace,
        host_id: u64,
        host_name: Name,
        timeouts: Timeouts,
    ) -> Result<HostId> {
        ls.check_host_id(host_id)?;
        timeouts.check_fencing().map_err(Error::InvalidArgument)?;
        let first = ls.read_host(host_id)?;
        let mut cur = first.leader;
        if cur.timestamp != 0 && cur.resource_name != host_name {
            // Someone held it; it may still be renewing.
            let owner_io = u64::from(cur.io_timeout).max(1);
            let wait = timeouts
                .delta_large_delay()
                .max(timeouts.host_dead(owner_io));
            log::info!(
                "lockspace {} host id {host_id} was held by {}; waiting {wait:?} to see it is unused",
                ls.name,
                cur.resource_name
            );
            std::thread::sleep(wait);
            let again = ls.read_host(host_id)?.leader;
            if again != cur && again.timestamp != 0 {
                return Err(Error::HostIdBusy {
                    space: ls.name.to_string(),
                    host_id,
                    owner: again.resource_name.to_string(),
                });
            }
            cur = again;
        }
        let mut rec = cur;
        rec.owner_id = host_id;
        rec.owner_generation = cur.owner_generation + 1;
        rec.timestamp = monotime();
        rec.resource_name = host_name;
        rec.io_timeout = timeouts.io_timeout as u16;
        rec.num_hosts = 0;
        rec.max_hosts = 1;
        rec.lver = 0;
        let renewed_at = Instant::now();
        ls.write_host(host_id, &rec, &[0u8; BITMAP_LEN])?;
        std::thread::sleep(timeouts.delta_short_delay());
        let check = ls.read_host(host_id)?.leader;
        if check != rec {
            return Err(Error::HostIdBusy {
                space: ls.name.to_string(),
                host_id,
                owner: check.resource_name.to_string(),
            });
        }
        log::info!(
            "lockspace {} host id {host_id} acquired, generation {}",
            ls.name,
            rec.owner_generation
        );
        Ok(HostId {
            generation: rec.owner_generation,
            ls,
            host_id,
            host_name,
            timeouts,
            state: Mutex::new(HeldState {
                leader: rec,
                renewed_at,
                bits: HashMap::new(),
                liveness: Liveness::default(),
                dead: false,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HeldState> {
        lock(&self.state)
    }

    /// Local time until which our leases are valid: the last renewal plus
    /// id_renewal_fail.
    pub fn valid_until(&self) -> Instant {
        self.state().renewed_at + self.timeouts.id_renewal_fail()
    }

    pub fn last_renewal(&self) -> Instant {
        self.state().renewed_at
    }

    /// Refuses when our delta lease is past its failure deadline (for
    /// example after this process was stopped): a lease write issued now
    /// could land after another host took over.
    pub fn check_valid(&self) -> Result<()> {
        let st = self.state();
        let since = st.renewed_at.elapsed();
        if st.dead || since >= self.timeouts.id_renewal_fail() {
            return Err(Error::LeaseExpired {
                space: self.ls.name.to_string(),
                since,
            });
        }
        Ok(())
    }

    /// Marks the lease dead: no further renewals or lease writes.
    pub fn kill(&self) {
        self.state().dead = true;
    }

    /// One renewal: read the whole lockspace, check our record is still
    /// ours, write a new timestamp and our request bits.
    pub fn renew(&self) -> Result<Renewal> {
        self.check_valid()?;
        let all = self.ls.read_all()?;
        let now = Instant::now();
        let mut out = Renewal::default();
        let mut ours = None;
        let prev = {
            let mut st = self.state();
            for (i, rec) in all.into_iter().enumerate() {
                let id = i as u64 + 1;
                match rec {
                    Ok(r) => {
                        if id == self.host_id {
                            ours = Some(r.leader);
                            continue;
                        }
                        if r.leader.timestamp != 0 && r.requests(self.host_id) {
                            out.requested_by.push(id);
                        }
                        st.liveness.observe(id, &r.leader, now);
                    }
                    Err(e) if id == self.host_id => return Err(e),
                    Err(e) => out.bad_records.push((id, e.to_string())),
                }
            }
            st.leader
        };
        let on_disk = ours.ok_or_else(|| Error::Internal("own record missing".into()))?;
        if on_disk.owner_id != prev.owner_id
            || on_disk.owner_generation != prev.owner_generation
            || on_disk.resource_name != prev.resource_name
        {
            self.kill();
            return Err(Error::RenewCorrupt {
                space: self.ls.name.to_string(),
                host_id: self.host_id,
                what: format!(
                    "owner {} generation {} name {}",
                    on_disk.owner_id, on_disk.owner_generation, on_disk.resource_name
                ),
            });
        }
        let mut next = prev;
        next.timestamp = monotime().max(prev.timestamp + 1);
        let bitmap = {
            let mut st = self.state();
            st.bits.retain(|_, until| *until > now);
            let mut bitmap = [0u8; BITMAP_LEN];
            for &h in st.bits.keys() {
                if let Some((byte, mask)) = bitmap_bit(h) {
                    bitmap[byte - BITMAP_OFFSET] |= mask;
                }
            }
            bitmap
        };
        self.check_valid()?;
        let issued = Instant::now();
        self.ls.write_host(self.host_id, &next, &bitmap)?;
        let mut st = self.state();
        st.leader = next;
        st.renewed_at = issued;
        Ok(out)
    }

    /// Frees the host id: timestamp 0, owner and generation kept. Refused
    /// once the lease failed (overwritten, killed) or expired.
    pub fn release(&self) -> Result<()> {
        // Fix: this used to write unconditionally. After RenewCorrupt, or
        // when a stopped host resumes past its deadline, another host may
        // own the id by now; our old record with timestamp 0 would erase
        // its record and make its leases look free to everyone.
        self.check_valid()?;
        let mut rec = self.state().leader;
        rec.timestamp = 0;
        self.kill();
        self.ls.write_host(self.host_id, &rec, &[0u8; BITMAP_LEN])
    }

    /// Asks `host_id` to examine its request records: sets its bit in our
    /// bitmap for set_bitmap (written at the next renewals).
    pub fn set_request_bit(&self, host_id: u64) {
        let until = Instant::now() + self.timeouts.set_bitmap();
        self.state().bits.insert(host_id, until);
    }

    pub fn host_state(&self, host_id: u64) -> Option<HostState> {
        self.state()
            .liveness
            .state(host_id, &self.timeouts, Instant::now())
    }

    /// The local time we last saw `host_id`'s record change (or started
    /// watching it), if its generation is `generation`.
    /// The record of `host_id` our renewals last read, and the local time
    /// they first saw it (its last change, or when we started watching).
    pub fn last_seen(&self, host_id: u64) -> Option<(Leader, Instant)> {
        self.state().liveness.last_change(host_id)
    }

    /// Every host seen by renewals: id, record, state.
    pub fn hosts(&self) -> Vec<(u64, Leader, HostState)> {
        let st = self.state();
        let now = Instant::now();
        let mut v: Vec<_> = st
            .liveness
            .hosts
            .iter()
            .filter(|(_, s)| s.leader.owner_id != 0)
            .filter_map(|(&id, s)| {
                st.liveness
                    .state(id, &self.timeouts, now)
                    .map(|state| (id, s.leader, state))
            })
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    /// Time since the last successful renewal.
    pub fn renewal_age(&self) -> Duration {
        self.state().renewed_at.elapsed()
    }
}

/// Renews a [`HostId`] every id_renewal on its own thread until dropped
/// (for library users; the daemon runs its own loop with fencing).
pub struct Renewer {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Renewer {
    pub fn start(host: Arc<HostId>) -> Renewer {
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let s = stop.clone();
        let thread = std::thread::spawn(move || loop {
            let (stopped, cv) = &*s;
            let guard = lock(stopped);
            let (guard, _) = cv
                .wait_timeout_while(guard, host.timeouts.id_renewal(), |stopped| !*stopped)
                .unwrap_or_else(|e| e.into_inner());
            if *guard {
                return;
            }
            drop(guard);
            if let Err(e) = host.renew() {
                log::warn!(
                    "lockspace {} host id {}: renewal failed: {e}",
                    host.ls.name,
                    host.host_id
                );
            }
        });
        Renewer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        let (stopped, cv) = &*self.stop;
        *lock(stopped) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

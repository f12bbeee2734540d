//! Resource leases: one Disk Paxos instance per lease version (`lver`) on a
//! single disk, its result cached in the leader record. Held leases are not
//! renewed: holding the host id (delta) lease stands in for all of them.
//!
//! Differences from sanlock 3.8, all on the safe side:
//! - a ballot keeps its dblock's bal/inp across retries of the same lver
//!   (phase 1 never erases a value a previous phase 2 may have made chosen);
//! - before every lease write we check our delta lease is still within its
//!   failure deadline, so a process stopped mid-ballot does not write after
//!   another host may have taken over;
//! - reads cover only `num_hosts` dblocks, so a lease made for few hosts
//!   costs a few KiB per read instead of 1 MiB.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::{jitter, monotime};
use crate::delta::HostId;
use crate::leaseio::LeaseDev;
use crate::record::{
    Dblock, Geometry, Leader, LeaderKind, ModeBlock, Name, Request, DBLOCK_RELEASED,
    LFL_SHORT_HOLD, MODE_SHARED, PAXOS_DBLOCK_SECTOR, PAXOS_REQUEST_SECTOR,
};
use crate::{Error, Result};

/// Shared requesters that find a leader in its short hold retry this often.
const SHARED_RETRIES: u32 = 8;
/// Ballot attempts before giving up on one lease version.
const MAX_BALLOTS: u32 = 64;
/// Ballot retry back-off: random, doubling from this up to `BACKOFF_MAX`
/// (sanlock sleeps 0–1 s every time).
const BACKOFF_MIN: Duration = Duration::from_millis(2);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often to re-read a silent owner's delta lease while waiting for it.
const OWNER_POLL: Duration = Duration::from_secs(1);

/// A resource lease area: leader, request record, one dblock per host.
#[derive(Debug)]
pub struct Resource {
    pub dev: Arc<LeaseDev>,
    pub offset: u64,
    pub space: Name,
    pub name: Name,
    /// The leader's num_hosts once seen (fixed at init), so an acquire
    /// reads leader and dblocks in one I/O, as sanlock does.
    num_hosts: AtomicU64,
}

/// A leader plus every host's dblock, as one read returned them.
#[derive(Debug, Clone)]
pub struct Area {
    pub leader: Leader,
    /// Index i is host i+1. `None` for a sector that did not decode.
    pub dblocks: Vec<Option<(Dblock, ModeBlock)>>,
}

/// How to acquire.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcquireOptions {
    pub shared: bool,
    /// Fail with [`Error::OwnedRetry`] instead of waiting out a silent owner.
    pub owner_nowait: bool,
}

/// A lease we hold: what release needs.
#[derive(Debug, Clone)]
pub struct Held {
    pub leader: Leader,
    pub shared: bool,
    /// Our dblock as last written.
    pub dblock: Dblock,
}

fn roundup_pow2(n: u64) -> u64 {
    n.next_power_of_two()
}

impl Resource {
    pub fn new(dev: Arc<LeaseDev>, offset: u64, space: &str, name: &str) -> Result<Resource> {
        let bad = |e: crate::record::RecordError| Error::InvalidArgument(e.to_string());
        Ok(Resource {
            dev,
            offset,
            space: Name::new(space).map_err(bad)?,
            name: Name::new(name).map_err(bad)?,
            num_hosts: AtomicU64::new(0),
        })
    }

    fn sector(&self) -> u64 {
        u64::from(self.dev.sector_size())
    }

    fn bad(&self, what: &'static str, offset: u64, source: crate::record::RecordError) -> Error {
        Error::BadRecord {
            what,
            dev: self.dev.name().to_string(),
            offset,
            source,
        }
    }

    fn decode_leader(&self, sector: &[u8]) -> Result<Leader> {
        let l = Leader::decode(sector, LeaderKind::Paxos, self.dev.sector_size())
            .map_err(|e| self.bad("resource leader", self.offset, e))?;
        if l.space_name != self.space || l.resource_name != self.name {
            return Err(self.bad(
                "resource leader",
                self.offset,
                crate::record::RecordError::Field(format!(
                    "holds {}:{}, not {}:{}",
                    l.space_name, l.resource_name, self.space, self.name
                )),
            ));
        }
        let geom = l
            .geometry()
            .map_err(|e| self.bad("resource leader", self.offset, e))?;
        if self.offset % geom.align_size != 0 {
            return Err(Error::InvalidArgument(format!(
                "resource offset {} is not a multiple of the align size {}",
                self.offset, geom.align_size
            )));
        }
        Ok(l)
    }

    /// Reads the leader alone (one sector).
    pub fn read_leader(&self) -> Result<Leader> {
        let buf = self.dev.read(self.offset, self.sector() as usize)?;
        self.decode_leader(&buf)
    }

    /// Reads leader and dblocks in one I/O of `roundup_pow2(num_hosts+2)`
    /// sectors.
    pub fn read_area(&self, num_hosts: u64) -> Result<Area> {
        let sectors = roundup_pow2(num_hosts + PAXOS_DBLOCK_SECTOR);
        let s = self.sector() as usize;
        let buf = self.dev.read(self.offset, sectors as usize * s)?;
        let leader = self.decode_leader(&buf[..s])?;
        let n = leader.num_hosts.min(num_hosts) as usize;
        let dblocks = (0..n)
            .map(|i| {
                let at = (PAXOS_DBLOCK_SECTOR as usize + i) * s;
                Dblock::decode(&buf[at..at + s]).ok()
            })
            .collect();
        Ok(Area { leader, dblocks })
    }

    /// Reads leader and dblocks, sized by the leader's num_hosts: one I/O
    /// once that is known, two the first time.
    pub fn read(&self) -> Result<Area> {
        let known = self.num_hosts.load(Ordering::Relaxed);
        if known != 0 {
            let a = self.read_area(known)?;
            if a.leader.num_hosts == known {
                return Ok(a);
            }
        }
        let l = self.read_leader()?;
        self.num_hosts.store(l.num_hosts, Ordering::Relaxed);
        self.read_area(l.num_hosts)
    }

    fn dblock_offset(&self, host_id: u64) -> u64 {
        self.offset + (PAXOS_DBLOCK_SECTOR + host_id - 1) * self.sector()
    }

    fn write_dblock(&self, me: &HostId, d: &Dblock, mode: &ModeBlock) -> Result<()> {
        self.write_dblock_of(me, me.host_id, d, mode)
    }

    fn write_dblock_of(
        &self,
        me: &HostId,
        host_id: u64,
        d: &Dblock,
        mode: &ModeBlock,
    ) -> Result<()> {
        me.check_valid()?;
        let mut buf = vec![0u8; self.sector() as usize];
        d.encode(mode, &mut buf);
        self.dev.write(self.dblock_offset(host_id), &buf)
    }

    fn write_leader(&self, me: &HostId, l: &Leader) -> Result<()> {
        me.check_valid()?;
        let mut buf = vec![0u8; self.sector() as usize];
        l.encode(&mut buf);
        self.dev.write(self.offset, &buf)
    }

    pub fn read_request(&self) -> Result<Request> {
        let at = self.offset + PAXOS_REQUEST_SECTOR * self.sector();
        let buf = self.dev.read(at, self.sector() as usize)?;
        Request::decode(&buf).map_err(|e| self.bad("request record", at, e))
    }

    /// Asks the holder to give the lease up: writes the request record for
    /// the next lease version and sets the owner's bit in our delta lease.
    pub fn request(&self, me: &HostId, force_mode: u32) -> Result<Leader> {
        let l = self.read_leader()?;
        let at = self.offset + PAXOS_REQUEST_SECTOR * self.sector();
        let mut buf = vec![0u8; self.sector() as usize];
        Request {
            lver: l.lver + 1,
            force_mode,
        }
        .encode(&mut buf);
        me.check_valid()?;
        self.dev.write(at, &buf)?;
        if l.timestamp != 0 {
            me.set_request_bit(l.owner_id);
        }
        Ok(l)
    }

    fn resource_label(&self) -> String {
        format!("{}:{}", self.space, self.name)
    }

    /// Acquires the lease for `me`, exclusive or shared.
    pub fn acquire(&self, me: &HostId, opts: AcquireOptions) -> Result<Held> {
        let mut shared_tries = 0;
        loop {
            match self.acquire_once(me, opts) {
                // A shared requester that meets another's short hold, or
                // loses a race to another shared requester, tries again.
                Err(
                    e @ (Error::HeldByLiveHost { .. }
                    | Error::AcquiredByOther { .. }
                    | Error::OwnedRetry { .. }),
                ) if opts.shared && shared_tries < SHARED_RETRIES => {
                    let l = self.read_leader()?;
                    if l.timestamp != 0 && l.flags & LFL_SHORT_HOLD == 0 {
                        return Err(e);
                    }
                    shared_tries += 1;
                    std::thread::sleep(jitter(Duration::from_millis(50)));
                }
                other => return other,
            }
        }
    }

    fn acquire_once(&self, me: &HostId, opts: AcquireOptions) -> Result<Held> {
        let started = Instant::now();
        let mut ballot: Option<Dblock> = None;
        let mut attempts = 0u32;
        let mut backoff = BACKOFF_MIN;
        loop {
            me.check_valid()?;
            let mut area = self.read()?;
            let num_hosts = area.leader.num_hosts;
            if me.host_id > num_hosts {
                return Err(Error::InvalidArgument(format!(
                    "host id {} is beyond the {} hosts resource {} was made for",
                    me.host_id,
                    num_hosts,
                    self.resource_label()
                )));
            }
            // A leader set back by a late write names an owner of an old
            // version, maybe a live host that holds nothing: waiting for it
            // would wait forever. A ballot at the newest version re-commits
            // what was chosen there (Paxos finds it in the dblocks), after
            // which acquire goes on from the leader that ballot wrote.
            let set_back = set_back_version(&area);
            if let Some(newest) = set_back {
                area.leader.lver = newest - 1;
            } else if area.leader.timestamp != 0 && !self.owned_by_us_or_void(me, &area.leader) {
                if !self.wait_for_owner(me, &area, opts, started)? {
                    continue;
                }
                let fresh = self.read_area(num_hosts)?;
                if fresh.leader != area.leader {
                    continue;
                }
                area = fresh;
            }
            let leader = area.leader;
            let next_lver = leader.lver + 1;
            // Keep our value for this lver across retries; after a restart,
            // take it from our dblock on disk.
            let ours_on_disk = area
                .dblocks
                .get(me.host_id as usize - 1)
                .copied()
                .flatten()
                .map(|(d, _)| d)
                .filter(|d| d.lver == next_lver);
            let mine = match ballot {
                Some(d) if d.lver == next_lver => d,
                _ => ours_on_disk.unwrap_or(Dblock {
                    lver: next_lver,
                    ..Dblock::default()
                }),
            };
            let outcome = self.run_ballot(me, &area, mine, opts.shared)?;
            if set_back.is_some() {
                let decided = match &outcome {
                    BallotResult::Committed(done) => Some((done.0.leader, done.0.dblock)),
                    BallotResult::Decided(l, d) => Some((*l, *d)),
                    _ => None,
                };
                if let Some((leader, dblock)) = decided {
                    log::warn!(
                        "resource {}: the leader was set back by a late write; re-committed lver {} (owner host {})",
                        self.resource_label(),
                        leader.lver,
                        leader.owner_id
                    );
                    // Another host's version: go on from the leader now
                    // written. A version we had released, chosen for us
                    // again: free it first. Our own value (new, or from a
                    // ballot of ours before) is acquired as usual below.
                    let ours =
                        leader.owner_id == me.host_id && leader.owner_generation == me.generation;
                    let we_released = ours_on_disk.is_some_and(|d| d.flags & DBLOCK_RELEASED != 0);
                    if !ours || we_released {
                        if ours {
                            let held = Held {
                                leader,
                                shared: false,
                                dblock,
                            };
                            self.release(me, &held)?;
                        }
                        ballot = None;
                        continue;
                    }
                }
            }
            match outcome {
                BallotResult::Committed(done) => {
                    let (held, seen) = *done;
                    if held.leader.owner_id != me.host_id
                        || held.leader.owner_generation != me.generation
                    {
                        return Err(Error::AcquiredByOther {
                            resource: self.resource_label(),
                            lver: held.leader.lver,
                            owner_id: held.leader.owner_id,
                        });
                    }
                    return self.finish(me, held, Some(seen));
                }
                BallotResult::Aborted(d) => {
                    ballot = Some(d);
                    attempts += 1;
                    if attempts >= MAX_BALLOTS {
                        return Err(Error::Contended {
                            resource: self.resource_label(),
                            lver: next_lver,
                            attempts,
                        });
                    }
                    std::thread::sleep(jitter(backoff));
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                BallotResult::Restart => ballot = None,
                BallotResult::Decided(l, dblock) => {
                    if l.owner_id == me.host_id && l.owner_generation == me.generation {
                        return self.finish(
                            me,
                            Held {
                                leader: l,
                                shared: opts.shared,
                                dblock,
                            },
                            None,
                        );
                    }
                    return Err(Error::AcquiredByOther {
                        resource: self.resource_label(),
                        lver: l.lver,
                        owner_id: l.owner_id,
                    });
                }
            }
        }
    }

    /// A held leader we may ballot over without waiting: ours (same or an
    /// older generation: we restarted).
    fn owned_by_us_or_void(&self, me: &HostId, l: &Leader) -> bool {
        l.owner_id == me.host_id && l.owner_generation <= me.generation
    }

    /// The leader is held by another host. Returns true to ballot over it
    /// (the owner released or is dead), false to start over (the leader
    /// changed), or the reason not to acquire.
    fn wait_for_owner(
        &self,
        me: &HostId,
        area: &Area,
        opts: AcquireOptions,
        started: Instant,
    ) -> Result<bool> {
        let leader = area.leader;
        // Another host's ballot made this owner, which then marked its
        // dblock released: it is done. (An owner that wrote the leader
        // itself frees the leader on release; sanlock does that after
        // marking its dblock, so taking the flag alone as free would let us
        // commit the next version before sanlock's late leader write sets
        // the leader back.)
        let owner_slot = leader.owner_id.checked_sub(1).map(|i| i as usize);
        if leader.write_id != leader.owner_id {
            if let Some(Some((d, _))) = owner_slot.and_then(|i| area.dblocks.get(i)) {
                if d.lver == leader.lver && d.flags & DBLOCK_RELEASED != 0 {
                    return Ok(true);
                }
            }
        }
        let first = me.ls.read_host(leader.owner_id)?.leader;
        if first.timestamp == 0
            || first.owner_id != leader.owner_id
            || first.owner_generation > leader.owner_generation
        {
            // The owner's host id is free or has a newer generation: the
            // leases of the old generation are void.
            return Ok(true);
        }
        let owner_io = u64::from(first.io_timeout).max(1);
        let host_dead = me.timeouts.host_dead(owner_io);
        // Fix: our renewals' memory of the owner counts only while the
        // record just read is the one they saw. It used to be taken as is,
        // so an observer whose renewals lagged (up to its id_renewal_fail,
        // which exceeds host_dead of an owner with a shorter io_timeout)
        // took a renewing owner for dead. A record changed since our last
        // look means the owner renewed after it: alive (sanlock: IDLIVE).
        let seen = me.last_seen(leader.owner_id);
        let renewed_since_seen = seen.is_some_and(|(l, _)| {
            l.owner_generation == first.owner_generation && l.timestamp != 0 && l != first
        });
        let wait_start = match seen {
            Some((l, since)) if l == first => since,
            _ => started,
        };
        let busy = |live: bool| -> Error {
            if live {
                Error::HeldByLiveHost {
                    resource: self.resource_label(),
                    owner_id: leader.owner_id,
                    owner_generation: leader.owner_generation,
                }
            } else {
                Error::OwnedRetry {
                    resource: self.resource_label(),
                    owner_id: leader.owner_id,
                    remaining: host_dead.saturating_sub(wait_start.elapsed()),
                    seen_renewing: matches!(
                        me.host_state(leader.owner_id),
                        Some(crate::delta::HostState::Fail | crate::delta::HostState::Dead)
                    ),
                }
            }
        };
        // The renewal thread saw it change recently, or it changed since: alive.
        if renewed_since_seen
            || me.host_state(leader.owner_id) == Some(crate::delta::HostState::Live)
                && wait_start.elapsed() < host_dead
        {
            return Err(busy(true));
        }
        loop {
            if wait_start.elapsed() > host_dead {
                log::info!(
                    "resource {}: owner host {} silent for {:?} > {:?}; taking over",
                    self.resource_label(),
                    leader.owner_id,
                    wait_start.elapsed(),
                    host_dead
                );
                return Ok(true);
            }
            if opts.owner_nowait {
                return Err(busy(false));
            }
            std::thread::sleep(
                OWNER_POLL.min(
                    host_dead.saturating_sub(wait_start.elapsed()) + Duration::from_millis(10),
                ),
            );
            me.check_valid()?;
            let now = me.ls.read_host(leader.owner_id)?.leader;
            if now.timestamp != first.timestamp || now.owner_generation != first.owner_generation {
                if now.timestamp == 0 || now.owner_generation != first.owner_generation {
                    return Ok(true);
                }
                return Err(busy(true));
            }
            let l = self.read_leader()?;
            if !l.same_except_timestamp(&leader) || l.timestamp != leader.timestamp {
                // The leader changed while we waited: start over.
                return Ok(false);
            }
        }
    }

    fn run_ballot(
        &self,
        me: &HostId,
        area: &Area,
        mut mine: Dblock,
        shared: bool,
    ) -> Result<BallotResult> {
        let leader = area.leader;
        let next_lver = leader.lver + 1;
        let max_hosts = leader.max_hosts.max(1);
        let max_mbal = area
            .dblocks
            .iter()
            .flatten()
            .filter(|(d, _)| d.lver == next_lver)
            .map(|(d, _)| d.mbal)
            .chain(std::iter::once(if mine.lver == next_lver {
                mine.mbal
            } else {
                0
            }))
            .max()
            .unwrap_or(0);
        mine.mbal = if max_mbal == 0 {
            me.host_id
        } else {
            max_mbal - max_mbal % max_hosts + max_hosts + me.host_id
        };
        mine.lver = next_lver;
        mine.flags = 0;

        // Phase 1: publish our mbal, keeping any bal/inp of this lver.
        self.write_dblock(me, &mine, &ModeBlock::default())?;
        let seen = match self.check_phase(me, &area.leader, &mine)? {
            Ok(a) => a,
            Err(stop) => return Ok(stop),
        };
        let best = seen
            .dblocks
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|(d, _)| (i as u64 + 1, d)))
            .map(|(h, d)| if h == me.host_id { mine } else { d })
            .filter(|d| d.lver == next_lver && d.inp != 0)
            .chain((mine.inp != 0).then_some(mine))
            .max_by_key(|d| d.bal);
        match best {
            Some(b) => {
                mine.inp = b.inp;
                mine.inp2 = b.inp2;
                mine.inp3 = b.inp3;
            }
            None => {
                mine.inp = me.host_id;
                mine.inp2 = me.generation;
                mine.inp3 = monotime();
            }
        }
        mine.bal = mine.mbal;

        // Phase 2.
        self.write_dblock(me, &mine, &ModeBlock::default())?;
        let seen2 = match self.check_phase(me, &area.leader, &mine)? {
            Ok(a) => a,
            Err(stop) => return Ok(stop),
        };

        // Commit: the value is chosen; cache it in the leader.
        let mut l = leader;
        l.lver = next_lver;
        l.owner_id = mine.inp;
        l.owner_generation = mine.inp2;
        l.timestamp = mine.inp3;
        l.write_id = me.host_id;
        l.write_generation = me.generation;
        l.write_timestamp = monotime();
        l.flags = (l.flags & !LFL_SHORT_HOLD) | if shared { LFL_SHORT_HOLD } else { 0 };
        self.write_leader(me, &l)?;
        Ok(BallotResult::Committed(Box::new((
            Held {
                leader: l,
                shared,
                dblock: mine,
            },
            seen2,
        ))))
    }

    /// The read after a phase write: the area to go on with, or how the
    /// ballot ends (abort on a larger lver or mbal, or a leader that moved).
    fn check_phase(
        &self,
        me: &HostId,
        before: &Leader,
        mine: &Dblock,
    ) -> Result<std::result::Result<Area, BallotResult>> {
        let a = self.read_area(before.num_hosts)?;
        if a.leader.lver > before.lver {
            return Ok(Err(if a.leader.lver == mine.lver {
                BallotResult::Decided(a.leader, *mine)
            } else {
                BallotResult::Restart
            }));
        }
        for (i, d) in a.dblocks.iter().enumerate() {
            let h = i as u64 + 1;
            if h == me.host_id {
                continue;
            }
            let Some((d, _)) = d else { continue };
            if d.lver > mine.lver {
                // Fix: this was a Restart, which retries at once and without
                // limit, so a dblock ahead of a leader that does not move
                // made acquire spin on the disk forever. That happens when a
                // host crashes mid-ballot after a release racing a commit
                // set the leader back one lver, or in a damaged area. As an
                // abort it backs off and ends in Contended; a leader that did
                // move on is seen at the retry.
                return Ok(Err(BallotResult::Aborted(*mine)));
            }
            if d.lver == mine.lver && d.mbal > mine.mbal {
                return Ok(Err(BallotResult::Aborted(*mine)));
            }
        }
        Ok(Ok(a))
    }

    /// After our commit: an exclusive holder checks shared holders; a shared
    /// holder records its mode block and ends its short hold.
    /// `seen` is the phase-2 read, which already shows every shared holder
    /// (they write their mode block before ending their short hold).
    fn finish(&self, me: &HostId, held: Held, seen: Option<Area>) -> Result<Held> {
        if held.shared {
            let mut d = held.dblock;
            d.flags |= DBLOCK_RELEASED;
            let mode = ModeBlock {
                flags: MODE_SHARED,
                generation: me.generation,
            };
            self.write_dblock(me, &d, &mode)?;
            self.release_leader(me, &held.leader)?;
            return Ok(Held {
                leader: held.leader,
                shared: true,
                dblock: d,
            });
        }
        let area = match seen {
            Some(a) => a,
            None => self.read_area(held.leader.num_hosts)?,
        };
        let mut live = Vec::new();
        for (i, d) in area.dblocks.iter().enumerate() {
            let h = i as u64 + 1;
            let Some((d, mode)) = d else { continue };
            if h == me.host_id || mode.flags & MODE_SHARED == 0 {
                continue;
            }
            let rec = me.ls.read_host(h)?.leader;
            let holder_gone = rec.timestamp == 0
                || rec.owner_generation != mode.generation
                // Fix: "dead" by our renewals' memory only if the record
                // just read is still the one they saw (as in wait_for_owner).
                || me.host_state(h) == Some(crate::delta::HostState::Dead)
                    && me.last_seen(h).is_some_and(|(l, _)| l == rec);
            if holder_gone {
                // Clear a dead holder's shared mode block, as sanlock does.
                self.write_dblock_of(me, h, d, &ModeBlock::default())?;
            } else {
                live.push(h);
            }
        }
        if !live.is_empty() {
            self.release(me, &held)?;
            return Err(Error::SharedHeld {
                resource: self.resource_label(),
                hosts: live,
            });
        }
        Ok(held)
    }

    /// Zeroes the leader's timestamp if we are still its writer and it is
    /// unchanged; otherwise leaves it (our RELEASED dblock tells others).
    fn release_leader(&self, me: &HostId, ours: &Leader) -> Result<()> {
        let now = self.read_leader()?;
        if now.write_id != me.host_id {
            return Ok(());
        }
        let same_version = now.lver == ours.lver
            && now.owner_id == ours.owner_id
            && now.owner_generation == ours.owner_generation;
        if same_version && now.timestamp == 0 {
            // A retried release whose leader write had landed.
            return Ok(());
        }
        if !now.same_except_timestamp(ours) || now.timestamp != ours.timestamp {
            return Err(Error::NotOwner {
                resource: self.resource_label(),
                lver: ours.lver,
                now_lver: now.lver,
                now_owner: now.owner_id,
            });
        }
        let mut l = now;
        l.timestamp = 0;
        l.flags &= !LFL_SHORT_HOLD;
        l.write_timestamp = monotime();
        self.write_leader(me, &l)
    }

    /// Releases a held lease: frees the leader if we wrote it, then marks our
    /// dblock released (dropping a shared mode block).
    ///
    /// Leader first, unlike sanlock: once our RELEASED dblock is visible
    /// another host may commit the next version, and a leader write of ours
    /// after its read would set the leader back a version. With the leader
    /// freed first, nobody can commit in between (they would need our
    /// RELEASED flag or our host to be dead), and a ballot for the next
    /// version ignores our dblock of the old one.
    pub fn release(&self, me: &HostId, held: &Held) -> Result<()> {
        let mut d = held.dblock;
        if d.lver != held.leader.lver {
            // Another host's ballot committed us; say we are done with this lver.
            d = Dblock {
                lver: held.leader.lver,
                ..Dblock::default()
            };
        }
        d.flags |= DBLOCK_RELEASED;
        let leader = if held.shared {
            Ok(())
        } else {
            self.release_leader(me, &held.leader)
        };
        if let Err(e @ (Error::Io { .. } | Error::Timeout { .. } | Error::LeaseExpired { .. })) =
            leader
        {
            return Err(e);
        }
        self.write_dblock(me, &d, &ModeBlock::default())?;
        leader
    }
}

enum BallotResult {
    Committed(Box<(Held, Area)>),
    Aborted(Dblock),
    Restart,
    /// Someone committed this lver; our dblock as last written.
    Decided(Leader, Dblock),
}

/// The newest version a ballot must re-commit when the leader was set back
/// by a late leader write (a ballot that committed another host's value,
/// its write landing after that host and others had moved on). Only then
/// can a dblock be two versions ahead of the leader (a ballot for a
/// version starts from a leader at the one before), or one version ahead
/// and released (a holder releases after its leader write landed).
fn set_back_version(area: &Area) -> Option<u64> {
    let lver = area.leader.lver;
    let dblocks = || area.dblocks.iter().flatten().map(|(d, _)| d);
    let set_back = dblocks().any(|d| {
        d.lver >= lver.saturating_add(2)
            || d.lver == lver.saturating_add(1) && d.flags & DBLOCK_RELEASED != 0
    });
    set_back.then(|| dblocks().map(|d| d.lver).max()).flatten()
}

/// Checks a geometry/num_hosts pair before init.
pub fn check_num_hosts(geom: Geometry, num_hosts: u64) -> Result<()> {
    if num_hosts == 0 || num_hosts > geom.max_hosts() {
        return Err(Error::InvalidArgument(format!(
            "num_hosts {num_hosts}: use 1 to {} for {}-byte sectors with {}-byte align",
            geom.max_hosts(),
            geom.sector_size,
            geom.align_size
        )));
    }
    Ok(())
}

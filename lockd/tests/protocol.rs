//! The lease protocol, in one process: several hosts (each its own
//! `LeaseDev` on one shared file, as hosts each open the LUN) run the delta
//! and paxos steps against each other.
//!
//! Timing: io_timeout 1 s and watchdog fire 3 s, so a join waits 2 s,
//! id_renewal_fail is 8 s and host_dead is 11 s. Only three tests wait for
//! host_dead; everything else runs in a few seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lockd::clock::jitter;
use lockd::delta::{HostId, HostState, Lockspace, Renewer};
use lockd::leaseio::LeaseDev;
use lockd::paxos::{AcquireOptions, Held, Resource};
use lockd::record::{
    Dblock, Geometry, Leader, LeaderKind, ModeBlock, Name, RecordError, Request, DBLOCK_RELEASED,
    FORCE_KILL, LFL_SHORT_HOLD, MODE_SHARED, PAXOS_DBLOCK_SECTOR,
};
use lockd::timing::Timeouts;
use lockd::{direct, Error};
use san::{BlockDev, Fault, FaultControl, FaultDev, FileDev, OpenOptions};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
const LS: &str = "pool";
/// sanlock's ballot-number modulus for 512/1M areas.
const MAX_HOSTS: u64 = 2000;

// ---------------------------------------------------------------------------
// Harness

struct Shared {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn shared(size: u64) -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases");
    FileDev::open(&path, &OpenOptions::new().create_size(Some(size))).unwrap();
    Shared { _dir: dir, path }
}

fn file(s: &Shared) -> Arc<dyn BlockDev> {
    Arc::new(FileDev::open(&s.path, &OpenOptions::new().sync(true)).unwrap())
}

/// A host's own view of the shared LUN.
fn dev(s: &Shared) -> Arc<LeaseDev> {
    Arc::new(LeaseDev::new(
        file(s),
        s.path.display().to_string(),
        Duration::from_secs(1),
    ))
}

/// A host's view of the LUN through a fault-injecting device.
fn fault_dev(s: &Shared) -> (FaultControl, Arc<LeaseDev>) {
    let ctl = FaultControl::new();
    let fd = FaultDev::new(file(s), ctl.clone());
    let d = LeaseDev::new(
        Arc::new(fd),
        s.path.display().to_string(),
        Duration::from_secs(1),
    );
    (ctl, Arc::new(d))
}

fn timeouts() -> Timeouts {
    Timeouts::new(1, 3).unwrap()
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// Starts joining host id `id` as `host_name` on `d` (waits
/// delta_short_delay, or longer for an id someone else holds).
fn spawn_join(
    d: Arc<LeaseDev>,
    id: u64,
    host_name: &str,
    t: Timeouts,
) -> thread::JoinHandle<lockd::Result<HostId>> {
    let host_name = name(host_name);
    thread::spawn(move || HostId::acquire(Lockspace::open(d, 0, LS)?, id, host_name, t))
}

/// Joins hosts `ids` in parallel, named `host-<id>`.
fn join(s: &Shared, ids: &[u64]) -> Vec<Arc<HostId>> {
    let handles: Vec<_> = ids
        .iter()
        .map(|&id| spawn_join(dev(s), id, &format!("host-{id}"), timeouts()))
        .collect();
    handles
        .into_iter()
        .map(|h| Arc::new(h.join().unwrap().unwrap()))
        .collect()
}

/// A lockspace at 0 and resources `(offset, name, num_hosts)`.
fn setup(size: u64, resources: &[(u64, &str, u64)]) -> Shared {
    let s = shared(size);
    let d = dev(&s);
    direct::init_lockspace(&d, Geometry::DEFAULT, 0, LS, 1).unwrap();
    for &(off, r, n) in resources {
        direct::init_resource(&d, Geometry::DEFAULT, off, LS, r, n).unwrap();
    }
    s
}

/// A resource as one host sees it (its own device).
fn res(s: &Shared, offset: u64, r: &str) -> Resource {
    Resource::new(dev(s), offset, LS, r).unwrap()
}

fn excl() -> AcquireOptions {
    AcquireOptions::default()
}
fn nowait() -> AcquireOptions {
    AcquireOptions {
        owner_nowait: true,
        ..Default::default()
    }
}
fn shared_nowait() -> AcquireOptions {
    AcquireOptions {
        shared: true,
        owner_nowait: true,
    }
}

/// Raw sector access for inspecting and forging records.
struct Raw(Arc<LeaseDev>);

impl Raw {
    fn new(s: &Shared) -> Raw {
        Raw(dev(s))
    }
    fn sector(&self, off: u64) -> Vec<u8> {
        self.0.read(off, SECTOR as usize).unwrap().to_vec()
    }
    fn put(&self, off: u64, data: &[u8]) {
        self.0.write(off, data).unwrap();
    }
    fn delta(&self, host: u64) -> Leader {
        Leader::decode(&self.sector((host - 1) * SECTOR), LeaderKind::Delta, 512).unwrap()
    }
    fn leader(&self, res_off: u64) -> Result<Leader, RecordError> {
        Leader::decode(&self.sector(res_off), LeaderKind::Paxos, 512)
    }
    fn dblock_off(res_off: u64, host: u64) -> u64 {
        res_off + (PAXOS_DBLOCK_SECTOR + host - 1) * SECTOR
    }
    fn dblock(&self, res_off: u64, host: u64) -> (Dblock, ModeBlock) {
        Dblock::decode(&self.sector(Self::dblock_off(res_off, host))).unwrap()
    }
    /// Writes `host`'s dblock sector; `corrupt` flips a byte of the
    /// checksummed part after the checksum was computed.
    fn put_dblock(&self, res_off: u64, host: u64, d: &Dblock, corrupt: bool) {
        let mut b = vec![0u8; SECTOR as usize];
        d.encode(&ModeBlock::default(), &mut b);
        if corrupt {
            b[20] ^= 0x40;
        }
        self.put(Self::dblock_off(res_off, host), &b);
    }
}

// ---------------------------------------------------------------------------
// 1. Delta leases

/// Joining: a race for one free id has exactly one winner; a host id held
/// by a live host stays busy; the same host name re-acquires at once with a
/// new generation, which the old incarnation's renewal detects; a released
/// id keeps owner and generation, is free for anyone, and the releaser
/// writes nothing more.
#[test]
fn delta_join_race_reacquire_overwrite_and_release() {
    let s = setup(2 * MIB, &[]);
    let t = timeouts();
    let raw = Raw::new(&s);

    // Two hosts race for free id 2. Their writes are slowed by 300 ms so
    // both read the id free before either record lands.
    let barrier = Arc::new(Barrier::new(2));
    let racers: Vec<_> = ["alpha", "beta"]
        .into_iter()
        .map(|n| {
            let (ctl, d) = fault_dev(&s);
            ctl.set_delay(Duration::ZERO, Duration::from_millis(300));
            let b = barrier.clone();
            let h = thread::spawn(move || {
                let ls = Lockspace::open(d, 0, LS)?;
                b.wait();
                HostId::acquire(ls, 2, name(n), timeouts())
            });
            (n, ctl, h)
        })
        .collect();
    let others = join(&s, &[1, 3]);
    let (h1, h3) = (others[0].clone(), others[1].clone());
    let mut winner = None;
    let mut loser = None;
    for (n, ctl, h) in racers {
        ctl.set_delay(Duration::ZERO, Duration::ZERO);
        match h.join().unwrap() {
            Ok(host) => {
                assert!(winner.is_none(), "both racers got host id 2");
                winner = Some(Arc::new(host));
            }
            Err(e) => {
                assert!(matches!(e, Error::HostIdBusy { host_id: 2, .. }), "{e}");
                assert_eq!(e.code(), -262);
                loser = Some(n);
            }
        }
    }
    let w1 = winner.expect("one racer wins host id 2");
    let loser = loser.expect("one racer loses");
    let on_disk = raw.delta(2);
    assert_eq!(on_disk.resource_name, w1.host_name, "the winner's record");
    assert_eq!(on_disk.owner_generation, w1.generation);
    w1.renew().unwrap();

    // Intruder: another host's record lands on host 1's sector (as if it
    // took the id while host 1 was stopped). Host 1's renewal sees it,
    // fails, and from then on writes nothing, not even its release.
    let mut intruder = raw.delta(1);
    intruder.resource_name = name("intruder");
    intruder.owner_generation += 5;
    intruder.timestamp = 4242;
    let mut b = vec![0u8; 512];
    intruder.encode(&mut b);
    raw.put(0, &b);
    let e = h1.renew().unwrap_err();
    assert!(matches!(e, Error::RenewCorrupt { host_id: 1, .. }), "{e}");
    assert_eq!(e.code(), -260);
    assert!(matches!(h1.renew(), Err(Error::LeaseExpired { .. })));
    assert!(matches!(h1.check_valid(), Err(Error::LeaseExpired { .. })));
    assert!(h1.release().is_err(), "released a host id it lost");
    assert_eq!(
        raw.delta(1),
        intruder,
        "the intruder's record was clobbered"
    );

    thread::scope(|sc| {
        // The same host name re-acquires its id at once (a restart), with
        // the next generation.
        let fast = sc.spawn(|| {
            let start = Instant::now();
            let w2 = spawn_join(dev(&s), 2, &w1.host_name.to_string(), t)
                .join()
                .unwrap()
                .unwrap();
            let took = start.elapsed();
            assert!(took < t.delta_large_delay(), "waited {took:?}");
            assert_eq!(w2.generation, w1.generation + 1);
            let w2 = Arc::new(w2);
            let renewer = Renewer::start(w2.clone());
            // The old incarnation's renewal sees the new generation.
            let e = w1.renew().unwrap_err();
            assert!(matches!(e, Error::RenewCorrupt { .. }), "{e}");
            assert!(w1.check_valid().is_err());
            (w2, renewer)
        });
        // The loser tries again while the id is held and renewed: it waits
        // out a possible dead owner, sees renewals, and gives up.
        let busy = sc.spawn(|| {
            let start = Instant::now();
            let r = spawn_join(dev(&s), 2, loser, t).join().unwrap();
            (r, start.elapsed())
        });
        // Release: timestamp 0, owner and generation kept; the id is free
        // for any host without the long wait.
        let released = sc.spawn(|| {
            let before = raw.delta(3);
            h3.release().unwrap();
            let after = raw.delta(3);
            assert_eq!(after.timestamp, 0);
            assert_eq!(after.owner_id, 3);
            assert_eq!(after.owner_generation, h3.generation);
            assert_eq!(after.resource_name, before.resource_name);
            assert!(matches!(h3.check_valid(), Err(Error::LeaseExpired { .. })));
            assert!(h3.renew().is_err());
            let r = res(&s, MIB, "none");
            assert!(matches!(
                r.acquire(&h3, excl()),
                Err(Error::LeaseExpired { .. })
            ));
            let start = Instant::now();
            let n = spawn_join(dev(&s), 3, "newcomer", t)
                .join()
                .unwrap()
                .unwrap();
            assert!(start.elapsed() < t.delta_large_delay());
            assert_eq!(n.generation, h3.generation + 1);
            assert_eq!(raw.delta(3).resource_name, name("newcomer"));
        });
        let (w2, _renewer) = fast.join().unwrap();
        released.join().unwrap();
        let (r, took) = busy.join().unwrap();
        let e = r.expect_err("a second host got a live host id");
        assert!(matches!(e, Error::HostIdBusy { host_id: 2, .. }), "{e}");
        assert!(took >= t.delta_large_delay(), "gave up after {took:?}");
        let on_disk = raw.delta(2);
        assert_eq!(on_disk.resource_name, w2.host_name);
        assert_eq!(on_disk.owner_generation, w2.generation);
    });
}

// ---------------------------------------------------------------------------
// Host death: liveness, takeover after host_dead, late writes refused.

/// Liveness moves Unknown → Live → (silence) → Dead; a live owner's lease
/// is busy at once; after the owner goes silent, another host takes the
/// lease over no earlier than host_dead after the owner's last renewal,
/// and clears the dead host's shared hold. The silent host (a SIGSTOPped
/// process resuming) can write nothing: its lease expired.
#[test]
fn silent_owner_is_taken_over_after_host_dead_and_its_late_writes_are_refused() {
    let s = setup(4 * MIB, &[(MIB, "r1", 8), (2 * MIB, "r2", 8)]);
    let t = timeouts();
    let host_dead = t.own_host_dead();
    let raw = Raw::new(&s);
    let hosts = join(&s, &[1, 2]);
    let (a, b) = (hosts[0].clone(), hosts[1].clone());

    b.renew().unwrap();
    assert_eq!(b.host_state(1), Some(HostState::Unknown));
    a.renew().unwrap();
    b.renew().unwrap();
    assert_eq!(b.host_state(1), Some(HostState::Live));

    let (ra1, rb1) = (res(&s, MIB, "r1"), res(&s, MIB, "r1"));
    let (ra2, rb2) = (res(&s, 2 * MIB, "r2"), res(&s, 2 * MIB, "r2"));
    let held_a = ra1.acquire(&a, excl()).unwrap();
    let shared_a = ra2.acquire(&a, shared_nowait()).unwrap();
    let e = rb2.acquire(&b, nowait()).unwrap_err();
    assert!(
        matches!(&e, Error::SharedHeld { hosts, .. } if hosts == &[1]),
        "{e}"
    );

    // a's last renewal; from here on it is silent.
    a.renew().unwrap();
    let a_last = a.last_renewal();
    b.renew().unwrap();
    let start = Instant::now();
    let e = rb1.acquire(&b, excl()).unwrap_err();
    assert!(
        matches!(e, Error::HeldByLiveHost { owner_id: 1, .. }),
        "{e}"
    );
    assert_eq!(e.code(), -243);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "a live owner is not waited for"
    );

    let _renew_b = Renewer::start(b.clone());
    // Poll without waiting: live, then failing (OwnedRetry), never taken.
    loop {
        match rb1.acquire(&b, nowait()) {
            Err(Error::HeldByLiveHost { .. }) => {
                assert!(a_last.elapsed() < host_dead);
            }
            Err(
                e @ Error::OwnedRetry {
                    remaining,
                    seen_renewing,
                    ..
                },
            ) => {
                assert!(seen_renewing);
                assert_eq!(e.code(), -247);
                assert!(
                    a_last.elapsed() > t.id_renewal_fail(),
                    "{:?}",
                    a_last.elapsed()
                );
                assert!(remaining <= host_dead - t.id_renewal_fail());
                break;
            }
            Ok(h) => panic!(
                "took over lver {} {:?} after a's last renewal",
                h.leader.lver,
                a_last.elapsed()
            ),
            Err(e) => panic!("{e}"),
        }
        assert!(start.elapsed() < host_dead, "never reported OwnedRetry");
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(b.host_state(1), Some(HostState::Fail));

    // Now wait for it.
    let held_b = rb1.acquire(&b, excl()).unwrap();
    let waited = a_last.elapsed();
    assert!(
        waited >= host_dead,
        "took over {waited:?} after the owner's last renewal (host_dead {host_dead:?})"
    );
    assert!(waited < host_dead + Duration::from_secs(4), "{waited:?}");
    assert_eq!(held_b.leader.lver, held_a.leader.lver + 1);
    assert_eq!(held_b.leader.owner_id, 2);
    assert_eq!(b.host_state(1), Some(HostState::Dead));

    // a resumes: every lease write is refused, none reaches the disk.
    let a_record = raw.delta(1);
    let e = a.check_valid().unwrap_err();
    assert!(matches!(e, Error::LeaseExpired { .. }), "{e}");
    assert_eq!(e.code(), -210);
    assert!(matches!(a.renew(), Err(Error::LeaseExpired { .. })));
    assert!(matches!(
        ra1.release(&a, &held_a),
        Err(Error::LeaseExpired { .. })
    ));
    assert!(matches!(
        ra1.acquire(&a, excl()),
        Err(Error::LeaseExpired { .. })
    ));
    assert!(matches!(
        ra1.request(&a, FORCE_KILL),
        Err(Error::LeaseExpired { .. })
    ));
    assert!(matches!(
        ra2.release(&a, &shared_a),
        Err(Error::LeaseExpired { .. })
    ));
    assert!(a.release().is_err(), "an expired host id was released");
    assert_eq!(raw.delta(1), a_record);
    assert_eq!(raw.leader(MIB).unwrap(), held_b.leader);

    // The dead host's shared hold does not block an exclusive acquire; its
    // mode block is cleared.
    assert_eq!(raw.dblock(2 * MIB, 1).1.flags, MODE_SHARED);
    let held_b2 = rb2.acquire(&b, excl()).unwrap();
    assert_eq!(held_b2.leader.owner_id, 2);
    assert_eq!(raw.dblock(2 * MIB, 1).1, ModeBlock::default());
}

/// Hosts may use different io_timeouts. A host with a long one (so a long
/// id_renewal_fail) whose renewals lag must not take its stale memory of an
/// owner ("unchanged since I last looked, longer than host_dead ago") for
/// the owner's death when the owner's record on disk has changed since.
#[test]
fn a_lagging_observer_does_not_take_a_renewing_owner_for_dead() {
    let s = setup(4 * MIB, &[(MIB, "r1", 8), (2 * MIB, "r2", 8)]);
    let raw = Raw::new(&s);
    let fast = timeouts();
    let slow = Timeouts::new(2, 3).unwrap();
    let d = spawn_join(dev(&s), 1, "owner", fast);
    let c = spawn_join(dev(&s), 2, "observer", slow);
    let owner = Arc::new(d.join().unwrap().unwrap());
    let observer = Arc::new(c.join().unwrap().unwrap());
    let _renew = Renewer::start(owner.clone());
    let (r1, r2) = (res(&s, MIB, "r1"), res(&s, 2 * MIB, "r2"));
    let held = r1.acquire(&owner, excl()).unwrap();
    r2.acquire(&owner, shared_nowait()).unwrap();

    observer.renew().unwrap();
    let looked = Instant::now();
    let dead_after = fast.host_dead(1);
    thread::sleep(dead_after + Duration::from_secs(1));
    // The observer's own lease is still valid (16 s), and its memory says
    // the owner has been quiet for longer than host_dead.
    observer.check_valid().unwrap();
    assert!(looked.elapsed() > dead_after);
    assert_eq!(observer.host_state(1), Some(HostState::Dead));

    let (o1, o2) = (res(&s, MIB, "r1"), res(&s, 2 * MIB, "r2"));
    match o1.acquire(&observer, nowait()) {
        Ok(h) => panic!("took lver {} from a renewing owner", h.leader.lver),
        Err(e) => assert!(matches!(e, Error::HeldByLiveHost { .. }), "{e}"),
    }
    assert_eq!(raw.leader(MIB).unwrap(), held.leader);
    match o2.acquire(&observer, nowait()) {
        Ok(_) => panic!("cleared a renewing host's shared hold"),
        Err(e) => assert!(
            matches!(&e, Error::SharedHeld { hosts, .. } if hosts == &[1]),
            "{e}"
        ),
    }
    assert_eq!(raw.dblock(2 * MIB, 1).1.flags, MODE_SHARED);
    // Once it has looked again, its memory agrees.
    observer.renew().unwrap();
    assert_eq!(observer.host_state(1), Some(HostState::Live));
}

// ---------------------------------------------------------------------------
// 2. Paxos leases

/// Busy answers for a held lease; the owner sees a request; takeover at
/// once when the owner's host id was released or rejoined with a newer
/// generation; a stale holder's release does not clobber the new leader.
#[test]
fn paxos_busy_request_voided_owner_and_release_write_id() {
    let s = setup(4 * MIB, &[(MIB, "r1", 8), (2 * MIB, "r2", 8)]);
    let raw = Raw::new(&s);
    let hosts = join(&s, &[1, 2, 3]);
    let (h1, h2, h3) = (hosts[0].clone(), hosts[1].clone(), hosts[2].clone());
    for _ in 0..2 {
        h1.renew().unwrap();
        h2.renew().unwrap();
    }
    assert_eq!(h2.host_state(1), Some(HostState::Live));
    let (r1_1, r1_2, r1_3) = (res(&s, MIB, "r1"), res(&s, MIB, "r1"), res(&s, MIB, "r1"));
    let held1 = r1_1.acquire(&h1, excl()).unwrap();
    assert_eq!(
        (
            held1.leader.lver,
            held1.leader.owner_id,
            held1.leader.owner_generation
        ),
        (1, 1, h1.generation)
    );

    // h2 has seen h1 renew: busy at once, even though willing to wait.
    let start = Instant::now();
    let e = r1_2.acquire(&h2, excl()).unwrap_err();
    assert!(
        matches!(e, Error::HeldByLiveHost { owner_id: 1, .. }),
        "{e}"
    );
    assert!(e.is_busy());
    assert!(start.elapsed() < Duration::from_secs(1));
    // h3 has never watched h1: it cannot tell, and does not wait.
    let e = r1_3.acquire(&h3, nowait()).unwrap_err();
    match &e {
        Error::OwnedRetry {
            owner_id: 1,
            remaining,
            seen_renewing: false,
            ..
        } => assert!(*remaining > Duration::from_secs(9), "{remaining:?}"),
        _ => panic!("{e}"),
    }
    assert!(e.is_busy());
    assert_eq!(raw.leader(MIB).unwrap(), held1.leader);

    // Request: record for the next lver, and h1 sees h2's bit once h2 has
    // renewed. Only the owner's bit is set.
    let l = r1_2.request(&h2, FORCE_KILL).unwrap();
    assert_eq!(l.owner_id, 1);
    assert_eq!(
        r1_1.read_request().unwrap(),
        Request {
            lver: 2,
            force_mode: FORCE_KILL
        }
    );
    assert!(h1.renew().unwrap().requested_by.is_empty());
    h2.renew().unwrap();
    assert_eq!(h1.renew().unwrap().requested_by, vec![2]);
    assert!(h3.renew().unwrap().requested_by.is_empty());

    // The owner leaves the lockspace: its host id is free, its leases void.
    h1.release().unwrap();
    let start = Instant::now();
    let held2 = r1_2.acquire(&h2, excl()).unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!((held2.leader.lver, held2.leader.owner_id), (2, 2));

    // The owner restarts: same name, newer generation; its old lease is void.
    let (r2_3, r2_2) = (res(&s, 2 * MIB, "r2"), res(&s, 2 * MIB, "r2"));
    let held3 = r2_3.acquire(&h3, excl()).unwrap();
    assert_eq!(held3.leader.lver, 1);
    h3.renew().unwrap();
    let h3b = spawn_join(dev(&s), 3, "host-3", timeouts())
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(h3b.generation, h3.generation + 1);
    let start = Instant::now();
    let held2b = r2_2.acquire(&h2, nowait()).unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!((held2b.leader.lver, held2b.leader.owner_id), (2, 2));

    // The old incarnation's late release marks its dblock released but
    // leaves the leader h2 wrote.
    r2_3.release(&h3, &held3).unwrap();
    assert_eq!(raw.leader(2 * MIB).unwrap(), held2b.leader);
    let (d3, _) = raw.dblock(2 * MIB, 3);
    assert_eq!((d3.lver, d3.flags & DBLOCK_RELEASED), (1, DBLOCK_RELEASED));
    // h2's own release frees it.
    r2_2.release(&h2, &held2b).unwrap();
    let l = raw.leader(2 * MIB).unwrap();
    assert_eq!((l.lver, l.owner_id, l.timestamp, l.write_id), (2, 2, 0, 2));
    r1_2.release(&h2, &held2).unwrap();
}

/// Shared holds: two at once; an exclusive request gets SharedHeld naming
/// the live holders (and leaves nothing behind) until both release; an
/// exclusive holder keeps shared requesters out; a shared holder whose host
/// left is cleared by an exclusive acquirer.
#[test]
fn shared_holders_and_exclusive_requests() {
    let s = setup(2 * MIB, &[(MIB, "r1", 8)]);
    let raw = Raw::new(&s);
    let hosts = join(&s, &[1, 2, 3]);
    let (h1, h2, h3) = (hosts[0].clone(), hosts[1].clone(), hosts[2].clone());
    let (r1, r2, r3) = (res(&s, MIB, "r1"), res(&s, MIB, "r1"), res(&s, MIB, "r1"));

    let s1 = r1.acquire(&h1, shared_nowait()).unwrap();
    let s2 = r2.acquire(&h2, shared_nowait()).unwrap();
    assert!(s1.shared && s2.shared);
    let l = raw.leader(MIB).unwrap();
    assert_eq!(l.timestamp, 0, "the short hold ends");
    assert_eq!(l.flags & LFL_SHORT_HOLD, 0);
    for (h, host) in [(1, &h1), (2, &h2)] {
        let (d, m) = raw.dblock(MIB, h);
        assert_eq!(m.flags, MODE_SHARED);
        assert_eq!(m.generation, host.generation);
        assert_ne!(d.flags & DBLOCK_RELEASED, 0);
    }

    let e = r3.acquire(&h3, nowait()).unwrap_err();
    assert!(
        matches!(&e, Error::SharedHeld { hosts, .. } if hosts == &[1, 2]),
        "{e}"
    );
    assert_eq!(e.code(), -11);
    assert_eq!(
        raw.leader(MIB).unwrap().timestamp,
        0,
        "failed exclusive left its hold"
    );
    r1.release(&h1, &s1).unwrap();
    assert_eq!(raw.dblock(MIB, 1).1, ModeBlock::default());
    let e = r3.acquire(&h3, nowait()).unwrap_err();
    assert!(
        matches!(&e, Error::SharedHeld { hosts, .. } if hosts == &[2]),
        "{e}"
    );
    r2.release(&h2, &s2).unwrap();
    let x = r3.acquire(&h3, nowait()).unwrap();
    assert!(!x.shared);
    let e = r1.acquire(&h1, shared_nowait()).unwrap_err();
    assert!(e.is_busy(), "{e}");
    assert_eq!(raw.leader(MIB).unwrap(), x.leader);
    r3.release(&h3, &x).unwrap();

    // A shared holder's host goes away (host id released: it restarted).
    let s1 = r1.acquire(&h1, shared_nowait()).unwrap();
    assert!(s1.shared);
    h1.release().unwrap();
    let x = r3.acquire(&h3, nowait()).unwrap();
    assert_eq!(x.leader.owner_id, 3);
    assert_eq!(raw.dblock(MIB, 1).1, ModeBlock::default());
}

/// Phase 1 keeps a value our dblock already carries for this lver (a
/// previous phase 2 may have made it chosen), and adopts another host's;
/// the ballot then commits that value for its host.
#[test]
fn a_ballot_commits_a_value_already_accepted_for_its_lver() {
    let s = setup(4 * MIB, &[(MIB, "r1", 8), (2 * MIB, "r2", 8)]);
    let raw = Raw::new(&s);
    let hosts = join(&s, &[1, 2, 3]);
    let (h1, h2, h3) = (hosts[0].clone(), hosts[1].clone(), hosts[2].clone());

    // Our own dblock, as a crashed earlier attempt of ours left it: lver 2,
    // accepted ballot 2001, value "host 2". Phase 1 must not erase it.
    let (r1_1, r1_2) = (res(&s, MIB, "r1"), res(&s, MIB, "r1"));
    let h = r1_2.acquire(&h2, excl()).unwrap();
    r1_2.release(&h2, &h).unwrap();
    let accepted = Dblock {
        mbal: MAX_HOSTS + 1,
        bal: MAX_HOSTS + 1,
        inp: 2,
        inp2: h2.generation,
        inp3: 4242,
        lver: 2,
        flags: 0,
    };
    raw.put_dblock(MIB, 1, &accepted, false);
    let e = r1_1.acquire(&h1, excl()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::AcquiredByOther {
                lver: 2,
                owner_id: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.code(), -245);
    let l = raw.leader(MIB).unwrap();
    assert_eq!(
        (
            l.lver,
            l.owner_id,
            l.owner_generation,
            l.timestamp,
            l.write_id
        ),
        (2, 2, h2.generation, 4242, 1)
    );
    let (d1, _) = raw.dblock(MIB, 1);
    assert!(
        d1.mbal > accepted.mbal && d1.mbal % MAX_HOSTS == 1,
        "{d1:?}"
    );
    assert_eq!((d1.bal, d1.inp, d1.inp3), (d1.mbal, 2, 4242));
    // Host 2 was made the owner; it may use the lease (it is its own).
    let again = r1_2.acquire(&h2, excl()).unwrap();
    assert_eq!((again.leader.lver, again.leader.owner_id), (3, 2));

    // Another host's accepted value is adopted the same way.
    let r2_1 = res(&s, 2 * MIB, "r2");
    raw.put_dblock(
        2 * MIB,
        3,
        &Dblock {
            mbal: 3,
            bal: 3,
            inp: 3,
            inp2: h3.generation,
            inp3: 777,
            lver: 1,
            flags: 0,
        },
        false,
    );
    let e = r2_1.acquire(&h1, excl()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::AcquiredByOther {
                lver: 1,
                owner_id: 3,
                ..
            }
        ),
        "{e}"
    );
}

/// Damaged records: another host's dblock with a bad checksum is ignored
/// (its huge mbal and its value count for nothing); a leader with a bad
/// checksum stops the acquire with BadRecord -228; a dblock claiming a
/// lease version beyond the next makes the ballot back off, not spin.
#[test]
fn damaged_records_are_ignored_or_reported() {
    let s = setup(
        5 * MIB,
        &[(MIB, "r1", 8), (2 * MIB, "r2", 8), (3 * MIB, "r3", 8)],
    );
    let raw = Raw::new(&s);
    let hosts = join(&s, &[1]);
    let h1 = hosts[0].clone();

    raw.put_dblock(
        MIB,
        3,
        &Dblock {
            mbal: 50 * MAX_HOSTS + 3,
            bal: 50 * MAX_HOSTS + 3,
            inp: 3,
            inp2: 1,
            inp3: 99,
            lver: 1,
            flags: 0,
        },
        true,
    );
    assert!(Dblock::decode(&raw.sector(Raw::dblock_off(MIB, 3))).is_err());
    let r1 = res(&s, MIB, "r1");
    let held = r1.acquire(&h1, excl()).unwrap();
    assert_eq!((held.leader.lver, held.leader.owner_id), (1, 1));
    assert_eq!(held.dblock.mbal, 1, "the torn dblock's mbal was ignored");

    let mut leader = raw.sector(2 * MIB);
    leader[40] ^= 1;
    raw.put(2 * MIB, &leader);
    let r2 = res(&s, 2 * MIB, "r2");
    let e = r2.acquire(&h1, excl()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BadRecord {
                source: RecordError::Checksum { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.code(), -228);
    assert_eq!(r2.read_leader().unwrap_err().code(), -228);
    assert_eq!(
        raw.sector(2 * MIB),
        leader,
        "the damaged leader was rewritten"
    );

    // A valid dblock for lver 5 while the leader is at lver 0 (a host that
    // crashed mid-ballot after a late write set the leader back, or
    // damage): no ballot for lver 1 can pass it, so acquire ballots at
    // lver 5 itself (it used to back off until Contended, and every later
    // acquire did the same: the resource was stuck for good).
    raw.put_dblock(
        3 * MIB,
        3,
        &Dblock {
            mbal: 3,
            lver: 5,
            ..Dblock::default()
        },
        false,
    );
    let d3 = dev(&s);
    let r3 = Resource::new(d3.clone(), 3 * MIB, LS, "r3").unwrap();
    let held = r3.acquire(&h1, excl()).unwrap();
    assert_eq!((held.leader.lver, held.leader.owner_id), (5, 1));
    assert!(d3.stats.snapshot().1 < 10, "{:?}", d3.stats.snapshot());
    let l = raw.leader(3 * MIB).unwrap();
    assert_eq!((l.lver, l.owner_id), (5, 1));
    r3.release(&h1, &held).unwrap();
}

// ---------------------------------------------------------------------------
// 3. Faults

/// Crash (and tear) at every write of an exclusive acquire and release.
/// After each, the crashed host is gone: it comes back with a new
/// generation or leaves the lockspace, which voids its leases; that is
/// modelled by releasing its host id through a clean device (a real
/// restart only adds the 2 s join). A second host must then reach a
/// decision (acquire, after at most a lver committed to the dead host), or
/// see the damage reported as BadRecord when the leader sector itself was
/// torn; never two owners of one lver.
#[test]
fn crash_or_tear_at_every_write_leaves_a_decidable_lease() {
    const NUM_HOSTS: u64 = 32;
    const CRASHERS: u64 = 31;
    const PROBER: u64 = 32;
    // Writes of acquire + release: dblock, dblock, leader | leader, dblock.
    const ALL_WRITES: u64 = 5;
    // (name, fault at write n, writes after which the leader is torn).
    // Byte 32 on, the commit changes owner, lver (and the checksum at 168);
    // the release changes only the timestamp (152) and the checksum, so a
    // tear at 40 bytes damages the commit but leaves the release unwritten.
    // A dblock's checksummed part is bytes 0..56.
    type Variant = (&'static str, fn(u64) -> Fault, &'static [u64]);
    let variants: [Variant; 5] = [
        ("crash", Fault::CrashAtWrite, &[]),
        (
            "tear at 40 bytes, inside both records",
            |n| Fault::TearWrite {
                index: n,
                keep_bytes: 40,
            },
            &[2],
        ),
        (
            "tear at 160 bytes, after the dblock, inside the leader",
            |n| Fault::TearWrite {
                index: n,
                keep_bytes: 160,
            },
            &[2, 3],
        ),
        (
            "tear at 300 bytes, after both records",
            |n| Fault::TearWrite {
                index: n,
                keep_bytes: 300,
            },
            &[],
        ),
        (
            "write lands, then crash",
            |n| Fault::TearWriteSectors {
                index: n,
                keep_sectors: 1,
            },
            &[],
        ),
    ];

    let iterations = variants.len() as u64 * (ALL_WRITES + 1);
    assert!(iterations <= CRASHERS);
    let s = shared((iterations + 2) * MIB);
    {
        let d = dev(&s);
        direct::init_lockspace(&d, Geometry::DEFAULT, 0, LS, 1).unwrap();
    }
    let raw = Raw::new(&s);
    let ids: Vec<u64> = (1..=CRASHERS).chain([PROBER]).collect();
    let hosts = join(&s, &ids);
    let prober = hosts[CRASHERS as usize].clone();
    let _renew = Renewer::start(prober.clone());
    let mut iter = 0u64;
    for (what, fault, tears_leader) in variants {
        let mut n = 0;
        loop {
            assert!(n <= ALL_WRITES, "{what}: more writes than expected");
            let crasher = hosts[iter as usize].clone();
            let off = (iter + 1) * MIB;
            let rname = format!("r{iter}");
            iter += 1;
            let d = dev(&s);
            direct::init_resource(&d, Geometry::DEFAULT, off, LS, &rname, NUM_HOSTS).unwrap();
            let probe = Resource::new(d, off, LS, &rname).unwrap();
            // Start from a used lease: lver 1, written by the prober.
            let h = probe.acquire(&prober, excl()).unwrap();
            probe.release(&prober, &h).unwrap();

            crasher.renew().unwrap();
            let (ctl, fdev) = fault_dev(&s);
            let res_c = Resource::new(fdev, off, LS, &rname).unwrap();
            ctl.set(fault(n));
            let mut crasher_holds = None;
            match res_c.acquire(&crasher, excl()) {
                Ok(h) => {
                    crasher_holds = Some(h.leader.lver);
                    if let Err(e) = res_c.release(&crasher, &h) {
                        assert!(matches!(e, Error::Io { .. }), "{what} #{n}: {e}");
                    }
                }
                Err(e) => assert!(matches!(e, Error::Io { .. }), "{what} #{n}: {e}"),
            }
            let completed = !ctl.crashed();
            assert!(
                completed || ctl.writes() > n,
                "{what} #{n}: crashed before its write"
            );
            // The crashed host is gone; its host id no longer vouches for it.
            crasher.release().unwrap();

            let torn_leader = !completed && tears_leader.contains(&n);
            match raw.leader(off) {
                Ok(_) => assert!(!torn_leader, "{what} #{n}: a torn leader decoded"),
                Err(e) => {
                    assert!(torn_leader, "{what} #{n}: leader damaged: {e}");
                    assert!(matches!(e, RecordError::Checksum { .. }), "{e}");
                    let e = probe.acquire(&prober, nowait()).unwrap_err();
                    assert_eq!(e.code(), -228, "{what} #{n}: {e}");
                    n += 1;
                    continue;
                }
            }
            let mut decided = None;
            for _ in 0..3 {
                match probe.acquire(&prober, nowait()) {
                    Ok(h) => {
                        decided = Some(h);
                        break;
                    }
                    Err(Error::AcquiredByOther { owner_id, .. }) => {
                        assert_eq!(owner_id, crasher.host_id, "{what} #{n}")
                    }
                    Err(e) => panic!("{what} #{n}: {e}"),
                }
            }
            let h: Held = decided.unwrap_or_else(|| panic!("{what} #{n}: no decision"));
            assert_eq!(h.leader.owner_id, PROBER);
            assert_ne!(
                Some(h.leader.lver),
                crasher_holds,
                "{what} #{n}: two owners of one lver"
            );
            assert!(h.leader.lver >= 2);
            assert_eq!(raw.leader(off).unwrap(), h.leader);
            probe.release(&prober, &h).unwrap();
            if completed {
                break;
            }
            n += 1;
        }
        assert_eq!(n, ALL_WRITES, "{what}: acquire + release wrote {n} times");
    }
}

/// Slow or failing I/O: an I/O slower than io_timeout fails the acquire
/// with Timeout (-202), a failed write with Io; no lease is held, nothing
/// half-done blocks the next acquire.
#[test]
fn slow_and_failing_io_fail_the_acquire_cleanly() {
    let s = setup(2 * MIB, &[(MIB, "r1", 8)]);
    let raw = Raw::new(&s);
    let hosts = join(&s, &[1]);
    let h1 = hosts[0].clone();
    let (ctl, fdev) = fault_dev(&s);
    let r = Resource::new(fdev, MIB, LS, "r1").unwrap();

    // Writes take 1.5 s: the first (phase 1) times out.
    ctl.set_delay(Duration::ZERO, Duration::from_millis(1500));
    let start = Instant::now();
    let e = r.acquire(&h1, excl()).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(e.code(), -202);
    assert!(start.elapsed() < Duration::from_millis(1400));
    thread::sleep(Duration::from_millis(800)); // the late write lands
    let l = raw.leader(MIB).unwrap();
    assert_eq!((l.lver, l.timestamp), (0, 0), "no lease after a timeout");
    let (d, _) = raw.dblock(MIB, 1);
    assert_eq!((d.lver, d.bal, d.inp), (1, 0, 0), "only phase 1 landed");
    ctl.set_delay(Duration::ZERO, Duration::ZERO);
    let h = r.acquire(&h1, excl()).unwrap();
    assert_eq!((h.leader.lver, h.leader.owner_id), (1, 1));
    r.release(&h1, &h).unwrap();

    // Reads take 1.5 s.
    ctl.set_delay(Duration::from_millis(1500), Duration::ZERO);
    let e = r.acquire(&h1, excl()).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    ctl.set_delay(Duration::ZERO, Duration::ZERO);
    assert_eq!(raw.leader(MIB).unwrap().timestamp, 0);

    // The leader sector fails to write: both phases done, commit fails.
    ctl.fail_writes(Some(MIB..MIB + SECTOR));
    let e = r.acquire(&h1, excl()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(e.code(), -5);
    let l = raw.leader(MIB).unwrap();
    assert_eq!((l.lver, l.timestamp), (1, 0));
    ctl.fail_writes(None);
    let h = r.acquire(&h1, excl()).unwrap();
    assert_eq!((h.leader.lver, h.leader.owner_id), (2, 1));
    r.release(&h1, &h).unwrap();
}

// ---------------------------------------------------------------------------
// 4. Mutual exclusion under contention

/// 4 hosts × 3 threads take one lease 1500 times and, holding it, do a
/// read-modify-write of a counter on a second LUN. A host holds a lease
/// once: as the daemon does for its clients, a host's threads take turns
/// (a per-host mutex); a second acquire by the same host would ballot over
/// its own lease.
#[test]
fn four_hosts_keep_a_counter_consistent() {
    const TOTAL: u64 = 1500;
    const THREADS: u64 = 3;
    let s = setup(2 * MIB, &[(MIB, "r1", 8)]);
    let count_disk = shared(MIB);
    let hosts = join(&s, &[1, 2, 3, 4]);
    let _renew: Vec<_> = hosts.iter().map(|h| Renewer::start(h.clone())).collect();

    let tickets = AtomicU64::new(0);
    let violations = AtomicU64::new(0);
    let busy = AtomicU64::new(0);
    let inside = AtomicU64::new(0);
    let last = AtomicU64::new(0);
    let violation = |what: String| {
        eprintln!("violation: {what}");
        violations.fetch_add(1, Ordering::Relaxed);
    };
    let start = Instant::now();
    thread::scope(|sc| {
        for host in &hosts {
            let lease = Arc::new(res(&s, MIB, "r1"));
            let local = Arc::new(Mutex::new(()));
            let counter = file(&count_disk);
            for t in 0..THREADS {
                let (host, lease, local, counter) =
                    (host.clone(), lease.clone(), local.clone(), counter.clone());
                let (tickets, busy, inside, last) = (&tickets, &busy, &inside, &last);
                let violation = &violation;
                sc.spawn(move || {
                    let me = host.host_id * 100 + t;
                    let mut buf = vec![0u8; SECTOR as usize];
                    while tickets.fetch_add(1, Ordering::SeqCst) < TOTAL {
                        loop {
                            let guard = local.lock().unwrap();
                            let held = match lease.acquire(&host, nowait()) {
                                Ok(h) => h,
                                Err(e) if e.is_busy() => {
                                    drop(guard);
                                    busy.fetch_add(1, Ordering::Relaxed);
                                    thread::sleep(jitter(Duration::from_millis(3)));
                                    continue;
                                }
                                Err(e) => panic!("host {}: {e}", host.host_id),
                            };
                            if let Err(o) =
                                inside.compare_exchange(0, me, Ordering::SeqCst, Ordering::SeqCst)
                            {
                                violation(format!("{me} entered while {o} was inside"));
                            }
                            counter.read_at(&mut buf, 0).unwrap();
                            let value = u64::from_le_bytes(buf[..8].try_into().unwrap());
                            let expect = last.load(Ordering::SeqCst);
                            if value != expect {
                                violation(format!("{me} read {value}, last written {expect}"));
                            }
                            buf[..8].copy_from_slice(&(value + 1).to_le_bytes());
                            buf[8..16].copy_from_slice(&me.to_le_bytes());
                            counter.write_at(&buf, 0).unwrap();
                            thread::yield_now();
                            let mut check = vec![0u8; SECTOR as usize];
                            counter.read_at(&mut check, 0).unwrap();
                            if check != buf {
                                violation(format!("{me}: counter changed under it"));
                            }
                            last.store(value + 1, Ordering::SeqCst);
                            if inside
                                .compare_exchange(me, 0, Ordering::SeqCst, Ordering::SeqCst)
                                .is_err()
                            {
                                violation(format!("{me}: someone else inside at exit"));
                            }
                            lease.release(&host, &held).unwrap();
                            drop(guard);
                            break;
                        }
                    }
                });
            }
        }
    });
    let mut buf = vec![0u8; SECTOR as usize];
    file(&count_disk).read_at(&mut buf, 0).unwrap();
    let final_count = u64::from_le_bytes(buf[..8].try_into().unwrap());
    eprintln!(
        "{TOTAL} acquisitions in {:?}, {} busy retries",
        start.elapsed(),
        busy.load(Ordering::Relaxed)
    );
    assert_eq!(violations.load(Ordering::Relaxed), 0);
    assert_eq!(final_count, TOTAL);
    assert_eq!(last.load(Ordering::SeqCst), TOTAL);
    let l = Raw::new(&s).leader(MIB).unwrap();
    assert!(l.lver >= TOTAL, "lver {}", l.lver);
}

/// The I/O cost of an uncontended acquire and release (sanlock: 6 and 3).
#[test]
fn exclusive_acquire_release_costs_six_and_three_ios() {
    let s = setup(2 * MIB, &[(MIB, "r1", 2000)]);
    let hosts = join(&s, &[1, 2]);
    let _renew: Vec<_> = hosts.iter().map(|h| Renewer::start(h.clone())).collect();
    let d = dev(&s);
    let res = Resource::new(d.clone(), MIB, LS, "r1").unwrap();
    // First acquire learns num_hosts (one extra leader read).
    let held = res.acquire(&hosts[0], excl()).unwrap();
    res.release(&hosts[0], &held).unwrap();
    let before = d.stats.snapshot();
    let held = res.acquire(&hosts[0], excl()).unwrap();
    let mid = d.stats.snapshot();
    assert_eq!(
        (mid.0 - before.0, mid.1 - before.1),
        (3, 3),
        "acquire: 3 reads, 3 writes"
    );
    assert_eq!(held.leader.lver, 2);
    assert_eq!(held.leader.owner_id, 1);
    let err = Resource::new(dev(&s), MIB, LS, "r1")
        .unwrap()
        .acquire(&hosts[1], nowait())
        .unwrap_err();
    assert!(err.is_busy(), "{err}");
    res.release(&hosts[0], &held).unwrap();
    let after = d.stats.snapshot();
    assert_eq!(
        (after.0 - mid.0, after.1 - mid.1),
        (1, 2),
        "release: 1 read, 2 writes"
    );
    let held2 = Resource::new(dev(&s), MIB, LS, "r1")
        .unwrap()
        .acquire(&hosts[1], excl())
        .unwrap();
    assert_eq!((held2.leader.lver, held2.leader.owner_id), (3, 2));
}

/// A ballot that committed another host's value writes the leader late,
/// after that host released and two more versions came and went (seen in a
/// loaded CI run: the leader back at lver 832, owner host 1, written by
/// host 4, host 2's released dblock at lver 834). The leader names a live
/// host that holds nothing; every other host used to answer busy for as
/// long as that host lived. Acquire re-commits the newest version first.
#[test]
fn a_leader_set_back_by_a_late_commit_is_repaired() {
    let s = setup(4 * MIB, &[(MIB, "r", 8)]);
    let hosts = join(&s, &[1, 2, 3]);
    let _renew: Vec<_> = hosts.iter().map(|h| Renewer::start(h.clone())).collect();
    let raw = Raw::new(&s);
    let r = || Resource::new(dev(&s), MIB, LS, "r").unwrap();
    let cycle = |i: usize| {
        let held = r().acquire(&hosts[i], excl()).unwrap();
        r().release(&hosts[i], &held).unwrap();
        held.leader
    };
    // lver 1 held by host 1: the leader a late commit would write.
    let first = cycle(0);
    assert_eq!((first.lver, first.owner_id), (1, 1));
    let mut late = first;
    late.write_id = 3;
    let mut late_sector = raw.sector(MIB);
    late.encode(&mut late_sector);
    // lver 2 and 3 by hosts 2 and 3, both released.
    assert_eq!(cycle(1).lver, 2);
    assert_eq!(cycle(2).lver, 3);
    raw.put(MIB, &late_sector);
    assert_eq!(raw.leader(MIB).unwrap().lver, 1);

    // Host 2 acquires at once, past every version already used.
    let held = r().acquire(&hosts[1], nowait()).unwrap();
    assert_eq!((held.leader.lver, held.leader.owner_id), (4, 2));
    // Meanwhile the others see it held by host 2, which is alive.
    let e = r().acquire(&hosts[0], nowait()).unwrap_err();
    assert!(e.is_busy() && e.to_string().contains("host 2"), "{e}");
    r().release(&hosts[1], &held).unwrap();
    let next = r().acquire(&hosts[0], nowait()).unwrap();
    assert_eq!((next.leader.lver, next.leader.owner_id), (5, 1));
}

/// sanlock releases by marking its dblock, then freeing the leader if it is
/// unchanged. Host 2 must not take the RELEASED flag alone as free when
/// the owner wrote the leader (it would commit the next version inside that
/// window and a late leader write would set the leader back); and if the
/// leader was set back anyway, re-acquiring must not hand out again a
/// version it already released while another host moves to the next one.
#[test]
fn a_leader_set_back_by_a_late_release_never_gives_two_holders() {
    let s = setup(4 * MIB, &[(MIB, "r", 2000)]);
    let hosts = join(&s, &[1, 2]);
    let _renew: Vec<_> = hosts.iter().map(|h| Renewer::start(h.clone())).collect();
    let (h1, h2) = (&hosts[0], &hosts[1]);
    let raw = Raw::new(&s);
    let (c1, d1) = fault_dev(&s);
    let (c2, d2) = fault_dev(&s);
    let r1 = Resource::new(d1, MIB, LS, "r").unwrap();
    let r2 = Resource::new(d2, MIB, LS, "r").unwrap();

    // Host 1 releases sanlock's way: dblock RELEASED, leader still held.
    let held1 = r1.acquire(h1, excl()).unwrap();
    let held_leader = raw.sector(MIB);
    r1.release(h1, &held1).unwrap();
    raw.put(MIB, &held_leader);
    // Seen alive and not freed: busy, not "released".
    thread::sleep(Duration::from_millis(4500));
    let e = r2.acquire(h2, nowait()).unwrap_err();
    assert!(e.is_busy(), "{e}");

    // The leader was set back anyway (a late write after a newer commit):
    // lver 2 decided for host 2 and released by it, leader back at lver 1.
    raw.put(MIB, &held_leader);
    let mut free1 = raw.leader(MIB).unwrap();
    free1.timestamp = 0;
    let mut sector = held_leader.clone();
    free1.encode(&mut sector);
    let d = Dblock {
        mbal: 2,
        bal: 2,
        inp: 2,
        inp2: h2.generation,
        inp3: 1,
        lver: 2,
        flags: DBLOCK_RELEASED,
    };
    raw.put_dblock(MIB, 2, &d, false);
    raw.put(MIB, &sector);

    // Host 2 re-acquires slowly while host 1 ballots twice: at most one holds.
    c2.set_delay(Duration::ZERO, Duration::from_millis(400));
    let (a2, a1) = thread::scope(|sc| {
        let t = sc.spawn(|| r2.acquire(h2, excl()));
        thread::sleep(Duration::from_millis(100));
        let first = r1.acquire(h1, excl());
        c1.set_delay(Duration::ZERO, Duration::from_millis(300));
        let second = first.or_else(|_| r1.acquire(h1, excl()));
        (t.join().unwrap(), second)
    });
    let lvers = (
        a2.as_ref().map(|h| h.leader.lver).ok(),
        a1.as_ref().map(|h| h.leader.lver).ok(),
    );
    assert!(a2.is_err() || a1.is_err(), "both hold: {lvers:?}");
    if let Ok(h) = &a2 {
        assert!(h.leader.lver >= 3, "re-used released lver: {lvers:?}");
    }
}

//! lockd and real sanlock 3.8.5 on the same lease areas:
//! - sanlock's `direct dump` and `direct read_leader` read what lockd wrote
//!   and see the same owners, generations, lease versions and checksums;
//! - lockd opens lockspaces and resources made by `sanlock direct init`
//!   (512-byte sectors on a file, 4K sectors on a loop device) and acquires
//!   and releases on them;
//! - a sanlock daemon (host 1) and lockd in-process (host 2) fight over one
//!   resource and never hold it at once.
//!
//! Lockspaces use io_timeout 1 so joins take 2 s. Takeovers from dead hosts
//! are not tested here: with sanlock 3.8's fixed 60 s watchdog fire timeout
//! they take 8·io_timeout + 60 s.
//!
//! The contention run lasts 6 s; `SSV_CONTENTION_SECS=N` makes it a stress
//! run. When it finds both sides holding at once it keeps the intervals and
//! the daemon's log in `target/tmp/lockd_sanlock-overlap-<pid>.log`.

use anyhow::{bail, Context, Result};
use lockd::delta::{HostId, Lockspace, Renewer};
use lockd::direct::{self, DumpEntry};
use lockd::paxos::{AcquireOptions, Held, Resource};
use lockd::record::{Geometry, Leader, LeaderKind};
use lockd::timing::Timeouts;
use lockd::Error;
use ssv_tests::leases::{join, join_all, lease_dev, JoinSpec};
use ssv_tests::sanlock::{
    output_within, DumpRecord, InitOpts, LeaderDump, LockspaceSpec, ResourceSpec, Sanlock,
    SanlockDaemon,
};
use ssv_tests::{find_tool, skip_unless_sanlock, LoopDev, Scratch, MIB};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn scratch() -> Scratch {
    Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR")))).unwrap()
}

/// io_timeout 1 s, and sanlock 3.8's fixed 60 s watchdog fire timeout, so
/// both sides compute the same host_dead for each other (68 s).
fn timeouts() -> Timeouts {
    Timeouts::new(1, 60).unwrap()
}

fn nowait() -> AcquireOptions {
    AcquireOptions {
        owner_nowait: true,
        ..Default::default()
    }
}

fn shared() -> AcquireOptions {
    AcquireOptions {
        shared: true,
        ..Default::default()
    }
}

/// lockd's dump in sanlock's terms: records never acquired are left out
/// (sanlock prints a delta lease only once it has had an owner), shared
/// holders attach to their resource.
fn lockd_view(entries: &[DumpEntry]) -> Vec<DumpRecord> {
    let mut out: Vec<DumpRecord> = Vec::new();
    for e in entries {
        match e.kind {
            "lockspace" | "host" if e.owner_id == 0 && e.owner_generation == 0 => {}
            "lockspace" | "host" => out.push(DumpRecord::Host {
                offset: e.offset,
                lockspace: e.lockspace.clone(),
                host_name: e.resource.clone(),
                timestamp: e.timestamp,
                owner_id: e.owner_id,
                generation: e.owner_generation,
            }),
            "resource" => out.push(DumpRecord::Resource {
                offset: e.offset,
                lockspace: e.lockspace.clone(),
                resource: e.resource.clone(),
                timestamp: e.timestamp,
                owner_id: e.owner_id,
                generation: e.owner_generation,
                lver: e.lver,
                shared: Vec::new(),
            }),
            "shared" => match out.last_mut() {
                Some(DumpRecord::Resource { shared, .. }) => {
                    shared.push((e.owner_id, e.owner_generation))
                }
                other => panic!("lockd dump: shared entry {e:?} after {other:?}"),
            },
            k => panic!("lockd dump: unknown kind {k}"),
        }
    }
    out
}

/// Both dumps of `[offset, offset+len)`, asserted equal; returns sanlock's.
fn dumps_agree(sl: &Sanlock, path: &Path, offset: u64, len: u64) -> Vec<DumpRecord> {
    let dev = lease_dev(path, Duration::from_secs(5)).unwrap();
    let ours = lockd_view(&direct::dump(&dev, offset, len).unwrap());
    let theirs = sl.direct_dump(path, offset, len).unwrap();
    assert_eq!(
        ours, theirs,
        "lockd's dump (left) differs from sanlock's (right)"
    );
    theirs
}

fn resource_rec<'a>(recs: &'a [DumpRecord], name: &str) -> &'a DumpRecord {
    recs.iter()
        .find(|r| matches!(r, DumpRecord::Resource { resource, .. } if resource == name))
        .unwrap_or_else(|| panic!("no resource {name} in {recs:?}"))
}

/// (owner_id, generation, lver, timestamp != 0, shared holders)
fn res_state(recs: &[DumpRecord], name: &str) -> (u64, u64, u64, bool, Vec<(u64, u64)>) {
    match resource_rec(recs, name) {
        DumpRecord::Resource {
            owner_id,
            generation,
            lver,
            timestamp,
            shared,
            ..
        } => (
            *owner_id,
            *generation,
            *lver,
            *timestamp != 0,
            shared.clone(),
        ),
        DumpRecord::Host { .. } => unreachable!(),
    }
}

/// Every field `sanlock direct read_leader` prints equals lockd's decoding
/// of the same record, including the checksum lockd computes.
fn assert_leader_matches(s: &LeaderDump, l: &Leader, kind: LeaderKind) {
    let mut sector = vec![0u8; 512];
    l.encode(&mut sector);
    let checksum = u32::from_le_bytes(sector[168..172].try_into().unwrap());
    let (w1, w2, w3) = match kind {
        LeaderKind::Paxos => ("write_id", "write_generation", "write_timestamp"),
        // Delta leases carry the host-event payload there.
        LeaderKind::Delta => ("extra1", "extra2", "extra3"),
    };
    let nums: [(&str, u64); 15] = [
        ("magic", l.magic.into()),
        ("version", l.version.into()),
        ("flags", l.flags.into()),
        ("sector_size", l.sector_size.into()),
        ("num_hosts", l.num_hosts),
        ("max_hosts", l.max_hosts),
        ("owner_id", l.owner_id),
        ("owner_generation", l.owner_generation),
        ("lver", l.lver),
        ("timestamp", l.timestamp),
        ("checksum", checksum.into()),
        ("io_timeout", l.io_timeout.into()),
        (w1, l.write_id),
        (w2, l.write_generation),
        (w3, l.write_timestamp),
    ];
    for (key, want) in nums {
        assert_eq!(s.u64(key).unwrap(), want, "read_leader {key}: {s:?}");
    }
    assert_eq!(s.str("space_name").unwrap(), l.space_name.to_string());
    assert_eq!(s.str("resource_name").unwrap(), l.resource_name.to_string());
}

fn res(dev: &Arc<lockd::leaseio::LeaseDev>, offset: u64, ls: &str, name: &str) -> Resource {
    Resource::new(dev.clone(), offset, ls, name).unwrap()
}

/// lockd makes the areas and holds leases; sanlock reads them.
#[test]
fn sanlock_reads_lockd_areas() {
    skip_unless_sanlock!();
    let sl = Sanlock::find().unwrap();
    let s = scratch();
    let path = s.sparse_file("leases.img", 8 * MIB).unwrap();
    let dev = lease_dev(&path, Duration::from_secs(1)).unwrap();
    let g = Geometry::DEFAULT;
    let ls = "lslockd";
    direct::init_lockspace(&dev, g, 0, ls, 1).unwrap();
    for (i, name, hosts) in [(1, "rex", 2000), (2, "rsh", 2000), (3, "rfree", 2000)] {
        direct::init_resource(&dev, g, i * MIB, ls, name, hosts).unwrap();
    }
    direct::init_resource(&dev, g, 4 * MIB, ls, "r16", 16).unwrap();
    // Before anyone joined, sanlock sees four free resources and no hosts.
    let empty = dumps_agree(&sl, &path, 0, 5 * MIB);
    assert_eq!(empty.len(), 4, "{empty:?}");
    assert!(empty.iter().all(|r| matches!(
        r,
        DumpRecord::Resource {
            lver: 0,
            timestamp: 0,
            owner_id: 0,
            ..
        }
    )));

    let who: Vec<JoinSpec> = (1..=3)
        .map(|i| JoinSpec::new(i, &format!("lockd-host-{i}")))
        .collect();
    let hosts = join_all(&path, 0, ls, &who, timeouts()).unwrap();
    let renewers: Vec<_> = hosts.iter().map(|h| Renewer::start(h.clone())).collect();
    let (h1, h2, h3) = (&hosts[0], &hosts[1], &hosts[2]);
    let rex = res(&dev, MIB, ls, "rex");
    let rsh = res(&dev, 2 * MIB, ls, "rsh");
    let rfree = res(&dev, 3 * MIB, ls, "rfree");
    let r16 = res(&dev, 4 * MIB, ls, "r16");
    let ex = rex.acquire(h1, AcquireOptions::default()).unwrap();
    let sh2 = rsh.acquire(h2, shared()).unwrap();
    let sh3 = rsh.acquire(h3, shared()).unwrap();
    let fr = rfree.acquire(h2, AcquireOptions::default()).unwrap();
    rfree.release(h2, &fr).unwrap();
    let ex16 = r16.acquire(h3, AcquireOptions::default()).unwrap();
    // Stop renewing so delta timestamps hold still while both tools read.
    drop(renewers);

    let held = dumps_agree(&sl, &path, 0, 5 * MIB);
    let host_recs: Vec<_> = held
        .iter()
        .filter_map(|r| match r {
            DumpRecord::Host {
                offset,
                host_name,
                owner_id,
                generation,
                timestamp,
                ..
            } => Some((
                *offset,
                host_name.clone(),
                *owner_id,
                *generation,
                *timestamp != 0,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        host_recs,
        (1..=3u64)
            .map(|i| ((i - 1) * 512, format!("lockd-host-{i}"), i, 1, true))
            .collect::<Vec<_>>()
    );
    assert_eq!(res_state(&held, "rex"), (1, 1, 1, true, vec![]));
    // Each shared acquire is a full ballot (lver 1, 2); the short hold is over.
    let (_, _, lver, held_now, holders) = res_state(&held, "rsh");
    assert_eq!((lver, held_now, holders), (2, false, vec![(2, 1), (3, 1)]));
    assert_eq!(res_state(&held, "rfree"), (2, 1, 1, false, vec![]));
    assert_eq!(res_state(&held, "r16"), (3, 1, 1, true, vec![]));

    // read_leader: every field of every host record and leader.
    let lspace = Lockspace::open(dev.clone(), 0, ls).unwrap();
    for id in 1..=3 {
        let theirs = sl
            .read_leader_lockspace(&LockspaceSpec::new(ls, id, &path, 0))
            .unwrap();
        let ours = lspace.read_host(id).unwrap().leader;
        assert_leader_matches(&theirs, &ours, LeaderKind::Delta);
        assert_eq!(theirs.u64("io_timeout").unwrap(), 1);
    }
    for (r, name) in [
        (&rex, "rex"),
        (&rsh, "rsh"),
        (&rfree, "rfree"),
        (&r16, "r16"),
    ] {
        let theirs = sl
            .read_leader_resource(&ResourceSpec::new(ls, name, &path, r.offset))
            .unwrap();
        assert_leader_matches(&theirs, &r.read_leader().unwrap(), LeaderKind::Paxos);
    }
    let r16_leader = sl
        .read_leader_resource(&ResourceSpec::new(ls, "r16", &path, 4 * MIB))
        .unwrap();
    assert_eq!(
        (
            r16_leader.u64("num_hosts").unwrap(),
            r16_leader.u64("max_hosts").unwrap()
        ),
        (16, 2000)
    );

    // Releases show up too: leaders free (timestamp 0), no shared holders,
    // host ids free with owner and generation kept.
    rex.release(h1, &ex).unwrap();
    rsh.release(h2, &sh2).unwrap();
    rsh.release(h3, &sh3).unwrap();
    r16.release(h3, &ex16).unwrap();
    for h in &hosts {
        h.release().unwrap();
    }
    let released = dumps_agree(&sl, &path, 0, 5 * MIB);
    assert_eq!(res_state(&released, "rex"), (1, 1, 1, false, vec![]));
    assert_eq!(res_state(&released, "rsh").4, vec![]);
    assert_eq!(res_state(&released, "r16"), (3, 1, 1, false, vec![]));
    assert!(released.iter().all(|r| match r {
        DumpRecord::Host {
            timestamp,
            generation,
            ..
        } => *timestamp == 0 && *generation == 1,
        DumpRecord::Resource { .. } => true,
    }));
}

/// Exclusive and shared acquire/release by two lockd hosts on a lockspace
/// and resources `sanlock direct init` made; sanlock checks every step.
fn lockd_on_sanlock_areas(
    sl: &Sanlock,
    path: &Path,
    base: u64,
    geom: Geometry,
    space: &str,
    host_ids: (u64, u64),
) -> Result<()> {
    let opts = InitOpts {
        sector_size: Some(geom.sector_size),
        align_size: Some(geom.align_size),
        ..Default::default()
    };
    let a = geom.align_size;
    let ls_spec = LockspaceSpec::new(space, 0, path, base);
    let ra = ResourceSpec::new(space, "ra", path, base + a);
    let rb = ResourceSpec::new(space, "rb", path, base + 2 * a);
    sl.direct_init_lockspace(&ls_spec, &opts)?;
    sl.direct_init_resource(&ra, &opts)?;
    // A resource for few hosts (16, or up to the larger host id).
    let rb_hosts = 16.max(host_ids.0).max(host_ids.1);
    sl.direct_init_resource(
        &rb,
        &InitOpts {
            num_hosts: Some(rb_hosts),
            ..opts
        },
    )?;

    let dev = lease_dev(path, Duration::from_secs(1))?;
    let opened = Lockspace::open(dev.clone(), base, space)?;
    assert_eq!(
        opened.geom, geom,
        "geometry lockd learned from sanlock's record"
    );
    let (x, y) = host_ids;
    let hosts = join_all(
        path,
        base,
        space,
        &[
            JoinSpec::new(x, &format!("{space}-lockd-{x}")),
            JoinSpec::new(y, &format!("{space}-lockd-{y}")),
        ],
        timeouts(),
    )?;
    let _renew: Vec<_> = hosts.iter().map(|h| Renewer::start(h.clone())).collect();
    let (hx, hy) = (&hosts[0], &hosts[1]);
    let resa = res(&dev, ra.offset, space, "ra");
    let resb = res(&dev, rb.offset, space, "rb");

    // Host x takes ra; sanlock sees x as owner of lease version 1.
    let held = resa.acquire(hx, AcquireOptions::default())?;
    let l = sl.read_leader_resource(&ra)?;
    assert_leader_matches(&l, &resa.read_leader()?, LeaderKind::Paxos);
    assert_eq!(
        (l.u64("owner_id")?, l.u64("lver")?, l.u64("write_id")?),
        (x, 1, x)
    );
    assert_ne!(l.u64("timestamp")?, 0);
    assert_eq!(l.u64("sector_size")?, u64::from(geom.sector_size));
    assert_eq!(
        (l.u64("num_hosts")?, l.u64("max_hosts")?),
        (geom.max_hosts(), geom.max_hosts())
    );
    // Host y cannot have it while x holds it.
    let err = resa.acquire(hy, nowait()).unwrap_err();
    assert!(
        matches!(err, Error::HeldByLiveHost { owner_id, .. } | Error::OwnedRetry { owner_id, .. } if owner_id == x),
        "{err}"
    );
    resa.release(hx, &held)?;
    let l = sl.read_leader_resource(&ra)?;
    assert_eq!((l.u64("owner_id")?, l.u64("timestamp")?), (x, 0));
    let held = resa.acquire(hy, AcquireOptions::default())?;
    assert_eq!((held.leader.lver, held.leader.owner_id), (2, y));
    let l = sl.read_leader_resource(&ra)?;
    assert_eq!((l.u64("owner_id")?, l.u64("lver")?), (y, 2));
    resa.release(hy, &held)?;

    // rb (few hosts) shared by both; sanlock lists both holders.
    let shx = resb.acquire(hx, shared())?;
    let shy = resb.acquire(hy, shared())?;
    let lb = sl.read_leader_resource(&rb)?;
    assert_eq!(lb.u64("num_hosts")?, rb_hosts);
    let recs = sl.direct_dump(path, base, 3 * a)?;
    assert_eq!(
        res_state(&recs, "rb").4,
        vec![(x.min(y), 1), (x.max(y), 1)],
        "{recs:?}"
    );
    let err = resb.acquire(hx, nowait());
    assert!(err.is_err(), "an exclusive acquire over two shared holders");
    resb.release(hx, &shx)?;
    resb.release(hy, &shy)?;
    let recs = sl.direct_dump(path, base, 3 * a)?;
    assert_eq!(res_state(&recs, "rb").4, vec![]);

    // The host records lockd wrote, as sanlock reads them.
    for (id, h) in [(x, hx), (y, hy)] {
        let d = sl.read_leader_lockspace(&LockspaceSpec::new(space, id, path, base))?;
        assert_leader_matches(&d, &opened.read_host(id)?.leader, LeaderKind::Delta);
        assert_eq!(d.str("resource_name")?, h.host_name.to_string());
        assert_eq!((d.u64("owner_id")?, d.u64("io_timeout")?), (id, 1));
    }
    for h in &hosts {
        h.release()?;
    }
    Ok(())
}

#[test]
fn lockd_uses_sanlock_areas_on_512_byte_sectors() {
    skip_unless_sanlock!();
    let sl = Sanlock::find().unwrap();
    let s = scratch();
    let path = s.sparse_file("leases.img", 4 * MIB).unwrap();
    lockd_on_sanlock_areas(&sl, &path, 0, Geometry::DEFAULT, "lssan", (1, 2)).unwrap();
}

fn loop_skip_reason() -> Option<&'static str> {
    if find_tool("losetup").is_none() {
        return Some("losetup not found");
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("/dev/loop-control is missing");
    }
    None
}

/// A 4Kn "LUN": a loop device with 4096-byte logical sectors, with a
/// 4K/8M (2000 hosts) and a 4K/1M (250 hosts) lockspace on it.
#[test]
fn lockd_uses_sanlock_areas_on_4k_sectors() {
    skip_unless_sanlock!();
    if let Some(why) = loop_skip_reason() {
        eprintln!("SKIPPED (loop devices): {why}");
        return;
    }
    let sl = Sanlock::find().unwrap();
    let s = scratch();
    let file = s.sparse_file("lun4k.img", 40 * MIB).unwrap();
    let lo = LoopDev::attach_with_sector_size(&file, 4096).unwrap();
    let dev = lease_dev(lo.path(), Duration::from_secs(1)).unwrap();
    assert_eq!(dev.sector_size(), 4096);
    let g8 = Geometry::new(4096, 8 * MIB).unwrap();
    let g1 = Geometry::new(4096, MIB).unwrap();
    assert_eq!((g8.max_hosts(), g1.max_hosts()), (2000, 250));
    let p = lo.path().to_path_buf();
    let sl2 = sl.clone();
    // The two lockspaces join in parallel (2 s each).
    let t = std::thread::spawn(move || lockd_on_sanlock_areas(&sl2, &p, 0, g8, "ls4k8m", (1, 7)));
    lockd_on_sanlock_areas(&sl, lo.path(), 32 * MIB, g1, "ls4k1m", (3, 250)).unwrap();
    t.join().unwrap().unwrap();
    // Both tools agree on everything left on the device.
    let recs = dumps_agree(&sl, lo.path(), 0, 24 * MIB);
    assert_eq!(res_state(&recs, "ra").2, 2);
    let recs = dumps_agree(&sl, lo.path(), 32 * MIB, 3 * MIB);
    assert_eq!(res_state(&recs, "ra").2, 2);
    drop(dev);
    lo.detach().unwrap();
}

/// What the sanlock side runs while holding the lease: checks the owner
/// file is empty, claims it, holds 10 ms, checks nobody else claimed it,
/// clears it, and logs its interval (wall-clock ns, as lockd's side does).
const SANLOCK_HOLDER: &str = r#"own="$1"; log="$2"
o=$(cat "$own")
[ -z "$o" ] || echo "OVERLAP sanlock saw $o" >> "$log"
echo sanlock > "$own"
s=$(date +%s%N)
sleep 0.01
o=$(cat "$own")
[ "$o" = sanlock ] || echo "OVERLAP sanlock found $o" >> "$log"
e=$(date +%s%N)
: > "$own"
echo "sanlock $s $e" >> "$log"
"#;

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn log_tail(d: &SanlockDaemon) -> String {
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// What lockd's side of the contention run saw.
struct LockdRun {
    /// Wall-clock ns while it held the lease (inside acquire..release).
    intervals: Vec<(u128, u128)>,
    /// Its owner-file checks that failed.
    overlaps: Vec<String>,
    /// Acquires refused because the other side held or took the lease.
    busy: usize,
}

/// lockd's side of the contention run: try, hold 10 ms under the same
/// owner-file check, release, pause; until `until`.
fn lockd_contender(r: &Resource, me: &HostId, owner: &Path, until: Instant) -> Result<LockdRun> {
    let mut intervals = Vec::new();
    let mut overlaps = Vec::new();
    let mut busy = 0;
    let pause = |max_ms: u64| {
        std::thread::sleep(
            lockd::clock::jitter(Duration::from_millis(max_ms)) + Duration::from_millis(2),
        )
    };
    while Instant::now() < until {
        let held: Held = match r.acquire(me, nowait()) {
            Ok(h) => h,
            Err(e) if e.is_busy() => {
                busy += 1;
                pause(15);
                continue;
            }
            Err(e) => bail!("lockd acquire: {e}"),
        };
        let o = std::fs::read_to_string(owner)?;
        if !o.trim().is_empty() {
            overlaps.push(format!("lockd saw {}", o.trim()));
        }
        std::fs::write(owner, "lockd\n")?;
        let s = wall_ns();
        std::thread::sleep(Duration::from_millis(10));
        let o = std::fs::read_to_string(owner)?;
        if o.trim() != "lockd" {
            overlaps.push(format!("lockd found {}", o.trim()));
        }
        let e = wall_ns();
        std::fs::write(owner, "")?;
        intervals.push((s, e));
        r.release(me, &held)
            .with_context(|| format!("lockd release of lver {}", held.leader.lver))?;
        pause(30);
    }
    Ok(LockdRun {
        intervals,
        overlaps,
        busy,
    })
}

/// sanlock's side: `client command -r RES -c sh SANLOCK_HOLDER` until
/// `until`. Returns the runs and the failed acquires by sanlock's result.
fn sanlock_contender(
    d: &SanlockDaemon,
    rspec: &ResourceSpec,
    owner: &Path,
    log: &Path,
    until: Instant,
) -> Result<(usize, BTreeMap<String, usize>)> {
    let mut fails = BTreeMap::new();
    let mut runs = 0;
    while Instant::now() < until {
        let mut cmd = d.command(
            std::slice::from_ref(rspec),
            &["/bin/sh", "-c", SANLOCK_HOLDER, "sh"],
        );
        cmd.arg(owner).arg(log);
        let out = output_within(cmd, Duration::from_secs(30))?;
        runs += 1;
        if !out.status.success() {
            let why = out
                .stdout
                .lines()
                .find(|l| l.starts_with("acquire done"))
                .unwrap_or("no acquire line")
                .to_string();
            *fails.entry(why).or_insert(0) += 1;
        }
    }
    Ok((runs, fails))
}

/// A sanlock daemon (host 1) and lockd (host 2) in one lockspace: each sees
/// the other hold the resource, then both try to take it over and over for
/// a few seconds; the holders' own checks and their logged intervals show
/// they never held it at once, and each side won some rounds.
#[test]
fn lockd_and_sanlock_daemon_exclude_each_other() {
    skip_unless_sanlock!();
    let sl = Sanlock::find().unwrap();
    let s = scratch();
    let path = s.sparse_file("leases.img", 4 * MIB).unwrap();
    let dev = lease_dev(&path, Duration::from_secs(1)).unwrap();
    let space = "mixed";
    // lockd makes the lockspace (io_timeout 1 in its free records, so the
    // daemon's join waits 2 s), sanlock the resource.
    direct::init_lockspace(&dev, Geometry::DEFAULT, 0, space, 1).unwrap();
    let rspec = ResourceSpec::new(space, "res", &path, MIB);
    sl.direct_init_resource(&rspec, &InitOpts::default())
        .unwrap();

    let daemon = SanlockDaemon::start("sanlock-host-1").unwrap();
    let ls1 = LockspaceSpec::new(space, 1, &path, 0);
    let joining = {
        let p = path.clone();
        std::thread::spawn(move || {
            join(&p, 0, space, &JoinSpec::new(2, "lockd-host-2"), timeouts())
        })
    };
    let took = daemon.add_lockspace(&ls1, Some(1)).unwrap();
    let (me, _) = joining.join().unwrap().unwrap();
    let _renew = Renewer::start(me.clone());
    assert!(
        took < Duration::from_secs(10),
        "add_lockspace with io_timeout 1 took {took:?}"
    );
    let r = res(&dev, MIB, space, "res");

    // sanlock holds it (for a registered pid): lockd sees host 1 as owner.
    let reg = daemon.register_process().unwrap();
    daemon.acquire(&rspec, reg.pid()).unwrap();
    let err = r.acquire(&me, nowait()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::HeldByLiveHost { owner_id: 1, .. } | Error::OwnedRetry { owner_id: 1, .. }
        ),
        "{err}"
    );
    daemon.release(&rspec, reg.pid()).unwrap();
    // lockd holds it: sanlock is refused with SANLK_ACQUIRE_IDLIVE (-243).
    let held = r.acquire(&me, AcquireOptions::default()).unwrap();
    assert_eq!((held.leader.owner_id, held.leader.lver), (2, 2));
    let rv = daemon.try_acquire(&rspec, reg.pid()).unwrap();
    assert_eq!(
        rv,
        -243,
        "sanlock acquire over lockd's hold; log:\n{}",
        log_tail(&daemon)
    );
    r.release(&me, &held).unwrap();
    drop(reg);

    // Contention.
    let owner = s.path().join("owner");
    let log = s.path().join("sanlock-holds.log");
    std::fs::write(&owner, "").unwrap();
    std::fs::write(&log, "").unwrap();
    // SSV_CONTENTION_SECS=N runs longer (a stress run); 6 s by default.
    let secs = std::env::var("SSV_CONTENTION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    let until = Instant::now() + Duration::from_secs(secs);
    let (sanlock_res, lockd_res) = std::thread::scope(|sc| {
        let theirs = sc.spawn(|| sanlock_contender(&daemon, &rspec, &owner, &log, until));
        let ours = lockd_contender(&r, &me, &owner, until);
        (theirs.join().unwrap(), ours)
    });
    let (runs, fails) = sanlock_res.unwrap();
    let LockdRun {
        intervals: lockd_intervals,
        overlaps: lockd_overlaps,
        busy: lockd_busy,
    } = lockd_res.unwrap();

    let text = std::fs::read_to_string(&log).unwrap();
    let mut overlaps: Vec<String> = lockd_overlaps;
    let mut all: Vec<(u128, u128, &str)> = lockd_intervals
        .iter()
        .map(|&(a, b)| (a, b, "lockd"))
        .collect();
    let mut sanlock_wins = 0;
    for line in text.lines() {
        if line.starts_with("OVERLAP") {
            overlaps.push(line.to_string());
            continue;
        }
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.as_slice() {
            ["sanlock", a, b] => {
                all.push((a.parse().unwrap(), b.parse().unwrap(), "sanlock"));
                sanlock_wins += 1;
            }
            _ => panic!("unexpected holder log line {line:?}"),
        }
    }
    all.sort();
    for w in all.windows(2) {
        if w[1].0 <= w[0].1 {
            overlaps.push(format!("{:?} overlaps {:?}", w[0], w[1]));
        }
    }
    let lockd_wins = lockd_intervals.len();
    eprintln!(
        "contention: lockd won {lockd_wins} (busy {lockd_busy}), sanlock won {sanlock_wins} of {runs} \
         (failures {fails:?})"
    );
    if !overlaps.is_empty() {
        // Keep the evidence: the daemon's log and the holders' intervals.
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("lockd_sanlock-overlap-{}.log", std::process::id()));
        let mut report = format!("overlaps: {overlaps:?}\nintervals:\n");
        for (a, b, who) in &all {
            report.push_str(&format!("{who} {a} {b}\n"));
        }
        report.push_str("sanlock daemon log:\n");
        report.push_str(&daemon.log());
        std::fs::write(&keep, report).unwrap();
        panic!(
            "both held the lease at once: {overlaps:?}; details in {}",
            keep.display()
        );
    }
    // sanlock's refusals are the ones a live holder causes: -243 IDLIVE
    // (held by live host 2), -244/-245 (this lease version went to the other
    // host), or -11 EAGAIN (its own previous holder's release is still in
    // flight: the daemon releases after the command exits).
    let expected = ["-11", "-243", "-244", "-245"].map(|c| format!("acquire done {c}"));
    assert!(
        fails.keys().all(|k| expected.contains(k)),
        "unexpected sanlock failures {fails:?}; log:\n{}",
        log_tail(&daemon)
    );
    assert!(lockd_wins > 0, "lockd never won");
    assert!(sanlock_wins > 0, "sanlock never won; failures {fails:?}");
    // Each win is its own lease version (a version may also go unused when
    // one side's ballot commits the other as owner and the other retries).
    let l = sl.read_leader_resource(&rspec).unwrap();
    assert!(
        l.u64("lver").unwrap() >= 2 + (lockd_wins + sanlock_wins) as u64,
        "lver {} after {} wins",
        l.u64("lver").unwrap(),
        2 + lockd_wins + sanlock_wins
    );
    drop(daemon);
}

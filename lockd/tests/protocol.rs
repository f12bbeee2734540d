//! The lease protocol, in one process: several hosts (each its own
//! `LeaseDev` on one shared file, as hosts each open the LUN) run the delta
//! and paxos steps against each other.

use std::sync::Arc;
use std::time::Duration;

use lockd::delta::{HostId, Lockspace, Renewer};
use lockd::leaseio::LeaseDev;
use lockd::paxos::{AcquireOptions, Resource};
use lockd::record::{Geometry, Name};
use lockd::timing::Timeouts;
use lockd::{direct, Error};
use san::{FileDev, OpenOptions};

const MIB: u64 = 1 << 20;
const LS: &str = "pool";

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

fn dev(s: &Shared) -> Arc<LeaseDev> {
    let f = FileDev::open(&s.path, &OpenOptions::new().sync(true)).unwrap();
    Arc::new(LeaseDev::new(
        Arc::new(f),
        s.path.display().to_string(),
        Duration::from_secs(1),
    ))
}

fn timeouts() -> Timeouts {
    Timeouts::new(1, 3).unwrap()
}

/// Joins hosts `ids` in parallel (each join waits delta_short_delay).
fn join(s: &Shared, ids: &[u64]) -> Vec<Arc<HostId>> {
    let handles: Vec<_> = ids
        .iter()
        .map(|&id| {
            let d = dev(s);
            std::thread::spawn(move || {
                let ls = Lockspace::open(d, 0, LS).unwrap();
                let name = Name::new(&format!("host-{id}")).unwrap();
                Arc::new(HostId::acquire(ls, id, name, timeouts()).unwrap())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn setup(num_hosts: u64) -> Shared {
    let s = shared(8 * MIB);
    let d = dev(&s);
    direct::init_lockspace(&d, Geometry::DEFAULT, 0, LS, 1).unwrap();
    direct::init_resource(&d, Geometry::DEFAULT, MIB, LS, "r1", num_hosts).unwrap();
    s
}

#[test]
fn exclusive_acquire_release_costs_six_and_three_ios() {
    let s = setup(2000);
    let hosts = join(&s, &[1, 2]);
    let _renew: Vec<_> = hosts.iter().map(|h| Renewer::start(h.clone())).collect();
    let d = dev(&s);
    let res = Resource::new(d.clone(), MIB, LS, "r1").unwrap();
    // First acquire learns num_hosts (one extra leader read).
    let held = res.acquire(&hosts[0], AcquireOptions::default()).unwrap();
    res.release(&hosts[0], &held).unwrap();
    let before = d.stats.snapshot();
    let held = res.acquire(&hosts[0], AcquireOptions::default()).unwrap();
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
        .acquire(
            &hosts[1],
            AcquireOptions {
                owner_nowait: true,
                ..Default::default()
            },
        )
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
        .acquire(&hosts[1], AcquireOptions::default())
        .unwrap();
    assert_eq!((held2.leader.lver, held2.leader.owner_id), (3, 2));
    let _ = Error::Cancelled;
}

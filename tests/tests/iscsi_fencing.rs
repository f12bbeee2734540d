//! Fencing with SCSI-3 persistent reservations over our initiator and
//! multipath, against real tgtd (which lacks PREEMPT AND ABORT, so the
//! fallback to PREEMPT is exercised) and against our target: host A registers on both its paths
//! and reserves Write Exclusive – Registrants Only, B registers, an
//! unregistered host may read but not write; B preempts A; A's writes end
//! in RESERVATION CONFLICT, its reads still work, and when A's paths log in
//! again it finds its key gone and does not register by itself.

use san::iscsi::{
    login, login::isid, IscsiLun, LoginOptions, Multipath, MultipathOptions, PathConfig, PathEvent,
    Selector, Session,
};
use san::scsi::PrType;
use san::target::{LunConfig, TargetConfig, TargetServer};
use san::{BlockDev, FileDev, OpenOptions};
use ssv_tests::tgtd::{LunOpts, Tgtd, TgtdOpts};
use ssv_tests::{skip_unless_tgtd, Scratch, MIB};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-11.org.ssv.test:fence";
const HOST_A: &str = "iqn.2026-11.org.ssv.host:a";
const HOST_B: &str = "iqn.2026-11.org.ssv.host:b";
const HOST_C: &str = "iqn.2026-11.org.ssv.host:c";
const KEY_A: u64 = 0x5353_5600_0000_0001;
const KEY_B: u64 = 0x5353_5600_0000_0002;
const WERO: PrType = PrType::WriteExclusiveRegistrantsOnly;

fn map(host: &str, portals: &[SocketAddr]) -> Multipath {
    let paths = portals
        .iter()
        .enumerate()
        .map(|(i, &portal)| {
            let mut login = LoginOptions::new(host, isid(7, i as u16));
            login.timeout = Duration::from_secs(2);
            PathConfig {
                portal,
                target: IQN.into(),
                lun: 1,
                login,
            }
        })
        .collect();
    let opts = MultipathOptions {
        selector: Selector::RoundRobin,
        polling_interval: Duration::from_millis(300),
        io_timeout: Duration::from_secs(2),
        ..MultipathOptions::default()
    };
    Multipath::open(paths, opts).unwrap()
}

fn conflict(r: san::Result<()>) -> bool {
    matches!(r, Err(e) if e.to_string().contains("RESERVATION CONFLICT"))
}

#[test]
fn a_preempted_host_cannot_write_and_does_not_come_back() {
    skip_unless_tgtd!();
    let dir = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR")))).unwrap();
    let file = dir.path().join("lun");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let mut t = Tgtd::start(TgtdOpts::with_portals(&["127.0.0.2"])).unwrap();
    t.add_target(1, IQN).unwrap();
    t.add_lun(1, 1, &file, &LunOpts::default()).unwrap();
    t.bind_all(1).unwrap();
    let portals: Vec<SocketAddr> = ["127.0.0.1", "127.0.0.2"]
        .iter()
        .map(|ip| format!("{ip}:{}", t.port()).parse().unwrap())
        .collect();
    // tgtd closes one nexus at a time.
    let cut_a = || {
        for n in t.sessions(1).unwrap() {
            if n.initiator == HOST_A {
                for conn in &n.connections {
                    t.kill_connection(1, n.sid, conn.cid).unwrap();
                }
            }
        }
    };
    scenario(&portals, &cut_a);
    t.stop().unwrap();
}

/// The same against our target, which has PREEMPT AND ABORT and keeps
/// registrations per I_T nexus across reconnects.
#[test]
fn the_same_against_our_target() {
    let dir = tempfile::tempdir().unwrap();
    let dev = FileDev::open(
        dir.path().join("lun"),
        &OpenOptions::new().create_size(Some(16 * MIB)),
    )
    .unwrap();
    let server = TargetServer::start(TargetConfig::new(
        IQN,
        vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.2:0".parse().unwrap(),
        ],
        vec![LunConfig::new(1, Arc::new(dev))],
    ))
    .unwrap();
    // Our fault hook drops every connection of a portal (B's too; B logs
    // in again and keeps its registration).
    let cut_a = || {
        server.faults().drop_connections(0);
        server.faults().drop_connections(1);
    };
    scenario(&server.portals(), &cut_a);
    server.stop();
}

/// A holds WE-RO over both paths, B registers over path 1, C is not
/// registered; B preempts A; then `cut_a` drops A's connections.
fn scenario(portals: &[SocketAddr], cut_a: &dyn Fn()) {
    let a = map(HOST_A, portals);
    let b = map(HOST_B, &portals[1..]);
    let c = {
        let conn = login(
            portals[0],
            Some(IQN),
            &LoginOptions::new(HOST_C, isid(9, 0)),
        )
        .unwrap();
        IscsiLun::open(Session::new(conn), 1).unwrap()
    };
    let data = vec![0xa5u8; 4096];
    let mut back = vec![0u8; 4096];

    a.register(KEY_A).unwrap();
    a.reserve(WERO).unwrap();
    b.register(KEY_B).unwrap();
    let mut keys = b.read_keys().unwrap();
    keys.sort();
    keys.dedup();
    assert_eq!(keys, vec![KEY_A, KEY_B]);
    // Both of A's paths may write (each nexus registered), B too.
    for _ in 0..4 {
        a.write_at(&data, 0).unwrap();
    }
    b.write_at(&data, 4096).unwrap();
    // Not registered: reads yes, writes no.
    c.read_at(&mut back, 0).unwrap();
    assert_eq!(back, data);
    assert!(conflict(c.write_at(&data, 0)), "an unregistered host wrote");

    // B fences A.
    b.preempt(KEY_A, WERO).unwrap();
    assert_eq!(b.read_keys().unwrap(), vec![KEY_B]);
    let r = a.write_at(&data, 0);
    assert!(conflict(r), "a preempted host wrote");
    a.read_at(&mut back, 0).unwrap();
    b.write_at(&data, 8192).unwrap();

    // A's paths log in again: it finds its key gone and stays fenced.
    let (tx, events) = channel();
    a.subscribe(tx);
    cut_a();
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        match events.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(PathEvent::Fenced) => break,
            Ok(_) => {}
            Err(_) => panic!("no Fenced event after A's paths came back"),
        }
    }
    assert!(a.fenced());
    // Wait for a path of A to be up again, then check it still cannot write.
    let end = Instant::now() + Duration::from_secs(15);
    while !a.status().iter().any(|p| p.up) {
        assert!(Instant::now() < end, "A's paths did not return");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        conflict(a.write_at(&data, 0)),
        "a fenced host wrote after reconnecting"
    );
    a.read_at(&mut back, 0).unwrap();
    assert_eq!(
        b.read_keys().unwrap(),
        vec![KEY_B],
        "A registered again by itself"
    );
    drop((a, b, c));
}

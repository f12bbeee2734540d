//! Our iSCSI initiator against real tgtd on two portals (127.0.0.1 and
//! 127.0.0.2): SendTargets on each portal, login with one ISID per path,
//! the LUN as a `BlockDev` on both paths with the same WWID, data written
//! through one path read back through the other and found in the backing
//! file, 1 MiB writes through immediate data and R2Ts, CRC32C digests,
//! CHAP accepted and refused, and a killed connection reported as an error.

use san::discovery::{discover_luns, LunPath};
use san::iscsi::{discover, login, login::isid, Chap, IscsiError, IscsiLun, LoginOptions, Session};
use san::BlockDev;
use ssv_tests::tgtd::{LunOpts, Tgtd, TgtdOpts};
use ssv_tests::{skip_unless_tgtd, Scratch, MIB};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;

const IQN: &str = "iqn.2026-11.org.ssv.test:initiator";
const IQN_DIGEST: &str = "iqn.2026-11.org.ssv.test:digests";
const IQN_CHAP: &str = "iqn.2026-11.org.ssv.test:chap";
const ME: &str = "iqn.2026-11.org.ssv.host:one";

fn addr(t: &Tgtd, ip: &str) -> SocketAddr {
    format!("{ip}:{}", t.port()).parse().unwrap()
}

fn opts(path: u16) -> LoginOptions {
    LoginOptions::new(ME, isid(0x00ab_cdef, path))
}

fn open(t: &Tgtd, ip: &str, iqn: &str, o: &LoginOptions) -> IscsiLun {
    let c = login(addr(t, ip), Some(iqn), o).unwrap();
    IscsiLun::open(Session::new(c), 1).unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn two_paths_one_lun_data_digests_and_chap() {
    skip_unless_tgtd!();
    let dir = Scratch::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR")))).unwrap();
    let mut t = Tgtd::start(TgtdOpts::with_portals(&["127.0.0.2"])).unwrap();
    let files: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            let p = dir.path().join(n);
            std::fs::File::create(&p)
                .unwrap()
                .set_len(64 * MIB)
                .unwrap();
            p
        })
        .collect();
    t.add_target(1, IQN).unwrap();
    let ids = t.add_lun(1, 1, &files[0], &LunOpts::default()).unwrap();
    t.bind_all(1).unwrap();
    t.add_target(2, IQN_DIGEST).unwrap();
    t.add_lun(2, 1, &files[1], &LunOpts::default()).unwrap();
    t.bind_all(2).unwrap();
    t.set_target_param(2, "HeaderDigest", "CRC32C,None")
        .unwrap();
    t.set_target_param(2, "DataDigest", "CRC32C,None").unwrap();
    t.add_target(3, IQN_CHAP).unwrap();
    t.add_lun(3, 1, &files[2], &LunOpts::default()).unwrap();
    t.bind_all(3).unwrap();
    t.add_account("ssvhost", "secret-of-16-chars").unwrap();
    t.bind_account(3, "ssvhost", false).unwrap();

    // tgtd lists only the portal asked: discover on each.
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let found = discover(addr(&t, ip), &opts(9)).unwrap();
        let ours = found.iter().find(|d| d.name == IQN).expect("target listed");
        assert_eq!(ours.portals.len(), 1, "{found:?}");
        assert_eq!(ours.portals[0].0, addr(&t, ip), "{found:?}");
    }

    // The inventory ssvd starts from: each LU once, with both paths; the
    // CHAP target (no credentials here) is a problem, not a crash; a LUN
    // that copies another's WWID with a different size is a conflict.
    let clash = dir.path().join("clash");
    std::fs::File::create(&clash)
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    t.add_target(4, "iqn.2026-11.org.ssv.test:clash").unwrap();
    t.add_lun(
        4,
        1,
        &clash,
        &LunOpts {
            scsi_id: Some(ids.scsi_id.clone()),
            scsi_sn: Some("other-serial".into()),
            ..LunOpts::default()
        },
    )
    .unwrap();
    t.bind_all(4).unwrap();
    let local = dir.path().join("local");
    std::fs::File::create(&local)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let inv = discover_luns(
        &[addr(&t, "127.0.0.1"), addr(&t, "127.0.0.2")],
        std::slice::from_ref(&local),
        &opts(8),
    );
    let lu = inv
        .luns
        .iter()
        .find(|l| l.identity == format!("wwid:{}", ids.wwid()))
        .unwrap_or_else(|| panic!("{inv:?}"));
    assert_eq!((lu.size, lu.logical_sector), (64 * MIB, 512));
    assert_eq!(lu.paths.len(), 2, "{lu:?}");
    assert!(lu
        .paths
        .iter()
        .all(|p| matches!(p, LunPath::Iscsi { target, lun: 1, .. } if target == IQN)));
    assert_eq!(inv.luns.len(), 3, "two iSCSI LUs and the file: {inv:?}");
    assert!(inv
        .luns
        .iter()
        .any(|l| l.paths == vec![LunPath::Local(local.clone())] && l.size == 8 * MIB));
    assert!(
        inv.problems.iter().any(|p| p.contains(IQN_CHAP)),
        "{:?}",
        inv.problems
    );
    assert!(
        inv.problems
            .iter()
            .any(|p| p.contains("claimed by different LUs")),
        "{:?}",
        inv.problems
    );
    t.delete_target(4).unwrap();

    // One LUN, two paths, one identity.
    let p1 = open(&t, "127.0.0.1", IQN, &opts(1));
    let p2 = open(&t, "127.0.0.2", IQN, &opts(2));
    assert_eq!(p1.wwid(), ids.wwid());
    assert_eq!(p1.identity(), p2.identity());
    assert_eq!(p1.size(), 64 * MIB);
    assert_eq!(p1.logical_sector_size(), 512);
    let nexuses = t.sessions(1).unwrap();
    assert_eq!(nexuses.len(), 2, "one nexus per path: {nexuses:?}");

    // Small and large writes on path 1 (immediate data, then R2Ts for the
    // rest: tgtd asks InitialR2T=Yes, 8 KiB per PDU), read on path 2.
    let big = pattern(3 * MIB as usize + 4096, 7);
    p1.write_at(&big, 5 * MIB).unwrap();
    let small = pattern(512, 9);
    p1.write_at(&small, 512).unwrap();
    p1.flush().unwrap();
    let mut back = vec![0u8; big.len()];
    p2.read_at(&mut back, 5 * MIB).unwrap();
    assert!(back == big, "path 2 reads what path 1 wrote");
    let mut s = vec![0u8; 512];
    p2.read_at(&mut s, 512).unwrap();
    assert_eq!(s, small);
    // ... and it is in the backing file.
    let f = std::fs::File::open(&files[0]).unwrap();
    let mut on_disk = vec![0u8; big.len()];
    f.read_exact_at(&mut on_disk, 5 * MIB).unwrap();
    assert!(on_disk == big, "backing file holds the data");
    // Many threads on one session: commands overlap on the wire (the
    // target's window is 128), each thread's data stays its own.
    std::thread::scope(|sc| {
        for th in 0..8u64 {
            let p1 = &p1;
            sc.spawn(move || {
                let base = 16 * MIB + th * MIB;
                for i in 0..32u64 {
                    let len = 4096 * (1 + (i % 5) as usize);
                    let off = base + (i * 24 * 1024) % (MIB - 20 * 1024);
                    let data = pattern(len, (th * 32 + i) as u8);
                    p1.write_at(&data, off).unwrap();
                    let mut back = vec![0u8; len];
                    p1.read_at(&mut back, off).unwrap();
                    assert!(back == data, "thread {th} request {i}");
                }
            });
        }
    });
    // tgtd lacks COMPARE AND WRITE (though VPD B0 announces it): a clear
    // error, nothing written.
    let e = p1
        .compare_and_write(512, &small, &small)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("COMPARE AND WRITE") && e.contains("05/20/00"),
        "{e}"
    );
    // Out of range and misaligned I/O never reach the wire.
    assert!(p1.write_at(&small, 64 * MIB).is_err());
    assert!(p1.read_at(&mut s[..100], 0).is_err());

    // Digests: offered and negotiated, then a checked round trip.
    let mut od = opts(3);
    od.offer.header_digest = true;
    od.offer.data_digest = true;
    let c = login(addr(&t, "127.0.0.1"), Some(IQN_DIGEST), &od).unwrap();
    assert!(
        c.params.header_digest && c.params.data_digest,
        "{:?}",
        c.params
    );
    let d = IscsiLun::open(Session::new(c), 1).unwrap();
    d.write_at(&big, 0).unwrap();
    let mut back = vec![0u8; big.len()];
    d.read_at(&mut back, 0).unwrap();
    assert!(back == big);

    // CHAP: the right secret logs in, a wrong one is refused with a reason.
    let mut oc = opts(4);
    oc.chap = Some(Chap {
        user: "ssvhost".into(),
        secret: b"secret-of-16-chars".to_vec(),
    });
    let c = open(&t, "127.0.0.1", IQN_CHAP, &oc);
    assert!(c.size() == 64 * MIB);
    oc.chap = Some(Chap {
        user: "ssvhost".into(),
        secret: b"wrong-secret-0000".to_vec(),
    });
    match login(addr(&t, "127.0.0.1"), Some(IQN_CHAP), &oc) {
        Err(
            e @ IscsiError::LoginRejected {
                class: 2,
                detail: 1,
                ..
            },
        ) => {
            assert!(e.to_string().contains("authentication failed"), "{e}")
        }
        other => panic!("wrong CHAP secret: {:?}", other.map(|c| c.params)),
    }
    // No CHAP offered to a target that requires it: refused too.
    assert!(login(addr(&t, "127.0.0.1"), Some(IQN_CHAP), &opts(5)).is_err());
    // An unknown target name: refused, saying so.
    match login(
        addr(&t, "127.0.0.1"),
        Some("iqn.2026-11.org.ssv.test:nope"),
        &opts(6),
    ) {
        Err(e) => assert!(e.to_string().contains("not found"), "{e}"),
        Ok(_) => panic!("login to a target that does not exist"),
    }

    // A killed connection fails the next command (with the path named);
    // the other path goes on.
    let all = t.sessions(1).unwrap();
    let victim = all[0].sid;
    t.kill_connection(1, victim, 0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r1 = p1.read_at(&mut s, 0);
    let r2 = p2.read_at(&mut s, 0);
    assert!(
        r1.is_err() != r2.is_err(),
        "exactly the killed path fails: {r1:?} {r2:?}"
    );
}

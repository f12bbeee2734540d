//! Our target's login and discovery, driven by our own initiator: every
//! portal is listed by SendTargets, CHAP is enforced, unknown names and bad
//! secrets are refused with the RFC's status codes, a second login of
//! the same I_T nexus reinstates the session, and targets added to and
//! removed from a running server share its portals.

mod target_common;

use san::iscsi::{discover, Chap, IscsiError, IscsiLun};
use san::target::LunConfig;
use san::{BlockDev, FileDev, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use target_common::*;

fn chap(secret: &str) -> Chap {
    Chap {
        user: "ssv".into(),
        secret: secret.as_bytes().to_vec(),
    }
}

fn refused(r: Result<impl Sized, IscsiError>) -> (u8, u8) {
    match r {
        Err(IscsiError::LoginRejected { class, detail, .. }) => (class, detail),
        Err(e) => panic!("expected a login refusal, got {e}"),
        Ok(_) => panic!("login succeeded"),
    }
}

#[test]
fn discovery_lists_every_portal_with_its_group() {
    let f = start(Setup::default());
    for i in 0..2 {
        let found = discover(f.portal(i), &options(HOST_A, 1)).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, IQN);
        assert_eq!(
            found[0].portals,
            vec![(f.portal(0), 1), (f.portal(1), 2)],
            "asked on portal {i}"
        );
    }
}

#[test]
fn login_opens_the_lun_with_a_stable_wwid() {
    let f = start(Setup::default());
    let a = IscsiLun::open(connect(f.portal(0), HOST_A, 1), LUN).unwrap();
    let b = IscsiLun::open(connect(f.portal(1), HOST_A, 2), LUN).unwrap();
    assert_eq!(a.size(), LUN_SIZE);
    assert_eq!(a.logical_sector_size(), BLOCK as u32);
    assert!(a.wwid().starts_with("36"), "NAA-6 WWID: {}", a.wwid());
    assert_eq!(a.wwid(), b.wwid(), "both paths name the same LU");
    assert!(a.capacity().lbpme && a.capacity().lbprz, "thin LU");
}

#[test]
fn chap_is_required_and_checked() {
    let f = start(Setup {
        chap: Some(chap("a-secret-of-16by")),
        ..Setup::default()
    });
    let mut o = options(HOST_A, 1);
    o.chap = Some(chap("a-secret-of-16by"));
    let s = connect_with(f.portal(0), &o).unwrap();
    clear_ua(&s);
    assert_eq!(discover(f.portal(1), &o).unwrap()[0].portals.len(), 2);

    o.chap = Some(chap("the-wrong-secret"));
    assert_eq!(refused(connect_with(f.portal(0), &o)), (2, 1));
    o.chap = None;
    assert_eq!(refused(connect_with(f.portal(0), &o)), (2, 1));
}

#[test]
fn unknown_target_is_refused() {
    let f = start(Setup::default());
    let r = san::iscsi::login(
        f.portal(0),
        Some("iqn.2026-01.test:nope"),
        &options(HOST_A, 1),
    );
    assert_eq!(refused(r), (2, 3));
}

#[test]
fn a_second_login_of_the_nexus_reinstates_the_session() {
    let f = start(Setup::default());
    let old = connect(f.portal(0), HOST_A, 1);
    clear_ua(&old);
    let new = connect(f.portal(0), HOST_A, 1);
    // The new session is a new nexus instance: POWER ON/RESET first.
    clear_ua(&new);
    let b = san::scsi::Cdb::TestUnitReady.encode();
    let r = old.execute(
        san::iscsi::pdu::encode_lun(LUN),
        &b[..6],
        san::iscsi::DataPhase::None,
    );
    assert!(r.is_err(), "the old session was closed: {r:?}");
    wait_until("one live connection", Duration::from_secs(5), || {
        f.server.stats().live == 1
    });
    // Another ISID is another nexus: both stay.
    let other = connect(f.portal(0), HOST_A, 2);
    clear_ua(&other);
    clear_ua(&new);
    assert_eq!(f.server.stats().live, 2);
    assert_eq!(f.server.stats().panics, 0);
}

#[test]
fn targets_are_added_and_removed_while_the_server_runs() {
    const SECOND: &str = "iqn.2026-01.test.ssv:second";
    let f = start(Setup::default());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("second.img");
    let opts = OpenOptions::new().create_size(Some(LUN_SIZE));
    let dev: Arc<dyn BlockDev> = Arc::new(FileDev::open(&path, &opts).unwrap());
    f.server
        .add_target(SECOND, vec![LunConfig::new(0, dev.clone())])
        .unwrap();
    assert!(f.server.add_target(SECOND, vec![]).is_err(), "served twice");
    assert!(f.server.add_target("bad,name", vec![]).is_err());
    // By name: "…:second" sorts before "…:target".
    assert_eq!(f.server.targets(), vec![SECOND, IQN]);
    let found = discover(f.portal(1), &options(HOST_A, 1)).unwrap();
    let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec![SECOND, IQN]);
    assert_eq!(found[0].portals, vec![(f.portal(0), 1), (f.portal(1), 2)]);

    // One initiator port with a session to each target: two nexuses, and
    // neither login reinstates the other's session.
    let first = connect(f.portal(0), HOST_A, 1);
    clear_ua(&first);
    let o = options(HOST_A, 1);
    let second =
        san::iscsi::Session::new(san::iscsi::login(f.portal(0), Some(SECOND), &o).unwrap());
    let lun0 = IscsiLun::open(second, 0).unwrap();
    assert_eq!(lun0.size(), LUN_SIZE);
    let data = pattern(64 << 10, 7);
    lun0.write_at(&data, 1 << 20).unwrap();
    let mut back = vec![0u8; data.len()];
    std::fs::File::open(&path)
        .unwrap()
        .read_exact_at(&mut back, 1 << 20)
        .unwrap();
    assert_eq!(back, data, "written through the second target");
    clear_ua(&first);
    assert_eq!(f.server.stats().live, 2);

    // Removed: its session is closed by the time remove_target returns,
    // new logins are refused as unknown, the other target goes on.
    assert!(f.server.remove_target(SECOND));
    assert_eq!(f.server.stats().live, 1);
    assert!(
        lun0.read_at(&mut back, 0).is_err(),
        "its session was closed"
    );
    assert_eq!(
        refused(san::iscsi::login(f.portal(0), Some(SECOND), &o)),
        (2, 3)
    );
    let found = discover(f.portal(0), &options(HOST_A, 2)).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, IQN);
    assert!(!f.server.remove_target(SECOND));
    clear_ua(&first);
    let (c, _) = read16(&first, 0, 1);
    assert_eq!(c.status, san::scsi::Status::GOOD);

    // The first target can go too; the server then serves none.
    assert!(f.server.remove_target(IQN));
    assert!(f.server.targets().is_empty());
    assert_eq!(f.server.stats().panics, 0);
}

//! The target's fault hooks as an initiator sees them: a slow portal,
//! dropped connections, refused logins, a blackholed portal, and injected
//! SCSI errors, each confined to what it was aimed at.

mod target_common;

use san::iscsi::{login, DataPhase, Session, SessionOptions};
use san::scsi::cdb::OP_READ_16;
use san::scsi::{Cdb, Sense, Status};
use san::target::Injection;
use std::time::{Duration, Instant};
use target_common::*;

fn tur(s: &Session) -> u8 {
    exec(s, &Cdb::TestUnitReady, DataPhase::None).status
}

fn tur_result(s: &Session) -> Result<u8, san::iscsi::IscsiError> {
    let b = Cdb::TestUnitReady.encode();
    s.execute(san::iscsi::pdu::encode_lun(LUN), &b[..6], DataPhase::None)
        .map(|c| c.status)
}

#[test]
fn delay_slows_only_its_portal() {
    let f = start(Setup::default());
    let s0 = connect(f.portal(0), HOST_A, 1);
    let s1 = connect(f.portal(1), HOST_A, 2);
    clear_ua(&s0);
    clear_ua(&s1);
    let faults = f.server.faults();
    faults.set_delay(0, Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(tur(&s0), Status::GOOD);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    assert_eq!(tur(&s1), Status::GOOD);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    faults.set_delay(0, Duration::ZERO);
    let t = Instant::now();
    assert_eq!(tur(&s0), Status::GOOD);
    assert!(t.elapsed() < Duration::from_millis(300));
}

#[test]
fn dropped_connections_fail_and_new_logins_work() {
    let f = start(Setup::default());
    let s0 = connect(f.portal(0), HOST_A, 1);
    let s1 = connect(f.portal(1), HOST_A, 2);
    clear_ua(&s0);
    clear_ua(&s1);
    f.server.faults().drop_connections(0);
    assert!(tur_result(&s0).is_err(), "the dropped session must fail");
    assert_eq!(tur(&s1), Status::GOOD, "the other portal is untouched");
    let again = connect(f.portal(0), HOST_A, 1);
    clear_ua(&again);
}

#[test]
fn refused_portal_turns_logins_away() {
    let f = start(Setup::default());
    let faults = f.server.faults();
    faults.refuse_connections(0, true);
    assert!(connect_with(f.portal(0), &options(HOST_A, 1)).is_err());
    clear_ua(&connect(f.portal(1), HOST_A, 2));
    faults.refuse_connections(0, false);
    clear_ua(&connect(f.portal(0), HOST_A, 1));
}

#[test]
fn blackholed_portal_hangs_until_lifted() {
    let f = start(Setup::default());
    let o = options(HOST_A, 1);
    let s0 = Session::with_options(
        login(f.portal(0), Some(IQN), &o).unwrap(),
        SessionOptions {
            command_timeout: Duration::from_millis(500),
            ..SessionOptions::default()
        },
    );
    let s1 = connect(f.portal(1), HOST_A, 2);
    clear_ua(&s0);
    clear_ua(&s1);
    let faults = f.server.faults();
    faults.blackhole(0, true);
    let t = Instant::now();
    assert!(tur_result(&s0).is_err(), "no answer while blackholed");
    assert!(t.elapsed() >= Duration::from_millis(450));
    let mut quick = options(HOST_A, 3);
    quick.timeout = Duration::from_millis(300);
    assert!(
        login(f.portal(0), Some(IQN), &quick).is_err(),
        "login hangs too"
    );
    assert_eq!(tur(&s1), Status::GOOD, "the other portal answers");
    faults.blackhole(0, false);
    clear_ua(&connect(f.portal(0), HOST_A, 4));
}

#[test]
fn injected_errors_reach_the_initiator() {
    let f = start(Setup::default());
    let s = connect(f.portal(0), HOST_A, 1);
    clear_ua(&s);
    let faults = f.server.faults();
    faults.inject(Injection::sense(Sense::READ_ERROR, 2).only(OP_READ_16));
    for _ in 0..2 {
        assert!(sense(&read16(&s, 0, 1).0).is(Sense::READ_ERROR));
        assert_eq!(tur(&s), Status::GOOD, "only READ(16) is hit");
    }
    assert_eq!(read16(&s, 0, 1).0.status, Status::GOOD, "two, then no more");
    faults.inject(Injection::status(Status::BUSY, 1));
    assert_eq!(tur(&s), Status::BUSY);
    assert_eq!(tur(&s), Status::GOOD);
    assert_eq!(f.server.stats().panics, 0);
}

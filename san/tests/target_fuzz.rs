//! Hostile input to the target: arbitrary bytes, and valid sessions (login,
//! commands with immediate and unsolicited data, NOP, Text, task
//! management, logout) with bytes changed or cut, go to a live portal. Every
//! connection must end by itself once the peer stops sending, no connection
//! thread may panic, and the target keeps serving others.

mod target_common;

use proptest::prelude::*;
use proptest::sample::Index;
use san::iscsi::pdu::{self, encode_lun, Digests, Opcode, Pdu, RESERVED_TAG};
use san::iscsi::text;
use san::scsi::Cdb;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::LazyLock;
use std::time::{Duration, Instant};
use target_common::*;

/// One target for every case (cases run one after another).
static TARGET: LazyLock<Fixture> = LazyLock::new(|| start(Setup::default()));

/// How long the target may take to close after the peer's last byte.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// Sends `bytes`, half-closes, and waits for the target to close its side.
fn feed(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    // The target may close first (that is fine): write errors are expected.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => assert!(start.elapsed() < CLOSE_WITHIN, "the target keeps talking"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the target did not close the connection within {CLOSE_WITHIN:?}")
            }
            Err(_) => break,
        }
    }
}

fn command(itt: u32, cmd_sn: u32, cdb: &Cdb, flags: u8, edtl: u32, data: &[u8]) -> Pdu {
    let mut p = Pdu::new(Opcode::ScsiCommand);
    p.set_flags(flags);
    p.set_lun(encode_lun(LUN));
    p.set_itt(itt);
    p.set_u32(pdu::OFF_20, edtl);
    p.set_u32(pdu::OFF_24, cmd_sn);
    let b = cdb.encode();
    p.bhs[pdu::OFF_32..pdu::OFF_32 + 16].copy_from_slice(&b);
    p.data = data.to_vec();
    p
}

/// A complete, valid session as one byte stream.
fn valid_session() -> Vec<u8> {
    let mut pdus = Vec::new();
    let mut login = Pdu::new(Opcode::LoginRequest);
    login.set_immediate(true);
    login.set_flags(0x87); // transit, operational stage to full feature phase
    login.bhs[pdu::OFF_ISID..pdu::OFF_ISID + 6].copy_from_slice(&isid(99));
    login.set_u32(pdu::OFF_24, 1);
    login.data = text::encode(&[
        ("InitiatorName", HOST_C),
        ("SessionType", "Normal"),
        ("TargetName", IQN),
        ("MaxRecvDataSegmentLength", "8192"),
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
    ]);
    pdus.push(login);
    pdus.push(command(1, 1, &Cdb::TestUnitReady, 0x81, 0, &[]));
    let w = |lba, blocks| Cdb::Write16 {
        lba,
        blocks,
        fua: false,
        dpo: false,
    };
    // SIMPLE tasks may run in any order: the writes do not overlap.
    pdus.push(command(2, 2, &w(7, 1), 0xa1, 512, &[7; 512]));
    // Two blocks: one immediate, one unsolicited Data-Out.
    pdus.push(command(3, 3, &w(8, 2), 0x21, 1024, &[8; 512]));
    let mut d = Pdu::new(Opcode::DataOut);
    d.set_flags(pdu::FLAG_FINAL);
    d.set_lun(encode_lun(LUN));
    d.set_itt(3);
    d.set_u32(pdu::OFF_20, RESERVED_TAG);
    d.set_u32(pdu::OFF_40, 512);
    d.data = vec![9; 512];
    pdus.push(d);
    let r = Cdb::Read16 {
        lba: 8,
        blocks: 2,
        fua: false,
        dpo: false,
    };
    pdus.push(command(4, 4, &r, 0xc1, 1024, &[]));
    let mut nop = Pdu::new(Opcode::NopOut);
    nop.set_immediate(true);
    nop.set_flags(pdu::FLAG_FINAL);
    nop.set_itt(5);
    nop.set_u32(pdu::OFF_20, RESERVED_TAG);
    nop.set_u32(pdu::OFF_24, 5);
    nop.data = b"ping".to_vec();
    pdus.push(nop);
    let mut t = Pdu::new(Opcode::TextRequest);
    t.set_flags(pdu::FLAG_FINAL);
    t.set_itt(6);
    t.set_u32(pdu::OFF_20, RESERVED_TAG);
    t.set_u32(pdu::OFF_24, 5);
    t.data = text::encode(&[("SendTargets", "All")]);
    pdus.push(t);
    let mut tmf = Pdu::new(Opcode::TaskMgmtRequest);
    tmf.set_immediate(true);
    tmf.set_flags(0x81); // ABORT TASK
    tmf.set_itt(7);
    tmf.set_u32(pdu::OFF_20, 77);
    tmf.set_u32(pdu::OFF_24, 6);
    pdus.push(tmf);
    let mut out = Pdu::new(Opcode::LogoutRequest);
    out.set_immediate(true);
    out.set_flags(pdu::FLAG_FINAL);
    out.set_itt(8);
    out.set_u32(pdu::OFF_24, 6);
    pdus.push(out);
    pdus.iter()
        .flat_map(|p| p.encode(Digests::default()))
        .collect()
}

#[test]
fn the_valid_session_runs_to_its_logout() {
    // Its own target: the damaged sessions may write anywhere.
    let f = start(Setup::default());
    feed(f.portal(0), &valid_session());
    // What the session wrote is on the LU: a block of 7s, of 8s, of 9s.
    let s = connect(f.portal(1), HOST_A, 1);
    clear_ua(&s);
    let (_, data) = read16(&s, 7, 3);
    assert_eq!(
        data,
        [vec![7u8; 512], vec![8u8; 512], vec![9u8; 512]].concat()
    );
    assert_eq!(f.server.stats().panics, 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_end_the_connection(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let f = &*TARGET;
        feed(f.portal(0), &bytes);
        prop_assert_eq!(f.server.stats().panics, 0);
    }

    #[test]
    fn damaged_sessions_end_the_connection(
        changes in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        cut in any::<Index>(),
        truncate in any::<bool>(),
    ) {
        let f = &*TARGET;
        let mut s = valid_session();
        for (at, b) in changes {
            let i = at.index(s.len());
            s[i] = b;
        }
        if truncate {
            s.truncate(cut.index(s.len()));
        }
        feed(f.portal(1), &s);
        prop_assert_eq!(f.server.stats().panics, 0);
    }
}

#[test]
fn the_target_serves_after_garbage() {
    let f = &*TARGET;
    for junk in [&[0u8; 48][..], &[0xffu8; 100], &valid_session()[..60]] {
        feed(f.portal(0), junk);
    }
    let s = connect(f.portal(0), HOST_B, 7);
    clear_ua(&s);
    wait_until(
        "the garbage connections to end",
        Duration::from_secs(5),
        || f.server.stats().live <= 2,
    );
    assert_eq!(f.server.stats().panics, 0);
}

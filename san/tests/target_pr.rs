//! Persistent reservations on our target, driven through both portals by
//! our initiator: the fencing scenario of spec §3.3 with PREEMPT AND ABORT
//! working (keys kept per I_T nexus across reconnects, queued tasks of the
//! fenced host aborted), READ FULL STATUS, and ALL_TG_PT registrations.

mod target_common;

use san::iscsi::pdu::{self, encode_lun, Opcode, Pdu};
use san::iscsi::{login, Connection, DataPhase, Session};
use san::scsi::{
    Cdb, FullStatus, PrInAction, PrOutAction, PrOutParams, PrType, ReadKeys, ReadReservation,
    Sense, Status, TransportId,
};
use target_common::*;

const KA: u64 = 0xA1A1_0001;
const KB: u64 = 0xB2B2_0002;
const WERO: PrType = PrType::WriteExclusiveRegistrantsOnly;

fn pr_out(
    s: &Session,
    action: PrOutAction,
    pr_type: Option<PrType>,
    key: u64,
    sa_key: u64,
    all_tg_pt: bool,
) -> u8 {
    let p = PrOutParams {
        key,
        sa_key,
        all_tg_pt,
        ..PrOutParams::default()
    }
    .encode();
    let cdb = Cdb::PersistentReserveOut {
        action,
        pr_type,
        param_len: p.len() as u32,
    };
    let c = exec(s, &cdb, DataPhase::Out(&p));
    assert!(c.status != Status::CHECK_CONDITION, "{action:?}: {c:?}");
    c.status
}

fn pr_in(s: &Session, action: PrInAction) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let c = exec(
        s,
        &Cdb::PersistentReserveIn {
            action,
            alloc_len: 4096,
        },
        DataPhase::In(&mut buf),
    );
    assert_eq!(c.status, Status::GOOD, "{c:?}");
    buf.truncate(4096 - c.residual as usize);
    buf
}

fn keys(s: &Session) -> ReadKeys {
    ReadKeys::decode(&pr_in(s, PrInAction::ReadKeys)).unwrap()
}

fn write_status(s: &Session) -> u8 {
    write16(s, 100, &[0x5a; BLOCK]).status
}

/// Host A on two paths reserves WE-RO; B preempts and aborts; A is fenced
/// on both paths (and after reconnecting) while reads still work.
#[test]
fn preempt_and_abort_fences_every_path_of_a_host() {
    let f = start(Setup::default());
    let a1 = connect(f.portal(0), HOST_A, 1);
    let a2 = connect(f.portal(1), HOST_A, 2);
    let b = connect(f.portal(0), HOST_B, 1);
    let c = connect(f.portal(1), HOST_C, 1);
    for s in [&a1, &a2, &b, &c] {
        clear_ua(s);
    }
    use PrOutAction::*;
    assert_eq!(
        pr_out(&a1, RegisterAndIgnoreExistingKey, None, 0, KA, false),
        0
    );
    assert_eq!(pr_out(&b, Register, None, 0, KB, false), 0);
    assert_eq!(pr_out(&a1, Reserve, Some(WERO), KA, 0, false), 0);
    // Registrations are per nexus: A's second path is not registered yet.
    assert_eq!(write_status(&a2), Status::RESERVATION_CONFLICT);
    assert_eq!(pr_out(&a2, Register, None, 0, KA, false), 0);
    assert_eq!(write_status(&a2), Status::GOOD);
    assert_eq!(keys(&c).keys, vec![KA, KB, KA]);
    assert_eq!(write_status(&b), Status::GOOD);
    assert_eq!(write_status(&c), Status::RESERVATION_CONFLICT);
    assert_eq!(read16(&c, 100, 1).0.status, Status::GOOD);
    assert_eq!(
        pr_out(&c, Reserve, Some(WERO), 0, 0, false),
        Status::RESERVATION_CONFLICT
    );

    assert_eq!(pr_out(&b, PreemptAndAbort, Some(WERO), KB, KA, false), 0);
    for a in [&a1, &a2] {
        let ua = sense(&write16(a, 100, &[0x5a; BLOCK]));
        assert!(ua.is(Sense::REGISTRATIONS_PREEMPTED), "{ua}");
        assert_eq!(write_status(a), Status::RESERVATION_CONFLICT);
        assert_eq!(read16(a, 100, 1).0.status, Status::GOOD);
    }
    let k = keys(&a1);
    assert_eq!(k.keys, vec![KB]);
    assert_eq!(k.generation, 4, "3 registrations and a preemption");
    let r = ReadReservation::decode(&pr_in(&a1, PrInAction::ReadReservation)).unwrap();
    let r = r.reservation.unwrap();
    assert_eq!((r.key, r.pr_type), (KB, WERO));
    let fs = FullStatus::decode(&pr_in(&c, PrInAction::ReadFullStatus)).unwrap();
    assert_eq!(fs.descriptors.len(), 1);
    let d = &fs.descriptors[0];
    assert_eq!(
        (d.key, d.holder, d.all_tg_pt, d.relative_port),
        (KB, Some(WERO), false, 1)
    );
    assert_eq!(
        d.transport_id,
        TransportId::IscsiPort {
            name: HOST_B.into(),
            isid: isid(1),
        }
    );

    // A reconnects with the same ISID: a new nexus instance, still fenced.
    drop(a1);
    let a1 = connect(f.portal(0), HOST_A, 1);
    let ua = sense(&exec(&a1, &Cdb::TestUnitReady, DataPhase::None));
    assert!(ua.is(Sense::POWER_ON_RESET), "{ua}");
    assert_eq!(write_status(&a1), Status::RESERVATION_CONFLICT);
    assert_eq!(keys(&a1).keys, vec![KB]);
}

/// A raw connection, to leave a write waiting for its Data-Out.
struct Raw {
    c: Connection,
    itt: u32,
}

impl Raw {
    fn command(&mut self, cdb: &[u8], write: bool, edtl: u32) -> u32 {
        self.itt += 1;
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.set_flags(pdu::FLAG_FINAL | if write { 0x20 } else { 0 } | 0x01);
        p.set_lun(encode_lun(LUN));
        p.set_itt(self.itt);
        p.set_u32(pdu::OFF_20, edtl);
        p.set_u32(pdu::OFF_24, self.c.cmd_sn);
        p.set_u32(pdu::OFF_28, self.c.exp_stat_sn);
        p.bhs[pdu::OFF_32..pdu::OFF_32 + cdb.len()].copy_from_slice(cdb);
        self.c.send(&p).unwrap();
        self.c.cmd_sn = self.c.cmd_sn.wrapping_add(1);
        self.itt
    }

    fn recv(&mut self) -> Pdu {
        let p = self.c.recv(1 << 20).unwrap();
        self.c.track(&p);
        p
    }
}

#[test]
fn preempt_and_abort_aborts_a_queued_write() {
    let f = start(Setup::default());
    let a = connect(f.portal(0), HOST_A, 1);
    let b = connect(f.portal(1), HOST_B, 1);
    clear_ua(&a);
    clear_ua(&b);
    assert_eq!(pr_out(&a, PrOutAction::Register, None, 0, KA, false), 0);
    assert_eq!(pr_out(&b, PrOutAction::Register, None, 0, KB, false), 0);
    assert_eq!(
        pr_out(&a, PrOutAction::Reserve, Some(WERO), KA, 0, false),
        0
    );
    drop(a);
    // The same nexus again, raw: its registration is still there.
    let mut raw = Raw {
        c: login(f.portal(0), Some(IQN), &options(HOST_A, 1)).unwrap(),
        itt: 0,
    };
    let tur = Cdb::TestUnitReady.encode();
    raw.command(&tur[..6], false, 0);
    assert_eq!(
        raw.recv().bhs[pdu::OFF_B3],
        Status::CHECK_CONDITION,
        "29/00"
    );
    let w = Cdb::Write16 {
        lba: 200,
        blocks: 1,
        fua: false,
        dpo: false,
    }
    .encode();
    let itt = raw.command(&w, true, BLOCK as u32);
    let r2t = raw.recv();
    assert_eq!(r2t.opcode(), Some(Opcode::R2t));
    assert_eq!((r2t.itt(), r2t.u32_at(pdu::OFF_44)), (itt, BLOCK as u32));

    assert_eq!(
        pr_out(&b, PrOutAction::PreemptAndAbort, Some(WERO), KB, KA, false),
        0
    );

    let mut d = Pdu::new(Opcode::DataOut);
    d.set_flags(pdu::FLAG_FINAL);
    d.set_lun(encode_lun(LUN));
    d.set_itt(itt);
    d.set_u32(pdu::OFF_20, r2t.u32_at(pdu::OFF_20));
    d.data = vec![0x77; BLOCK];
    raw.c.send(&d).unwrap();
    let rsp = raw.recv();
    assert_eq!(rsp.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(rsp.bhs[pdu::OFF_B3], Status::TASK_ABORTED);
    assert_eq!(
        read16(&b, 200, 1).1,
        vec![0u8; BLOCK],
        "the aborted write did not land"
    );
}

#[test]
fn all_tg_pt_registers_on_every_port() {
    let f = start(Setup::default());
    let p0 = connect(f.portal(0), HOST_A, 1);
    let p1 = connect(f.portal(1), HOST_A, 1);
    let c = connect(f.portal(0), HOST_C, 1);
    for s in [&p0, &p1, &c] {
        clear_ua(s);
    }
    use PrOutAction::*;
    assert_eq!(pr_out(&p0, Register, None, 0, KA, true), 0);
    // The same initiator port through the other portal group holds it too.
    let ea = PrType::ExclusiveAccess;
    assert_eq!(pr_out(&p1, Reserve, Some(ea), KA, 0, false), 0);
    assert_eq!(write_status(&p0), Status::GOOD);
    assert_eq!(read16(&c, 0, 1).0.status, Status::RESERVATION_CONFLICT);
    assert_eq!(keys(&c).keys, vec![KA]);
    let fs = FullStatus::decode(&pr_in(&c, PrInAction::ReadFullStatus)).unwrap();
    assert_eq!(fs.descriptors.len(), 1);
    assert!(fs.descriptors[0].all_tg_pt);
    assert_eq!(fs.descriptors[0].holder, Some(ea));
    // Unregistering releases; C sees nothing reserved any more.
    assert_eq!(pr_out(&p1, Register, None, KA, 0, false), 0);
    assert_eq!(read16(&c, 0, 1).0.status, Status::GOOD);
}

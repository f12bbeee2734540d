//! Data through our target: written on one portal, read on another and
//! found in the backing file; large writes through R2T with small bursts and
//! segments; CRC32C digests; COMPARE AND WRITE; and the SCSI answers the
//! multipath layer relies on (unit attention, ranges, residuals, UNMAP);
//! a Data-Out with the wrong DataSN fails only its command.

mod target_common;

use san::iscsi::pdu::{self, encode_lun, Opcode, Pdu, RESERVED_TAG};
use san::iscsi::{login, Connection, DataPhase, IscsiLun, LoginOptions};
use san::scsi::sense::{ABORTED_COMMAND, UNIT_ATTENTION};
use san::scsi::{Cdb, Sense, Status, UnmapDescriptor, UnmapParams};
use san::target::TargetParams;
use san::BlockDev;
use std::os::unix::fs::FileExt;
use target_common::*;

#[test]
fn written_on_one_portal_read_on_the_other_and_in_the_file() {
    let f = start(Setup::default());
    let a = IscsiLun::open(connect(f.portal(0), HOST_A, 1), LUN).unwrap();
    let b = IscsiLun::open(connect(f.portal(1), HOST_A, 2), LUN).unwrap();
    let data = pattern(256 << 10, 7);
    a.write_at(&data, 1 << 20).unwrap();
    a.flush().unwrap();
    let mut back = vec![0u8; data.len()];
    b.read_at(&mut back, 1 << 20).unwrap();
    assert_eq!(back, data);
    let mut file = vec![0u8; data.len()];
    std::fs::File::open(&f.path)
        .unwrap()
        .read_exact_at(&mut file, 1 << 20)
        .unwrap();
    assert_eq!(file, data);
}

/// 1 MiB writes and reads with a 4 KiB target segment, 8 KiB first burst
/// and 64 KiB bursts: immediate data, unsolicited Data-Out, then R2Ts; and
/// Data-In cut to the initiator's 4 KiB segments, with and without digests.
#[test]
fn large_transfers_through_small_bursts_and_digests() {
    let f = start(Setup {
        params: TargetParams {
            max_recv_data_segment_length: 4096,
            first_burst_length: 8192,
            max_burst_length: 65536,
            ..TargetParams::default()
        },
        ..Setup::default()
    });
    for (path, digests) in [(1u16, false), (2, true)] {
        let mut o: LoginOptions = options(HOST_A, path);
        o.offer = offer_small(4096);
        o.offer.header_digest = digests;
        o.offer.data_digest = digests;
        let s = connect_with(f.portal(0), &o).unwrap();
        let p = s.params().clone();
        assert_eq!(p.max_send_data_segment_length, 4096);
        assert_eq!((p.first_burst_length, p.max_burst_length), (8192, 65536));
        assert_eq!((p.header_digest, p.data_digest), (digests, digests));
        clear_ua(&s);
        let data = pattern(1 << 20, path as u8);
        let c = write16(&s, 4096, &data);
        assert_eq!(c.status, Status::GOOD, "{c:?}");
        let (c, back) = read16(&s, 4096, (data.len() / BLOCK) as u32);
        assert_eq!((c.status, c.residual), (Status::GOOD, 0));
        assert!(back == data, "1 MiB read back differs (digests {digests})");
    }
}

#[test]
fn compare_and_write_swaps_only_on_a_match() {
    let f = start(Setup::default());
    let s = connect(f.portal(0), HOST_A, 1);
    clear_ua(&s);
    let old = vec![b'a'; 2 * BLOCK];
    let new = vec![b'b'; 2 * BLOCK];
    assert_eq!(write16(&s, 10, &old).status, Status::GOOD);
    let caw = Cdb::CompareAndWrite {
        lba: 10,
        blocks: 2,
        fua: true,
        dpo: false,
    };
    let ok = exec(
        &s,
        &caw,
        DataPhase::Out(&[old.clone(), new.clone()].concat()),
    );
    assert_eq!(ok.status, Status::GOOD, "{ok:?}");
    assert_eq!(read16(&s, 10, 2).1, new);

    // The blocks now hold 'b': a verify buffer differing at byte 700 fails there.
    let mut verify = new.clone();
    verify[700] = b'x';
    let bad = exec(&s, &caw, DataPhase::Out(&[verify, old.clone()].concat()));
    let miscompare = sense(&bad);
    assert!(
        miscompare.is(Sense::MISCOMPARE_DURING_VERIFY),
        "{miscompare}"
    );
    assert_eq!(miscompare.info, Some(700));
    assert_eq!(read16(&s, 10, 2).1, new, "nothing written on a miscompare");

    // Data-Out of the wrong size is refused before anything is compared.
    let short = exec(&s, &caw, DataPhase::Out(&new));
    assert!(sense(&short).is(Sense::INVALID_FIELD_IN_CDB));
}

#[test]
fn scsi_answers_the_initiator_relies_on() {
    let f = start(Setup::default());
    let s = connect(f.portal(0), HOST_A, 1);
    // A new nexus sees POWER ON/RESET first, INQUIRY excepted.
    let mut inq = vec![0u8; 255];
    let c = exec(
        &s,
        &Cdb::Inquiry {
            page: None,
            alloc_len: 255,
        },
        DataPhase::In(&mut inq),
    );
    assert_eq!((c.status, c.residual), (Status::GOOD, 255 - 96));
    let ua = sense(&exec(&s, &Cdb::TestUnitReady, DataPhase::None));
    assert!(ua.is(Sense::POWER_ON_RESET) && ua.key == UNIT_ATTENTION);
    assert_eq!(
        exec(&s, &Cdb::TestUnitReady, DataPhase::None).status,
        Status::GOOD
    );

    let blocks = LUN_SIZE / BLOCK as u64;
    let past_end = exec(
        &s,
        &Cdb::Read16 {
            lba: blocks - 1,
            blocks: 2,
            fua: false,
            dpo: false,
        },
        DataPhase::In(&mut vec![0u8; 2 * BLOCK]),
    );
    assert!(sense(&past_end).is(Sense::LBA_OUT_OF_RANGE));
    let unknown = raw(&s, &[0xC7, 0, 0, 0, 0, 0], DataPhase::None);
    assert!(sense(&unknown).is(Sense::INVALID_COMMAND_OPCODE));
    let no_lun = s
        .execute(encode_lun(9), &[0, 0, 0, 0, 0, 0], DataPhase::None)
        .unwrap();
    assert!(sense(&no_lun).is(Sense::LUN_NOT_SUPPORTED));

    // UNMAP on the thin LU: the range reads back as zeros.
    assert_eq!(write16(&s, 64, &pattern(8 * BLOCK, 3)).status, Status::GOOD);
    let list = UnmapParams {
        descriptors: vec![UnmapDescriptor { lba: 64, blocks: 8 }],
    }
    .encode()
    .unwrap();
    let c = exec(
        &s,
        &Cdb::Unmap {
            anchor: false,
            param_len: list.len() as u16,
        },
        DataPhase::Out(&list),
    );
    assert_eq!(c.status, Status::GOOD, "{c:?}");
    assert_eq!(read16(&s, 64, 8).1, vec![0u8; 8 * BLOCK]);
    let mut file = vec![1u8; 8 * BLOCK];
    f.dev.read_at(&mut file, 64 * BLOCK as u64).unwrap();
    assert_eq!(file, vec![0u8; 8 * BLOCK]);
}

/// Our initiator never sends a wrong DataSN: these PDUs are built by hand.
struct Raw {
    c: Connection,
    itt: u32,
}

impl Raw {
    /// A WRITE(16) of `blocks` at `lba` with no immediate data; `unsolicited`
    /// announces Data-Out without an R2T (F=0).
    fn write(&mut self, lba: u64, blocks: u32, unsolicited: bool) -> u32 {
        self.itt += 1;
        let cdb = Cdb::Write16 {
            lba,
            blocks,
            fua: false,
            dpo: false,
        }
        .encode();
        let mut p = Pdu::new(Opcode::ScsiCommand);
        let f = if unsolicited { 0 } else { pdu::FLAG_FINAL };
        p.set_flags(f | 0x20 | 0x01); // W, simple task
        p.set_lun(encode_lun(LUN));
        p.set_itt(self.itt);
        p.set_u32(pdu::OFF_20, blocks * BLOCK as u32);
        p.set_u32(pdu::OFF_24, self.c.cmd_sn);
        p.set_u32(pdu::OFF_28, self.c.exp_stat_sn);
        p.bhs[pdu::OFF_32..pdu::OFF_32 + 16].copy_from_slice(&cdb);
        self.c.send(&p).unwrap();
        self.c.cmd_sn = self.c.cmd_sn.wrapping_add(1);
        self.itt
    }

    /// One block of Data-Out at block `at` of the task.
    fn data_out(&mut self, itt: u32, ttt: u32, data_sn: u32, at: u32, last: bool) {
        let mut d = Pdu::new(Opcode::DataOut);
        d.set_flags(if last { pdu::FLAG_FINAL } else { 0 });
        d.set_lun(encode_lun(LUN));
        d.set_itt(itt);
        d.set_u32(pdu::OFF_20, ttt);
        d.set_u32(pdu::OFF_28, self.c.exp_stat_sn);
        d.set_u32(pdu::OFF_36, data_sn);
        d.set_u32(pdu::OFF_40, at * BLOCK as u32);
        d.data = vec![0x5a; BLOCK];
        self.c.send(&d).unwrap();
    }

    fn recv(&mut self) -> Pdu {
        let p = self.c.recv(1 << 20).unwrap();
        self.c.track(&p);
        p
    }

    /// The SCSI Response of `itt`: its status and sense.
    fn response(&mut self, itt: u32) -> (u8, Option<Sense>) {
        let r = self.recv();
        assert_eq!((r.opcode(), r.itt()), (Some(Opcode::ScsiResponse), itt));
        let sense = (r.data.len() > 2).then(|| Sense::decode(&r.data[2..]).unwrap());
        (r.bhs[pdu::OFF_B3], sense)
    }
}

/// RFC 7143 §7.9/§7.8 at ERL 0: a Data-Out out of DataSN order means one
/// was lost; its command ends in CHECK CONDITION 0B/47/05 ("protocol
/// service CRC error") once its Data-Out ends, writes nothing, and the
/// connection carries on (libiscsi's iSCSI.iSCSIdatasn sends all four of
/// its cases on one connection).
#[test]
fn a_wrong_data_sn_fails_its_command_and_the_connection_goes_on() {
    let crc_error = Sense::new(ABORTED_COMMAND, 0x47, 0x05);
    let f = start(Setup::default());
    let mut r = Raw {
        c: login(f.portal(0), Some(IQN), &options(HOST_A, 1)).unwrap(),
        itt: 0,
    };
    // The new nexus's unit attention first.
    let itt = r.write(0, 1, false);
    let r2t = r.recv();
    assert_eq!(r2t.opcode(), Some(Opcode::R2t));
    r.data_out(itt, r2t.u32_at(pdu::OFF_20), 0, 0, true);
    let (status, ua) = r.response(itt);
    assert_eq!(status, Status::CHECK_CONDITION);
    assert!(ua.is_some_and(|s| s.is(Sense::POWER_ON_RESET)), "{ua:?}");

    // Unsolicited: the second PDU repeats DataSN 0; 27 alone; 1 then 0.
    let itt = r.write(100, 2, true);
    r.data_out(itt, RESERVED_TAG, 0, 0, false);
    r.data_out(itt, RESERVED_TAG, 0, 1, true);
    assert_eq!(r.response(itt), (Status::CHECK_CONDITION, Some(crc_error)));
    let itt = r.write(100, 1, true);
    r.data_out(itt, RESERVED_TAG, 27, 0, true);
    assert_eq!(r.response(itt), (Status::CHECK_CONDITION, Some(crc_error)));
    // The answer waits for the sequence's last PDU (the next PDU in is the
    // response of this task, not of a later one).
    let itt = r.write(100, 2, true);
    r.data_out(itt, RESERVED_TAG, 1, 0, false);
    r.data_out(itt, RESERVED_TAG, 0, 1, true);
    assert_eq!(r.response(itt), (Status::CHECK_CONDITION, Some(crc_error)));

    // Solicited: the burst's second PDU carries DataSN 5.
    let itt = r.write(100, 2, false);
    let r2t = r.recv();
    assert_eq!((r2t.opcode(), r2t.itt()), (Some(Opcode::R2t), itt));
    let ttt = r2t.u32_at(pdu::OFF_20);
    r.data_out(itt, ttt, 0, 0, false);
    r.data_out(itt, ttt, 5, 1, true);
    assert_eq!(r.response(itt), (Status::CHECK_CONDITION, Some(crc_error)));

    // Nothing of those writes reached the LU, and the connection still
    // works: an in-order write succeeds.
    let s = connect(f.portal(1), HOST_B, 1);
    clear_ua(&s);
    assert_eq!(read16(&s, 100, 2).1, vec![0u8; 2 * BLOCK]);
    let itt = r.write(100, 2, true);
    r.data_out(itt, RESERVED_TAG, 0, 0, false);
    r.data_out(itt, RESERVED_TAG, 1, 1, true);
    assert_eq!(r.response(itt), (Status::GOOD, None));
    assert_eq!(read16(&s, 100, 2).1, vec![0x5a; 2 * BLOCK]);
    assert_eq!(f.server.stats().panics, 0);
}

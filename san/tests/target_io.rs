//! Data through our target: written on one portal, read on another and
//! found in the backing file; large writes through R2T with small bursts and
//! segments; CRC32C digests; COMPARE AND WRITE; and the SCSI answers the
//! multipath layer relies on (unit attention, ranges, residuals, UNMAP).

mod target_common;

use san::iscsi::pdu::encode_lun;
use san::iscsi::{DataPhase, IscsiLun, LoginOptions};
use san::scsi::sense::UNIT_ATTENTION;
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

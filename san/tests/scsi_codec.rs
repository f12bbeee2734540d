//! The SCSI codec: fixed vectors from the spec (tgtd's bytes, the NAA-6
//! WWID, sense data), round trips of every encode/decode pair, and decoders
//! fed arbitrary bytes.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, subsequence};
use san::scsi::inquiry::{
    ascii_field, ascii_text, ASSOCIATION_LU, ASSOCIATION_TARGET_PORT, CODE_SET_ASCII,
    CODE_SET_BINARY, CODE_SET_UTF8, DESIGNATOR_EUI64, DESIGNATOR_NAA, DESIGNATOR_RELATIVE_PORT,
    DESIGNATOR_SCSI_NAME, DESIGNATOR_T10_VENDOR, DEVICE_TYPE_DISK, PROVISIONING_THIN, VERSION_SPC4,
};
use san::scsi::sense::{ILLEGAL_REQUEST, MISCOMPARE};
use san::scsi::unmap::MAX_UNMAP_DESCRIPTORS;
use san::scsi::*;

// ---- CDBs ----

#[test]
fn read16_with_fua_sets_byte1_bit3() {
    let cdb = Cdb::Read16 {
        lba: 0x0102_0304_0506_0708,
        blocks: 0x0A0B_0C0D,
        fua: true,
        dpo: false,
    };
    let b = cdb.encode();
    assert_eq!(
        b,
        [0x88, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0x0A, 0x0B, 0x0C, 0x0D, 0, 0]
    );
    assert_eq!(cdb.len(), 16);
    assert_eq!(cdb.data_direction(), DataDirection::In);
    assert_eq!(cdb.transfer_len(512), 0x0A0B_0C0D * 512);
    assert_eq!(Cdb::decode(&b), Ok(cdb));
}

#[test]
fn cdb_field_positions_match_the_spec_table() {
    let ws = Cdb::WriteSame16 {
        lba: 7,
        blocks: 9,
        unmap: true,
        anchor: false,
        ndob: false,
    }
    .encode();
    assert_eq!((ws[0], ws[1], ws[9], ws[13]), (0x93, 0x08, 7, 9));

    let caw = Cdb::CompareAndWrite {
        lba: 1,
        blocks: 3,
        fua: false,
        dpo: true,
    };
    let b = caw.encode();
    assert_eq!((b[0], b[1], b[9], b[13]), (0x89, 0x10, 1, 3));
    assert_eq!(caw.transfer_len(4096), 2 * 3 * 4096);

    let prout = Cdb::PersistentReserveOut {
        action: PrOutAction::Preempt,
        pr_type: Some(PrType::WriteExclusiveRegistrantsOnly),
        param_len: 24,
    };
    assert_eq!(
        &prout.encode()[..10],
        &[0x5F, 0x04, 0x05, 0, 0, 0, 0, 0, 24, 0]
    );
    assert_eq!(prout.len(), 10);

    let prin = Cdb::PersistentReserveIn {
        action: PrInAction::ReportCapabilities,
        alloc_len: 0x0102,
    };
    assert_eq!(&prin.encode()[..10], &[0x5E, 0x02, 0, 0, 0, 0, 0, 1, 2, 0]);

    let sync = Cdb::SynchronizeCache16 {
        immed: true,
        lba: 0,
        blocks: 0,
    };
    assert_eq!(sync.encode()[..2], [0x91, 0x02]);
    assert_eq!(sync.data_direction(), DataDirection::None);

    let unmap = Cdb::Unmap {
        anchor: false,
        param_len: 24,
    };
    assert_eq!(&unmap.encode()[..10], &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);

    let rc = Cdb::ReadCapacity16 { alloc_len: 32 }.encode();
    assert_eq!((rc[0], rc[1], rc[13]), (0x9E, 0x10, 32));

    let inq = Cdb::Inquiry {
        page: Some(0x83),
        alloc_len: 0x1000,
    };
    assert_eq!(&inq.encode()[..6], &[0x12, 0x01, 0x83, 0x10, 0x00, 0]);
    assert_eq!(inq.len(), 6);

    let luns = Cdb::ReportLuns {
        select: 0,
        alloc_len: 0x2000,
    };
    assert_eq!(luns.len(), 12);
    assert_eq!(
        &luns.encode()[..12],
        &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0]
    );

    let w10 = Cdb::Write10 {
        lba: 0x01020304,
        blocks: 0x0506,
        fua: true,
        dpo: false,
    };
    assert_eq!(&w10.encode()[..10], &[0x2A, 0x08, 1, 2, 3, 4, 0, 5, 6, 0]);
    assert_eq!(w10.data_direction(), DataDirection::Out);

    let ms = Cdb::ModeSense10 {
        dbd: true,
        pc: PageControl::Changeable,
        page: 0x08,
        subpage: 0,
        alloc_len: 0x00FF,
    };
    assert_eq!(
        &ms.encode()[..10],
        &[0x5A, 0x08, 0x48, 0, 0, 0, 0, 0, 0xFF, 0]
    );
}

#[test]
fn write_same_payload_is_one_block_unless_ndob() {
    let ws = |ndob| Cdb::WriteSame16 {
        lba: 0,
        blocks: 1000,
        unmap: true,
        anchor: false,
        ndob,
    };
    assert_eq!(ws(false).transfer_len(512), 512);
    assert_eq!(ws(false).data_direction(), DataDirection::Out);
    assert_eq!(ws(true).transfer_len(512), 0);
    assert_eq!(ws(true).data_direction(), DataDirection::None);
}

#[test]
fn bad_cdbs_map_to_the_target_sense() {
    // Unknown opcode (REPORT SUPPORTED OPERATION CODES is not implemented).
    let err = Cdb::decode(&[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
    assert_eq!(err, ScsiError::UnsupportedOpcode { opcode: 0xA3 });
    assert_eq!(err.sense(), Some(Sense::new(ILLEGAL_REQUEST, 0x20, 0x00)));

    // A page code without EVPD.
    let err = Cdb::decode(&[0x12, 0x00, 0x83, 0, 0xFF, 0]).unwrap_err();
    assert!(matches!(
        err,
        ScsiError::InvalidCdbField {
            field: "page code without EVPD",
            ..
        }
    ));
    assert_eq!(err.sense(), Some(Sense::new(ILLEGAL_REQUEST, 0x24, 0x00)));

    // WRPROTECT set: protection information is not supported.
    let mut w = Cdb::Write16 {
        lba: 0,
        blocks: 1,
        fua: false,
        dpo: false,
    }
    .encode();
    w[1] |= 0x20;
    assert_eq!(
        Cdb::decode(&w).unwrap_err().sense(),
        Some(Sense::INVALID_FIELD_IN_CDB)
    );

    // PREEMPT AND ABORT decodes (tgtd refuses it; we do not have to).
    let pa = [0x5F, 0x05, 0x05, 0, 0, 0, 0, 0, 24, 0];
    assert!(matches!(
        Cdb::decode(&pa),
        Ok(Cdb::PersistentReserveOut {
            action: PrOutAction::PreemptAndAbort,
            pr_type: Some(PrType::WriteExclusiveRegistrantsOnly),
            param_len: 24
        })
    ));
    // Type 2 does not exist; a nonzero scope is not LU_SCOPE; SA 8 does not exist.
    for bad in [
        [0x5F, 0x01, 0x02, 0, 0, 0, 0, 0, 24, 0],
        [0x5F, 0x01, 0x15, 0, 0, 0, 0, 0, 24, 0],
        [0x5F, 0x08, 0x00, 0, 0, 0, 0, 0, 24, 0],
    ] {
        assert_eq!(
            Cdb::decode(&bad).unwrap_err().sense(),
            Some(Sense::INVALID_FIELD_IN_CDB)
        );
    }
    // SERVICE ACTION IN(16) with GET LBA STATUS (0x12): not READ CAPACITY.
    let mut gls = Cdb::ReadCapacity16 { alloc_len: 32 }.encode();
    gls[1] = 0x12;
    assert!(matches!(
        Cdb::decode(&gls),
        Err(ScsiError::InvalidCdbField {
            field: "service action",
            value: 0x12,
            ..
        })
    ));

    // A CDB cut shorter than its command.
    let short = Cdb::decode(&[0x88, 0, 0, 0]).unwrap_err();
    assert!(matches!(
        short,
        ScsiError::InvalidCdbField {
            command: "READ(16)",
            ..
        }
    ));
    assert!(Cdb::decode(&[]).is_err());
}

fn pr_type() -> impl Strategy<Value = PrType> {
    select(PrType::ALL.to_vec())
}

fn page_control() -> impl Strategy<Value = PageControl> {
    select(vec![
        PageControl::Current,
        PageControl::Changeable,
        PageControl::Default,
        PageControl::Saved,
    ])
}

fn cdb() -> impl Strategy<Value = Cdb> {
    let rw10 = (any::<u32>(), any::<u16>(), any::<bool>(), any::<bool>());
    let rw16 = (any::<u64>(), any::<u32>(), any::<bool>(), any::<bool>());
    prop_oneof![
        Just(Cdb::TestUnitReady),
        (proptest::option::of(any::<u8>()), any::<u16>())
            .prop_map(|(page, alloc_len)| Cdb::Inquiry { page, alloc_len }),
        any::<u32>().prop_map(|alloc_len| Cdb::ReadCapacity16 { alloc_len }),
        rw10.prop_map(|(lba, blocks, fua, dpo)| Cdb::Read10 {
            lba,
            blocks,
            fua,
            dpo
        }),
        rw10.prop_map(|(lba, blocks, fua, dpo)| Cdb::Write10 {
            lba,
            blocks,
            fua,
            dpo
        }),
        rw16.prop_map(|(lba, blocks, fua, dpo)| Cdb::Read16 {
            lba,
            blocks,
            fua,
            dpo
        }),
        rw16.prop_map(|(lba, blocks, fua, dpo)| Cdb::Write16 {
            lba,
            blocks,
            fua,
            dpo
        }),
        (any::<bool>(), any::<u64>(), any::<u32>())
            .prop_map(|(immed, lba, blocks)| Cdb::SynchronizeCache16 { immed, lba, blocks }),
        (any::<bool>(), any::<u16>())
            .prop_map(|(anchor, param_len)| Cdb::Unmap { anchor, param_len }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(lba, blocks, unmap, anchor, ndob)| Cdb::WriteSame16 {
                lba,
                blocks,
                unmap,
                anchor,
                ndob
            }),
        (any::<u64>(), any::<u8>(), any::<bool>(), any::<bool>()).prop_map(
            |(lba, blocks, fua, dpo)| Cdb::CompareAndWrite {
                lba,
                blocks,
                fua,
                dpo
            }
        ),
        ((0u8..4), any::<u16>()).prop_map(|(sa, alloc_len)| Cdb::PersistentReserveIn {
            action: PrInAction::from_u8(sa).unwrap(),
            alloc_len
        }),
        ((0u8..8), proptest::option::of(pr_type()), any::<u32>()).prop_map(
            |(sa, pr_type, param_len)| Cdb::PersistentReserveOut {
                action: PrOutAction::from_u8(sa).unwrap(),
                pr_type,
                param_len
            }
        ),
        (any::<u8>(), any::<u32>())
            .prop_map(|(select, alloc_len)| Cdb::ReportLuns { select, alloc_len }),
        (
            any::<bool>(),
            page_control(),
            0u8..0x40,
            any::<u8>(),
            any::<u8>()
        )
            .prop_map(|(dbd, pc, page, subpage, alloc_len)| Cdb::ModeSense6 {
                dbd,
                pc,
                page,
                subpage,
                alloc_len
            }),
        (
            any::<bool>(),
            page_control(),
            0u8..0x40,
            any::<u8>(),
            any::<u16>()
        )
            .prop_map(|(dbd, pc, page, subpage, alloc_len)| Cdb::ModeSense10 {
                dbd,
                pc,
                page,
                subpage,
                alloc_len
            }),
    ]
}

proptest! {
    #[test]
    fn cdb_round_trips(c in cdb()) {
        let b = c.encode();
        prop_assert_eq!(Cdb::decode(&b), Ok(c));
        // Exactly the command's own bytes count.
        prop_assert!(b[c.len()..].iter().all(|&x| x == 0));
        prop_assert_eq!(Cdb::decode(&b[..c.len()]), Ok(c));
        prop_assert!(Cdb::decode(&b[..c.len() - 1]).is_err());
    }

    #[test]
    fn cdb_decode_never_panics(
        op in select(vec![0x00u8, 0x12, 0x1A, 0x28, 0x2A, 0x42, 0x5A, 0x5E, 0x5F,
                          0x88, 0x89, 0x8A, 0x91, 0x93, 0x9E, 0xA0, 0xA3, 0xFF]),
        rest in vec(any::<u8>(), 0..20),
    ) {
        let mut b = vec![op];
        b.extend_from_slice(&rest);
        if let Ok(c) = Cdb::decode(&b) {
            // Whatever decodes re-encodes to the same command.
            prop_assert_eq!(Cdb::decode(&c.encode()), Ok(c));
        }
    }
}

// ---- Status and sense ----

#[test]
fn fixed_sense_from_the_spec_is_invalid_opcode() {
    let b = [
        0x70, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00,
    ];
    let s = Sense::decode(&b).unwrap();
    assert_eq!(s, Sense::INVALID_COMMAND_OPCODE);
    assert_eq!(
        (s.key, s.asc, s.ascq, s.info),
        (ILLEGAL_REQUEST, 0x20, 0x00, None)
    );
    assert_eq!(s.classify(), Action::TargetError);
    assert_eq!(s.to_string(), "ILLEGAL REQUEST 05/20/00");
}

#[test]
fn unit_attention_in_fixed_format() {
    // What a preempted host gets from tgtd (spec §3.3): 06/2A/03.
    let b = Sense::RESERVATIONS_PREEMPTED.encode();
    assert_eq!(
        b,
        [0x70, 0, 0x06, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x2a, 0x03, 0, 0, 0, 0]
    );
    assert_eq!(Sense::decode(&b).unwrap().classify(), Action::RetryPrLost);
}

#[test]
fn miscompare_carries_the_offset_in_information() {
    let s = Sense::MISCOMPARE_DURING_VERIFY.with_info(0x1234);
    let b = s.encode();
    assert_eq!(b.len(), 18);
    assert_eq!(b[0], 0xF0, "VALID | current fixed format");
    assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
    assert_eq!((b[2], b[7], b[12], b[13]), (MISCOMPARE, 10, 0x1D, 0x00));
    assert_eq!(Sense::decode(&b), Ok(s));
    // Without INFORMATION, VALID stays clear.
    assert_eq!(Sense::LBA_OUT_OF_RANGE.encode()[0], 0x70);
}

#[test]
fn wide_information_goes_out_in_descriptor_format() {
    let s = Sense::READ_ERROR.with_info(0x1_0000_0000);
    let b = s.encode();
    assert_eq!(&b[..4], &[0x72, 0x03, 0x11, 0x00]);
    assert_eq!(&b[8..12], &[0x00, 0x0A, 0x80, 0x00]);
    assert_eq!(Sense::decode(&b), Ok(s));
}

#[test]
fn descriptor_sense_and_garbage() {
    let s = Sense::decode(&[0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]).unwrap();
    assert!(s.is(Sense::POWER_ON_RESET));
    assert_eq!(s.classify(), Action::Retry);
    let deferred = Sense::decode(&[0x73, 0x03, 0x0C, 0x00]).unwrap();
    assert!(deferred.deferred && deferred.is(Sense::WRITE_ERROR));
    assert!(matches!(
        Sense::decode(&[0x7F, 0, 0, 0]),
        Err(ScsiError::InvalidData {
            field: "response code",
            value: 0x7F,
            ..
        })
    ));
    assert!(matches!(
        Sense::decode(&[]),
        Err(ScsiError::Truncated { .. })
    ));
}

#[test]
fn classification_follows_the_spec_table() {
    let table = [
        (Sense::POWER_ON_RESET, Action::Retry),
        (Sense::CAPACITY_CHANGED, Action::RetryRescan),
        (Sense::REPORTED_LUNS_CHANGED, Action::RetryRescan),
        (Sense::INQUIRY_DATA_CHANGED, Action::RetryRescan),
        (Sense::RESERVATIONS_PREEMPTED, Action::RetryPrLost),
        (Sense::RESERVATIONS_RELEASED, Action::RetryPrLost),
        (Sense::REGISTRATIONS_PREEMPTED, Action::RetryPrLost),
        (Sense::ALUA_STATE_CHANGED, Action::RetryRegroup),
        (Sense::ALUA_TRANSITIONING, Action::RetryAfterDelay),
        (Sense::BECOMING_READY, Action::RetryAfterDelay),
        (Sense::ALUA_STANDBY, Action::PathDown),
        (Sense::ALUA_UNAVAILABLE, Action::PathDown),
        (Sense::LUN_NOT_SUPPORTED, Action::PathDown),
        (Sense::INVALID_FIELD_IN_CDB, Action::TargetError),
        (Sense::LBA_OUT_OF_RANGE, Action::TargetError),
        (Sense::READ_ERROR, Action::TargetError),
        (Sense::new(0x07, 0x27, 0x00), Action::TargetError),
        (Sense::MISCOMPARE_DURING_VERIFY, Action::TargetError),
        (Sense::ABORTED, Action::RetryAnyPath),
        (Sense::new(0x01, 0x17, 0x01), Action::Complete),
    ];
    for (sense, action) in table {
        assert_eq!(sense.classify(), action, "{sense}");
        assert_eq!(
            classify(Status::CheckCondition, Some(&sense)),
            action,
            "{sense}"
        );
    }
    // Stale sense on GOOD is ignored (tgtd does that on UNMAP).
    assert_eq!(
        classify(Status::Good, Some(&Sense::ABORTED)),
        Action::Complete
    );
    assert_eq!(classify(Status::from(0x18), None), Action::Fenced);
    assert_eq!(classify(Status::from(0x08), None), Action::RetryAfterDelay);
    assert_eq!(classify(Status::from(0x28), None), Action::QueueFull);
    assert_eq!(classify(Status::CheckCondition, None), Action::RetryAnyPath);
    assert_eq!(classify(Status::from(0x22), None), Action::TargetError);
}

#[test]
fn status_bytes() {
    for (b, s) in [
        (0x00, Status::Good),
        (0x02, Status::CheckCondition),
        (0x08, Status::Busy),
        (0x18, Status::ReservationConflict),
        (0x28, Status::TaskSetFull),
    ] {
        assert_eq!(Status::from(b), s);
        assert_eq!(u8::from(s), b);
    }
}

fn sense() -> impl Strategy<Value = Sense> {
    (
        0u8..16,
        any::<u8>(),
        any::<u8>(),
        proptest::option::of(any::<u64>()),
        any::<bool>(),
    )
        .prop_map(|(key, asc, ascq, info, deferred)| Sense {
            key,
            asc,
            ascq,
            info,
            deferred,
        })
}

proptest! {
    #[test]
    fn sense_round_trips(s in sense()) {
        prop_assert_eq!(Sense::decode(&s.encode()), Ok(s));
    }

    #[test]
    fn status_round_trips(b in any::<u8>()) {
        prop_assert_eq!(u8::from(Status::from(b)), b);
    }

    #[test]
    fn sense_decode_never_panics(
        code in select(vec![0x70u8, 0x71, 0x72, 0x73, 0xF0, 0xF2, 0x00]),
        rest in vec(any::<u8>(), 0..40),
    ) {
        let mut b = vec![code];
        b.extend_from_slice(&rest);
        if let Ok(s) = Sense::decode(&b) {
            prop_assert!(s.key < 16);
            let _ = s.classify();
        }
        let _ = Sense::decode(&rest);
    }
}

// ---- INQUIRY and VPD ----

#[test]
fn standard_inquiry_layout() {
    let inq = StandardInquiry {
        qualifier: 0,
        device_type: DEVICE_TYPE_DISK,
        removable: false,
        version: VERSION_SPC4,
        hisup: true,
        tpgs: 1,
        cmdque: true,
        vendor: ascii_field("SSV"),
        product: ascii_field("shared LUN"),
        revision: ascii_field("0.1"),
    };
    let b = inq.encode();
    assert_eq!(&b[..8], &[0x00, 0x00, 0x06, 0x12, 31, 0x10, 0x00, 0x02]);
    assert_eq!(&b[8..16], b"SSV     ");
    assert_eq!(ascii_text(&b[16..32]), "shared LUN");
    assert_eq!(StandardInquiry::decode(&b), Ok(inq));
    assert_eq!(
        StandardInquiry::decode(&b[..35]),
        Err(ScsiError::Truncated {
            what: "standard INQUIRY data",
            len: 35,
            need: 36
        })
    );
    // No LU at this LUN: 0x7F.
    let none = StandardInquiry {
        qualifier: 3,
        device_type: 0x1F,
        ..inq
    };
    assert_eq!(none.encode()[0], 0x7F);
}

/// VPD 0x83 as tgtd sends it with `scsi_id=deadbeef00112233445566778899aabb`
/// (spec §3.2): T10 vendor, NAA-3, then NAA-6 with the first digit lost.
fn tgtd_device_id() -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00, 16];
    body.extend_from_slice(b"IET     00010002");
    body.extend_from_slice(&[0x01, 0x03, 0x00, 8]);
    body.extend_from_slice(&[0x30, 0, 0, 0x01, 0, 0, 0, 0x02]);
    body.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    body.extend_from_slice(&[
        0x6e, 0xad, 0xbe, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa,
        0xbb,
    ]);
    let mut page = vec![0x00, 0x83, 0x00, body.len() as u8];
    page.extend_from_slice(&body);
    page
}

#[test]
fn naa6_gives_the_udev_wwid() {
    let page = tgtd_device_id();
    let id = DeviceIdentification::decode(&page).unwrap();
    assert_eq!(id.designators.len(), 3);
    let naa6 = id.preferred_lu_designator().unwrap();
    assert_eq!(naa6.naa(), Some(6));
    assert_eq!(
        id.wwid().as_deref(),
        Some("36eadbeef00112233445566778899aabb")
    );
    assert_eq!(id.encode().unwrap(), page);

    // Without the NAA-6, the locally assigned NAA-3 wins over the T10 ID.
    let mut fewer = id.clone();
    fewer.designators.pop();
    assert_eq!(fewer.wwid().as_deref(), Some("33000000100000002"));
    // Only the T10 vendor ID: udev's ID_SERIAL form.
    fewer.designators.pop();
    assert_eq!(fewer.wwid().as_deref(), Some("1IET_00010002"));
}

#[test]
fn designator_preference_order() {
    let d = |designator_type, association, value: &[u8]| Designator {
        protocol: 0,
        code_set: match designator_type {
            DESIGNATOR_SCSI_NAME => CODE_SET_UTF8,
            DESIGNATOR_T10_VENDOR => CODE_SET_ASCII,
            _ => CODE_SET_BINARY,
        },
        piv: false,
        association,
        designator_type,
        value: value.to_vec(),
    };
    let t10 = d(DESIGNATOR_T10_VENDOR, ASSOCIATION_LU, b"VENDOR  X");
    let name = d(DESIGNATOR_SCSI_NAME, ASSOCIATION_LU, b"naa.600a\0\0\0\0");
    let naa3 = d(DESIGNATOR_NAA, ASSOCIATION_LU, &[0x3f; 8]);
    let eui = d(DESIGNATOR_EUI64, ASSOCIATION_LU, &[0xee; 8]);
    let naa5 = d(DESIGNATOR_NAA, ASSOCIATION_LU, &[0x5a; 8]);
    let naa6 = d(DESIGNATOR_NAA, ASSOCIATION_LU, &[0x6b; 16]);
    // A target-port NAA-6 never names the LU, nor does a relative port.
    let port_naa6 = d(DESIGNATOR_NAA, ASSOCIATION_TARGET_PORT, &[0x6c; 16]);
    let rel = d(
        DESIGNATOR_RELATIVE_PORT,
        ASSOCIATION_TARGET_PORT,
        &[0, 0, 0, 1],
    );

    let mut ds = vec![port_naa6, rel, t10, name, naa3, eui, naa5, naa6];
    let expected = ["36b", "35a", "2ee", "33f", "8naa.600a", "1VENDOR_X"];
    for want in expected {
        let id = DeviceIdentification {
            designators: ds.clone(),
        };
        let wwid = id.wwid().unwrap();
        assert!(wwid.starts_with(want), "{wwid} should start with {want}");
        // Drop the winner and look at the next.
        let best = id.preferred_lu_designator().unwrap().clone();
        ds.retain(|x| *x != best);
    }
    let rest = DeviceIdentification { designators: ds };
    assert_eq!(rest.wwid(), None);
}

#[test]
fn truncated_device_id_asks_for_the_whole_page() {
    let page = tgtd_device_id();
    let err = DeviceIdentification::decode(&page[..20]).unwrap_err();
    assert_eq!(
        err,
        ScsiError::Truncated {
            what: "VPD page 0x83",
            len: 20,
            need: page.len()
        }
    );
    // A designator running past the page is malformed, not truncated.
    let mut bad = page.clone();
    bad[7] = 200;
    assert!(matches!(
        DeviceIdentification::decode(&bad),
        Err(ScsiError::InvalidData {
            field: "designator length",
            ..
        })
    ));
    // The wrong page.
    assert!(matches!(
        DeviceIdentification::decode(&[0, 0x80, 0, 0]),
        Err(ScsiError::InvalidData {
            field: "page code",
            value: 0x80,
            ..
        })
    ));
}

#[test]
fn block_limits_layout_and_short_pages() {
    let bl = BlockLimits {
        max_compare_write_len: 128,
        opt_transfer_granularity: 8,
        max_transfer_len: 0x0001_0000,
        opt_transfer_len: 0x800,
        max_unmap_lba_count: 0x0040_0000,
        max_unmap_descriptors: 1,
        unmap_granularity: 8,
        unmap_alignment: Some(0),
        max_write_same_len: 0x0100_0000,
    };
    let b = bl.encode();
    assert_eq!(&b[..4], &[0x00, 0xB0, 0x00, 0x3C]);
    assert_eq!(b[5], 128);
    assert_eq!(&b[8..12], &[0, 1, 0, 0]);
    assert_eq!(&b[32..36], &[0x80, 0, 0, 0], "UGAVALID");
    assert_eq!(BlockLimits::decode(&b), Ok(bl));
    // An SBC-2 page (length 0x0C): what is there, zeros after.
    let mut short = b[..16].to_vec();
    short[3] = 0x0C;
    let got = BlockLimits::decode(&short).unwrap();
    assert_eq!(got.max_transfer_len, 0x0001_0000);
    assert_eq!(got.opt_transfer_len, 0x800);
    assert_eq!((got.max_unmap_lba_count, got.unmap_alignment), (0, None));
    // Cut by the allocation length: the same.
    assert_eq!(BlockLimits::decode(&b[..16]), Ok(got));
}

#[test]
fn provisioning_layout() {
    let p = Provisioning {
        threshold_exponent: 0,
        lbpu: true,
        lbpws: true,
        lbpws10: false,
        lbprz: true,
        provisioning_type: PROVISIONING_THIN,
    };
    let b = p.encode();
    assert_eq!(b, [0x00, 0xB2, 0x00, 0x04, 0x00, 0xC4, 0x02, 0x00]);
    assert_eq!(Provisioning::decode(&b), Ok(p));
}

fn designator() -> impl Strategy<Value = Designator> {
    (
        0u8..16,
        0u8..16,
        any::<bool>(),
        0u8..4,
        0u8..16,
        vec(any::<u8>(), 0..40),
    )
        .prop_map(
            |(protocol, code_set, piv, association, designator_type, value)| Designator {
                protocol,
                code_set,
                piv,
                association,
                designator_type,
                value,
            },
        )
}

proptest! {
    #[test]
    fn standard_inquiry_round_trips(
        (qualifier, device_type, removable, version, hisup, tpgs, cmdque) in
            (0u8..8, 0u8..32, any::<bool>(), any::<u8>(), any::<bool>(), 0u8..4, any::<bool>()),
        vendor in any::<[u8; 8]>(),
        product in any::<[u8; 16]>(),
        revision in any::<[u8; 4]>(),
    ) {
        let inq = StandardInquiry {
            qualifier, device_type, removable, version, hisup, tpgs, cmdque,
            vendor, product, revision,
        };
        prop_assert_eq!(StandardInquiry::decode(&inq.encode()), Ok(inq));
    }

    #[test]
    fn vpd_lists_round_trip(pages in vec(any::<u8>(), 0..300), serial in vec(any::<u8>(), 0..300)) {
        let sp = SupportedPages { pages };
        prop_assert_eq!(SupportedPages::decode(&sp.encode().unwrap()), Ok(sp));
        let us = UnitSerial { serial };
        prop_assert_eq!(UnitSerial::decode(&us.encode().unwrap()), Ok(us));
    }

    #[test]
    fn device_id_round_trips(designators in vec(designator(), 0..8)) {
        let id = DeviceIdentification { designators };
        let b = id.encode().unwrap();
        prop_assert_eq!(DeviceIdentification::decode(&b), Ok(id.clone()));
        // Any cut of a page with designators is refused, never half-read.
        if b.len() > 4 {
            let is_truncated = matches!(
                DeviceIdentification::decode(&b[..b.len() - 1]),
                Err(ScsiError::Truncated { .. })
            );
            prop_assert!(is_truncated);
        }
        if let Some(w) = id.wwid() {
            prop_assert!(w.is_ascii() || id.preferred_lu_designator().unwrap().code_set != CODE_SET_BINARY);
        }
    }

    #[test]
    fn block_limits_round_trip(
        (max_compare_write_len, opt_transfer_granularity, max_transfer_len, opt_transfer_len) in
            (any::<u8>(), any::<u16>(), any::<u32>(), any::<u32>()),
        (max_unmap_lba_count, max_unmap_descriptors, unmap_granularity) in
            (any::<u32>(), any::<u32>(), any::<u32>()),
        unmap_alignment in proptest::option::of(0u32..0x8000_0000),
        max_write_same_len in any::<u64>(),
    ) {
        let bl = BlockLimits {
            max_compare_write_len, opt_transfer_granularity, max_transfer_len, opt_transfer_len,
            max_unmap_lba_count, max_unmap_descriptors, unmap_granularity, unmap_alignment,
            max_write_same_len,
        };
        prop_assert_eq!(BlockLimits::decode(&bl.encode()), Ok(bl));
    }

    #[test]
    fn provisioning_round_trips(
        threshold_exponent in any::<u8>(),
        flags in any::<[bool; 4]>(),
        provisioning_type in 0u8..8,
    ) {
        let p = Provisioning {
            threshold_exponent,
            lbpu: flags[0],
            lbpws: flags[1],
            lbpws10: flags[2],
            lbprz: flags[3],
            provisioning_type,
        };
        prop_assert_eq!(Provisioning::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn inquiry_decoders_never_panic(
        page in select(vec![0x00u8, 0x80, 0x83, 0xB0, 0xB2]),
        len in any::<u16>(),
        body in vec(any::<u8>(), 0..300),
    ) {
        let mut b = vec![0, page];
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&body);
        let _ = StandardInquiry::decode(&b);
        let _ = SupportedPages::decode(&b);
        let _ = UnitSerial::decode(&b);
        if let Ok(id) = DeviceIdentification::decode(&b) {
            let _ = id.wwid();
        }
        let _ = BlockLimits::decode(&b);
        let _ = Provisioning::decode(&b);
        // Headers alone and nothing at all.
        for cut in 0..5.min(b.len()) {
            let _ = DeviceIdentification::decode(&b[..cut]);
            let _ = BlockLimits::decode(&b[..cut]);
            let _ = Provisioning::decode(&b[..cut]);
        }
    }

    #[test]
    fn designator_walk_never_panics(body in vec(any::<u8>(), 0..200)) {
        let mut b = vec![0, 0x83];
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(&body);
        if let Ok(id) = DeviceIdentification::decode(&b) {
            // Reserved bits aside, what was read is what goes back out.
            prop_assert_eq!(DeviceIdentification::decode(&id.encode().unwrap()), Ok(id.clone()));
            let _ = id.wwid();
        }
    }
}

// ---- READ CAPACITY(16) ----

#[test]
fn capacity_as_tgtd_reports_a_thin_lun() {
    let c = CapacityData {
        last_lba: 256 * 2048 - 1,
        block_len: 512,
        physical_exponent: 3,
        lbpme: true,
        lbprz: true,
    };
    let b = c.encode();
    assert_eq!(&b[..8], &[0, 0, 0, 0, 0, 0x07, 0xFF, 0xFF]);
    assert_eq!(&b[8..12], &[0, 0, 2, 0]);
    assert_eq!((b[13], b[14]), (0x03, 0xC0));
    assert_eq!(CapacityData::decode(&b), Ok(c));
    assert_eq!(c.size_bytes(), Ok(256 << 20));
    assert!(matches!(
        CapacityData::decode(&b[..12]),
        Err(ScsiError::Truncated { .. })
    ));

    let huge = CapacityData {
        last_lba: u64::MAX,
        ..c
    };
    assert!(huge.size_bytes().is_err());
    let wide = CapacityData {
        last_lba: u64::MAX / 512,
        ..c
    };
    assert!(wide.size_bytes().is_err());
}

proptest! {
    #[test]
    fn capacity_round_trips(
        last_lba in any::<u64>(),
        block_len in any::<u32>(),
        physical_exponent in 0u8..16,
        lbpme in any::<bool>(),
        lbprz in any::<bool>(),
    ) {
        let c = CapacityData { last_lba, block_len, physical_exponent, lbpme, lbprz };
        prop_assert_eq!(CapacityData::decode(&c.encode()), Ok(c));
        let exact = (u128::from(last_lba) + 1) * u128::from(block_len);
        match c.size_bytes() {
            Ok(n) => prop_assert_eq!(u128::from(n), exact),
            Err(_) => prop_assert!(last_lba == u64::MAX || exact > u128::from(u64::MAX)),
        }
    }

    #[test]
    fn capacity_decode_never_panics(b in vec(any::<u8>(), 0..40)) {
        let _ = CapacityData::decode(&b).map(|c| c.size_bytes());
    }
}

// ---- Persistent reservations ----

#[test]
fn tgtd_report_capabilities() {
    let b = [0x00, 0x08, 0x00, 0x80, 0xea, 0x01, 0x00, 0x00];
    let caps = Capabilities::decode(&b).unwrap();
    assert_eq!(caps.types.as_deref(), Some(&PrType::ALL[..]));
    assert!(!caps.crh && !caps.sip_c && !caps.atp_c && !caps.ptpl_c && !caps.ptpl_a);
    assert_eq!(caps.allow_commands, 0);
    assert_eq!(caps.encode(), b);

    // Without TMV the mask means nothing.
    let no_tmv = Capabilities::decode(&[0x00, 0x08, 0x00, 0x00, 0xea, 0x01, 0, 0]).unwrap();
    assert_eq!(no_tmv.types, None);
    // Only WE-RO.
    let one = Capabilities {
        types: Some(vec![PrType::WriteExclusiveRegistrantsOnly]),
        ..Capabilities::default()
    };
    assert_eq!(&one.encode()[3..6], &[0x80, 0x20, 0x00]);
}

#[test]
fn pr_out_params_layout_and_length() {
    let p = PrOutParams {
        key: 0x1234_0001,
        sa_key: 0xABCD_0002,
        spec_i_pt: false,
        all_tg_pt: false,
        aptpl: true,
    };
    let b = p.encode();
    assert_eq!(&b[..8], &[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
    assert_eq!(&b[8..16], &[0, 0, 0, 0, 0xAB, 0xCD, 0, 2]);
    assert_eq!(b[20], 0x01);
    assert_eq!(PrOutParams::decode(&b), Ok(p));

    let all = PrOutParams {
        all_tg_pt: true,
        ..p
    };
    assert_eq!(all.encode()[20], 0x05);

    let short = PrOutParams::decode(&b[..23]).unwrap_err();
    assert_eq!(short.sense(), Some(Sense::PARAMETER_LIST_LENGTH_ERROR));
    let mut long = b.to_vec();
    long.extend_from_slice(&[0; 4]);
    assert_eq!(
        PrOutParams::decode(&long).unwrap_err().sense(),
        Some(Sense::PARAMETER_LIST_LENGTH_ERROR)
    );
    // With SPEC_I_PT transport IDs follow: longer lists are fine.
    long[20] = 0x08;
    assert!(PrOutParams::decode(&long).unwrap().spec_i_pt);
}

#[test]
fn read_keys_and_reservation_layout() {
    let keys = ReadKeys {
        generation: 7,
        keys: vec![0xAA, 0xBB],
    };
    let b = keys.encode().unwrap();
    assert_eq!(&b[..8], &[0, 0, 0, 7, 0, 0, 0, 16]);
    assert_eq!(b.len(), 24);
    assert_eq!(ReadKeys::decode(&b), Ok(keys));
    // Allocation length too small: the error says how much to ask for.
    assert_eq!(
        ReadKeys::decode(&b[..16]),
        Err(ScsiError::Truncated {
            what: "PR IN READ KEYS data",
            len: 16,
            need: 24
        })
    );

    let none = ReadReservation {
        generation: 3,
        reservation: None,
    };
    assert_eq!(none.encode(), vec![0, 0, 0, 3, 0, 0, 0, 0]);
    let held = ReadReservation {
        generation: 3,
        reservation: Some(Reservation {
            key: 0xAA,
            pr_type: PrType::WriteExclusiveRegistrantsOnly,
        }),
    };
    let b = held.encode();
    assert_eq!(b.len(), 24);
    assert_eq!((b[7], b[15], b[21]), (16, 0xAA, 0x05));
    assert_eq!(ReadReservation::decode(&b), Ok(held));
    let mut bad = b.clone();
    bad[21] = 0x02;
    assert!(matches!(
        ReadReservation::decode(&bad),
        Err(ScsiError::InvalidData {
            field: "type",
            value: 2,
            ..
        })
    ));
}

#[test]
fn iscsi_transport_ids() {
    let port = TransportId::IscsiPort {
        name: "iqn.2026-11.test:host-a".into(),
        isid: [0x00, 0x02, 0x3d, 0x00, 0x00, 0x01],
    };
    let b = port.encode().unwrap();
    let text = "iqn.2026-11.test:host-a,i,0x00023d000001";
    assert_eq!(b[0], 0x45);
    assert_eq!(b.len() % 4, 0);
    assert_eq!(usize::from(u16::from_be_bytes([b[2], b[3]])), b.len() - 4);
    assert_eq!(&b[4..4 + text.len()], text.as_bytes());
    assert!(b[4 + text.len()..].iter().all(|&x| x == 0));
    assert_eq!(TransportId::decode(&b), Ok(port));

    // A short name is padded to the 24-byte minimum.
    let dev = TransportId::Iscsi {
        name: "iqn.x".into(),
    };
    let b = dev.encode().unwrap();
    assert_eq!((b[0], b.len(), b[3]), (0x05, 24, 20));
    assert_eq!(TransportId::decode(&b), Ok(dev));
    // Upper-case ISID digits are read too.
    let mut b = TransportId::IscsiPort {
        name: "iqn.y".into(),
        isid: [0xAB; 6],
    }
    .encode()
    .unwrap();
    // "iqn.y,i,0x" is 10 characters; the ISID's 12 digits follow.
    b[4 + 10..4 + 22].make_ascii_uppercase();
    assert!(matches!(
        TransportId::decode(&b),
        Ok(TransportId::IscsiPort {
            isid: [0xAB, 0xAB, 0xAB, 0xAB, 0xAB, 0xAB],
            ..
        })
    ));
}

#[test]
fn full_status_layout() {
    let fs = FullStatus {
        generation: 9,
        descriptors: vec![
            FullStatusDescriptor {
                key: 0xAA,
                all_tg_pt: false,
                holder: Some(PrType::WriteExclusiveRegistrantsOnly),
                relative_port: 1,
                transport_id: TransportId::IscsiPort {
                    name: "iqn.2026-11.test:host-a".into(),
                    isid: [0, 2, 0x3d, 0, 0, 1],
                },
            },
            FullStatusDescriptor {
                key: 0xBB,
                all_tg_pt: true,
                holder: None,
                relative_port: 0,
                transport_id: TransportId::Iscsi {
                    name: "iqn.2026-11.test:host-b".into(),
                },
            },
        ],
    };
    let b = fs.encode().unwrap();
    let d0 = &b[8..];
    assert_eq!((d0[7], d0[12], d0[13], d0[19]), (0xAA, 0x01, 0x05, 1));
    let tid0 = u32::from_be_bytes([d0[20], d0[21], d0[22], d0[23]]) as usize;
    assert_eq!(d0[24], 0x45);
    let d1 = &d0[24 + tid0..];
    assert_eq!((d1[7], d1[12], d1[13]), (0xBB, 0x02, 0x00));
    assert_eq!(
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize,
        b.len() - 8
    );
    assert_eq!(FullStatus::decode(&b), Ok(fs));
    assert!(matches!(
        FullStatus::decode(&b[..b.len() - 4]),
        Err(ScsiError::Truncated { .. })
    ));
}

fn iscsi_name() -> impl Strategy<Value = String> {
    "iqn\\.[0-9]{4}-[0-9]{2}\\.[a-z0-9.-]{1,20}(:[a-z0-9.:-]{0,40})?"
}

fn transport_id() -> impl Strategy<Value = TransportId> {
    prop_oneof![
        iscsi_name().prop_map(|name| TransportId::Iscsi { name }),
        (iscsi_name(), any::<[u8; 6]>())
            .prop_map(|(name, isid)| TransportId::IscsiPort { name, isid }),
        // Fibre Channel: protocol 0, 24 bytes.
        vec(any::<u8>(), 23).prop_map(|rest| {
            let mut raw = vec![0x00];
            raw.extend(rest);
            TransportId::Other(raw)
        }),
    ]
}

fn full_status_descriptor() -> impl Strategy<Value = FullStatusDescriptor> {
    (
        any::<u64>(),
        any::<bool>(),
        proptest::option::of(pr_type()),
        any::<u16>(),
        transport_id(),
    )
        .prop_map(|(key, all_tg_pt, holder, relative_port, transport_id)| {
            FullStatusDescriptor {
                key,
                all_tg_pt,
                holder,
                relative_port,
                transport_id,
            }
        })
}

proptest! {
    #[test]
    fn pr_out_params_round_trip(key in any::<u64>(), sa_key in any::<u64>(), flags in any::<[bool; 3]>()) {
        let p = PrOutParams { key, sa_key, spec_i_pt: flags[0], all_tg_pt: flags[1], aptpl: flags[2] };
        prop_assert_eq!(PrOutParams::decode(&p.encode()), Ok(p));
    }

    #[test]
    fn read_keys_round_trip(generation in any::<u32>(), keys in vec(any::<u64>(), 0..20)) {
        let k = ReadKeys { generation, keys };
        prop_assert_eq!(ReadKeys::decode(&k.encode().unwrap()), Ok(k));
    }

    #[test]
    fn read_reservation_round_trips(
        generation in any::<u32>(),
        reservation in proptest::option::of((any::<u64>(), pr_type())),
    ) {
        let r = ReadReservation {
            generation,
            reservation: reservation.map(|(key, pr_type)| Reservation { key, pr_type }),
        };
        prop_assert_eq!(ReadReservation::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn capabilities_round_trip(
        flags in any::<[bool; 5]>(),
        allow_commands in 0u8..8,
        types in proptest::option::of(subsequence(PrType::ALL.to_vec(), 0..=6)),
    ) {
        let c = Capabilities {
            crh: flags[0], sip_c: flags[1], atp_c: flags[2], ptpl_c: flags[3],
            allow_commands, ptpl_a: flags[4], types,
        };
        prop_assert_eq!(Capabilities::decode(&c.encode()), Ok(c));
    }

    #[test]
    fn transport_id_round_trips(t in transport_id()) {
        let b = t.encode().unwrap();
        prop_assert!(b.len() >= 24 && b.len() % 4 == 0);
        prop_assert_eq!(TransportId::decode(&b), Ok(t));
    }

    #[test]
    fn full_status_round_trips(generation in any::<u32>(), descriptors in vec(full_status_descriptor(), 0..5)) {
        let fs = FullStatus { generation, descriptors };
        prop_assert_eq!(FullStatus::decode(&fs.encode().unwrap()), Ok(fs));
    }

    #[test]
    fn pr_decoders_never_panic(
        additional in any::<u32>(),
        head in any::<[u8; 4]>(),
        body in vec(any::<u8>(), 0..200),
    ) {
        // Once with an arbitrary header, once with one that matches the body.
        for additional in [additional, body.len() as u32] {
            let mut b = head.to_vec();
            b.extend_from_slice(&additional.to_be_bytes());
            b.extend_from_slice(&body);
            let _ = PrOutParams::decode(&b);
            let _ = ReadKeys::decode(&b);
            let _ = ReadReservation::decode(&b);
            let _ = Capabilities::decode(&b);
            let _ = FullStatus::decode(&b);
            let _ = TransportId::decode(&b);
            let _ = TransportId::decode(&body);
        }
    }

    #[test]
    fn full_status_walk_never_panics(
        descriptors in vec((any::<[u8; 20]>(), 0u32..64, vec(any::<u8>(), 0..64)), 0..4),
    ) {
        // Descriptors with plausible transport ID lengths, to get past the header.
        let mut body = Vec::new();
        for (head, tid_len, tid) in descriptors {
            body.extend_from_slice(&head);
            body.extend_from_slice(&tid_len.to_be_bytes());
            body.extend_from_slice(&tid);
        }
        let mut b = vec![0, 0, 0, 1];
        b.extend_from_slice(&(body.len() as u32).to_be_bytes());
        b.extend_from_slice(&body);
        if let Ok(fs) = FullStatus::decode(&b) {
            prop_assert!(fs.descriptors.len() <= 4);
        }
    }
}

// ---- UNMAP ----

#[test]
fn unmap_parameter_list_layout() {
    let p = UnmapParams {
        descriptors: vec![UnmapDescriptor {
            lba: 0x0102,
            blocks: 0x0304,
        }],
    };
    let b = p.encode().unwrap();
    assert_eq!(b.len(), 24);
    assert_eq!(&b[..8], &[0, 22, 0, 16, 0, 0, 0, 0]);
    assert_eq!(&b[8..24], &[0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0]);
    assert_eq!(UnmapParams::decode(&b), Ok(p.clone()));

    // An empty list unmaps nothing; a list shorter than its header is 05/1A/00.
    assert_eq!(UnmapParams::decode(&[]), Ok(UnmapParams::default()));
    assert_eq!(
        UnmapParams::decode(&b[..4]).unwrap_err().sense(),
        Some(Sense::PARAMETER_LIST_LENGTH_ERROR)
    );
    // A descriptor length past the data is cut to whole descriptors present.
    let mut cut = b.clone();
    cut[3] = 48;
    assert_eq!(UnmapParams::decode(&cut), Ok(p));
    assert_eq!(UnmapParams::decode(&b[..20]), Ok(UnmapParams::default()));

    let too_many = UnmapParams {
        descriptors: vec![UnmapDescriptor { lba: 0, blocks: 1 }; MAX_UNMAP_DESCRIPTORS + 1],
    };
    assert!(matches!(
        too_many.encode(),
        Err(ScsiError::Unencodable { .. })
    ));
    let most = UnmapParams {
        descriptors: vec![UnmapDescriptor { lba: 0, blocks: 1 }; MAX_UNMAP_DESCRIPTORS],
    };
    assert_eq!(most.encode().unwrap().len(), 8 + 16 * MAX_UNMAP_DESCRIPTORS);
}

proptest! {
    #[test]
    fn unmap_round_trips(ranges in vec((any::<u64>(), any::<u32>()), 0..50)) {
        let p = UnmapParams {
            descriptors: ranges.into_iter().map(|(lba, blocks)| UnmapDescriptor { lba, blocks }).collect(),
        };
        let b = p.encode().unwrap();
        prop_assert_eq!(Cdb::Unmap { anchor: false, param_len: b.len() as u16 }.transfer_len(512), b.len() as u64);
        prop_assert_eq!(UnmapParams::decode(&b), Ok(p));
    }

    #[test]
    fn unmap_decode_never_panics(b in vec(any::<u8>(), 0..100)) {
        if let Ok(p) = UnmapParams::decode(&b) {
            prop_assert!(p.descriptors.len() * 16 + 8 <= b.len().max(8));
        }
    }
}

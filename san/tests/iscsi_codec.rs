//! Property tests of the iSCSI PDU and text codecs: what one side encodes
//! the other decodes unchanged, and hostile bytes give errors, never a
//! panic or an allocation beyond the declared limit.

use proptest::prelude::*;
use san::iscsi::pdu::{self, Digests, Opcode, Pdu, PduError, BHS_LEN};
use san::iscsi::text::{self, Offer};

const OPCODES: [u8; 18] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31,
    0x32, 0x3f,
];

fn any_pdu() -> impl Strategy<Value = Pdu> {
    (
        prop::sample::select(OPCODES.to_vec()),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), BHS_LEN),
        (0usize..8).prop_flat_map(|w| prop::collection::vec(any::<u8>(), w * 4)),
        prop::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(op, imm, bhs, ahs, data)| {
            let mut p = Pdu::new(Opcode::from_byte(op).unwrap());
            p.bhs[1..].copy_from_slice(&bhs[1..]);
            p.set_immediate(imm);
            p.ahs = ahs;
            p.data = data;
            p
        })
}

fn digests() -> impl Strategy<Value = Digests> {
    (any::<bool>(), any::<bool>()).prop_map(|(header, data)| Digests { header, data })
}

proptest! {
    #[test]
    fn pdus_round_trip(p in any_pdu(), d in digests()) {
        let wire = p.encode(d);
        let mut r = &wire[..];
        let back = Pdu::read_from(&mut r, d, 8192).unwrap();
        prop_assert!(r.is_empty(), "bytes left over");
        prop_assert_eq!(back.opcode(), p.opcode());
        prop_assert_eq!(back.immediate(), p.immediate());
        prop_assert_eq!(&back.bhs[8..], &p.bhs[8..]);
        prop_assert_eq!(&back.ahs, &p.ahs);
        prop_assert_eq!(&back.data, &p.data);
        prop_assert_eq!(pdu::data_segment_len(&back.bhs) as usize, p.data.len());
    }

    #[test]
    fn a_flipped_bit_fails_the_digest(p in any_pdu(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let d = Digests { header: true, data: true };
        let mut wire = p.encode(d);
        // Flip a bit outside the length fields (which would change framing).
        let i = at.index(wire.len());
        prop_assume!(!(4..8).contains(&i) && i != 0);
        wire[i] ^= 1 << bit;
        match Pdu::read_from(&mut &wire[..], d, 8192) {
            Err(PduError::HeaderDigest { .. } | PduError::DataDigest { .. }) => {}
            other => prop_assert!(false, "flip at {} gave {:?}", i, other.map(|p| p.opcode())),
        }
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), d in digests(), max in 0u32..1024) {
        let mut r = &bytes[..];
        // Read PDUs until an error: each either decodes or is refused.
        for _ in 0..8 {
            match Pdu::read_from(&mut r, d, max) {
                Ok(p) => prop_assert!(p.data.len() as u32 <= max),
                Err(_) => break,
            }
        }
    }

    #[test]
    fn oversized_segments_are_refused_before_reading(len in 8193u32..(1 << 24), d in digests()) {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = Opcode::DataIn as u8;
        bhs[5..8].copy_from_slice(&len.to_be_bytes()[1..]);
        match Pdu::read_from(&mut &bhs[..], d, 8192) {
            Err(PduError::DataTooLong { len: l, max: 8192 }) => prop_assert_eq!(l, len),
            other => prop_assert!(false, "{:?}", other.map(|p| p.opcode())),
        }
    }

    #[test]
    fn text_round_trips(pairs in prop::collection::vec(("[A-Za-z][A-Za-z0-9.]{0,62}", "[ -~&&[^=]]{0,300}"), 0..20)) {
        let enc = text::encode(&pairs);
        let back = text::parse(&enc).unwrap();
        prop_assert_eq!(back, pairs);
    }

    #[test]
    fn hostile_text_and_answers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(pairs) = text::parse(&bytes) {
            let _ = Offer::default().resolve(&pairs);
        }
    }

    #[test]
    fn resolved_parameters_stay_inside_the_offer(
        burst in 512u32..20_000_000, first in 512u32..20_000_000, mrdsl in 512u32..(1 << 24),
        r2t in any::<bool>(), imm in any::<bool>(),
    ) {
        let ans = text::parse(&text::encode(&[
            ("MaxBurstLength", burst.to_string()),
            ("FirstBurstLength", first.to_string()),
            ("MaxRecvDataSegmentLength", mrdsl.to_string()),
            ("InitialR2T", if r2t { "Yes" } else { "No" }.to_string()),
            ("ImmediateData", if imm { "Yes" } else { "No" }.to_string()),
        ])).unwrap();
        let o = Offer::default();
        match o.resolve(&ans) {
            Ok(p) => {
                prop_assert!(p.max_burst_length <= o.max_burst_length);
                prop_assert!(p.first_burst_length <= p.max_burst_length);
                prop_assert_eq!(p.max_send_data_segment_length, mrdsl);
                prop_assert_eq!((p.initial_r2t, p.immediate_data), (r2t, imm));
            }
            Err(_) => prop_assert!(burst > o.max_burst_length || first > o.first_burst_length),
        }
    }
}

proptest! {
    /// Writing a PDU with a borrowed data segment gives the same bytes as
    /// encoding it with the data inside.
    #[test]
    fn borrowed_data_writes_the_same_bytes(p in any_pdu(), d in digests()) {
        let mut header_only = p.clone();
        header_only.data.clear();
        let mut out = Vec::new();
        header_only.write_with_data(&mut out, d, &p.data).unwrap();
        prop_assert_eq!(out, p.encode(d));
    }
}

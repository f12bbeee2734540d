//! Property tests of the NBD codec (`san::nbd::proto`): every message
//! round-trips, and decoders given arbitrary bytes return an error or a
//! value, never panic.

use proptest::prelude::*;
use san::nbd::proto::*;

proptest! {
    #[test]
    fn request_round_trips(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) {
        let r = Request { flags, kind, cookie, offset, len };
        prop_assert_eq!(decode_request(&encode_request(&r)), Ok(r));
    }

    #[test]
    fn simple_reply_round_trips(error: u32, cookie: u64) {
        let r = SimpleReply { error, cookie };
        prop_assert_eq!(decode_simple_reply(&encode_simple_reply(&r)), Ok(r));
    }

    #[test]
    fn option_header_round_trips(option: u32, len: u32) {
        let h = OptionHeader { option, len };
        prop_assert_eq!(decode_option_header(&encode_option_header(&h)), Ok(h));
    }

    #[test]
    fn option_reply_round_trips(option: u32, reply: u32, data in prop::collection::vec(any::<u8>(), 0..300)) {
        let b = encode_option_reply(option, reply, &data);
        let h = decode_option_reply_header(&b).unwrap();
        prop_assert_eq!(h, OptionReplyHeader { option, reply, len: data.len() as u32 });
        prop_assert_eq!(&b[OPTION_REPLY_HEADER_LEN..], &data[..]);
    }

    #[test]
    fn info_request_round_trips(
        name in prop::collection::vec(any::<u8>(), 0..MAX_STRING),
        infos in prop::collection::vec(any::<u16>(), 0..40),
    ) {
        let r = InfoRequest { name, infos };
        prop_assert_eq!(decode_info_request(&encode_info_request(&r)), Ok(r));
    }

    #[test]
    fn infos_round_trip(size: u64, flags: u16, min: u32, preferred: u32, max: u32,
                        name in prop::collection::vec(any::<u8>(), 0..100)) {
        prop_assert_eq!(decode_info(&encode_info_export(size, flags)), Ok(Info::Export { size, flags }));
        let b = BlockSizes { min, preferred, max };
        prop_assert_eq!(decode_info(&encode_info_block_size(&b)), Ok(Info::BlockSize(b)));
        prop_assert_eq!(decode_info(&encode_info_name(&name)), Ok(Info::Name(name.clone())));
        prop_assert_eq!(decode_rep_server(&encode_rep_server(&name)), Ok(name));
    }

    #[test]
    fn greeting_and_export_name_reply(flags: u16, size: u64, tflags: u16, no_zeroes: bool) {
        prop_assert_eq!(decode_greeting(&encode_greeting(flags)), Ok(flags));
        let b = encode_export_name_reply(size, tflags, no_zeroes);
        prop_assert_eq!(b.len(), if no_zeroes { 10 } else { 134 });
        prop_assert_eq!(u64::from_be_bytes(b[..8].try_into().unwrap()), size);
        prop_assert_eq!(u16::from_be_bytes([b[8], b[9]]), tflags);
    }

    /// Arbitrary bytes: every decoder answers, none panics, and none
    /// accepts fewer bytes than its message needs.
    #[test]
    fn decoders_never_panic(b in prop::collection::vec(any::<u8>(), 0..200), server_flags: u16) {
        let _ = decode_greeting(&b);
        let _ = decode_client_flags(&b, server_flags);
        if decode_option_header(&b).is_ok() { prop_assert!(b.len() >= OPTION_HEADER_LEN); }
        if decode_option_reply_header(&b).is_ok() { prop_assert!(b.len() >= OPTION_REPLY_HEADER_LEN); }
        if decode_request(&b).is_ok() { prop_assert!(b.len() >= REQUEST_LEN); }
        if decode_simple_reply(&b).is_ok() { prop_assert!(b.len() >= SIMPLE_REPLY_LEN); }
        if let Ok(r) = decode_info_request(&b) {
            prop_assert_eq!(6 + r.name.len() + 2 * r.infos.len(), b.len());
        }
        let _ = decode_info(&b);
        if let Ok(n) = decode_rep_server(&b) { prop_assert!(n.len() + 4 <= b.len()); }
    }

    /// Valid headers with a magic byte changed are refused.
    #[test]
    fn bad_magic_is_refused(at in 0usize..4, x in 1u8..) {
        let mut r = encode_request(&Request { flags: 0, kind: 0, cookie: 1, offset: 0, len: 512 });
        r[at] ^= x;
        prop_assert!(matches!(decode_request(&r), Err(ProtoError::BadMagic(_))));
        let mut o = encode_option_header(&OptionHeader { option: OPT_GO, len: 0 });
        o[at] ^= x;
        prop_assert!(matches!(decode_option_header(&o), Err(ProtoError::BadMagic(_))));
    }

    /// Info requests whose name length points anywhere are refused, not
    /// sliced out of bounds.
    #[test]
    fn info_request_with_lying_lengths(name_len: u32, count: u16, tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut b = name_len.to_be_bytes().to_vec();
        b.extend_from_slice(&tail);
        b.extend_from_slice(&count.to_be_bytes());
        if let Ok(r) = decode_info_request(&b) {
            prop_assert_eq!(r.name.len() as u32, name_len);
            prop_assert_eq!(r.infos.len(), usize::from(count));
        }
    }
}

//! Property tests: binary headers and metadata text round trip, arbitrary
//! and mutated input never panics the parsers, random LV operations keep the
//! model valid and allocation sound, and the circular buffer never places a
//! new copy over the committed one.

mod common;

use common::*;
use lvm::crc::lvm_crc;
use lvm::label::{DiskLocn, PvLabel, LABEL_ID, LABEL_TYPE};
use lvm::mda::{max_text_len, next_offset, MdaHeader, RawLocn, MDA_MAGIC};
use lvm::names::Uuid;
use lvm::{format_pv, Error, OpenVg, PvDev, PvFormat, Vg};
use proptest::collection::vec;
use proptest::prelude::*;
use san::{BlockDev, FaultControl, FaultDev};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

// ------------------------------------------------------------------ PV label

fn uuid() -> impl Strategy<Value = Uuid> {
    "[0-9a-zA-Z!#]{32}".prop_map(|s| Uuid::parse(&s).unwrap())
}

fn locn() -> impl Strategy<Value = DiskLocn> {
    (1u64.., any::<u64>()).prop_map(|(offset, size)| DiskLocn { offset, size })
}

fn label() -> impl Strategy<Value = PvLabel> {
    (
        0u64..4,
        uuid(),
        any::<u64>(),
        locn(),
        vec(locn(), 0..=2),
        prop_oneof![Just(0u32), Just(2u32)],
        any::<u32>(),
        proptest::option::of(locn()),
    )
        .prop_map(
            |(sector, uuid, device_size, da, mdas, ext_version, flags, ba)| PvLabel {
                sector,
                uuid,
                device_size,
                data_areas: vec![da],
                mdas,
                ext_version,
                ext_flags: if ext_version == 0 { 0 } else { flags },
                bootloader_areas: if ext_version == 0 {
                    Vec::new()
                } else {
                    ba.into_iter().collect()
                },
            },
        )
}

/// Byte ranges of the sector that carry a field of `l` (the checksum excluded);
/// every other byte of an encoded label is zero.
fn label_fields(l: &PvLabel) -> Vec<Range<usize>> {
    fn list(r: &mut Vec<Range<usize>>, at: &mut usize, n: usize) {
        r.push(*at..*at + 16 * n + 8); // the entries and the terminator's offset
        *at += 16 * (n + 1);
    }
    let mut r = vec![0..16, 20..72];
    let mut at = 72;
    list(&mut r, &mut at, l.data_areas.len());
    list(&mut r, &mut at, l.mdas.len());
    if l.ext_version > 0 {
        r.push(at..at + 8);
        at += 8;
        list(&mut r, &mut at, l.bootloader_areas.len());
    }
    r
}

/// A sector that looks like a label: right id, sector, offset and type, an
/// alphanumeric UUID, then 8-byte words that are often zero (list terminators)
/// or small, so decoding gets past the first checks.
fn label_like() -> impl Strategy<Value = (Vec<u8>, u64)> {
    let word = prop_oneof![3 => Just(0u64), 3 => 1u64..1 << 30, 1 => any::<u64>(), 1 => Just(2u64), 1 => Just(1u64)];
    (
        0u64..4,
        "[0-9a-zA-Z]{32}",
        vec(word, 55),
        any::<bool>(),
        vec((20usize..512, any::<u8>()), 0..3),
    )
        .prop_map(|(index, uuid, words, fix_crc, flips)| {
            let mut s = vec![0u8; 512];
            s[..8].copy_from_slice(LABEL_ID);
            s[8..16].copy_from_slice(&index.to_le_bytes());
            s[20..24].copy_from_slice(&32u32.to_le_bytes());
            s[24..32].copy_from_slice(LABEL_TYPE);
            s[32..64].copy_from_slice(uuid.as_bytes());
            for (i, w) in words.iter().enumerate() {
                s[64 + 8 * i..72 + 8 * i].copy_from_slice(&w.to_le_bytes());
            }
            for (at, b) in flips {
                s[at] = b;
            }
            if fix_crc {
                let crc = lvm_crc(&s[20..]);
                s[16..20].copy_from_slice(&crc.to_le_bytes());
            }
            (s, index)
        })
}

fn check_decoded_label(s: &[u8], index: u64) -> Result<(), TestCaseError> {
    let Ok(Some(l)) = PvLabel::decode(s, index) else {
        return Ok(());
    };
    let s = &s[..512];
    prop_assert_eq!(
        lvm_crc(&s[20..]),
        u32::from_le_bytes(s[16..20].try_into().unwrap())
    );
    let e = l.encode().expect("a decoded label fits a sector");
    prop_assert_eq!(PvLabel::decode(&e, index), Ok(Some(l.clone())));
    let fields = label_fields(&l);
    for r in &fields {
        prop_assert_eq!(&e[r.clone()], &s[r.clone()], "field bytes {:?} differ", r);
    }
    let outside = |b: &[u8]| {
        (0..512)
            .filter(|i| !(16..20).contains(i) && !fields.iter().any(|r| r.contains(i)))
            .all(|i| b[i] == 0)
    };
    prop_assert!(outside(&e), "encode writes only the fields");
    if outside(s) {
        prop_assert_eq!(&e[..], s, "a canonical label re-encodes to the same bytes");
    }
    Ok(())
}

// ------------------------------------------------------------ metadata area

fn raw_locn() -> impl Strategy<Value = RawLocn> {
    (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
        |(offset, size, checksum, flags)| RawLocn {
            offset,
            size,
            checksum,
            flags,
        },
    )
}

/// A copy location an area of `area` bytes accepts (an independent statement of the rule).
fn locn_fits(l: &RawLocn, area: u64) -> bool {
    l.offset >= 512
        && l.offset < area
        && l.size >= 1
        && area >= 512
        && l.size <= area - 512
        && l.offset.checked_add(l.size).is_some()
}

/// A location that mostly fits `area`, sometimes not.
fn locn_in(area: u64) -> impl Strategy<Value = RawLocn> {
    prop_oneof![
        (512..area.max(513), 1..area.max(2), any::<u32>(), 0u32..2).prop_map(
            |(offset, size, checksum, flags)| RawLocn {
                offset,
                size,
                checksum,
                flags
            }
        ),
        Just(RawLocn::default()),
        raw_locn(),
    ]
}

fn mda_header() -> impl Strategy<Value = MdaHeader> {
    prop_oneof![1024u64..64 * MIB, any::<u64>()].prop_flat_map(|size| {
        (any::<u64>(), Just(size), locn_in(size), raw_locn()).prop_map(
            |(start, size, committed, precommitted)| MdaHeader {
                start,
                size,
                committed,
                precommitted,
            },
        )
    })
}

/// A sector that looks like an mda_header for (start, size): right magic and
/// version, random slots, maybe garbage after them, maybe a valid checksum.
fn header_like() -> impl Strategy<Value = (Vec<u8>, u64, u64)> {
    (
        any::<u64>(),
        any::<u64>(),
        vec(any::<u8>(), 48),
        vec((0usize..512, any::<u8>()), 0..3),
        any::<bool>(),
    )
        .prop_map(|(start, size, slots, flips, fix_crc)| {
            let mut s = vec![0u8; 512];
            s[4..20].copy_from_slice(MDA_MAGIC);
            s[20..24].copy_from_slice(&1u32.to_le_bytes());
            s[24..32].copy_from_slice(&start.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            s[40..88].copy_from_slice(&slots);
            for (at, b) in flips {
                s[at] = b;
            }
            if fix_crc {
                let crc = lvm_crc(&s[4..]);
                s[..4].copy_from_slice(&crc.to_le_bytes());
            }
            (s, start, size)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn label_round_trip(l in label()) {
        let s = l.encode().unwrap();
        prop_assert_eq!(&s[..8], LABEL_ID);
        prop_assert_eq!(u32::from_le_bytes(s[16..20].try_into().unwrap()), lvm_crc(&s[20..]));
        prop_assert_eq!(PvLabel::decode(&s, l.sector), Ok(Some(l.clone())));
        let other = (l.sector + 1) % 4;
        prop_assert!(PvLabel::decode(&s, other).unwrap_err().contains("found at sector"));
        check_decoded_label(&s, l.sector)?;
    }

    #[test]
    fn label_decode_arbitrary_sector(s in vec(any::<u8>(), 0..600), index in 0u64..4) {
        let r = PvLabel::decode(&s, index);
        if s.len() < 512 || s[..8] != LABEL_ID[..] {
            prop_assert_eq!(r, Ok(None));
        } else {
            check_decoded_label(&s, index)?;
        }
    }

    #[test]
    fn label_decode_label_like_sector((s, index) in label_like()) {
        match PvLabel::decode(&s, index) {
            Ok(None) => prop_assert!(false, "a sector starting with LABELONE is a label"),
            Ok(Some(_)) => check_decoded_label(&s, index)?,
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn mda_header_round_trip(h in mda_header()) {
        let s = h.encode();
        prop_assert_eq!(&s[4..20], MDA_MAGIC);
        prop_assert_eq!(u32::from_le_bytes(s[..4].try_into().unwrap()), lvm_crc(&s[4..]));
        prop_assert!(s[88..].iter().all(|&b| b == 0));
        let back = MdaHeader::decode(&s, h.start, h.size);
        if h.committed.offset == 0 || locn_fits(&h.committed, h.size) {
            prop_assert_eq!(back, Ok(h));
        } else {
            prop_assert!(back.unwrap_err().contains("text location"));
        }
        if h.size != 0 {
            prop_assert!(MdaHeader::decode(&s, h.start, h.size - 1).unwrap_err().contains("PV label says"));
        }
    }

    #[test]
    fn mda_header_decode_arbitrary_sector(s in vec(any::<u8>(), 0..600), start in any::<u64>(), size in any::<u64>()) {
        if let Ok(h) = MdaHeader::decode(&s, start, size) {
            prop_assert_eq!(&h.encode()[4..88], &s[4..88]);
        }
    }

    #[test]
    fn mda_header_decode_header_like_sector((s, start, size) in header_like()) {
        if let Ok(h) = MdaHeader::decode(&s, start, size) {
            prop_assert!(h.committed.offset == 0 || locn_fits(&h.committed, size));
            let e = h.encode();
            prop_assert_eq!(&e[4..88], &s[4..88]);
            if s[88..].iter().all(|&b| b == 0) {
                // Nothing but the fields: the sector re-encodes byte for byte.
                prop_assert_eq!(&e[..], &s[..]);
            }
        }
    }

    /// Copies placed one after the other (lengths up to the maximum) stay in
    /// the buffer, do not overlap themselves when they wrap, and neither the
    /// copy nor its zero padding touches the committed copy.
    #[test]
    fn circular_buffer_never_overwrites_the_committed_copy(
        area in prop_oneof![2048u64..8 * MIB, (4u64..16384).prop_map(|s| s * 512)],
        picks in vec(any::<u64>(), 1..80),
    ) {
        let max = max_text_len(area);
        prop_assert!(max >= 1);
        prop_assert!(2 * (max + 512) <= area - 512, "room for two copies and alignment");
        // Bytes (relative to the area start) a copy at `o` of `len` covers, padded or not.
        let pieces = |o: u64, len: u64, padded: bool| -> Vec<Range<u64>> {
            let pad = |e: u64| if padded { e.div_ceil(512) * 512 } else { e };
            let mut v = Vec::with_capacity(2);
            v.push(o..area.min(pad(o + len)));
            if o + len > area {
                v.push(512..pad(512 + o + len - area));
            }
            v
        };
        let mut committed = RawLocn::default();
        for p in picks {
            let len = match p % 4 {
                0 => max - (p >> 2) % max.min(700),
                _ => 1 + (p >> 2) % max,
            };
            let at = next_offset(&committed, area);
            prop_assert!(at >= 512 && at < area && at % 512 == 0, "offset {} in area {}", at, area);
            let new = pieces(at, len, true);
            for r in &new {
                prop_assert!(r.start >= 512 && r.end <= area, "piece {:?} outside the buffer of {}", r, area);
            }
            if new.len() == 2 {
                prop_assert!(new[1].end <= new[0].start, "wrapped copy {:?} overlaps itself", new);
            }
            if !committed.is_empty() {
                for old in pieces(committed.offset, committed.size, false) {
                    for r in &new {
                        prop_assert!(
                            r.end <= old.start || old.end <= r.start,
                            "new copy {:?} (at {}, {} bytes) overlaps the committed {:?} ({:?}) in area {}",
                            r, at, len, old, committed, area
                        );
                    }
                }
            }
            committed = RawLocn { offset: at, size: len, checksum: 0, flags: 0 };
        }
    }
}

// ------------------------------------------------------------ metadata text

/// The committed text of the sample VG, made once with OpenVg on files.
fn real_text() -> &'static [u8] {
    static TEXT: OnceLock<Vec<u8>> = OnceLock::new();
    TEXT.get_or_init(|| {
        let dir = tmpdir();
        let (disks, vg) = sample_vg(dir.path());
        let raw = vg.raw_text().to_vec();
        assert_eq!(disks[0].text(0), raw);
        raw
    })
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "=",
    ",",
    "\"",
    "'",
    "#",
    "\n",
    "\0",
    "-1",
    "0",
    "010",
    "08",
    "0x10",
    "1.5",
    "99999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "\"pv9\"",
    "\"pv1\"",
    "\"BOGUS\"",
    "segment9 {",
    "stripes = [",
    "x = ",
    "status = [\"READ\"]",
    "segment_count = 7",
    "a@b",
    "\"a b\"",
    "\\",
    "logical_volumes {",
    "physical_volumes {",
    "extent_size = 0",
    "}}}}",
    "{{{{",
];

#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Delete(usize, usize),
    Insert(usize, usize),
    Truncate(usize),
    Swap(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
    ]
}

fn apply(text: &mut Vec<u8>, m: &Mutation) {
    let n = text.len().max(1);
    match *m {
        Mutation::Set(i, b) if !text.is_empty() => text[i % n] = b,
        Mutation::Delete(i, k) if !text.is_empty() => {
            let i = i % n;
            text.drain(i..(i + k).min(text.len()));
        }
        Mutation::Insert(i, t) => {
            let i = i % (text.len() + 1);
            text.splice(i..i, TOKENS[t].bytes());
        }
        Mutation::Truncate(i) => text.truncate(i % n),
        Mutation::Swap(i, j) if !text.is_empty() => text.swap(i % n, j % n),
        _ => {}
    }
}

/// Whatever `Vg::from_text` accepts is a valid model that survives a write and a re-read.
fn check_parsed(raw: &[u8]) -> Result<(), TestCaseError> {
    match Vg::from_text(raw) {
        Ok(vg) => {
            prop_assert!(vg.validate().is_ok());
            let again = Vg::from_text(&vg.to_text(&header()));
            prop_assert_eq!(
                again.as_ref().ok(),
                Some(&vg),
                "re-read failed: {:?}",
                again.as_ref().err()
            );
        }
        Err(e) => {
            prop_assert!(
                matches!(
                    e,
                    Error::Metadata(_) | Error::InvalidName { .. } | Error::InvalidTag { .. }
                ),
                "{e:?}"
            );
            prop_assert!(!e.to_string().is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_into_from_text(bytes in vec(any::<u8>(), 0..2048)) {
        check_parsed(&bytes)?;
    }

    #[test]
    fn mutated_real_text_into_from_text(ms in vec(mutation(), 1..6)) {
        let mut text = real_text().to_vec();
        for m in &ms {
            apply(&mut text, m);
        }
        check_parsed(&text)?;
    }

    #[test]
    fn mutated_real_text_with_token_runs(at in any::<usize>(), t in 0..TOKENS.len(), n in 1usize..200) {
        // Many copies of one token: deep nesting, long arrays, long garbage.
        let mut text = real_text().to_vec();
        let at = at % text.len();
        let run: Vec<u8> = TOKENS[t].bytes().cycle().take(TOKENS[t].len() * n).collect();
        text.splice(at..at, run);
        check_parsed(&text)?;
    }
}

#[test]
fn real_text_round_trips() {
    let vg = Vg::from_text(real_text()).unwrap();
    assert_eq!(Vg::from_text(&vg.to_text(&header())).unwrap(), vg);
    assert_eq!(vg.lvs.len(), 4);
}

// ------------------------------------------------------- LV operations model

const NAMES: &[&str] = &[
    "lv0",
    "data",
    "a+b.c_d-e",
    "123",
    "x.y",
    "_u",
    "+p",
    "LV-9",
    "snapshotx",
    "a@b",
    "-x",
    ".",
];
const TAGS: &[&str] = &[
    "t1",
    "owner=me",
    "a/b:c&d#e!",
    "-hyph",
    "a b",
    "",
    "x@y",
    "T.2_+",
];

#[derive(Clone, Debug)]
enum Op {
    Create(String, u64, Vec<String>),
    Extend(String, u64),
    Reduce(String, u64),
    Remove(String),
    Rename(String, String),
    Tag(Option<String>, Vec<String>, Vec<String>),
}

/// Mostly names from a small pool (so operations meet existing LVs), some
/// random ones from the LV alphabet and a little beyond.
fn lv_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(NAMES).prop_map(String::from),
        1 => "[A-Za-z0-9+_.-]{1,12}",
        1 => "[A-Za-z0-9+_.@ #-]{0,6}",
    ]
}

fn tag_list() -> impl Strategy<Value = Vec<String>> {
    let tag = prop_oneof![
        4 => proptest::sample::select(TAGS).prop_map(String::from),
        1 => "[A-Za-z0-9_+./=!:&#-]{1,12}",
        1 => "[A-Za-z0-9_+./=!:&# @\\\\\"-]{0,6}",
    ];
    vec(tag, 0..3)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (lv_name(), 0u64..30, tag_list()).prop_map(|(n, s, t)| Op::Create(n, s, t)),
        3 => (lv_name(), 0u64..20).prop_map(|(n, s)| Op::Extend(n, s)),
        2 => (lv_name(), 0u64..20).prop_map(|(n, s)| Op::Reduce(n, s)),
        1 => lv_name().prop_map(Op::Remove),
        1 => (lv_name(), lv_name()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (proptest::option::of(lv_name()), tag_list(), tag_list()).prop_map(|(n, a, r)| Op::Tag(n, a, r)),
    ]
}

fn run(vg: &mut Vg, op: &Op) -> lvm::Result<()> {
    match op {
        Op::Create(n, size, t) => vg.create_lv(n, *size, t, &stamp()).map(|_| ()),
        Op::Extend(n, size) => vg.extend_lv(n, *size),
        Op::Reduce(n, size) => vg.reduce_lv(n, *size),
        Op::Remove(n) => vg.remove_lv(n).map(|_| ()),
        Op::Rename(a, b) => vg.rename_lv(a, b),
        Op::Tag(n, add, remove) => vg.change_tags(n.as_deref(), add, remove),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random LV operations: each either succeeds and leaves a valid model
    /// whose text reads back equal, or fails and leaves the model untouched;
    /// no extent is ever owned twice or lies past its PV's end.
    #[test]
    fn random_operations_keep_the_model_valid(
        pe_counts in vec(1u64..40, 1..4),
        extent in prop_oneof![Just(MIB), Just(4 * MIB), Just(384 << 10)],
        ops in vec(op(), 1..40),
    ) {
        let mut vg = mem_vg(&pe_counts, extent);
        let total: u64 = pe_counts.iter().sum();
        for op in &ops {
            let before = vg.clone();
            let res = run(&mut vg, op);
            match &res {
                Err(e) => {
                    prop_assert_eq!(&vg, &before, "{:?} failed with {} but changed the model", op, e);
                    prop_assert!(!matches!(e, Error::Io { .. } | Error::Stale { .. }), "{op:?}: {e:?}");
                }
                Ok(()) => {
                    let count = |v: &Vg, n: &str| v.lv(n).map(|l| l.extent_count());
                    match op {
                        Op::Create(n, size, _) => prop_assert_eq!(count(&vg, n), Some(*size)),
                        Op::Extend(n, size) => prop_assert_eq!(count(&vg, n), count(&before, n).map(|c| c + size)),
                        Op::Reduce(n, size) => prop_assert_eq!(count(&vg, n), count(&before, n).map(|c| c - size)),
                        Op::Remove(n) => prop_assert!(vg.lv(n).is_none()),
                        Op::Rename(a, b) => {
                            prop_assert!(vg.lv(b).is_some());
                            prop_assert!(a == b || vg.lv(a).is_none());
                        }
                        Op::Tag(..) => {}
                    }
                }
            }
            if let Op::Extend(n, size) = op {
                let free = before.free_extent_count().unwrap();
                if before.lv(n).is_some() && *size > free {
                    prop_assert!(matches!(res, Err(Error::NoSpace { .. })), "{:?}", res);
                }
            }
            prop_assert!(vg.validate().is_ok(), "{:?}", vg.validate());
            let map = extent_bitmap(&vg);
            let used = vg.used_extents().unwrap();
            for (i, ranges) in used.iter().enumerate() {
                let mut from_ranges = vec![false; vg.pvs[i].pe_count as usize];
                for &(s, l) in ranges {
                    for e in s..s + l {
                        from_ranges[e as usize] = true;
                    }
                }
                prop_assert_eq!(&from_ranges, &map[i]);
            }
            let used_count: u64 = map.iter().flatten().filter(|&&b| b).count() as u64;
            prop_assert_eq!(vg.free_extent_count().unwrap(), total - used_count);
            let lv_total: u64 = vg.lvs.iter().map(|l| l.extent_count()).sum();
            prop_assert_eq!(lv_total, used_count);
            let back = Vg::from_text(&vg.to_text(&header()));
            prop_assert_eq!(back.as_ref().ok(), Some(&vg), "{:?}", back.as_ref().err());
        }
    }
}

// ------------------------------------------------ damaged devices, end to end

/// A small VG on two in-memory PVs (`a`: one metadata area, `b`: two), as bytes.
fn small_vg() -> &'static [Vec<u8>; 2] {
    static DEVS: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    DEVS.get_or_init(|| {
        let a = Arc::new(MemDev::new(vec![0; 8 << 20]));
        let b = Arc::new(MemDev::new(vec![0; 8 << 20]));
        format_pv(&*a, &PvFormat::default()).unwrap();
        format_pv(
            &*b,
            &PvFormat {
                mda_copies: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let devs = [
            PvDev::new(a.clone(), "mem-a"),
            PvDev::new(b.clone(), "mem-b"),
        ];
        let mut open = OpenVg::create("vg0", &devs, MIB).unwrap();
        let st = stamp();
        open.change("a", |v| {
            v.create_lv("lv0", 2, &strings(&["t1"]), &st).map(|_| ())
        })
        .unwrap();
        open.change("b", |v| v.create_lv("lv1", 1, &[], &st).map(|_| ()))
            .unwrap();
        open.change("c", |v| v.extend_lv("lv0", 1)).unwrap();
        open.change("d", |v| add_striped(v, "str", &["pv0", "pv1"], 1, 128))
            .unwrap();
        [a.bytes(), b.bytes()]
    })
}

fn le64_at(d: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
}

/// Recomputes the label, text and header checksums after damage, so that
/// the damage reaches the decoders behind them.
fn fix_checksums(d: &mut [u8], mdas: &[(u64, u64)]) {
    let crc = lvm_crc(&d[532..1024]);
    d[528..532].copy_from_slice(&crc.to_le_bytes());
    for &(start, area) in mdas {
        let h = start as usize;
        let (off, size) = (le64_at(d, h + 40), le64_at(d, h + 48));
        if off >= 512 && size > 0 && off.checked_add(size).is_some_and(|e| e <= area) {
            let t = h + off as usize;
            let crc = lvm_crc(&d[t..t + size as usize]);
            d[h + 56..h + 60].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = lvm_crc(&d[h + 4..h + 512]);
        d[h..h + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random damage to labels, headers and texts (checksums fixed or not):
    /// opening never panics and never writes; damage or missing PVs refuse
    /// every write; what opens healthy takes a change and reads it back.
    #[test]
    fn damaged_devices_never_panic(
        damage in vec((0usize..2, 0usize..4, any::<usize>(), any::<u8>()), 1..6),
        fix_crc in any::<bool>(),
    ) {
        let mut bytes = small_vg().clone();
        let layout: Vec<Vec<(u64, u64)>> = bytes
            .iter()
            .map(|d| {
                let l = PvLabel::decode(&d[512..1024], 1).unwrap().unwrap();
                l.mdas.iter().map(|m| (m.offset, m.size)).collect()
            })
            .collect();
        for &(dev, region, at, b) in &damage {
            let range = match region {
                0 => 512..1024,
                1 => 4096..4608,
                2 => 4608..4608 + 8192,
                _ => 0..12288,
            };
            bytes[dev][range.start + at % range.len()] = b;
        }
        if fix_crc {
            for (d, mdas) in bytes.iter_mut().zip(&layout) {
                fix_checksums(d, mdas);
            }
        }
        let ctl = FaultControl::new();
        let devs: Vec<PvDev> = bytes
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mem: Arc<dyn BlockDev> = Arc::new(MemDev::new(d.clone()));
                PvDev::new(Arc::new(FaultDev::new(mem, ctl.clone())), format!("mem{i}"))
            })
            .collect();
        let opened = OpenVg::open(&devs, None);
        prop_assert_eq!(ctl.writes(), 0);
        let mut open = match opened {
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
            Ok(o) => o,
        };
        for lv in open.vg().lvs.clone() {
            let _ = open.lv_dev(&lv.name);
        }
        let h = open.health().clone();
        let st = stamp();
        let res = open.change("test", |v| v.change_tags(None, &strings(&["after"]), &[]));
        if !h.corrupt.is_empty() || !h.missing.is_empty() {
            prop_assert!(matches!(res, Err(Error::Refused { .. })), "{:?} with {:?}", res, h);
            let repaired = open.repair();
            prop_assert!(matches!(repaired, Err(Error::Refused { .. })), "{:?}", repaired);
            prop_assert!(open.change("x", |v| v.create_lv("x", 1, &[], &st).map(|_| ())).is_err());
            prop_assert_eq!(ctl.writes(), 0, "nothing is written after a corrupt read");
        } else if res.is_ok() {
            let again = OpenVg::open(&devs, None);
            prop_assert!(again.is_ok(), "{:?}", again.as_ref().err());
            let again = again.unwrap();
            prop_assert_eq!(again.vg(), open.vg());
            prop_assert!(again.health().corrupt.is_empty());
        }
    }
}

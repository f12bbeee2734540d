//! Bad input: damaged labels, headers and texts on a real VG, absurd numbers,
//! deep nesting, names and tags outside LVM's alphabet, and invalid requests
//! to the ops API. Each gives a clear error naming the problem, never a panic,
//! and nothing is written once a read found damage.

mod common;

use common::*;
use lvm::label::SECTOR;
use lvm::model::Vg;
use lvm::{format_pv, Error, OpenVg, PvDev, PvFormat};
use san::FaultControl;

// ----------------------------------------------------------------- helpers

/// Devices of `disks` behind one fault control that counts their writes.
fn faulty(disks: &[&Disk]) -> (FaultControl, Vec<PvDev>) {
    let ctl = FaultControl::new();
    let devs = disks.iter().map(|d| d.faulty(&ctl)).collect();
    (ctl, devs)
}

/// One copy is damaged: the VG opens from the good copies, the damage is
/// named in `Health::corrupt`, and every write is refused with nothing written.
fn assert_opens_but_refuses(disks: &[Disk], model: &Vg, expect: &str) {
    let (ctl, devs) = faulty(&disks.iter().collect::<Vec<_>>());
    let mut open = OpenVg::open(&devs, Some("vg0")).unwrap_or_else(|e| panic!("open failed: {e}"));
    assert_eq!(open.vg(), model, "the VG is read from the good copies");
    let health = open.health().clone();
    assert!(
        health.corrupt.iter().any(|c| c.contains(expect)),
        "{expect:?} not in {health:?}"
    );
    let e = open
        .change("test", |v| v.create_lv("new", 1, &[], &stamp()).map(|_| ()))
        .unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains(expect), "{e}");
    let e = open.repair().unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("damaged metadata"), "{e}");
    assert_eq!(open.vg(), model);
    assert_eq!(ctl.writes(), 0, "nothing is written after a corrupt read");
    // Also when opened without a name.
    let open = OpenVg::open(&devs, None).unwrap();
    assert_eq!(open.health(), &health);
    assert_eq!(ctl.writes(), 0);
}

/// Every copy is damaged: opening fails with an error that names the problem.
fn assert_open_fails(disks: &[Disk], expect: &str) -> Error {
    let (ctl, devs) = faulty(&disks.iter().collect::<Vec<_>>());
    for name in [Some("vg0"), None] {
        let e = OpenVg::open(&devs, name)
            .err()
            .unwrap_or_else(|| panic!("{expect}: open succeeded"));
        assert!(e.to_string().contains(expect), "{expect:?} not in {e}");
    }
    assert_eq!(ctl.writes(), 0);
    OpenVg::open(&devs, None).err().unwrap()
}

/// Every metadata area of every disk, as (disk, area index).
fn all_areas(disks: &[Disk]) -> Vec<(&Disk, usize)> {
    disks
        .iter()
        .flat_map(|d| (0..d.mdas().len()).map(move |i| (d, i)))
        .collect()
}

/// Commits `edit` of the current text, with a correct checksum, into the
/// first area only, checks the refusal, then into every area, and returns
/// the error of the failing open.
fn damage_text(edit: impl Fn(&str) -> String, expect: &str) -> Error {
    let dir = tmpdir();
    let (disks, vg) = sample_vg(dir.path());
    let model = vg.vg().clone();
    let text = edit(&text_str(vg.raw_text()));
    assert_ne!(text, text_str(vg.raw_text()), "the edit changed nothing");
    let raw = with_nul(&text);
    disks[0].put_text(0, &raw);
    assert_opens_but_refuses(&disks, &model, expect);
    for (d, i) in all_areas(&disks) {
        d.put_text(i, &raw);
    }
    let e = assert_open_fails(&disks, expect);
    assert!(matches!(e, Error::BadText { .. }), "{e:?}");
    e
}

/// Applies `damage` to the first area's header only, then to all of them.
fn damage_headers(damage: impl Fn(&Disk, usize), expect: &str) {
    let dir = tmpdir();
    let (disks, vg) = sample_vg(dir.path());
    let model = vg.vg().clone();
    damage(&disks[0], 0);
    assert_opens_but_refuses(&disks, &model, expect);
    for (d, i) in all_areas(&disks).into_iter().skip(1) {
        damage(d, i);
    }
    let e = assert_open_fails(&disks, expect);
    assert!(
        matches!(e, Error::BadMdaHeader { .. } | Error::BadText { .. }),
        "{e:?}"
    );
}

/// Applies `damage` to the first PV's label only, then to both.
fn damage_labels(damage: impl Fn(&Disk), expect: &str) {
    let dir = tmpdir();
    let (disks, vg) = sample_vg(dir.path());
    let model = vg.vg().clone();
    let uuid = disks[0].label().uuid.to_string();
    damage(&disks[0]);
    assert_opens_but_refuses(&disks, &model, expect);
    let (_, devs) = faulty(&disks.iter().collect::<Vec<_>>());
    let open = OpenVg::open(&devs, None).unwrap();
    assert!(
        open.health().missing.iter().any(|m| m.contains(&uuid)),
        "{:?}",
        open.health()
    );
    damage(&disks[1]);
    let e = assert_open_fails(&disks, expect);
    assert!(matches!(e, Error::BadLabel { .. }), "{e:?}");
}

// ------------------------------------------------------------------ labels

#[test]
fn label_with_a_wrong_checksum() {
    damage_labels(
        |d| d.patch_label(|s| s[300] ^= 0x40, false),
        "label checksum",
    );
}

#[test]
fn label_with_a_wrong_sector_number() {
    damage_labels(
        |d| d.patch_label(|s| s[8..16].copy_from_slice(&2u64.to_le_bytes()), true),
        "label for sector 2 found at sector 1",
    );
}

#[test]
fn label_with_a_wrong_type_or_offset() {
    damage_labels(
        |d| d.patch_label(|s| s[24..32].copy_from_slice(b"LVM2 002"), true),
        "label type",
    );
    damage_labels(
        |d| d.patch_label(|s| s[20..24].copy_from_slice(&40u32.to_le_bytes()), true),
        "pv_header offset 40",
    );
}

#[test]
fn label_with_an_invalid_uuid() {
    damage_labels(|d| d.patch_label(|s| s[40] = b'@', true), "PV UUID");
}

#[test]
fn label_with_areas_outside_the_device() {
    // The first metadata area said to run far past the device end.
    damage_labels(
        |d| {
            d.patch_label(
                |s| s[112..120].copy_from_slice(&(1u64 << 62).to_le_bytes()),
                true,
            )
        },
        "does not fit a device",
    );
    // The data area said to start past the device end.
    damage_labels(
        |d| {
            d.patch_label(
                |s| s[72..80].copy_from_slice(&(1u64 << 50).to_le_bytes()),
                true,
            )
        },
        "data area starts at byte",
    );
}

#[test]
fn label_with_too_many_metadata_areas() {
    let three = |d: &Disk| {
        d.patch_label(
            |s| {
                // Data area, 3 metadata areas, terminators, then no extension.
                let words: [u64; 12] =
                    [1 << 20, 0, 0, 0, 4096, 4096, 8192, 4096, 12288, 4096, 0, 0];
                s[72..].fill(0);
                for (i, w) in words.iter().enumerate() {
                    s[72 + 8 * i..80 + 8 * i].copy_from_slice(&w.to_le_bytes());
                }
            },
            true,
        )
    };
    damage_labels(three, "3 metadata areas");
}

// ----------------------------------------------------- metadata area headers

#[test]
fn mda_header_with_a_wrong_checksum() {
    damage_headers(
        |d, i| d.patch_header(i, |s| s[200] ^= 1, false),
        "header checksum",
    );
}

#[test]
fn mda_header_with_a_wrong_magic() {
    damage_headers(
        |d, i| d.patch_header(i, |s| s[4] = b'X', true),
        "wrong magic",
    );
}

#[test]
fn mda_header_with_a_wrong_version() {
    damage_headers(
        |d, i| d.patch_header(i, |s| s[20..24].copy_from_slice(&2u32.to_le_bytes()), true),
        "version 2",
    );
}

#[test]
fn mda_header_with_a_wrong_start() {
    damage_headers(
        |d, i| {
            d.patch_header(
                i,
                |s| s[24..32].copy_from_slice(&8192u64.to_le_bytes()),
                true,
            )
        },
        "header says start 8192",
    );
}

#[test]
fn mda_header_with_an_absurd_text_location() {
    damage_headers(
        |d, i| {
            d.patch_header(
                i,
                |s| s[40..48].copy_from_slice(&(1u64 << 62).to_le_bytes()),
                true,
            )
        },
        "does not fit",
    );
    damage_headers(
        |d, i| {
            d.patch_header(
                i,
                |s| s[48..56].copy_from_slice(&u64::MAX.to_le_bytes()),
                true,
            )
        },
        "does not fit",
    );
    damage_headers(
        |d, i| d.patch_header(i, |s| s[48..56].fill(0), true),
        "does not fit",
    );
}

/// A handle opened before the damage finds it on refresh, and refuses writes.
#[test]
fn refresh_finds_a_damaged_header() {
    let dir = tmpdir();
    let (disks, _) = sample_vg(dir.path());
    let (ctl, devs) = faulty(&disks.iter().collect::<Vec<_>>());
    let mut open = OpenVg::open(&devs, Some("vg0")).unwrap();
    disks[0].patch_header(0, |s| s[200] ^= 1, false);
    assert!(open.refresh().unwrap());
    assert!(
        open.health()
            .corrupt
            .iter()
            .any(|c| c.contains("header checksum")),
        "{:?}",
        open.health()
    );
    let e = open
        .change("test", |v| v.create_lv("new", 1, &[], &stamp()).map(|_| ()))
        .unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e:?}");
    assert_eq!(ctl.writes(), 0);
}

// ------------------------------------------------------------------- texts

#[test]
fn text_with_a_wrong_checksum() {
    let flip = |d: &Disk, i: usize| {
        let h = d.header(i);
        assert!(
            h.committed.offset + h.committed.size <= h.size,
            "not wrapped"
        );
        let at = h.start + h.committed.offset + 10;
        let b = d.read(at / SECTOR * SECTOR, 512)[(at % SECTOR) as usize];
        d.write(at, &[b ^ 0x20]);
    };
    damage_headers(flip, "text checksum");
}

#[test]
fn text_with_an_unknown_status_flag() {
    let e = damage_text(
        |t| {
            replace_after(
                t,
                "\nlv1 {",
                "status = [\"READ\", \"WRITE\", \"VISIBLE\"]",
                "status = [\"READ\", \"BOGUS\", \"WRITE\", \"VISIBLE\"]",
            )
        },
        "LV lv1: unknown status flag \"BOGUS\"",
    );
    assert!(e.to_string().contains("bad metadata text"), "{e}");
    damage_text(
        |t| replace_after(t, "vg0 {", "\"RESIZEABLE\"", "\"BOGUS\""),
        "VG vg0: unknown status flag \"BOGUS\"",
    );
    damage_text(
        |t| replace_after(t, "\npv1 {", "\"ALLOCATABLE\"", "\"BOGUS\""),
        "PV pv1: unknown status flag \"BOGUS\"",
    );
}

#[test]
fn unknown_flags_are_accepted() {
    // `flags` words lvm does not know are ignored, unlike `status` (spec §11).
    let dir = tmpdir();
    let (disks, vg) = sample_vg(dir.path());
    let text = replace_after(
        &text_str(vg.raw_text()),
        "\nlv1 {",
        "flags = []",
        "flags = [\"SOME_FUTURE_FLAG\"]",
    );
    for (d, i) in all_areas(&disks) {
        d.put_text(i, &with_nul(&text));
    }
    let open = OpenVg::open(&[disks[0].pv(), disks[1].pv()], None).unwrap();
    assert_eq!(open.vg().lv("lv1").unwrap().flags, ["SOME_FUTURE_FLAG"]);
    assert!(open.health().corrupt.is_empty());
}

#[test]
fn values_named_like_segments_are_not_written_back() {
    // lvm names segments segment1…N; a value of that name (here beside a
    // segment named otherwise) must not become a duplicate key on our next write.
    let dir = tmpdir();
    let (disks, vg) = sample_vg(dir.path());
    let t = replace_after(
        &text_str(vg.raw_text()),
        "\nlv1 {",
        "segment1 {",
        "segment1 = 5\nseg_a {",
    );
    for (d, i) in all_areas(&disks) {
        d.put_text(i, &with_nul(&t));
    }
    let devs = [disks[0].pv(), disks[1].pv()];
    let mut open = OpenVg::open(&devs, None).unwrap();
    assert!(open.health().corrupt.is_empty());
    open.change("tag", |v| v.change_tags(Some("lv1"), &strings(&["x"]), &[]))
        .unwrap();
    let again = OpenVg::open(&devs, None).unwrap();
    assert_eq!(again.vg(), open.vg());
    assert!(again.vg().lv("lv1").unwrap().other.entries.is_empty());
}

#[test]
fn text_with_names_outside_the_alphabet() {
    damage_text(
        |t| replace_after(t, "logical_volumes {", "\nlv1 {", "\na@b {"),
        "invalid LV name \"a@b\"",
    );
    damage_text(
        |t| t.replacen("vg0 {", "\"vg 0\" {", 1),
        "invalid VG name \"vg 0\"",
    );
}

#[test]
fn text_with_tags_outside_the_alphabet() {
    damage_text(
        |t| replace_after(t, "\nlv0 {", "\"t1\"", "\"bad tag\""),
        "invalid tag \"bad tag\"",
    );
    damage_text(
        |t| replace_after(t, "vg0 {", "\"vgtag\"", "\"x@y\""),
        "invalid tag \"x@y\"",
    );
    damage_text(
        |t| replace_after(t, "\nlv0 {", "\"t1\"", "\"\""),
        "invalid tag \"\"",
    );
}

#[test]
fn text_with_absurd_numbers() {
    damage_text(
        |t| {
            replace_after(
                t,
                "\npv0 {",
                "pe_count = 31",
                "pe_count = 4611686018427387904",
            )
        },
        "pe_count 4611686018427387904 is absurd",
    );
    damage_text(
        |t| replace_after(t, "\npv0 {", "pe_count = 31", "pe_count = 100000"),
        "end past the device size",
    );
    damage_text(
        |t| {
            replace_after(
                t,
                "\nlv1 {",
                "extent_count = 2",
                "extent_count = 1099511627776",
            )
        },
        "are outside PV pv0",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "\"pv0\", ", "\"pv0\", 1000000"),
        "are outside PV pv0",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "\"pv0\", ", "\"pv9\", 1"),
        "unknown PV \"pv9\"",
    );
    damage_text(
        |t| replace_after(t, "\nlv0 {", "segment_count = 2", "segment_count = 3"),
        "segment_count is 3 but 2 segments follow",
    );
    damage_text(
        |t| replace_after(t, "\nlv0 {", "segment_count = 2", "segment_count = 1"),
        "segment_count is 1 but 2 segments follow",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "start_extent = 0", "start_extent = 1"),
        "do not tile",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "stripe_count = 1", "stripe_count = 2"),
        "stripe_count 2 but 2 values",
    );
    damage_text(
        |t| replace_after(t, "vg0 {", "extent_size = 8192", "extent_size = 12"),
        "extent size of 12 sectors",
    );
    damage_text(
        |t| replace_line_after(t, "vg0 {", "seqno = ", "seqno = 4294967296"),
        "seqno = 4294967296 is out of range",
    );
    damage_text(
        |t| replace_after(t, "vg0 {", "max_lv = 0", "max_lv = 99999999999999999999"),
        "out of range",
    );
    damage_text(
        |t| replace_after(t, "vg0 {", "max_lv = 0", "max_lv = 0x10"),
        "invalid number",
    );
}

#[test]
fn text_with_negative_numbers() {
    damage_text(
        |t| replace_after(t, "vg0 {", "extent_size = 8192", "extent_size = -8192"),
        "extent_size = -8192 is negative",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "start_extent = 0", "start_extent = -1"),
        "start_extent = -1 is negative",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "extent_count = 2", "extent_count = -2"),
        "extent_count = -2 is negative",
    );
    damage_text(
        |t| replace_after(t, "\npv0 {", "pe_start = 2048", "pe_start = -2048"),
        "pe_start = -2048 is negative",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "\"pv0\", ", "\"pv0\", -"),
        "`stripes` must hold \"pvN\", start pairs",
    );
}

#[test]
fn text_with_deep_nesting() {
    let deep = |n: usize| format!("{}{}", "deep {\n".repeat(n), "}\n".repeat(n));
    damage_text(
        |t| {
            replace_after(
                t,
                "vg0 {",
                "max_pv = 0\n",
                &format!("max_pv = 0\n{}", deep(2000)),
            )
        },
        "nested deeper than 16",
    );
    // Nesting within the limit, but where a segment belongs, is a segment without a type.
    damage_text(
        |t| {
            replace_after(
                t,
                "\nlv1 {",
                "segment1 {",
                &format!("{}segment1 {{", deep(3)),
            )
        },
        "LV lv1 deep: key `type` is missing",
    );
}

#[test]
fn text_with_a_broken_structure() {
    damage_text(
        |t| {
            t.replacen(
                "contents = \"Text Format Volume Group\"",
                "contents = \"Something else\"",
                1,
            )
        },
        "contents is",
    );
    damage_text(
        |t| t.replacen("version = 1", "version = 2", 1),
        "unrecognised format version 2",
    );
    damage_text(
        |t| replace_after(t, "vg0 {", "format = \"lvm2\"", "format = \"lvm1\""),
        "format is not \"lvm2\"",
    );
    damage_text(
        |t| replace_after(t, "vg0 {", "id = \"", "id = \"@"),
        "invalid UUID",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "type = \"striped\"\n", ""),
        "`type` is missing",
    );
    damage_text(
        |t| t.replacen("physical_volumes {", "physical_volumez {", 1),
        "physical_volumes",
    );
    damage_text(
        |t| t[..t.find("\nlv1 {").unwrap()].to_string(),
        "is not closed at the end of the text",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "status = [", "status = [[\"X\"], "),
        "nested array",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "flags = []", "flags = []\nflags = []"),
        "duplicate key `flags`",
    );
    damage_text(
        |t| replace_after(t, "\nlv1 {", "creation_host = ", "creation_host = 5\nx = "),
        "creation_host",
    );
}

#[test]
fn text_with_duplicate_ids_or_extents() {
    let dir = tmpdir();
    let (_disks, vg) = sample_vg(dir.path());
    let t = text_str(vg.raw_text());
    let lv0_id = vg.vg().lv("lv0").unwrap().id.to_string();
    let lv1_id = vg.vg().lv("lv1").unwrap().id.to_string();
    let dup = t.replacen(&lv1_id, &lv0_id, 1);
    let e = Vg::from_text(&with_nul(&dup)).unwrap_err();
    assert!(e.to_string().contains("is not unique"), "{e}");
    // lv1 moved onto lv0's first extents.
    let lv0_pe = match &vg.vg().lv("lv0").unwrap().segments[0].kind {
        lvm::SegmentKind::Striped { stripes, .. } => stripes[0].start_pe,
        _ => unreachable!(),
    };
    let over = replace_after(&t, "\nlv1 {", "\"pv0\", ", &format!("\"pv0\", {lv0_pe}\n#"));
    let e = Vg::from_text(&with_nul(&over)).unwrap_err();
    assert!(
        e.to_string().contains("allocated to more than one segment"),
        "{e}"
    );
}

// ------------------------------------------- LVs that cannot be mapped

#[test]
fn lv_dev_rejects_absurd_or_unsafe_stripes() {
    let dir = tmpdir();
    let (disks, mut vg) = sample_vg(dir.path());
    vg.change("room", |v| v.remove_lv("data").map(|_| ()))
        .unwrap();
    // A stripe chunk larger than each stripe's extents would run into the next LV's extents.
    vg.change("wide", |v| {
        add_striped(v, "wide", &["pv0", "pv1"], 1, 16384)
    })
    .unwrap();
    let e = vg
        .lv_dev("wide")
        .err()
        .expect("a chunk larger than a stripe is refused");
    assert!(e.to_string().contains("does not divide"), "{e}");
    // A stripe_size whose byte size overflows.
    vg.change("huge", |v| {
        add_striped(v, "huge", &["pv0", "pv1"], 1, 1 << 60)
    })
    .unwrap();
    let e = vg
        .lv_dev("huge")
        .err()
        .expect("an overflowing stripe_size is refused");
    assert!(e.to_string().contains("overflows"), "{e}");
    // Extents whose byte offsets overflow: a device said to be 2^62 sectors.
    let t = text_str(vg.raw_text());
    let t = replace_after(
        &t,
        "\npv0 {",
        "dev_size = 262144",
        "dev_size = 4611686018427392000",
    );
    let t = replace_after(&t, "\npv0 {", "pe_count = 31", "pe_count = 562949953421311");
    let t = replace_after(&t, "\nlv1 {", "\"pv0\", ", "\"pv0\", 562949953421300\n#");
    for (d, i) in all_areas(&disks) {
        d.put_text(i, &with_nul(&t));
    }
    let open = OpenVg::open(&[disks[0].pv(), disks[1].pv()], None).unwrap();
    let e = open
        .lv_dev("lv1")
        .err()
        .expect("extents past the device are refused");
    assert!(
        e.to_string().contains("end past its device") || e.to_string().contains("overflows"),
        "{e}"
    );
    assert!(open.lv_dev("lv0").is_ok());
}

// -------------------------------------------------------- missing PVs

#[test]
fn missing_pv_refuses_every_write() {
    let dir = tmpdir();
    let (disks, vg) = sample_vg(dir.path());
    let model = vg.vg().clone();
    for present in [&disks[0], &disks[1]] {
        let (ctl, devs) = faulty(&[present]);
        let mut open = OpenVg::open(&devs, Some("vg0")).unwrap();
        assert_eq!(open.vg(), &model);
        assert_eq!(open.health().missing.len(), 1, "{:?}", open.health());
        let e = open.change("test", |v| v.extend_lv("lv1", 1)).unwrap_err();
        assert!(
            matches!(e, Error::Refused { .. }) && e.to_string().contains("missing PVs"),
            "{e}"
        );
        let e = open.repair().unwrap_err();
        assert!(
            matches!(e, Error::Refused { .. }) && e.to_string().contains("missing PVs"),
            "{e}"
        );
        let spare = Disk::new(dir.path(), "spare", 64 * MIB);
        format_pv(&*spare.file, &PvFormat::default()).unwrap();
        let e = open.add_pv(&spare.faulty(&ctl)).unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{e}");
        assert_eq!(ctl.writes(), 0);
        std::fs::remove_file(&spare.path).unwrap();
    }
}

#[test]
fn no_pv_at_all_is_a_clear_error() {
    let dir = tmpdir();
    let blank = Disk::new(dir.path(), "blank", 8 * MIB);
    let e = OpenVg::open(&[blank.pv()], None).err().unwrap();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = OpenVg::create("vg0", &[blank.pv()], 4 * MIB).err().unwrap();
    assert!(
        matches!(e, Error::NoLabel { .. }) && e.to_string().contains("no LVM2 label"),
        "{e}"
    );
    let orphan = Disk::new(dir.path(), "orphan", 64 * MIB);
    format_pv(&*orphan.file, &PvFormat::default()).unwrap();
    let e = OpenVg::open(&[orphan.pv()], Some("vg0")).err().unwrap();
    assert!(
        matches!(e, Error::NotFound { .. }) && e.to_string().contains("vg0"),
        "{e}"
    );
}

#[test]
fn pv_in_use_is_not_taken_by_another_vg() {
    let dir = tmpdir();
    let (disks, _vg) = sample_vg(dir.path());
    let (ctl, devs) = faulty(&[&disks[0]]);
    let e = OpenVg::create("other", &devs, 4 * MIB).err().unwrap();
    assert!(
        matches!(e, Error::Refused { .. })
            && e.to_string().contains("already holds metadata of VG vg0"),
        "{e}"
    );
    let e = format_pv(&*devs[0].dev, &PvFormat::default()).unwrap_err();
    assert!(
        matches!(e, Error::Refused { .. }) && e.to_string().contains("in use"),
        "{e}"
    );
    assert_eq!(ctl.writes(), 0);
}

// ---------------------------------------------------- ops-level bad input

fn model() -> Vg {
    let mut vg = mem_vg(&[10, 10], 4 * MIB);
    vg.create_lv("lv0", 3, &strings(&["t1"]), &stamp()).unwrap();
    vg.create_lv("lv1", 2, &[], &stamp()).unwrap();
    vg
}

/// `op` fails with an error matching `is` and mentioning `expect`, and the model is unchanged.
fn refused(op: impl FnOnce(&mut Vg) -> lvm::Result<()>, is: fn(&Error) -> bool, expect: &str) {
    let mut vg = model();
    let before = vg.clone();
    let e = op(&mut vg).unwrap_err();
    assert!(is(&e), "{e:?}");
    assert!(e.to_string().contains(expect), "{expect:?} not in {e}");
    assert_eq!(vg, before, "a failed operation changed the model");
}

fn invalid_name(e: &Error) -> bool {
    matches!(e, Error::InvalidName { kind: "LV", .. })
}

#[test]
fn invalid_lv_names() {
    // With the 2-character VG name "vg", LV names of up to 122 characters fit.
    let too_long = "a".repeat(123);
    let way_too_long = "a".repeat(128);
    let cases: &[(&str, &str)] = &[
        ("snapshot1", "reserved"),
        ("pvmove0", "reserved"),
        ("x_mlog", "reserved for LVM's internal LVs"),
        ("data_rimage_0", "reserved for LVM's internal LVs"),
        ("a_tmeta", "reserved for LVM's internal LVs"),
        (".", "`.` and `..` are reserved"),
        ("..", "`.` and `..` are reserved"),
        ("-x", "must not start with `-`"),
        ("a@b", "only A-Z a-z 0-9 + _ . - are allowed"),
        ("a b", "only A-Z"),
        ("é", "only A-Z"),
        ("", "empty"),
        (&way_too_long, "longer than 127"),
        (&too_long, "longer than 124"),
    ];
    for &(name, expect) in cases {
        let st = stamp();
        refused(
            |v| v.create_lv(name, 1, &[], &st).map(|_| ()),
            invalid_name,
            expect,
        );
        refused(|v| v.rename_lv("lv0", name), invalid_name, expect);
    }
    // 122 characters fit with the 2-character VG name "vg".
    let mut vg = model();
    vg.create_lv(&"a".repeat(122), 1, &[], &stamp()).unwrap();
}

#[test]
fn invalid_tags() {
    let is_tag = |e: &Error| matches!(e, Error::InvalidTag { .. });
    for (tag, expect) in [
        ("", "empty"),
        ("a b", "only A-Z"),
        ("x@y", "only A-Z"),
        ("q\"", "only A-Z"),
        ("tab\t", "only A-Z"),
    ] {
        let t = vec![tag.to_string()];
        let st = stamp();
        refused(
            |v| v.create_lv("new", 1, &t, &st).map(|_| ()),
            is_tag,
            expect,
        );
        refused(|v| v.change_tags(Some("lv0"), &t, &[]), is_tag, expect);
        refused(
            |v| v.change_tags(None, &[String::from("ok"), t[0].clone()], &[]),
            is_tag,
            expect,
        );
    }
}

#[test]
fn invalid_sizes() {
    let arg = |e: &Error| matches!(e, Error::InvalidArgument(_));
    let st = stamp();
    refused(
        |v| v.create_lv("new", 0, &[], &st).map(|_| ()),
        arg,
        "at least one extent",
    );
    refused(|v| v.reduce_lv("lv0", 3), arg, "remove it instead");
    refused(|v| v.reduce_lv("lv0", u64::MAX), arg, "remove it instead");
    let no_space = |e: &Error| {
        matches!(
            e,
            Error::NoSpace {
                needed: 16,
                free: 15,
                ..
            }
        )
    };
    refused(|v| v.extend_lv("lv0", 16), no_space, "need 16, 15 free");
    refused(
        |v| v.create_lv("new", 16, &[], &st).map(|_| ()),
        no_space,
        "not enough free extents in VG vg",
    );
    refused(
        |v| v.extend_lv("lv0", u64::MAX),
        |e| matches!(e, Error::NoSpace { .. }),
        "free",
    );
    // Extending by nothing changes nothing.
    let mut vg = model();
    let before = vg.clone();
    vg.extend_lv("lv0", 0).unwrap();
    assert_eq!(vg, before);
}

#[test]
fn striped_lv_cuts_must_be_whole_rows() {
    let mut vg = model();
    add_striped(&mut vg, "str", &["pv0", "pv1"], 3, 128).unwrap();
    vg.validate().unwrap();
    let before = vg.clone();
    let e = vg.reduce_lv("str", 1).unwrap_err();
    assert!(e.to_string().contains("multiple of the 2 stripes"), "{e}");
    assert_eq!(vg, before);
    vg.reduce_lv("str", 2).unwrap();
    assert_eq!(vg.lv("str").unwrap().extent_count(), 4);
}

#[test]
fn duplicates_and_unknown_names() {
    let exists = |e: &Error| matches!(e, Error::Exists { kind: "LV", .. });
    let missing = |e: &Error| matches!(e, Error::NotFound { kind: "LV", .. });
    let st = stamp();
    refused(
        |v| v.create_lv("lv0", 1, &[], &st).map(|_| ()),
        exists,
        "LV \"lv0\" already exists",
    );
    refused(|v| v.rename_lv("lv1", "lv0"), exists, "already exists");
    refused(|v| v.rename_lv("lv0", "lv0"), exists, "already exists");
    refused(
        |v| v.rename_lv("nope", "other"),
        missing,
        "LV \"nope\" not found",
    );
    refused(|v| v.extend_lv("nope", 1), missing, "not found");
    refused(|v| v.reduce_lv("nope", 1), missing, "not found");
    refused(|v| v.remove_lv("nope").map(|_| ()), missing, "not found");
    refused(
        |v| v.change_tags(Some("nope"), &strings(&["t"]), &[]),
        missing,
        "not found",
    );
    let label = mem_label(10, 4 * MIB);
    let mut vg = model();
    vg.add_pv(&label, "/dev/x").unwrap();
    let before = vg.clone();
    let e = vg.add_pv(&label, "/dev/y").unwrap_err();
    assert!(matches!(e, Error::Exists { kind: "PV", .. }), "{e:?}");
    assert_eq!(vg, before);
}

#[test]
fn invalid_vg_parameters() {
    for (size, expect) in [
        (0, "extent size of 0"),
        (12 << 10, "power of two or a multiple of 128 KiB"),
        (1000, "not a multiple of 512"),
        (1 << 50, "extent size"),
    ] {
        let e = Vg::new("vg", size).unwrap_err();
        assert!(e.to_string().contains(expect), "{expect:?} not in {e}");
    }
    Vg::new("vg", 384 << 10).unwrap();
    // A VG named like a top-level key of the text could not be read back.
    for name in [
        "contents",
        "version",
        "description",
        "creation_host",
        "creation_time",
    ] {
        let e = Vg::new(name, 4 * MIB).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }
    for name in ["", "-vg", "a/b", "..", &"v".repeat(128)] {
        let e = Vg::new(name, 4 * MIB).unwrap_err();
        assert!(matches!(e, Error::InvalidName { kind: "VG", .. }), "{e:?}");
    }
    let mut vg = Vg::new("vg", 4 * MIB).unwrap();
    let e = vg.add_pv(&mem_label(0, 4 * MIB), "/dev/small").unwrap_err();
    assert!(e.to_string().contains("no room for one"), "{e}");
}

#[test]
fn invalid_pv_formats() {
    let dir = tmpdir();
    let d = Disk::new(dir.path(), "d", 8 * MIB);
    let bad = [
        (
            PvFormat {
                mda_size: 16 << 10,
                ..Default::default()
            },
            "below the minimum",
        ),
        (
            PvFormat {
                mda_copies: 3,
                ..Default::default()
            },
            "at most 2",
        ),
        (
            PvFormat {
                data_alignment: 0,
                ..Default::default()
            },
            "data alignment 0",
        ),
        (
            PvFormat {
                data_alignment: 1000,
                ..Default::default()
            },
            "data alignment 1000",
        ),
        (
            PvFormat {
                mda_size: 8 << 20,
                ..Default::default()
            },
            "too small",
        ),
        (
            PvFormat {
                mda_size: 4 << 20,
                mda_copies: 2,
                ..Default::default()
            },
            "too small for two metadata areas",
        ),
    ];
    for (f, expect) in bad {
        let e = format_pv(&*d.file, &f).unwrap_err();
        assert!(e.to_string().contains(expect), "{expect:?} not in {e}");
    }
    // Nothing was written: the file is still all zeros.
    assert!(d.contents().iter().all(|&b| b == 0));
}

#[test]
fn changes_failing_in_the_model_write_nothing() {
    let dir = tmpdir();
    let (disks, _) = sample_vg(dir.path());
    let (ctl, devs) = faulty(&[&disks[0], &disks[1]]);
    let mut open = OpenVg::open(&devs, None).unwrap();
    let before = open.vg().clone();
    let free = before.free_extent_count().unwrap();
    let st = stamp();
    let e = open
        .change("grow", |v| v.extend_lv("lv1", free + 1))
        .unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
    let e = open
        .change("bad", |v| v.create_lv("a@b", 1, &[], &st).map(|_| ()))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidName { .. }), "{e:?}");
    // A model made invalid by hand is caught before the commit.
    let e = open.change("break", |v| {
        v.lvs[0].status.push("BOGUS".into());
        Ok(())
    });
    assert!(e.unwrap_err().to_string().contains("unknown status flag"));
    assert_eq!(open.vg(), &before);
    assert_eq!(ctl.writes(), 0);
    let again = OpenVg::open(&devs, None).unwrap();
    assert_eq!(again.vg(), &before);
}

#[test]
fn metadata_too_large_for_the_area_writes_nothing() {
    let dir = tmpdir();
    let a = Disk::new(dir.path(), "a", 64 * MIB);
    let b = Disk::new(dir.path(), "b", 64 * MIB);
    format_pv(
        &*a.file,
        &PvFormat {
            mda_size: 32 << 10,
            data_alignment: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    format_pv(&*b.file, &PvFormat::default()).unwrap();
    let ctl = FaultControl::new();
    let devs = [a.faulty(&ctl), b.faulty(&ctl)];
    let mut open = OpenVg::create("vg0", &devs, MIB).unwrap();
    let before = open.vg().clone();
    let writes = ctl.writes();
    let st = stamp();
    // Many LVs in one change: the text outgrows the 32 KiB area (max 15616 bytes).
    let e = open
        .change("many", |v| {
            (0..60).try_for_each(|i| v.create_lv(&format!("lv{i:03}"), 1, &[], &st).map(|_| ()))
        })
        .unwrap_err();
    match &e {
        Error::MetadataTooLarge {
            len,
            max,
            area,
            dev,
        } => {
            assert_eq!((*max, *area), (15616, 32 << 10));
            assert!(*len > *max);
            assert!(dev.ends_with("/a"), "{dev}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("larger metadata area"), "{e}");
    // One long tag does it too.
    let e = open
        .change("tag", |v| v.change_tags(None, &["t".repeat(20_000)], &[]))
        .unwrap_err();
    assert!(matches!(e, Error::MetadataTooLarge { .. }), "{e:?}");
    assert_eq!(ctl.writes(), writes, "nothing written");
    assert_eq!(open.vg(), &before);
    // The VG still takes changes that fit, and reads back as committed.
    open.change("one", |v| v.create_lv("one", 1, &[], &st).map(|_| ()))
        .unwrap();
    let again = OpenVg::open(&devs, None).unwrap();
    assert_eq!(again.vg(), open.vg());
    assert_eq!(again.vg().seqno, before.seqno + 1);
}

//! LV operations and their effects: the allocation policy, reduce, rename,
//! remove and tags; stale reads refused at commit; a metadata area whose
//! circular buffer wraps many times; LVs as block devices, byte for byte at
//! the PV offsets their segments name.

mod common;

use common::*;
use lvm::{Error, OpenVg, PvDev, PvFormat, Segment, SegmentKind, Vg};
use san::{BlockDev, FaultControl};
use std::collections::HashMap;
use std::sync::Arc;

/// An LV's segments as (start_extent, extent_count, [(pv, start_pe)]).
type Layout = Vec<(u64, u64, Vec<(String, u64)>)>;

fn layout(vg: &Vg, lv: &str) -> Layout {
    vg.lv(lv)
        .unwrap_or_else(|| panic!("LV {lv}"))
        .segments
        .iter()
        .map(|s| match &s.kind {
            SegmentKind::Striped { stripes, .. } => (
                s.start_extent,
                s.extent_count,
                stripes
                    .iter()
                    .map(|st| (st.pv.clone(), st.start_pe))
                    .collect(),
            ),
            SegmentKind::Other { type_name } => panic!("unexpected segment type {type_name}"),
        })
        .collect()
}

fn on(pv: &str, pe: u64) -> Vec<(String, u64)> {
    vec![(pv.to_string(), pe)]
}

fn create(vg: &mut Vg, name: &str, n: u64) {
    vg.create_lv(name, n, &[], &stamp()).unwrap();
    check(vg);
}

/// The model is valid, no extent is owned twice, and its text reads back equal.
fn check(vg: &Vg) {
    vg.validate().unwrap();
    extent_bitmap(vg);
    assert_eq!(&Vg::from_text(&vg.to_text(&header())).unwrap(), vg);
}

// --------------------------------------------------------- allocation policy

#[test]
fn in_place_extension_keeps_one_segment() {
    let mut vg = mem_vg(&[20], 4 * MIB);
    create(&mut vg, "lv0", 3);
    assert_eq!(layout(&vg, "lv0"), [(0, 3, on("pv0", 0))]);
    vg.extend_lv("lv0", 2).unwrap();
    vg.extend_lv("lv0", 1).unwrap();
    check(&vg);
    assert_eq!(layout(&vg, "lv0"), [(0, 6, on("pv0", 0))]);
}

#[test]
fn extension_after_taken_extents_adds_a_segment() {
    let mut vg = mem_vg(&[20], 4 * MIB);
    create(&mut vg, "a", 2);
    create(&mut vg, "b", 2);
    vg.extend_lv("a", 3).unwrap();
    check(&vg);
    assert_eq!(
        layout(&vg, "a"),
        [(0, 2, on("pv0", 0)), (2, 3, on("pv0", 4))]
    );
    // The new last segment grows in place again.
    vg.extend_lv("a", 1).unwrap();
    check(&vg);
    assert_eq!(
        layout(&vg, "a"),
        [(0, 2, on("pv0", 0)), (2, 4, on("pv0", 4))]
    );
    assert_eq!(layout(&vg, "b"), [(0, 2, on("pv0", 2))]);
}

#[test]
fn contiguous_space_wins_over_best_fit() {
    let mut vg = mem_vg(&[20, 10], 4 * MIB);
    create(&mut vg, "fill", 8);
    assert_eq!(
        layout(&vg, "fill"),
        [(0, 8, on("pv1", 0))],
        "the smaller PV is the best fit"
    );
    create(&mut vg, "lv", 3);
    assert_eq!(layout(&vg, "lv"), [(0, 3, on("pv0", 0))]);
    // pv1's 2-extent hole would fit exactly, but the space right after lv comes first.
    vg.extend_lv("lv", 2).unwrap();
    check(&vg);
    assert_eq!(layout(&vg, "lv"), [(0, 5, on("pv0", 0))]);
    create(&mut vg, "exact", 2);
    assert_eq!(layout(&vg, "exact"), [(0, 2, on("pv1", 8))]);
}

#[test]
fn partly_contiguous_extension_grows_in_place_then_adds_a_segment() {
    let mut vg = mem_vg(&[20], 4 * MIB);
    create(&mut vg, "lv", 4);
    create(&mut vg, "x", 1);
    create(&mut vg, "wall", 1);
    vg.remove_lv("x").unwrap();
    // One free extent after lv, then the wall: that extent is taken, the rest goes after the wall.
    vg.extend_lv("lv", 4).unwrap();
    check(&vg);
    assert_eq!(
        layout(&vg, "lv"),
        [(0, 5, on("pv0", 0)), (5, 3, on("pv0", 6))]
    );
}

#[test]
fn best_fit_single_range_before_several() {
    let mut vg = mem_vg(&[20], MIB);
    // Holes of 3, 5, 2 and 7 extents between 1-extent walls.
    for (name, n) in [
        ("h1", 3),
        ("w1", 1),
        ("h2", 5),
        ("w2", 1),
        ("h3", 2),
        ("w3", 1),
    ] {
        create(&mut vg, name, n);
    }
    for h in ["h1", "h2", "h3"] {
        vg.remove_lv(h).unwrap();
    }
    let free: Vec<(u64, u64)> = vg
        .free_areas()
        .unwrap()
        .iter()
        .map(|a| (a.start, a.len))
        .collect();
    assert_eq!(free, [(0, 3), (4, 5), (10, 2), (13, 7)]);
    create(&mut vg, "n4", 4);
    assert_eq!(
        layout(&vg, "n4"),
        [(0, 4, on("pv0", 4))],
        "the 5-hole, not the first or the largest"
    );
    create(&mut vg, "n2", 2);
    assert_eq!(
        layout(&vg, "n2"),
        [(0, 2, on("pv0", 10))],
        "the exact 2-hole"
    );
    create(&mut vg, "n6", 6);
    assert_eq!(layout(&vg, "n6"), [(0, 6, on("pv0", 13))]);
    // Free now: 0..3, 8, 19: no single range holds 5, so the largest go first.
    create(&mut vg, "n5", 5);
    assert_eq!(
        layout(&vg, "n5"),
        [
            (0, 3, on("pv0", 0)),
            (3, 1, on("pv0", 8)),
            (4, 1, on("pv0", 19))
        ]
    );
    assert_eq!(vg.free_extent_count().unwrap(), 0);
    let e = vg.create_lv("more", 1, &[], &stamp()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NoSpace {
                needed: 1,
                free: 0,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn multi_pv_spanning_when_no_single_range_fits() {
    let mut vg = mem_vg(&[10, 12, 4], 4 * MIB);
    create(&mut vg, "big", 20);
    assert_eq!(
        layout(&vg, "big"),
        [(0, 12, on("pv1", 0)), (12, 8, on("pv0", 0))]
    );
    // Extending continues right after the last segment, on pv0.
    vg.extend_lv("big", 2).unwrap();
    check(&vg);
    assert_eq!(
        layout(&vg, "big"),
        [(0, 12, on("pv1", 0)), (12, 10, on("pv0", 0))]
    );
    // Now pv0 and pv1 are full: the rest comes from pv2.
    vg.extend_lv("big", 3).unwrap();
    check(&vg);
    assert_eq!(
        layout(&vg, "big"),
        [
            (0, 12, on("pv1", 0)),
            (12, 10, on("pv0", 0)),
            (22, 3, on("pv2", 0))
        ]
    );
    let e = vg.extend_lv("big", 2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::NoSpace {
                needed: 2,
                free: 1,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn pvs_that_are_not_allocatable_are_skipped() {
    let mut vg = mem_vg(&[10, 10], 4 * MIB);
    vg.pvs[0].status.clear();
    vg.pvs[1].flags.push("MISSING".into());
    assert_eq!(vg.free_extent_count().unwrap(), 0);
    let e = vg.create_lv("lv", 1, &[], &stamp()).unwrap_err();
    assert!(matches!(e, Error::NoSpace { .. }), "{e:?}");
    vg.pvs[1].flags.clear();
    create(&mut vg, "lv", 10);
    assert_eq!(layout(&vg, "lv"), [(0, 10, on("pv1", 0))]);
}

#[test]
fn reduce_trims_and_removes_segments() {
    let mut vg = mem_vg(&[30], 4 * MIB);
    create(&mut vg, "lv", 2);
    create(&mut vg, "w1", 1);
    vg.extend_lv("lv", 3).unwrap();
    create(&mut vg, "w2", 1);
    vg.extend_lv("lv", 4).unwrap();
    assert_eq!(
        layout(&vg, "lv"),
        [
            (0, 2, on("pv0", 0)),
            (2, 3, on("pv0", 3)),
            (5, 4, on("pv0", 7))
        ]
    );
    let free = vg.free_extent_count().unwrap();
    vg.reduce_lv("lv", 1).unwrap();
    check(&vg);
    assert_eq!(
        layout(&vg, "lv"),
        [
            (0, 2, on("pv0", 0)),
            (2, 3, on("pv0", 3)),
            (5, 3, on("pv0", 7))
        ]
    );
    vg.reduce_lv("lv", 3).unwrap(); // exactly the last segment
    check(&vg);
    assert_eq!(
        layout(&vg, "lv"),
        [(0, 2, on("pv0", 0)), (2, 3, on("pv0", 3))]
    );
    vg.reduce_lv("lv", 4).unwrap(); // the second and part of the first
    check(&vg);
    assert_eq!(layout(&vg, "lv"), [(0, 1, on("pv0", 0))]);
    assert_eq!(vg.free_extent_count().unwrap(), free + 8);
    // Freed extents are reused, in place first.
    vg.extend_lv("lv", 1).unwrap();
    assert_eq!(layout(&vg, "lv"), [(0, 2, on("pv0", 0))]);
}

#[test]
fn striped_lv_reduce_keeps_rows() {
    let mut vg = mem_vg(&[10, 10], MIB);
    add_striped(&mut vg, "str", &["pv0", "pv1"], 4, 128).unwrap();
    check(&vg);
    vg.reduce_lv("str", 4).unwrap();
    check(&vg);
    assert_eq!(
        layout(&vg, "str"),
        [(0, 4, vec![("pv0".into(), 0), ("pv1".into(), 0)])]
    );
    assert_eq!(vg.free_extent_count().unwrap(), 16);
    // A striped LV grows with a new linear segment after its stripes.
    vg.extend_lv("str", 3).unwrap();
    check(&vg);
    let l = layout(&vg, "str");
    assert_eq!(l.len(), 2);
    assert_eq!((l[1].0, l[1].1, l[1].2.len()), (4, 3, 1));
}

#[test]
fn rename_remove_and_tags() {
    let mut vg = mem_vg(&[20], 4 * MIB);
    vg.create_lv("lv0", 3, &strings(&["t1"]), &stamp()).unwrap();
    create(&mut vg, "lv1", 2);
    let lv0 = vg.lv("lv0").unwrap().clone();
    vg.rename_lv("lv0", "a+b.c_d-e").unwrap();
    check(&vg);
    assert!(vg.lv("lv0").is_none());
    let renamed = vg.lv("a+b.c_d-e").unwrap();
    assert_eq!(
        (renamed.id, &renamed.segments, &renamed.tags),
        (lv0.id, &lv0.segments, &lv0.tags)
    );
    // Tags: added once, removed, VG tags apart from LV tags.
    vg.change_tags(Some("lv1"), &strings(&["x", "y", "x"]), &[])
        .unwrap();
    assert_eq!(vg.lv("lv1").unwrap().tags, ["x", "y"]);
    vg.change_tags(Some("lv1"), &strings(&["z"]), &strings(&["x", "absent"]))
        .unwrap();
    assert_eq!(vg.lv("lv1").unwrap().tags, ["y", "z"]);
    vg.change_tags(None, &strings(&["Tag.1_+-/=!:&#", "-hyph"]), &[])
        .unwrap();
    assert_eq!(vg.tags, ["Tag.1_+-/=!:&#", "-hyph"]);
    assert_eq!(vg.lv("lv1").unwrap().tags, ["y", "z"]);
    check(&vg);
    // Remove gives the LV back and frees its extents.
    let free = vg.free_extent_count().unwrap();
    let gone = vg.remove_lv("a+b.c_d-e").unwrap();
    assert_eq!(gone.id, lv0.id);
    assert_eq!(vg.free_extent_count().unwrap(), free + 3);
    create(&mut vg, "lv0", 3);
    assert_eq!(
        layout(&vg, "lv0"),
        [(0, 3, on("pv0", 0))],
        "freed extents reused"
    );
}

#[test]
fn operations_commit_and_read_back() {
    let dir = tmpdir();
    let (disks, mut open) = sample_vg(dir.path());
    let st = stamp();
    open.change("rename", |v| v.rename_lv("lv1", "renamed"))
        .unwrap();
    open.change("tags", |v| {
        v.change_tags(Some("renamed"), &strings(&["t/2"]), &[])
    })
    .unwrap();
    open.change("reduce", |v| v.reduce_lv("data", 35)).unwrap();
    open.change("remove", |v| v.remove_lv("lv0").map(|_| ()))
        .unwrap();
    open.change("create", |v| v.create_lv("new", 4, &[], &st).map(|_| ()))
        .unwrap();
    let spare = Disk::new(dir.path(), "c", 64 * MIB);
    lvm::format_pv(&*spare.file, &PvFormat::default()).unwrap();
    open.add_pv(&spare.pv()).unwrap();
    open.change("grow", |v| v.create_lv("onc", 15, &[], &st).map(|_| ()))
        .unwrap();
    assert_eq!(layout(open.vg(), "onc"), [(0, 15, on("pv2", 0))]);
    let devs: Vec<PvDev> = disks.iter().chain([&spare]).map(|d| d.pv()).collect();
    let again = OpenVg::open(&devs, None).unwrap();
    assert_eq!(again.vg(), open.vg());
    assert_eq!(again.raw_text(), open.raw_text());
    assert_eq!(again.health(), &lvm::Health::default());
    assert!(
        spare.label().in_use(),
        "a PV that joins a VG is marked used"
    );
    check(again.vg());
}

// ------------------------------------------------------------- stale reads

#[test]
fn change_based_on_a_stale_read_is_refused() {
    let dir = tmpdir();
    let (disks, _) = sample_vg(dir.path());
    let ctl = FaultControl::new();
    let devs: Vec<PvDev> = disks.iter().map(|d| d.faulty(&ctl)).collect();
    let mut first = OpenVg::open(&devs, None).unwrap();
    let mut second = OpenVg::open(&devs, None).unwrap();
    let st = stamp();
    first
        .change("first", |v| {
            v.create_lv("by_first", 1, &[], &st).map(|_| ())
        })
        .unwrap();
    let writes = ctl.writes();
    let e = second
        .change("second", |v| {
            v.create_lv("by_second", 1, &[], &st).map(|_| ())
        })
        .unwrap_err();
    assert!(matches!(e, Error::Stale { .. }), "{e:?}");
    assert!(e.to_string().contains("re-read it and retry"), "{e}");
    assert_eq!(ctl.writes(), writes, "a stale change writes nothing");
    assert!(second.vg().lv("by_second").is_none());
    let disk = OpenVg::open(&devs, None).unwrap();
    assert_eq!(disk.vg(), first.vg(), "the first change is what is on disk");
    assert!(disk.vg().lv("by_second").is_none());
    // After a reload the second one changes on top of the first one's change.
    second.reload().unwrap();
    assert_eq!(second.vg(), first.vg());
    second
        .change("second", |v| {
            v.create_lv("by_second", 1, &[], &st).map(|_| ())
        })
        .unwrap();
    let disk = OpenVg::open(&devs, None).unwrap();
    assert!(disk.vg().lv("by_first").is_some() && disk.vg().lv("by_second").is_some());
    assert_eq!(disk.vg().seqno, first.vg().seqno + 1);
    // And now the first one is the stale one.
    let e = first
        .change("first", |v| v.remove_lv("by_first").map(|_| ()))
        .unwrap_err();
    assert!(matches!(e, Error::Stale { .. }), "{e:?}");
}

#[test]
fn refresh_follows_another_handles_commits() {
    let dir = tmpdir();
    let (disks, _) = sample_vg(dir.path());
    let devs: Vec<PvDev> = disks.iter().map(|d| d.pv()).collect();
    let mut first = OpenVg::open(&devs, None).unwrap();
    let mut second = OpenVg::open(&devs, None).unwrap();
    let st = stamp();
    assert!(!second.refresh().unwrap(), "nothing moved");
    first
        .change("first", |v| {
            v.create_lv("by_first", 1, &[], &st).map(|_| ())
        })
        .unwrap();
    assert!(second.refresh().unwrap());
    let disk = OpenVg::open(&devs, None).unwrap();
    assert_eq!(second.vg(), disk.vg());
    assert_eq!(second.raw_text(), disk.raw_text());
    assert!(!second.refresh().unwrap(), "nothing moved since");
    // The refreshed handle commits on top, as after a full reload.
    second
        .change("second", |v| {
            v.create_lv("by_second", 1, &[], &st).map(|_| ())
        })
        .unwrap();
    assert!(first.refresh().unwrap());
    assert!(first.vg().lv("by_second").is_some());
    // A PV added elsewhere: the refresh reads it all again.
    let spare = Disk::new(dir.path(), "c", 64 * MIB);
    lvm::format_pv(&*spare.file, &PvFormat::default()).unwrap();
    let mut with_spare = devs.clone();
    with_spare.push(spare.pv());
    let mut third = OpenVg::open(&with_spare, None).unwrap();
    third.add_pv(&spare.pv()).unwrap_or_else(|e| panic!("{e}"));
    let mut fourth = OpenVg::open(&with_spare, None).unwrap();
    third
        .change("third", |v| v.create_lv("on_c", 8, &[], &st).map(|_| ()))
        .unwrap();
    assert!(fourth.refresh().unwrap());
    assert!(first.refresh().unwrap());
    let disk = OpenVg::open(&with_spare, None).unwrap();
    assert_eq!(fourth.vg(), disk.vg());
    assert_eq!(first.vg().pvs.len(), disk.vg().pvs.len());
    assert_eq!(first.vg().lv("on_c"), disk.vg().lv("on_c"));
}

// ----------------------------------------------------- wrapping the buffer

#[test]
fn small_metadata_areas_wrap_many_times() {
    let dir = tmpdir();
    let small = PvFormat {
        mda_size: 32 << 10,
        data_alignment: 4096,
        ..Default::default()
    };
    let a = Disk::new(dir.path(), "a", 16 * MIB);
    let b = Disk::new(dir.path(), "b", 16 * MIB);
    lvm::format_pv(&*a.file, &small).unwrap();
    lvm::format_pv(
        &*b.file,
        &PvFormat {
            mda_copies: 2,
            ..small.clone()
        },
    )
    .unwrap();
    assert_eq!(a.mdas()[0].size, 32 << 10);
    assert_eq!(a.label().pe_start(), 36864);
    let devs = [a.pv(), b.pv()];
    let mut open = OpenVg::create("vg0", &devs, MIB).unwrap();
    // A second handle follows every commit with `refresh`, wrapped copies too.
    let mut follower = OpenVg::open(&devs, None).unwrap();
    let areas = [(&a, 0), (&b, 0), (&b, 1)];
    let mut last = areas.map(|(d, i)| d.header(i).committed);
    let (mut cycles, mut wrapped) = ([0; 3], [0; 3]);
    let st = stamp();
    let mut vg_tag = String::new();
    for i in 0..60u32 {
        let tag = format!("t{}", "x".repeat((i as usize * 797) % 4000));
        let name = format!("lv{}", i % 7);
        open.change("step", |v| {
            v.change_tags(
                None,
                std::slice::from_ref(&tag),
                std::slice::from_ref(&vg_tag),
            )?;
            match i % 3 {
                0 if v.lv(&name).is_none() => {
                    v.create_lv(&name, 1, &strings(&["c"]), &st).map(|_| ())
                }
                0 => v.remove_lv(&name).map(|_| ()),
                1 if v.lv(&name).is_some() && v.free_extent_count()? > 0 => v.extend_lv(&name, 1),
                _ => Ok(()),
            }
        })
        .unwrap();
        vg_tag = tag;
        let again = OpenVg::open(&devs, None).unwrap();
        assert_eq!(again.vg(), open.vg(), "commit {i}");
        assert_eq!(again.raw_text(), open.raw_text(), "commit {i}");
        assert_eq!(again.health(), &lvm::Health::default(), "commit {i}");
        assert!(follower.refresh().unwrap(), "commit {i}");
        assert_eq!(follower.vg(), open.vg(), "follower, commit {i}");
        assert_eq!(follower.raw_text(), open.raw_text(), "follower, commit {i}");
        for (k, (d, m)) in areas.iter().enumerate() {
            let h = d.header(*m);
            let l = h.committed;
            assert_eq!(d.text(*m), open.raw_text(), "commit {i}, area {k}");
            assert_eq!(h.precommitted, Default::default(), "precommit slot cleared");
            if l.offset < last[k].offset {
                cycles[k] += 1;
            }
            if l.offset + l.size > h.size {
                wrapped[k] += 1;
            }
            last[k] = l;
        }
    }
    for k in 0..3 {
        assert!(
            cycles[k] >= 3,
            "area {k}: the buffer went round {} times",
            cycles[k]
        );
        assert!(wrapped[k] >= 1, "area {k}: no copy wrapped across the end");
    }
}

// ------------------------------------------------------------ LVs as devices

const EB: u64 = MIB;

/// Sector `lv_off / 512` of LV `tag`: recognisable wherever it lands.
fn sector_pattern(tag: u8, lv_off: u64) -> [u8; 512] {
    let mut s = [tag ^ (lv_off >> 9) as u8; 512];
    s[..8].copy_from_slice(&[tag; 8]);
    s[8..16].copy_from_slice(&lv_off.to_le_bytes());
    s
}

fn pattern(tag: u8, lv_off: u64, len: u64) -> Vec<u8> {
    (0..len / 512)
        .flat_map(|i| sector_pattern(tag, lv_off + i * 512))
        .collect()
}

/// Writes `[from, to)` of `dev` in 200 KiB requests (crossing chunk and segment boundaries).
fn fill(dev: &dyn BlockDev, tag: u8, from: u64, to: u64) {
    let mut at = from;
    while at < to {
        let n = (200 << 10).min(to - at);
        dev.write_at(&pattern(tag, at, n), at).unwrap();
        at += n;
    }
    dev.flush().unwrap();
}

fn read_all(dev: &dyn BlockDev, from: u64, to: u64) -> Vec<u8> {
    let mut buf = vec![0u8; (to - from) as usize];
    // 96 KiB pieces: not a multiple of the 64 KiB stripe chunk.
    for (i, chunk) in buf.chunks_mut(96 << 10).enumerate() {
        dev.read_at(chunk, from + (i as u64) * (96 << 10)).unwrap();
    }
    buf
}

/// Checks every sector of `[from, to)` of LV `tag` on the PV files, at the
/// offset `where_` says (an independent statement of the mapping).
fn check_on_pvs(
    files: &HashMap<&str, Vec<u8>>,
    tag: u8,
    from: u64,
    to: u64,
    where_: impl Fn(u64) -> (&'static str, u64),
) {
    for off in (from..to).step_by(512) {
        let (pv, at) = where_(off);
        let got = &files[pv][at as usize..at as usize + 512];
        assert!(
            got == sector_pattern(tag, off),
            "LV {tag} byte {off}: expected on {pv} at {at}"
        );
    }
}

/// VG on two 64 MiB PVs with 1 MiB extents: `lin` = [pv0 0-1, pv0 3-4], `gap`
/// = pv0 2, `str` = 2 stripes of 64 KiB on pv0 5-6 and pv1 0-1.
fn lv_dev_vg(dir: &std::path::Path) -> (Vec<Disk>, OpenVg) {
    let a = Disk::new(dir, "a", 64 * MIB);
    let b = Disk::new(dir, "b", 64 * MIB);
    lvm::format_pv(&*a.file, &PvFormat::default()).unwrap();
    lvm::format_pv(&*b.file, &PvFormat::default()).unwrap();
    let mut open = OpenVg::create("vg0", &[a.pv(), b.pv()], EB).unwrap();
    let st = stamp();
    open.change("lin", |v| v.create_lv("lin", 2, &[], &st).map(|_| ()))
        .unwrap();
    open.change("gap", |v| v.create_lv("gap", 1, &[], &st).map(|_| ()))
        .unwrap();
    open.change("lin+", |v| v.extend_lv("lin", 2)).unwrap();
    open.change("str", |v| add_striped(v, "str", &["pv0", "pv1"], 2, 128))
        .unwrap();
    let vg = open.vg();
    assert_eq!(vg.pv("pv0").unwrap().id, a.label().uuid);
    assert_eq!(vg.pv("pv1").unwrap().id, b.label().uuid);
    assert_eq!(
        layout(vg, "lin"),
        [(0, 2, on("pv0", 0)), (2, 2, on("pv0", 3))]
    );
    assert_eq!(
        layout(vg, "str"),
        [(0, 4, vec![("pv0".into(), 5), ("pv1".into(), 0)])]
    );
    (vec![a, b], open)
}

#[test]
fn lv_dev_maps_segments_and_stripes_to_pv_offsets() {
    let dir = tmpdir();
    let (disks, open) = lv_dev_vg(dir.path());
    let pe = |pv: &str| open.vg().pv(pv).unwrap().pe_start * 512;
    let (pe0, pe1) = (pe("pv0"), pe("pv1"));
    let lin = open.lv_dev("lin").unwrap();
    let str_ = open.lv_dev("str").unwrap();
    let gap = open.lv_dev("gap").unwrap();
    assert_eq!((lin.size(), str_.size(), gap.size()), (4 * EB, 4 * EB, EB));
    fill(&gap, 3, 0, EB);
    fill(&lin, 1, 0, 4 * EB);
    fill(&str_, 2, 0, 4 * EB);
    assert_eq!(read_all(&lin, 0, 4 * EB), pattern(1, 0, 4 * EB));
    assert_eq!(read_all(&str_, 0, 4 * EB), pattern(2, 0, 4 * EB));
    assert_eq!(read_all(&gap, 0, EB), pattern(3, 0, EB));
    // Unaligned-to-chunk reads across a stripe boundary.
    let mut buf = vec![0u8; 3 * 512];
    str_.read_at(&mut buf, (64 << 10) - 512).unwrap();
    assert_eq!(buf, pattern(2, (64 << 10) - 512, 3 * 512));
    // Past the end: an error, not a short read.
    assert!(lin.read_at(&mut buf, 4 * EB - 512).is_err());
    let files: HashMap<&str, Vec<u8>> =
        [("pv0", disks[0].contents()), ("pv1", disks[1].contents())].into();
    check_on_pvs(&files, 1, 0, 4 * EB, |off| {
        // Extents 0-1 on pv0 0-1, extents 2-3 on pv0 3-4.
        let e = off / EB;
        let pv_e = if e < 2 { e } else { e + 1 };
        ("pv0", pe0 + pv_e * EB + off % EB)
    });
    check_on_pvs(&files, 3, 0, EB, |off| ("pv0", pe0 + 2 * EB + off));
    check_on_pvs(&files, 2, 0, 4 * EB, |off| {
        // 64 KiB chunks alternate between the stripes: even chunks on pv0 from extent 5, odd on pv1 from 0.
        let (chunk, within) = (off / (64 << 10), off % (64 << 10));
        let row = chunk / 2;
        if chunk % 2 == 0 {
            ("pv0", pe0 + 5 * EB + row * (64 << 10) + within)
        } else {
            ("pv1", pe1 + row * (64 << 10) + within)
        }
    });
    // Nothing landed outside the LVs' extents (pv0 7.., pv1 2.. are untouched zeros).
    assert!(files["pv0"][(pe0 + 7 * EB) as usize..]
        .iter()
        .all(|&b| b == 0));
    assert!(files["pv1"][(pe1 + 2 * EB) as usize..]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn lv_dev_remap_picks_up_an_extension() {
    let dir = tmpdir();
    let (disks, mut open) = lv_dev_vg(dir.path());
    let lin = open.lv_dev("lin").unwrap();
    fill(&lin, 1, 0, 4 * EB);
    open.change("extend", |v| v.extend_lv("lin", 3)).unwrap();
    // pv0 5-6 hold str, so the extension is a third segment at pv0 7.
    assert_eq!(layout(open.vg(), "lin")[2], (4, 3, on("pv0", 7)));
    assert_eq!(lin.size(), 4 * EB, "the old map until remap");
    assert!(lin.write_at(&pattern(1, 4 * EB, 512), 4 * EB).is_err());
    let devs: HashMap<String, Arc<dyn BlockDev>> = [
        ("pv0".to_string(), disks[0].file.clone()),
        ("pv1".to_string(), disks[1].file.clone()),
    ]
    .into();
    lin.remap(open.vg(), open.vg().lv("lin").unwrap(), &devs)
        .unwrap();
    assert_eq!(lin.size(), 7 * EB);
    fill(&lin, 1, 4 * EB, 7 * EB);
    assert_eq!(read_all(&lin, 0, 7 * EB), pattern(1, 0, 7 * EB));
    let pe0 = open.vg().pv("pv0").unwrap().pe_start * 512;
    let files: HashMap<&str, Vec<u8>> = [("pv0", disks[0].contents())].into();
    check_on_pvs(&files, 1, 4 * EB, 7 * EB, |off| {
        ("pv0", pe0 + 7 * EB + (off - 4 * EB))
    });
    // A reduce is picked up the same way.
    open.change("reduce", |v| v.reduce_lv("lin", 5)).unwrap();
    lin.remap(open.vg(), open.vg().lv("lin").unwrap(), &devs)
        .unwrap();
    assert_eq!(lin.size(), 2 * EB);
    assert_eq!(read_all(&lin, 0, 2 * EB), pattern(1, 0, 2 * EB));
    // The same LV opened afresh from the committed VG agrees.
    let fresh = OpenVg::open(&[disks[0].pv(), disks[1].pv()], None)
        .unwrap()
        .lv_dev("lin")
        .unwrap();
    assert_eq!(fresh.size(), 2 * EB);
}

#[test]
fn lv_dev_needs_every_pv_of_the_lv() {
    let dir = tmpdir();
    let (disks, open) = lv_dev_vg(dir.path());
    let vg = open.vg();
    let only_pv0: HashMap<String, Arc<dyn BlockDev>> =
        [("pv0".to_string(), disks[0].file.clone())].into();
    assert!(lvm::LvDev::new(vg, vg.lv("lin").unwrap(), &only_pv0).is_ok());
    let e = lvm::LvDev::new(vg, vg.lv("str").unwrap(), &only_pv0)
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::NotFound {
                kind: "PV device",
                ..
            }
        ),
        "{e:?}"
    );
    // A segment type we do not map.
    let mut odd = vg.lv("gap").unwrap().clone();
    odd.segments = vec![Segment {
        kind: SegmentKind::Other {
            type_name: "thin-pool".into(),
        },
        ..odd.segments[0].clone()
    }];
    let e = lvm::LvDev::new(vg, &odd, &only_pv0).err().unwrap();
    assert!(e.to_string().contains("only linear and striped"), "{e}");
}

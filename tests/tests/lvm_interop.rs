//! Our LVM engine and stock lvm2 2.03 on the same loop devices: what one
//! writes, the other reads exactly, and both can change one VG in turn.

use anyhow::Result;
use lvm::{format_pv, OpenVg, PvDev, PvFormat, Segment, SegmentKind, Stamp, Stripe};
use san::{FileDev, OpenOptions};
use ssv_tests::vgview::{self, VgView};
use ssv_tests::{skip_unless_lvm2, LvmFixture, Size, MIB};
use std::path::Path;
use std::sync::Arc;

fn fixture(sizes: &[u64]) -> Result<LvmFixture> {
    LvmFixture::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR"))), sizes)
}

fn devs(fx: &LvmFixture) -> Vec<PvDev> {
    fx.loops
        .iter()
        .map(|l| {
            let path = l.path().display().to_string();
            PvDev::new(
                Arc::new(FileDev::open(&path, &OpenOptions::new()).unwrap()),
                path,
            )
        })
        .collect()
}

/// Both tools see the same VG, and lvm2's checkers find nothing wrong.
fn agree(fx: &LvmFixture, vg: &str) -> VgView {
    let ours = vgview::ours(&devs(fx), vg)
        .unwrap()
        .expect("our engine finds the VG");
    let theirs = vgview::lvm2(&fx.lvm, vg)
        .unwrap()
        .expect("lvm2 finds the VG");
    assert_eq!(ours, theirs, "our view (left) differs from lvm2's (right)");
    let (rc, err) = fx.lvm.vgck(vg).unwrap();
    assert_eq!((rc, err.trim()), (0, ""), "vgck {vg}");
    for d in lvm::scan(&devs(fx))
        .unwrap()
        .devs
        .iter()
        .filter(|d| matches!(d.label, lvm::scan::LabelScan::Pv(_)))
    {
        let (rc, err) = fx.lvm.pvck(Path::new(&d.pv.path)).unwrap();
        assert_eq!(rc, 0, "pvck {}: {err}", d.pv.path);
    }
    ours
}

fn stamp() -> Stamp {
    Stamp::now()
}

#[test]
fn lvm2_reads_what_we_write() {
    skip_unless_lvm2!();
    let fx = fixture(&[512 * MIB, 512 * MIB, 256 * MIB]).unwrap();
    let d = devs(&fx);
    // Metadata areas: one on pv0, two on pv1, none on pv2.
    for (dev, copies) in d.iter().zip([1, 2, 0]) {
        let f = PvFormat {
            mda_size: 4 * MIB,
            mda_copies: copies,
            ..Default::default()
        };
        format_pv(&*dev.dev, &f).unwrap();
    }
    let mut vg = OpenVg::create("ours", &d, 4 * MIB).unwrap();
    let s = stamp();
    // A two-stripe segment, written through the model (our own allocator only makes linear ones).
    vg.change("test", |v| {
        let free = v.free_areas()?;
        let a = *free.iter().find(|a| a.len >= 4).unwrap();
        let b = *free.iter().find(|b| b.pv != a.pv && b.len >= 4).unwrap();
        let lv = v.create_lv("striped", 1, &[], &s)?.name.clone();
        let lv = v.lvs.iter_mut().find(|l| l.name == lv).unwrap();
        let pv = |i: usize| v.pvs[i].name.clone();
        lv.segments = vec![Segment {
            start_extent: 0,
            extent_count: 8,
            kind: SegmentKind::Striped {
                stripe_size: Some(128),
                stripes: vec![
                    Stripe {
                        pv: pv(a.pv),
                        start_pe: a.start,
                    },
                    Stripe {
                        pv: pv(b.pv),
                        start_pe: b.start,
                    },
                ],
            },
            other: Default::default(),
        }];
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // Many LVs, tags of the whole alphabet, multi-segment and multi-PV LVs.
    vg.change("test", |v| {
        for i in 0..150 {
            v.create_lv(
                &format!("vol{i}"),
                1,
                &[format!("ssv.id={i}"), "Tag.1_+-/=!:&#".into()],
                &s,
            )?;
        }
        v.change_tags(None, &["pool.extent=4m".into(), "ssv".into()], &[])
    })
    .unwrap();
    for i in (0..150).step_by(7) {
        vg.change("test", |v| v.extend_lv(&format!("vol{i}"), 2))
            .unwrap();
    }
    vg.change("test", |v| v.create_lv("big", 80, &[], &s).map(drop))
        .unwrap();
    let view = agree(&fx, "ours");
    assert_eq!(view.lvs.len(), 152);
    assert!(
        view.lvs.iter().filter(|l| l.segments.len() > 1).count() >= 10,
        "multi-segment LVs expected"
    );
    assert!(view
        .lvs
        .iter()
        .any(|l| l.segments.iter().any(|s| s.2.len() == 2)));
    assert!(view
        .lvs
        .iter()
        .flat_map(|l| &l.segments)
        .flat_map(|s| &s.2)
        .any(|r| r.0 == d[2].path));
    assert_eq!(view.tags, vec!["pool.extent=4m", "ssv"]);
    // lvm2 stores exactly our bytes: the text it dumps is ours.
    let dumped = fx.lvm.dump_metadata(fx.dev(0)).unwrap();
    assert_eq!(dumped.as_bytes(), &vg.raw_text()[..vg.raw_text().len() - 1]);
}

#[test]
fn we_read_what_lvm2_writes_including_a_wrapped_buffer() {
    skip_unless_lvm2!();
    let fx = fixture(&[128 * MIB, 128 * MIB, 128 * MIB]).unwrap();
    let lvm = &fx.lvm;
    // A 32 KiB metadata area wraps after a few commits.
    let small = ["--metadatasize", "32k", "--dataalignment", "4k"];
    lvm.pvcreate(fx.dev(0), &small).unwrap();
    lvm.pvcreate(fx.dev(1), &["--pvmetadatacopies", "2"])
        .unwrap();
    lvm.pvcreate(fx.dev(2), &small).unwrap();
    lvm.vgcreate("theirs", &[fx.dev(0), fx.dev(1), fx.dev(2)], &["-s", "4m"])
        .unwrap();
    let mut wrapped = false;
    for i in 0..24 {
        let lv = format!("l{i}");
        lvm.lvcreate(
            "theirs",
            &lv,
            Size::Extents(2),
            &["--addtag", &format!("n={i}")],
        )
        .unwrap();
        if i % 3 == 0 {
            lvm.lvextend("theirs", &format!("l{}", i / 2), Size::Extents(1), &[])
                .unwrap();
        }
        agree(&fx, "theirs");
        let scan = lvm::scan(&devs(&fx)).unwrap();
        for a in scan.devs.iter().flat_map(|d| &d.areas) {
            if let lvm::scan::AreaScan::Metadata(h, _) = &a.state {
                wrapped |= h.committed.offset + h.committed.size > h.size;
            }
        }
    }
    lvm.lvcreate("theirs", "str", Size::Extents(6), &["-i2", "-I64k"])
        .unwrap();
    lvm.vgchange_addtag("theirs", "made.by=lvm2").unwrap();
    let view = agree(&fx, "theirs");
    assert!(wrapped, "the 32 KiB areas should have wrapped");
    assert_eq!(view.lvs.len(), 25);
    assert!(view.lvs.iter().any(|l| l.segments.len() > 1));
    // Our raw copy is lvm2's, byte for byte.
    let open = OpenVg::open(&devs(&fx), Some("theirs")).unwrap();
    let dumped = lvm.dump_metadata(fx.dev(1)).unwrap();
    assert_eq!(
        dumped.as_bytes(),
        &open.raw_text()[..open.raw_text().len() - 1]
    );
}

#[test]
fn both_tools_change_one_vg_in_turn() {
    skip_unless_lvm2!();
    let fx = fixture(&[128 * MIB, 256 * MIB]).unwrap();
    let lvm = &fx.lvm;
    lvm.pvcreate(fx.dev(0), &[]).unwrap();
    lvm.vgcreate("mixed", &[fx.dev(0)], &[]).unwrap();
    let s = stamp();
    let ours = |f: &dyn Fn(&mut lvm::Vg) -> lvm::Result<()>| {
        let mut vg = OpenVg::open(&devs(&fx), Some("mixed")).unwrap();
        vg.change("test", f).unwrap();
        agree(&fx, "mixed")
    };
    ours(&|v| v.create_lv("a", 3, &["ssv".into()], &s).map(drop));
    lvm.lvcreate("mixed", "b", Size::Extents(2), &[]).unwrap();
    ours(&|v| v.extend_lv("a", 2));
    lvm.lvextend("mixed", "a", Size::Extents(1), &[]).unwrap();
    agree(&fx, "mixed");
    ours(&|v| v.rename_lv("b", "b2"));
    lvm.lvchange_addtag("mixed", "b2", "from.lvm2").unwrap();
    ours(&|v| v.change_tags(Some("b2"), &["from.ssv".into()], &["from.lvm2".into()]));
    lvm.lvreduce("mixed", "a", Size::Extents(2), &[]).unwrap();
    ours(&|v| v.reduce_lv("a", 1));
    // A PV added by us, used by lvm2, and the other way round.
    let d = devs(&fx);
    format_pv(&*d[1].dev, &PvFormat::default()).unwrap();
    let mut vg = OpenVg::open(&d[..1], Some("mixed")).unwrap();
    vg.add_pv(&d[1]).unwrap();
    agree(&fx, "mixed");
    lvm.lvcreate("mixed", "c", Size::Extents(40), &[]).unwrap();
    ours(&|v| v.extend_lv("c", 20));
    lvm.lvremove("mixed", "b2").unwrap();
    ours(&|v| v.remove_lv("a").map(drop));
    let view = agree(&fx, "mixed");
    assert_eq!(
        view.lvs.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["c"]
    );
    assert_eq!(view.lvs[0].size, 60 * 4 * MIB);
    assert!(view.lvs[0]
        .segments
        .iter()
        .flat_map(|s| &s.2)
        .any(|r| r.0 == fx.dev(1).display().to_string()));
}

#[test]
fn a_stale_copy_is_repaired_and_lvm2_agrees() {
    skip_unless_lvm2!();
    let fx = fixture(&[64 * MIB, 64 * MIB]).unwrap();
    let d = devs(&fx);
    for dev in &d {
        format_pv(&*dev.dev, &PvFormat::default()).unwrap();
    }
    let mut vg = OpenVg::create("heal", &d, 4 * MIB).unwrap();
    vg.change("test", |v| v.create_lv("x", 1, &[], &stamp()).map(drop))
        .unwrap();
    // Keep pv1's metadata area as it is now, commit once more, then put the old area back.
    let area = |buf: &mut Vec<u8>, write: bool| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(fx.loops[1].backing_file())
            .unwrap();
        use std::os::unix::fs::FileExt;
        if write {
            f.write_all_at(buf, 0).unwrap();
        } else {
            buf.resize(MIB as usize, 0);
            f.read_exact_at(buf, 0).unwrap();
        }
    };
    let mut old = Vec::new();
    area(&mut old, false);
    vg.change("test", |v| v.create_lv("y", 1, &[], &stamp()).map(drop))
        .unwrap();
    area(&mut old, true);
    let stale = OpenVg::open(&d, Some("heal")).unwrap();
    assert_eq!(stale.health().stale.len(), 1, "{:?}", stale.health());
    assert_eq!(stale.vg().seqno, 3);
    let (rc, err) = fx.lvm.vgck("heal").unwrap();
    assert_eq!(rc, 0);
    assert!(err.contains("ignoring metadata seqno 2"), "{err}");
    let mut stale = stale;
    stale.repair().unwrap();
    assert!(OpenVg::open(&d, Some("heal"))
        .unwrap()
        .health()
        .stale
        .is_empty());
    let view = agree(&fx, "heal");
    assert_eq!(view.seqno, 3);
}

/// A commit written ahead (`OpenVg::prepare`) is invisible to both tools
/// until it is committed; any other change, ours or another handle's or
/// lvm2's, drops it rather than letting it overwrite that change.
#[test]
fn a_prepared_commit_shows_only_once_committed() {
    skip_unless_lvm2!();
    let fx = fixture(&[128 * MIB]).unwrap();
    let d = devs(&fx);
    format_pv(&*d[0].dev, &PvFormat::default()).unwrap();
    let mut vg = OpenVg::create("prep", &d, 4 * MIB).unwrap();
    vg.change("setup", |v| v.create_lv("a", 2, &[], &stamp()).map(drop))
        .unwrap();
    let size_of_a = |view: &VgView| view.lvs.iter().find(|l| l.name == "a").unwrap().size;

    // Written ahead: nobody sees it; committed: both tools do.
    let before = agree(&fx, "prep");
    vg.prepare("grow a", |v| v.extend_lv("a", 3)).unwrap();
    assert_eq!(vg.prepared().unwrap().lv("a").unwrap().extent_count(), 5);
    assert_eq!(agree(&fx, "prep"), before);
    assert_eq!(vg.vg().lv("a").unwrap().extent_count(), 2);
    assert!(vg.commit_prepared().unwrap());
    assert!(vg.prepared().is_none());
    let after = agree(&fx, "prep");
    assert_eq!(
        (after.seqno, size_of_a(&after)),
        (before.seqno + 1, 20 * MIB)
    );
    assert!(!vg.commit_prepared().unwrap(), "committed twice");

    // Our own change in between drops it.
    vg.prepare("grow a", |v| v.extend_lv("a", 1)).unwrap();
    vg.change("tag", |v| v.change_tags(None, &["t".into()], &[]))
        .unwrap();
    assert!(!vg.commit_prepared().unwrap());
    let view = agree(&fx, "prep");
    assert_eq!(
        (view.tags.clone(), size_of_a(&view)),
        (vec!["t".to_string()], 20 * MIB)
    );

    // Another handle's commit (another host) and lvm2's each drop it:
    // the header moved; nothing of ours is written.
    vg.prepare("grow a", |v| v.extend_lv("a", 1)).unwrap();
    let mut other = OpenVg::open(&d, Some("prep")).unwrap();
    other
        .change("other host", |v| {
            v.create_lv("b", 1, &[], &stamp()).map(drop)
        })
        .unwrap();
    assert!(!vg.commit_prepared().unwrap());
    assert!(vg.refresh().unwrap());
    vg.prepare("grow a", |v| v.extend_lv("a", 1)).unwrap();
    fx.lvm.lvcreate("prep", "c", Size::Extents(1), &[]).unwrap();
    assert!(!vg.commit_prepared().unwrap());
    let view = agree(&fx, "prep");
    assert_eq!(size_of_a(&view), 20 * MIB);
    assert_eq!(
        view.lvs.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    // A stale handle cannot prepare; a refresh that sees a change drops
    // what was prepared.
    assert!(matches!(
        vg.prepare("grow a", |v| v.extend_lv("a", 1)),
        Err(lvm::Error::Stale { .. })
    ));
    assert!(vg.refresh().unwrap());
    vg.prepare("grow a", |v| v.extend_lv("a", 1)).unwrap();
    other.reload().unwrap();
    other
        .change("other host", |v| v.remove_lv("b").map(drop))
        .unwrap();
    assert!(vg.refresh().unwrap());
    assert!(vg.prepared().is_none());
    assert_eq!(size_of_a(&agree(&fx, "prep")), 20 * MIB);
    // Another handle writing ahead over the same place (as a host that
    // ignored the pool lease would): ours is not committed, theirs is.
    vg.prepare("grow a", |v| v.extend_lv("a", 1)).unwrap();
    other.reload().unwrap();
    other
        .prepare("other host", |v| v.extend_lv("a", 2))
        .unwrap();
    assert!(!vg.commit_prepared().unwrap());
    assert!(other.commit_prepared().unwrap());
    assert_eq!(size_of_a(&agree(&fx, "prep")), 28 * MIB);
}

//! Crash safety of every metadata operation, shown: each operation is run
//! once to count its writes, then replayed from the same starting state with
//! the devices stopping at every write index (whole writes lost, a multi-sector
//! write torn at a sector boundary, a sector torn inside). After each crash our
//! reader and stock lvm2 must both see exactly the old VG or the new one.

use lvm::{format_pv, OpenVg, PvDev, PvFormat, Stamp};
use san::{BlockDev, Fault, FaultControl, FaultDev, FileDev, OpenOptions};
use ssv_tests::vgview::{self, VgView};
use ssv_tests::{skip_unless_lvm2, LvmFixture, MIB};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

const VG: &str = "crashvg";
const PV_SIZE: u64 = 64 * MIB;
/// Rigs checking operations at once.
const RIGS: usize = 2;
/// Metadata lives in the first and last few MiB of each PV.
const EDGE: u64 = 4 * MIB;

struct Rig {
    fx: LvmFixture,
    /// (head, tail) bytes of each PV's backing file in the starting state.
    saved: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Rig {
    fn plain(&self) -> Vec<PvDev> {
        self.fx
            .loops
            .iter()
            .map(|l| {
                let p = l.path().display().to_string();
                PvDev::new(Arc::new(FileDev::open(&p, &OpenOptions::new()).unwrap()), p)
            })
            .collect()
    }

    fn faulty(&self, ctl: &FaultControl) -> Vec<PvDev> {
        self.plain()
            .into_iter()
            .map(|d| {
                PvDev::new(
                    Arc::new(FaultDev::new(d.dev, ctl.clone())) as Arc<dyn BlockDev>,
                    d.path,
                )
            })
            .collect()
    }

    fn save(&mut self) {
        self.saved = self
            .fx
            .loops
            .iter()
            .map(|l| {
                let f = std::fs::File::open(l.backing_file()).unwrap();
                let (mut head, mut tail) = (vec![0; EDGE as usize], vec![0; EDGE as usize]);
                f.read_exact_at(&mut head, 0).unwrap();
                f.read_exact_at(&mut tail, PV_SIZE - EDGE).unwrap();
                (head, tail)
            })
            .collect();
    }

    fn restore(&self) {
        for (l, (head, tail)) in self.fx.loops.iter().zip(&self.saved) {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(l.backing_file())
                .unwrap();
            f.write_all_at(head, 0).unwrap();
            f.write_all_at(tail, PV_SIZE - EDGE).unwrap();
            f.sync_all().unwrap();
        }
    }

    /// What both tools see now; they must agree.
    fn seen(&self) -> Option<VgView> {
        let ours =
            vgview::ours(&self.plain(), VG).unwrap_or_else(|e| panic!("our reader failed: {e}"));
        let theirs = vgview::lvm2(&self.fx.lvm, VG).unwrap();
        assert_eq!(ours, theirs, "our reader (left) and lvm2 (right) disagree");
        // A replayed operation gives a new LV a new random UUID: compare the rest.
        ours.map(|mut v| {
            v.lvs.iter_mut().for_each(|l| l.uuid.clear());
            v
        })
    }
}

type Op = fn(&[PvDev]) -> lvm::Result<()>;

fn change(devs: &[PvDev], f: impl FnOnce(&mut lvm::Vg) -> lvm::Result<()>) -> lvm::Result<()> {
    OpenVg::open(&devs[..2], Some(VG))?.change("crash test", f)
}

fn ops() -> Vec<(&'static str, Op)> {
    vec![
        ("vg create", |d| {
            OpenVg::create(VG, &d[..2], 4 * MIB).map(drop)
        }),
        ("lv create", |d| {
            change(d, |v| {
                v.create_lv("new", 2, &["t".into()], &Stamp::now())
                    .map(drop)
            })
        }),
        ("lv extend in place", |d| {
            change(d, |v| v.extend_lv("last", 2))
        }),
        ("lv extend, new segment", |d| {
            change(d, |v| v.extend_lv("first", 3))
        }),
        ("lv reduce", |d| change(d, |v| v.reduce_lv("first", 1))),
        ("lv remove", |d| {
            change(d, |v| v.remove_lv("first").map(drop))
        }),
        ("lv rename", |d| {
            change(d, |v| v.rename_lv("first", "renamed"))
        }),
        ("lv tag", |d| {
            change(d, |v| {
                v.change_tags(Some("first"), &["ssv.x=1".into()], &[])
            })
        }),
        ("vg tag", |d| {
            change(d, |v| v.change_tags(None, &["pool".into()], &[]))
        }),
        ("lv extend, prepared then committed", |d| {
            let mut vg = OpenVg::open(&d[..2], Some(VG))?;
            vg.prepare("crash test", |v| v.extend_lv("first", 3))?;
            match vg.commit_prepared()? {
                true => Ok(()),
                false => Err(lvm::Error::InvalidArgument(
                    "the prepared commit was dropped".into(),
                )),
            }
        }),
        ("vg extend", |d| {
            OpenVg::open(&d[..2], Some(VG))?.add_pv(&d[2])
        }),
    ]
}

fn rig() -> Rig {
    let fx = LvmFixture::new(Some(Path::new(env!("CARGO_TARGET_TMPDIR"))), &[PV_SIZE; 3]).unwrap();
    Rig {
        fx,
        saved: Vec::new(),
    }
}

fn populate(d: &[PvDev]) {
    let mut vg = OpenVg::create(VG, &d[..2], 4 * MIB).unwrap();
    let s = Stamp::now();
    vg.change("setup", |v| {
        v.create_lv("first", 2, &[], &s)?;
        v.create_lv("middle", 1, &[], &s)?;
        v.create_lv("last", 2, &[], &s).map(drop)
    })
    .unwrap();
}

#[test]
fn every_write_index_of_every_operation() {
    skip_unless_lvm2!();
    // Rigs (own loop devices, own lvm2 environment) take a share of the
    // operations each: the work is mostly waiting on lvm2's device I/O, and
    // two halve the time where four do no better.
    let ops = ops();
    let checked: u64 = std::thread::scope(|s| {
        let shares: Vec<_> = (0..RIGS)
            .map(|h| {
                let mine: Vec<_> = ops.iter().skip(h).step_by(RIGS).copied().collect();
                s.spawn(move || crash_every_write(&mine))
            })
            .collect();
        shares
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .sum()
    });
    eprintln!("checked {checked} crash points");
    assert!(checked > 200);
}

/// Crashes each of `ops` at each of its writes on a rig of its own; the
/// number of crash points checked.
fn crash_every_write(ops: &[(&'static str, Op)]) -> u64 {
    let mut rig = rig();
    let mut checked = 0;
    for &(name, op) in ops {
        // The starting state: orphans for `vg create`, a populated VG otherwise.
        rig.restore_or_build(name);
        let old = rig.seen();
        let ctl = FaultControl::new();
        op(&rig.faulty(&ctl)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let writes = ctl.writes();
        let new = rig.seen();
        assert_ne!(old, new, "{name} changed nothing");
        assert!(writes >= 3, "{name}: {writes} writes");
        let faults = |i: u64| {
            [
                Fault::CrashAtWrite(i),
                Fault::TearWriteSectors {
                    index: i,
                    keep_sectors: 1,
                },
                Fault::TearWrite {
                    index: i,
                    keep_bytes: 100,
                },
            ]
        };
        for i in 0..writes {
            for fault in faults(i) {
                rig.restore();
                let ctl = FaultControl::new();
                ctl.set(fault);
                let result = op(&rig.faulty(&ctl));
                assert!(
                    result.is_err(),
                    "{name}: {fault:?} did not stop the operation"
                );
                let seen = rig.seen();
                if !(seen == old || seen == new) {
                    let o = OpenVg::open(&rig.plain(), Some(VG)).unwrap();
                    panic!("{name}, {fault:?}: neither the old nor the new VG:\n{}\n{:?}\nOLD {old:?}\nNEW {new:?}", String::from_utf8_lossy(o.raw_text()), o.health());
                }
                // Whole-sector faults leave nothing for lvm2's checker to complain about.
                if !matches!(fault, Fault::TearWrite { .. }) {
                    let (rc, err) = rig.fx.lvm.vgck(VG).unwrap_or((0, String::new()));
                    let unexpected: Vec<&str> = err
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .filter(|l| {
                            ![
                                "ignoring metadata seqno",
                                "Inconsistent metadata",
                                "vgck --updatemetadata",
                                "missing the used flag",
                                "failed to read metadata",
                                "Reading VG crashvg on",
                                "not found",
                                "Cannot process volume group",
                            ]
                            .iter()
                            .any(|ok| l.contains(ok))
                        })
                        .collect();
                    assert!(
                        rc == 0 || seen.is_none(),
                        "{name}, {fault:?}: vgck rc {rc}: {err}"
                    );
                    assert!(
                        unexpected.is_empty(),
                        "{name}, {fault:?}: vgck says {unexpected:?}"
                    );
                }
                // Whatever survived whole sectors, repair leaves nothing for lvm2 to warn about, and a later change works.
                if seen.is_some() {
                    let mut vg = OpenVg::open(&rig.plain(), Some(VG)).unwrap();
                    // A sector torn inside (a label or header half written) needs an operator: skip those.
                    if vg.health().corrupt.is_empty() && vg.health().missing.is_empty() {
                        vg.repair().unwrap();
                        assert_eq!(
                            rig.fx.lvm.vgck(VG).unwrap(),
                            (0, String::new()),
                            "{name}, {fault:?}: after repair"
                        );
                        vg.change("after crash", |v| {
                            v.change_tags(None, &["after".into()], &[])
                        })
                        .unwrap();
                    }
                }
                checked += 1;
            }
        }
    }
    checked
}

impl Rig {
    fn restore_or_build(&mut self, op: &str) {
        let d = self.plain();
        // Re-format everything: each operation starts from the same kind of state.
        // Three metadata areas: one on pv0, two on pv1; pv2 waits to be added.
        for (i, dev) in d.iter().enumerate() {
            let copies = if i == 1 { 2 } else { 1 };
            format_pv(
                &*dev.dev,
                &PvFormat {
                    mda_copies: copies,
                    force: true,
                    ..Default::default()
                },
            )
            .unwrap();
        }
        if op != "vg create" {
            populate(&d);
        }
        self.save();
    }
}

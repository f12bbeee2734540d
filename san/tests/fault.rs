//! FaultDev and FaultControl: the shared write counter, crashes, torn writes,
//! failing ranges, delays, reset.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pattern, MemDev};
use san::{BlockDev, Error, Fault, FaultControl, FaultDev};

const S: usize = 512;

fn two_devs(ctl: &FaultControl) -> (Arc<MemDev>, Arc<MemDev>, FaultDev, FaultDev) {
    let a = Arc::new(MemDev::new(16 * S, S as u32));
    let b = Arc::new(MemDev::new(16 * S, S as u32));
    let fa = FaultDev::new(a.clone(), ctl.clone());
    let fb = FaultDev::new(b.clone(), ctl.clone());
    (a, b, fa, fb)
}

/// The test's "operation": six writes alternating between two devices.
fn op(fa: &FaultDev, fb: &FaultDev) -> Vec<san::Result<()>> {
    (0..6u8)
        .map(|i| {
            let dev = if i % 2 == 0 { fa } else { fb };
            dev.write_at(&[i + 1; S], u64::from(i) * S as u64)
        })
        .collect()
}

#[test]
fn passes_through() {
    let ctl = FaultControl::new();
    let (a, _b, fa, _fb) = two_devs(&ctl);
    assert_eq!(fa.identity(), a.identity());
    assert_eq!(fa.size(), a.size());
    assert_eq!(fa.logical_sector_size(), 512);
    assert_eq!(fa.physical_sector_size(), 4096);
    let data = pattern(2 * S, 4);
    fa.write_at(&data, S as u64).unwrap();
    fa.flush().unwrap();
    let mut back = vec![0u8; 2 * S];
    fa.read_at(&mut back, S as u64).unwrap();
    assert_eq!(back, data);
    assert!(matches!(
        fa.write_at(&data[..100], 0),
        Err(Error::Misaligned { .. })
    ));
    assert_eq!(ctl.writes(), 1, "rejected requests take no write index");
}

#[test]
fn counter_spans_devices() {
    let ctl = FaultControl::new();
    let (_a, _b, fa, fb) = two_devs(&ctl);
    assert_eq!(ctl.writes(), 0);
    assert!(op(&fa, &fb).iter().all(|r| r.is_ok()));
    assert_eq!(ctl.writes(), 6);
    let mut buf = [0u8; S];
    fa.read_at(&mut buf, 0).unwrap();
    assert_eq!(ctl.writes(), 6, "reads are not counted");
    assert!(!ctl.crashed());
}

#[test]
fn crash_at_each_index_applies_exactly_the_earlier_writes() {
    // Count first, then replay with a crash at every index.
    let ctl = FaultControl::new();
    let (_a, _b, fa, fb) = two_devs(&ctl);
    op(&fa, &fb);
    let n = ctl.writes();
    for crash_at in 0..=n {
        let ctl = FaultControl::new();
        let (a, b, fa, fb) = two_devs(&ctl);
        ctl.set(Fault::CrashAtWrite(crash_at));
        let results = op(&fa, &fb);
        for (i, r) in results.iter().enumerate() {
            let i = i as u64;
            assert_eq!(
                r.is_ok(),
                i < crash_at,
                "crash at {crash_at}, write {i}: {r:?}"
            );
            if i >= crash_at {
                assert!(matches!(r, Err(Error::Injected(_))));
            }
            let dev = if i % 2 == 0 { &a } else { &b };
            let sector = &dev.snapshot()[i as usize * S..][..S];
            let expect = if i < crash_at { i as u8 + 1 } else { 0 };
            assert!(
                sector.iter().all(|&x| x == expect),
                "crash at {crash_at}, write {i}"
            );
        }
        assert_eq!(ctl.crashed(), crash_at < n);
        assert_eq!(ctl.writes(), n);
        if ctl.crashed() {
            // Flushes fail, reads still work on both devices.
            assert!(matches!(fa.flush(), Err(Error::Injected(_))));
            assert!(matches!(fb.flush(), Err(Error::Injected(_))));
            let mut buf = [0u8; S];
            fb.read_at(&mut buf, S as u64).unwrap();
        } else {
            fa.flush().unwrap();
        }
    }
}

#[test]
fn torn_write_keeps_exactly_k_bytes() {
    for keep in [0, 1, 100, S - 1, S, S + 7, 3 * S, 4 * S, 10 * S] {
        let ctl = FaultControl::new();
        let (a, _b, fa, _fb) = two_devs(&ctl);
        let old = pattern(16 * S, 1);
        fa.write_at(&old, 0).unwrap();
        ctl.set(Fault::TearWrite {
            index: 1,
            keep_bytes: keep,
        });
        let new = pattern(4 * S, 2);
        let r = fa.write_at(&new, 2 * S as u64);
        assert!(matches!(r, Err(Error::Injected(_))), "keep {keep}: {r:?}");
        assert!(ctl.crashed());
        let mut expect = old.clone();
        let k = keep.min(new.len());
        expect[2 * S..2 * S + k].copy_from_slice(&new[..k]);
        assert_eq!(a.snapshot(), expect, "keep {keep}");
        // Crashed: later writes are not applied.
        assert!(fa.write_at(&new, 0).is_err());
        assert_eq!(a.snapshot(), expect);
    }
}

#[test]
fn torn_write_keeps_whole_sectors() {
    let ctl = FaultControl::new();
    let (a, b, fa, fb) = two_devs(&ctl);
    fa.write_at(&[9u8; S], 0).unwrap();
    ctl.set(Fault::TearWriteSectors {
        index: 1,
        keep_sectors: 2,
    });
    let new = pattern(5 * S, 3);
    assert!(matches!(
        fb.write_at(&new, S as u64),
        Err(Error::Injected(_))
    ));
    let snap = b.snapshot();
    assert_eq!(&snap[S..3 * S], &new[..2 * S]);
    assert!(snap[3 * S..].iter().all(|&x| x == 0));
    assert!(
        fa.write_at(&[1u8; S], 0).is_err(),
        "the other device is crashed too"
    );
    assert!(a.snapshot()[..S].iter().all(|&x| x == 9));
}

/// Zeroing is one write index: applied before the crash point, torn at
/// it (whole sectors kept), refused after; the fault device zeroes cheaply
/// exactly when the device under it does.
#[test]
fn write_zeroes_is_one_write_index() {
    let ctl = FaultControl::new();
    let (a, _b, fa, _fb) = two_devs(&ctl);
    assert_eq!(fa.zeroes_cheaply(), a.zeroes_cheaply());
    fa.write_at(&[7u8; 8 * S], 0).unwrap();
    ctl.set(Fault::TearWriteSectors {
        index: 2,
        keep_sectors: 2,
    });
    fa.write_zeroes(0, S as u64).unwrap();
    assert!(matches!(
        fa.write_zeroes(2 * S as u64, 4 * S as u64),
        Err(Error::Injected(_))
    ));
    let snap = a.snapshot();
    assert!(snap[..S].iter().all(|&x| x == 0), "before the crash point");
    assert!(snap[S..2 * S].iter().all(|&x| x == 7));
    assert!(
        snap[2 * S..4 * S].iter().all(|&x| x == 0),
        "torn: 2 sectors"
    );
    assert!(snap[4 * S..8 * S].iter().all(|&x| x == 7));
    assert!(fa.write_zeroes(4 * S as u64, S as u64).is_err());
}

#[test]
fn failing_ranges_do_not_crash() {
    let ctl = FaultControl::new();
    let (a, b, fa, fb) = two_devs(&ctl);
    ctl.fail_writes(Some(1024..1025));
    // Overlapping the range on either device fails, without applying.
    assert!(matches!(
        fa.write_at(&[1u8; S], 1024),
        Err(Error::Injected(_))
    ));
    assert!(matches!(
        fb.write_at(&[1u8; 3 * S], 0),
        Err(Error::Injected(_))
    ));
    assert!(a.snapshot().iter().all(|&x| x == 0) && b.snapshot().iter().all(|&x| x == 0));
    // Adjacent writes succeed; the device is not crashed.
    fa.write_at(&[2u8; 2 * S], 0).unwrap();
    fa.write_at(&[3u8; S], 1536).unwrap();
    assert!(!ctl.crashed());
    fa.flush().unwrap();
    assert_eq!(ctl.writes(), 4, "failed writes are counted");

    ctl.fail_reads(Some(0..512));
    let mut buf = [0u8; S];
    assert!(matches!(fa.read_at(&mut buf, 0), Err(Error::Injected(_))));
    assert!(matches!(fb.read_at(&mut buf, 0), Err(Error::Injected(_))));
    fa.read_at(&mut buf, 512).unwrap();
    assert_eq!(buf, [2u8; S]);
    // A failing read range does not affect writes.
    fa.write_at(&[4u8; S], 0).unwrap();
}

#[test]
fn clearing_ranges() {
    let ctl = FaultControl::new();
    let (_a, _b, fa, _fb) = two_devs(&ctl);
    ctl.fail_reads(Some(0..u64::MAX));
    ctl.fail_writes(Some(0..u64::MAX));
    let mut buf = [0u8; S];
    assert!(fa.read_at(&mut buf, 0).is_err());
    assert!(fa.write_at(&buf, 0).is_err());
    ctl.fail_reads(None);
    ctl.fail_writes(None);
    fa.read_at(&mut buf, 0).unwrap();
    fa.write_at(&buf, 0).unwrap();
}

#[test]
fn set_clears_a_crash_and_reset_clears_everything() {
    let ctl = FaultControl::new();
    let (a, _b, fa, fb) = two_devs(&ctl);
    ctl.set(Fault::CrashAtWrite(1));
    fa.write_at(&[1u8; S], 0).unwrap();
    assert!(fb.write_at(&[1u8; S], 0).is_err());
    assert!(ctl.crashed());
    assert_eq!(ctl.fault(), Fault::CrashAtWrite(1));

    // "Reboot": recovery runs on the same devices; the counter keeps going.
    ctl.set(Fault::None);
    assert!(!ctl.crashed());
    fa.write_at(&[5u8; S], S as u64).unwrap();
    assert_eq!(a.snapshot()[S], 5);
    assert_eq!(ctl.writes(), 3);

    ctl.set(Fault::CrashAtWrite(0));
    ctl.fail_reads(Some(0..S as u64));
    ctl.set_delay(Duration::from_millis(1), Duration::from_millis(1));
    assert!(fa.write_at(&[1u8; S], 0).is_err());
    ctl.reset();
    assert_eq!(ctl.writes(), 0);
    assert!(!ctl.crashed());
    assert_eq!(ctl.fault(), Fault::None);
    let mut buf = [0u8; S];
    fa.read_at(&mut buf, 0).unwrap();
    fa.write_at(&buf, 0).unwrap();
    fa.flush().unwrap();
    assert_eq!(ctl.writes(), 1);
}

#[test]
fn delays() {
    let ctl = FaultControl::new();
    let (_a, _b, fa, _fb) = two_devs(&ctl);
    ctl.set_delay(Duration::from_millis(30), Duration::from_millis(60));
    let mut buf = [0u8; S];
    let t = Instant::now();
    fa.read_at(&mut buf, 0).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(30));
    let t = Instant::now();
    fa.write_at(&buf, 0).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(60));
}

#[test]
fn shared_across_threads() {
    let ctl = FaultControl::new();
    let (_a, _b, fa, fb) = two_devs(&ctl);
    let (fa, fb) = (Arc::new(fa), Arc::new(fb));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let dev = if t % 2 == 0 { fa.clone() } else { fb.clone() };
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    dev.write_at(&[t as u8; S], (i % 16) * S as u64).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(ctl.writes(), 200);
}

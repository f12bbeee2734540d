//! WindowDev: translation, bounds, identity, and a property test.

mod common;

use std::sync::Arc;

use common::{pattern, MemDev};
use proptest::prelude::*;
use san::{BlockDev, Error, WindowDev};

#[test]
fn translates_and_passes_through() {
    let mem = Arc::new(MemDev::new(64 * 1024, 512));
    let inner: Arc<dyn BlockDev> = mem.clone();
    let w = WindowDev::new(inner.clone(), 8192, 16384).unwrap();
    assert_eq!(w.size(), 16384);
    assert_eq!(w.offset(), 8192);
    assert_eq!(w.logical_sector_size(), 512);
    assert_eq!(w.physical_sector_size(), 4096);
    assert_eq!(w.identity().0, format!("{}@8192+16384", inner.identity()));

    let data = pattern(1024, 1);
    w.write_at(&data, 512).unwrap();
    let snap = mem.snapshot();
    assert_eq!(&snap[8192 + 512..][..1024], &data[..]);
    assert!(snap[..8192 + 512].iter().all(|&b| b == 0));

    let mut back = vec![0u8; 1024];
    w.read_at(&mut back, 512).unwrap();
    assert_eq!(back, data);
    w.flush().unwrap();
    assert_eq!(mem.flushes.load(std::sync::atomic::Ordering::Relaxed), 1);

    // Windows nest; identities nest too.
    let w2 = WindowDev::new(Arc::new(w), 1024, 1024).unwrap();
    w2.read_at(&mut back, 0).unwrap();
    assert_eq!(&back[..512], &data[512..]);
    assert!(w2.identity().0.ends_with("@8192+16384@1024+1024"));
}

#[test]
fn bounds_are_the_window() {
    let inner: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 * 1024, 512));
    let w = WindowDev::new(inner, 4096, 4096).unwrap();
    let mut buf = vec![0u8; 512];
    // Inside the inner device but outside the window.
    assert!(matches!(
        w.read_at(&mut buf, 4096),
        Err(Error::OutOfRange {
            offset: 4096,
            len: 512,
            size: 4096
        })
    ));
    assert!(matches!(
        w.write_at(&buf, 4096),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        w.write_at(&vec![0u8; 1024], 3584),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        w.write_at(&buf, u64::MAX - 511),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        w.read_at(&mut buf, 100),
        Err(Error::Misaligned { .. })
    ));
    w.write_at(&buf, 3584).unwrap();
}

#[test]
fn bad_windows() {
    let inner: Arc<dyn BlockDev> = Arc::new(MemDev::new(64 * 1024, 4096));
    for (off, len) in [
        (512, 4096),
        (0, 512),
        (0, 68 * 1024),
        (64 * 1024, 4096),
        (u64::MAX - 4095, 8192),
    ] {
        match WindowDev::new(inner.clone(), off, len) {
            Err(Error::BadWindow {
                offset,
                len: l,
                size,
            }) => {
                assert_eq!((offset, l, size), (off, len, 64 * 1024))
            }
            other => panic!("({off}, {len}): expected BadWindow, got {other:?}"),
        }
    }
    // Whole device, and an empty window at the end, are fine.
    assert_eq!(
        WindowDev::new(inner.clone(), 0, 64 * 1024).unwrap().size(),
        64 * 1024
    );
    assert_eq!(WindowDev::new(inner, 64 * 1024, 0).unwrap().size(), 0);
}

proptest! {
    #[test]
    fn writes_land_inside_the_window(
        win_start in 0u64..64,
        win_len in 0u64..64,
        writes in prop::collection::vec((0u64..80, 1usize..8, any::<u8>()), 1..20),
    ) {
        const S: u64 = 512;
        const INNER: u64 = 128 * S;
        let mem = Arc::new(MemDev::new(INNER as usize, S as u32));
        let (off, len) = (win_start * S, win_len * S);
        let w = WindowDev::new(mem.clone(), off, len).unwrap();
        let mut model = vec![0u8; INNER as usize];
        for (sec, nsec, seed) in writes {
            let at = sec * S;
            let buf = pattern(nsec * S as usize, seed);
            let res = w.write_at(&buf, at);
            if at + buf.len() as u64 <= len {
                prop_assert!(res.is_ok());
                let t = (off + at) as usize;
                model[t..t + buf.len()].copy_from_slice(&buf);
            } else {
                let is_out_of_range = matches!(res, Err(Error::OutOfRange { .. }));
                prop_assert!(is_out_of_range);
            }
            // The whole inner device equals the model: the write landed at the
            // translated offset and nothing outside the window ever changed.
            prop_assert_eq!(&mem.snapshot(), &model);
        }
        let mut back = vec![0u8; len as usize];
        w.read_at(&mut back, 0).unwrap();
        prop_assert_eq!(&back[..], &model[off as usize..(off + len) as usize]);
    }
}

//! The engine end to end on sparse files: format, create, change, reopen.

use lvm::{format_pv, OpenVg, PvDev, PvFormat, Stamp};
use san::{BlockDev, FileDev, OpenOptions};
use std::sync::Arc;

fn dev(dir: &std::path::Path, name: &str, size: u64) -> PvDev {
    let path = dir.join(name);
    let f = FileDev::open(&path, &OpenOptions::new().create_size(Some(size))).unwrap();
    PvDev::new(Arc::new(f), path.display().to_string())
}

#[test]
fn create_change_reopen() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let a = dev(dir.path(), "a", 64 << 20);
    let b = dev(dir.path(), "b", 64 << 20);
    format_pv(&*a.dev, &PvFormat::default()).unwrap();
    format_pv(
        &*b.dev,
        &PvFormat {
            mda_copies: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut vg = OpenVg::create("vg0", &[a.clone(), b.clone()], 4 << 20).unwrap();
    let stamp = Stamp::now();
    vg.change("test", |v| {
        v.create_lv("lv0", 3, &["t1".into()], &stamp).map(|_| ())
    })
    .unwrap();
    vg.change("test", |v| v.create_lv("lv1", 2, &[], &stamp).map(|_| ()))
        .unwrap();
    vg.change("test", |v| v.extend_lv("lv0", 2)).unwrap();
    assert_eq!(vg.vg().lv("lv0").unwrap().extent_count(), 5);
    assert_eq!(vg.vg().seqno, 4);
    let again = OpenVg::open(&[a, b], None).unwrap();
    assert_eq!(again.vg(), vg.vg());
    assert_eq!(again.health(), &lvm::Health::default());
    print!("{}", String::from_utf8_lossy(again.raw_text()));
}

#[test]
fn a_lun_that_shrank_is_read_but_not_written() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let a = dev(dir.path(), "a", 64 << 20);
    format_pv(&*a.dev, &PvFormat::default()).unwrap();
    let mut vg = OpenVg::create("vg0", std::slice::from_ref(&a), 4 << 20).unwrap();
    let stamp = Stamp::now();
    vg.change("test", |v| v.create_lv("lv0", 2, &[], &stamp).map(drop))
        .unwrap();
    drop(vg);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&a.path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let shrunk = dev(dir.path(), "a", 32 << 20);
    let mut vg = OpenVg::open(&[shrunk], Some("vg0")).unwrap();
    assert_eq!(vg.vg().lv("lv0").unwrap().extent_count(), 2);
    assert!(
        vg.health().corrupt[0].contains("past the device"),
        "{:?}",
        vg.health()
    );
    let err = vg
        .change("test", |v| v.create_lv("lv1", 1, &[], &stamp).map(drop))
        .unwrap_err();
    assert!(matches!(err, lvm::Error::Refused { .. }), "{err}");
}

#[test]
fn a_damaged_label_on_another_device_does_not_block_the_vg() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let a = dev(dir.path(), "a", 64 << 20);
    let other = dev(dir.path(), "other", 64 << 20);
    format_pv(&*a.dev, &PvFormat::default()).unwrap();
    format_pv(&*other.dev, &PvFormat::default()).unwrap();
    OpenVg::create("vg0", std::slice::from_ref(&a), 4 << 20).unwrap();
    // Flip a byte inside the other device's label sector: its checksum no longer matches.
    let mut sector = vec![0u8; 512];
    other.dev.read_at(&mut sector, 512).unwrap();
    sector[100] ^= 0xff;
    other.dev.write_at(&sector, 512).unwrap();
    let mut vg = OpenVg::open(&[a, other], Some("vg0")).unwrap();
    assert_eq!(vg.health(), &lvm::Health::default());
    vg.change("test", |v| {
        v.create_lv("lv0", 1, &[], &Stamp::now()).map(drop)
    })
    .unwrap();
}

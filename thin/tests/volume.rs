//! Volumes on files laid out like /dev/VG/, checked by real qemu-img.

use std::process::Command;
use std::sync::Arc;
use thin::{CreateOptions, DirStore, GrowthPolicy, LvStore, OpenOptions, StoreExtender, Volume};

fn qemu_img(args: &[&str]) -> (bool, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn write_read_grow_and_qemu_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn LvStore> = Arc::new(DirStore::new(dir.path(), 4 << 20));
    let opts = CreateOptions {
        size: Some(1 << 30),
        initial_lv_size: 4 << 20,
        ..Default::default()
    };
    thin::create(&*store, "vol", &opts).unwrap();
    let oo = OpenOptions {
        policy: GrowthPolicy {
            chunk: 4 << 20,
            ..Default::default()
        },
        ..OpenOptions::default().with_extender(Arc::new(StoreExtender(store.clone())))
    };
    let v = Volume::open(&*store, "vol", &oo).unwrap();
    let mut expect = vec![0u8; 1 << 30];
    let mut x = 1u64;
    for i in 0..300u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % ((1 << 30) - 65536) / 512 * 512;
        let len = 512 * (1 + (x % 64) as usize);
        let buf: Vec<u8> = (0..len).map(|j| (i as u8) ^ (j as u8)).collect();
        v.write(&buf, off).unwrap();
        expect[off as usize..off as usize + len].copy_from_slice(&buf);
    }
    v.flush().unwrap();
    let mut back = vec![0u8; 1 << 20];
    for chunk in 0..1024u64 {
        v.read(&mut back, chunk << 20).unwrap();
        assert!(
            back == expect[(chunk << 20) as usize..((chunk + 1) << 20) as usize],
            "chunk {chunk}"
        );
    }
    let g = v.growth();
    eprintln!(
        "lv {} end {} growth {:?}",
        v.lv_size(),
        v.allocated_end(),
        (g.extensions, g.parked_writes)
    );
    assert!(v.lv_size() > 4 << 20);
    drop(v);
    let img = dir.path().join("vol");
    let (ok, text) = qemu_img(&["check", "-f", "qcow2", img.to_str().unwrap()]);
    assert!(ok, "{text}");
    let raw = dir.path().join("expect.raw");
    std::fs::write(&raw, &expect).unwrap();
    let (ok, text) = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
}

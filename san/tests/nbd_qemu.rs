//! The NBD server against QEMU's own tools (Debian qemu-utils): an O_DIRECT
//! `FileDev` exported on a Unix socket (and TCP on 127.0.0.1), driven by
//! `qemu-img info/convert/bench` and `qemu-io`, with the data checked in
//! the file itself. Without qemu-io/qemu-img every test prints
//! "SKIPPED: ..." and passes.

mod nbd_common;

use nbd_common::Fixture;
use san::nbd::NbdConfig;
use san::{FileDev, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const SIZE: u64 = 8 << 20;

fn have_qemu() -> bool {
    ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

macro_rules! skip_unless_qemu {
    () => {
        if !have_qemu() {
            eprintln!("SKIPPED: qemu-img/qemu-io not installed (Debian package qemu-utils)");
            return;
        }
    };
}

/// Runs a QEMU tool to completion; (exit code, stdout + stderr).
fn run(prog: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(prog)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn run_ok(prog: &str, args: &[&str]) -> String {
    let (code, text) = run(prog, args);
    assert_eq!(code, 0, "{prog} {args:?} failed:\n{text}");
    assert!(
        !text.contains("error") && !text.contains("failed"),
        "{prog} {args:?} reported an error:\n{text}"
    );
    text
}

/// A server with a fresh 8 MiB image exported as `disk`.
fn setup(read_only: bool) -> (Fixture, std::path::PathBuf) {
    let fx = Fixture::with(NbdConfig::new().tcp("127.0.0.1:0".parse().unwrap()));
    let img = fx.dir.path().join("disk.img");
    let dev = FileDev::open(&img, &OpenOptions::new().create_size(Some(SIZE))).unwrap();
    drop(dev);
    let dev = FileDev::open(&img, &OpenOptions::new().read_only(read_only)).unwrap();
    fx.server
        .add_export("disk", Arc::new(dev), read_only)
        .unwrap();
    (fx, img)
}

fn uri(fx: &Fixture, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", fx.path().display())
}

fn file(img: &Path) -> Vec<u8> {
    std::fs::read(img).unwrap()
}

fn finish(fx: Fixture) {
    fx.settle();
    fx.server.stop();
}

#[test]
fn info_shows_the_size() {
    skip_unless_qemu!();
    let (fx, _) = setup(false);
    let out = run_ok("qemu-img", &["info", "--output=json", &uri(&fx, "disk")]);
    assert!(
        out.contains(&format!("\"virtual-size\": {SIZE}")),
        "unexpected info:\n{out}"
    );
    finish(fx);
}

#[test]
fn qemu_io_write_read_zero_discard_flush() {
    skip_unless_qemu!();
    let (fx, img) = setup(false);
    std::fs::write(&img, vec![0x55u8; SIZE as usize]).unwrap();
    let out = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "write -z 1M 64k",
            "-c",
            "discard 2M 64k",
            "-c",
            "write -f -P 0xcd 3M 64k",
            "-c",
            "flush",
            &uri(&fx, "disk"),
        ],
    );
    assert!(out.contains("wrote 1048576/1048576"), "{out}");
    assert!(out.contains("read 1048576/1048576"), "{out}");
    let d = file(&img);
    assert!(d[..1 << 20].iter().all(|&b| b == 0xab));
    assert!(d[1 << 20..(1 << 20) + (64 << 10)].iter().all(|&b| b == 0));
    assert!(d[(1 << 20) + (64 << 10)..2 << 20]
        .iter()
        .all(|&b| b == 0x55));
    assert!(d[3 << 20..(3 << 20) + (64 << 10)]
        .iter()
        .all(|&b| b == 0xcd));
    finish(fx);
}

#[test]
fn unaligned_write_keeps_neighbours() {
    skip_unless_qemu!();
    let (fx, img) = setup(false);
    std::fs::write(&img, vec![0x77u8; SIZE as usize]).unwrap();
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 1000 3000",
            "-c",
            "read -P 0x11 1000 3000",
            "-c",
            "read -P 0x77 0 1000",
            "-c",
            "read -P 0x77 4000 4192",
            &uri(&fx, "disk"),
        ],
    );
    let d = file(&img);
    assert!(d[..1000].iter().all(|&b| b == 0x77));
    assert!(d[1000..4000].iter().all(|&b| b == 0x11));
    assert!(d[4000..16384].iter().all(|&b| b == 0x77));
    finish(fx);
}

#[test]
fn convert_from_the_export_equals_the_file() {
    skip_unless_qemu!();
    let (fx, img) = setup(false);
    let data: Vec<u8> = (0..SIZE as usize)
        .map(|i| (i as u8) ^ (i >> 13) as u8)
        .collect();
    std::fs::write(&img, &data).unwrap();
    let out = fx.dir.path().join("copy.raw");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &uri(&fx, "disk"),
            out.to_str().unwrap(),
        ],
    );
    assert!(std::fs::read(&out).unwrap() == data, "copy differs");
    finish(fx);
}

#[test]
fn bench_at_depth_8() {
    skip_unless_qemu!();
    let (fx, _) = setup(false);
    let u = uri(&fx, "disk");
    for extra in [&[][..], &["-w"][..]] {
        let mut args = vec!["bench", "-f", "raw", "-d", "8", "-c", "4000", "-s", "4k"];
        args.extend_from_slice(extra);
        args.push(&u);
        let out = run_ok("qemu-img", &args);
        assert!(out.contains("Run completed"), "{out}");
        eprintln!("{}", out.trim());
    }
    finish(fx);
}

#[test]
fn read_only_export_refuses_writes() {
    skip_unless_qemu!();
    let (fx, img) = setup(true);
    let before = file(&img);
    let u = uri(&fx, "disk");
    // Opened read-write: qemu sees the read-only flag and refuses.
    let (_, out) = run("qemu-io", &["-f", "raw", "-c", "write -P 1 0 4k", &u]);
    assert!(
        out.to_lowercase().contains("read-only") || out.contains("Permission denied"),
        "no error from a write to a read-only export:\n{out}"
    );
    // Opened read-only: reads work, writes fail.
    let (_, out) = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 0 0 4k",
            "-c",
            "write -P 1 0 4k",
            &u,
        ],
    );
    assert!(out.contains("read 4096/4096"), "{out}");
    assert!(!out.contains("wrote"), "{out}");
    assert!(file(&img) == before, "the read-only export was written");
    finish(fx);
}

#[test]
fn unknown_export_is_refused() {
    skip_unless_qemu!();
    let (fx, _) = setup(false);
    let (code, out) = run("qemu-img", &["info", &uri(&fx, "nosuch")]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("nosuch"), "{out}");
    finish(fx);
}

#[test]
fn tcp_on_loopback() {
    skip_unless_qemu!();
    let (fx, img) = setup(false);
    let addr = fx.server.tcp_addr().unwrap();
    let u = format!("nbd://{addr}/disk");
    let out = run_ok("qemu-img", &["info", "--output=json", &u]);
    assert!(out.contains(&format!("\"virtual-size\": {SIZE}")), "{out}");
    run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x3c 4096 8192",
            "-c",
            "flush",
            &u,
        ],
    );
    assert!(file(&img)[4096..12288].iter().all(|&b| b == 0x3c));
    finish(fx);
}

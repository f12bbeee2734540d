//! What thin's integration tests share: running QEMU's tools and asking
//! them about an image. Each test file uses part of it.
#![allow(dead_code, unused_macros, unused_imports)]

use std::path::Path;
use std::process::Command;

/// qemu-img and qemu-io (Debian qemu-utils) are both installed.
pub fn have_qemu() -> bool {
    ["qemu-img", "qemu-io"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

macro_rules! skip_unless_qemu {
    () => {
        if !common::have_qemu() {
            eprintln!("SKIPPED: qemu-img not installed");
            return;
        }
    };
}
pub(crate) use skip_unless_qemu;

/// Runs a QEMU tool in `dir` (so relative backing names resolve there);
/// returns (exit code, stdout + stderr).
pub fn run(dir: &Path, prog: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// `run`, as success and output.
pub fn tool(dir: &Path, prog: &str, args: &[&str]) -> (bool, String) {
    let (rc, text) = run(dir, prog, args);
    (rc == 0, text)
}

/// `run`, which must succeed; returns its output.
pub fn tool_ok(dir: &Path, prog: &str, args: &[&str]) -> String {
    let (ok, text) = tool(dir, prog, args);
    assert!(ok, "{prog} {}: {text}", args.join(" "));
    text
}

/// qemu-img with absolute paths: (exit code, output).
pub fn qemu_img(args: &[&str]) -> (i32, String) {
    run(Path::new("/"), "qemu-img", args)
}

/// `qemu-img check` of `dir/lv` finds nothing at all; returns its output.
pub fn qemu_clean(dir: &Path, lv: &str) -> String {
    let img = dir.join(lv);
    let (rc, text) = qemu_img(&["check", "-f", "qcow2", img.to_str().unwrap()]);
    assert_eq!(rc, 0, "qemu-img check {lv}:\n{text}");
    text
}

/// `qemu-img compare` of `dir/lv` (through its backing chain, named
/// relative to `dir`) against `expect` as raw bytes.
pub fn qemu_compare(dir: &Path, lv: &str, expect: &[u8]) {
    let raw = dir.join(format!("{lv}.expect"));
    std::fs::write(&raw, expect).unwrap();
    let img = dir.join(lv);
    let (rc, text) = qemu_img(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        img.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    std::fs::remove_file(&raw).unwrap();
    assert_eq!(rc, 0, "qemu-img compare {lv}: {text}");
}

//! Assembles the real-mode test guest (`guest/blk_test.S`) with binutils
//! (`as`, `ld`): a flat binary linked at 0x7c00, included by
//! `arch::x86_64::realmode`. Source in the repository, no binary: CI
//! installs binutils (`apt-get install binutils`).

use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{shown}: {e} (the test guest needs binutils: apt-get install binutils)")
    });
    if !out.status.success() {
        panic!("{shown} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn main() {
    let src = "guest/blk_test.S";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("blk_test.o");
    let bin = out.join("blk_test.bin");
    run(Command::new("as").args(["--32", "-o"]).arg(&obj).arg(src));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_i386",
            "-Ttext=0x7c00",
            "-e",
            "_start",
            "--oformat",
            "binary",
            "-o",
        ])
        .arg(&bin)
        .arg(&obj));
}

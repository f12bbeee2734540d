//! `ssvadm lv serve`: stock qemu-img checks a thin volume's qcow2 on the
//! LV's own bytes through the NBD export, which refuses writes and goes
//! away (socket file included) on SIGTERM. `ssvadm lv read` copies the
//! same bytes into a sparse file that qemu reads alike.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ssvadm(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ssvadm"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssvadm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The server process, killed if the test fails before it stops it.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// qemu-img finds the qcow2 `image` clean, and qemu-io reads in it what
/// was written.
fn qemu_reads_the_volume(image: &str) {
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2", image])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && text.contains("No errors"),
        "{image}: {text}"
    );
    let read = Command::new("qemu-io")
        .args(["-r", "-f", "qcow2", "-c", "read -P 0x5a 0 3M", image])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&read.stdout);
    assert!(
        read.status.success() && !text.contains("verification"),
        "{image}: {text}"
    );
}

#[test]
fn qemu_img_checks_a_volume_through_lv_serve() {
    if !have("qemu-img") || !have("qemu-io") {
        println!("SKIPPED: qemu-img/qemu-io not installed (Debian package qemu-utils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lun = dir.path().join("lun.img");
    std::fs::File::create(&lun)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let lun_s = lun.to_str().unwrap();
    ssvadm(&["pv", "format", lun_s, "--metadata-size", "4m"]);
    ssvadm(&["vg", "create", "pool0", lun_s, "--extent-size", "4m"]);
    ssvadm(&[
        "volume",
        "create",
        "pool0/disk",
        "--size",
        "1g",
        "--initial",
        "64m",
        lun_s,
    ]);
    let data = dir.path().join("data");
    std::fs::write(&data, vec![0x5au8; 3 << 20]).unwrap();
    ssvadm(&[
        "volume",
        "write",
        "pool0/disk",
        "--from",
        data.to_str().unwrap(),
        lun_s,
    ]);

    let sock = dir.path().join("lv.sock");
    let mut serve = Served(
        Command::new(env!("CARGO_BIN_EXE_ssvadm"))
            .args([
                "lv",
                "serve",
                "pool0/disk",
                "--socket",
                sock.to_str().unwrap(),
                lun_s,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < until, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let uri = format!("nbd+unix:///disk?socket={}", sock.display());
    qemu_reads_the_volume(&uri);
    // Read-only: a write is refused.
    let write = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 512", &uri])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&write.stdout).to_string()
        + &String::from_utf8_lossy(&write.stderr);
    assert!(
        !write.status.success() || text.contains("failed") || text.contains("read-only"),
        "{text}"
    );

    // SAFETY: kill with the pid of a child we started and have not reaped.
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    let st = serve.0.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(
        !Path::new(&sock).exists(),
        "the socket file outlived the server"
    );

    // The LV copied out whole: the LV's size, its unused end a hole, and
    // the same image for qemu.
    let copy = dir.path().join("disk.qcow2");
    ssvadm(&[
        "lv",
        "read",
        "pool0/disk",
        "--to",
        copy.to_str().unwrap(),
        lun_s,
    ]);
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 16 << 20,
        "{} bytes allocated",
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512
    );
    qemu_reads_the_volume(copy.to_str().unwrap());
}

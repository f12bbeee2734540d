//! What the VMM lab test (`tests/lab_vmm.rs`) and benchmark
//! (`benches/vmm_lab.rs`) share: the binaries for the lab's architecture
//! (`ssv-vmm`, `ssvadm`, `lockd`, `ssvd`, `ssvctl`; cross-built for
//! aarch64), the guest's I/O tool
//! (`vmm/guest/linux/ssv-io.c`, built static with the architecture's C
//! compiler), and a payload with those, the guest kernel and an initramfs
//! whose init is `vmm/guest/linux/init.sh`.

#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use ssv_tests::lab::{Arch, Lab, Payload};
use ssv_tests::leases::built_bin;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `vmm/guest/linux` in the repository.
pub fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm/guest/linux")
}

/// Name of the initramfs the payload carries, under /payload/guest.
pub const INITRAMFS: &str = "vmm-initramfs.cpio.gz";

/// What can be missing here, said once as the skip reason.
pub struct Unavailable(pub String);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool} >/dev/null"))
        .status()
        .is_ok_and(|s| s.success())
}

/// `target/<profile>` of this test or bench, and the profile's name.
fn profile_dir() -> Result<(PathBuf, String)> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not in target/<profile>/deps")?
        .to_path_buf();
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    Ok((dir, name))
}

/// The binaries a payload carries, `(package, binary)`.
const BINARIES: [(&str, &str); 5] = [
    ("vmm", "ssv-vmm"),
    ("tools", "ssvadm"),
    ("tools", "ssvctl"),
    ("ssv-daemon", "ssvd"),
    ("lockd", "lockd"),
];

/// [`BINARIES`] for `arch`: this host's build with the test's profile on
/// x86_64; on aarch64 cross-built with Rust's `aarch64-unknown-linux-gnu`
/// target and Debian's `aarch64-linux-gnu-gcc` as linker (either missing:
/// unavailable).
pub fn vmm_binaries(arch: Arch) -> Result<std::result::Result<Vec<PathBuf>, Unavailable>> {
    if arch.name() == std::env::consts::ARCH {
        return Ok(Ok(BINARIES.iter().map(|(p, b)| built_bin(p, b)).collect()));
    }
    const TARGET: &str = "aarch64-unknown-linux-gnu";
    const LINKER: &str = "aarch64-linux-gnu-gcc";
    if arch != Arch::Aarch64 {
        return Ok(Err(Unavailable(format!(
            "no cross build for {}",
            arch.name()
        ))));
    }
    if !have(LINKER) {
        return Ok(Err(Unavailable(format!(
            "{LINKER} missing (apt-get install gcc-aarch64-linux-gnu)"
        ))));
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == TARGET)
        })
        .unwrap_or(false);
    if !installed {
        return Ok(Err(Unavailable(format!(
            "Rust target {TARGET} missing (rustup target add {TARGET})"
        ))));
    }
    let (dir, profile) = profile_dir()?;
    let target_dir = dir.parent().context("no target dir")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "--target", TARGET]);
    for (package, bin) in BINARIES {
        cmd.args(["-p", package, "--bin", bin]);
    }
    cmd.arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let var = "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER";
    if std::env::var_os(var).is_none() {
        cmd.env(var, LINKER);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        p => {
            cmd.args(["--profile", p]);
        }
    }
    let status = cmd
        .status()
        .context("running cargo for the aarch64 build")?;
    if !status.success() {
        bail!("cross-building the lab's binaries for {TARGET} failed: {status}");
    }
    let out = target_dir.join(TARGET).join(&profile);
    Ok(Ok(BINARIES.iter().map(|(_, b)| out.join(b)).collect()))
}

/// Builds `ssv-io` static for `arch` at `out`.
pub fn build_guest_tool(arch: Arch, out: &Path) -> Result<std::result::Result<(), Unavailable>> {
    let cc = match arch {
        Arch::X86_64 => "cc",
        Arch::Aarch64 => "aarch64-linux-gnu-gcc",
    };
    if !have(cc) {
        return Ok(Err(Unavailable(format!(
            "no C compiler {cc} for the guest tool"
        ))));
    }
    let src = guest_dir().join("ssv-io.c");
    let result = Command::new(cc)
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .with_context(|| format!("running {cc}"))?;
    if !result.status.success() {
        bail!(
            "{cc} -static {}: {}",
            src.display(),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(Ok(()))
}

/// A payload for the VMM lab runs.
pub struct VmmPayload {
    pub payload: Payload,
    /// qemu-img inside the lab VM, when the host has one for this
    /// architecture.
    pub qemu_img: Option<PathBuf>,
}

/// A payload with [`BINARIES`] (in /usr/local/bin), the guest kernel at
/// /payload/guest/{bzImage|Image}, the initramfs at /payload/guest/INITRAMFS
/// and `lab-disk.sh`.
pub fn vmm_payload(lab: &Lab) -> Result<std::result::Result<VmmPayload, Unavailable>> {
    let arch = lab.arch();
    let bins = match vmm_binaries(arch)? {
        Ok(b) => b,
        Err(u) => return Ok(Err(u)),
    };
    let payload = Payload::new(Some(env!("CARGO_TARGET_TMPDIR").as_ref()))?;
    for b in &bins {
        payload.add_binary(b)?;
    }
    // The host's qemu-img is an x86_64 binary: it runs in the x86_64 lab.
    let qemu_img = if arch == Arch::X86_64 && Path::new("/usr/bin/qemu-img").is_file() {
        Some(payload.add_binary(Path::new("/usr/bin/qemu-img"))?)
    } else {
        None
    };

    let extra = payload.dir().join("../initramfs-extra");
    std::fs::create_dir_all(extra.join("sbin"))?;
    if let Err(u) = build_guest_tool(arch, &extra.join("sbin/ssv-io"))? {
        return Ok(Err(u));
    }
    let guest = payload.dir().join("guest");
    std::fs::create_dir_all(&guest)?;
    std::fs::copy(lab.guest_kernel(), guest.join(arch.guest_kernel_name()))
        .context("copying the guest kernel")?;
    lab.make_guest_initramfs(
        &guest.join(INITRAMFS),
        &guest_dir().join("init.sh"),
        Some(&extra),
    )?;
    std::fs::copy(
        guest_dir().join("lab-disk.sh"),
        payload.dir().join("lab-disk.sh"),
    )?;
    Ok(Ok(VmmPayload { payload, qemu_img }))
}

/// The guest's console lines that carry `SSV-GUEST:`.
pub fn guest_lines(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter_map(|l| l.find("SSV-GUEST:").map(|i| &l[i..]))
        .collect()
}

/// The serial console name the guest kernel takes on `arch`: our ns16550a
/// (aarch64) and COM1 (x86_64) are both ttyS0.
pub fn console(_arch: Arch) -> &'static str {
    "ttyS0"
}

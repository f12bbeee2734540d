//! Lab VMs: a Linux VM under QEMU's software emulation (x86_64 or aarch64)
//! whose emulated CPU has virtualisation, so it has a working /dev/kvm where
//! this machine has none usable. Tests that need real KVM (the VMM booting a
//! Linux guest, QEMU/KVM as a baseline) run their code inside one.
//!
//! The VMs come from Debian packages only, built and cached by
//! `scripts/lab/build.sh` under `$SSV_LAB_DIR` (default `state/lab/`). A test
//! fills a [`Payload`] directory (a `run.sh`, binaries with their libraries,
//! guest images), and [`Lab::run`] boots the lab VM with it mounted at
//! `/payload`, runs `run.sh`, and returns its exit status and the console.
//!
//! ```no_run
//! use ssv_tests::lab::{Arch, Lab, Payload};
//! # fn t() -> anyhow::Result<()> {
//! let lab = match Lab::get(Arch::X86_64)? {
//!     Some(lab) => lab,
//!     None => return Ok(()), // skipped, reason printed
//! };
//! let payload = Payload::new(None)?;
//! let vmm = payload.add_binary("target/debug/some-tool".as_ref())?; // path inside the VM
//! payload.add_guest(&lab)?; // /payload/guest/{bzImage|Image, initramfs.cpio.gz}
//! payload.set_run_script(&format!("{} --help\n", vmm.display()))?;
//! let run = lab.run(&payload, std::time::Duration::from_secs(300))?;
//! assert_eq!(run.status, 0, "{}", run.console);
//! # Ok(()) }
//! ```

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Exit status of the lab scripts when something they need cannot be had
/// here (a Debian package, root to install it).
const UNAVAILABLE: i32 = 3;

/// The lab VM's architecture (and that of the guest inside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The name the lab scripts and `uname -m` use.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// File name of the inner guest's kernel: a bzImage on x86_64, the raw
    /// (uncompressed) arm64 `Image` on aarch64.
    pub fn guest_kernel_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "bzImage",
            Arch::Aarch64 => "Image",
        }
    }
}

/// The repository's `scripts/lab`.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lab")
}

fn script(name: &str) -> Command {
    Command::new(scripts_dir().join(name))
}

/// Runs a lab script; `Ok(None)` with the reason printed when it says the
/// lab cannot be had here, its stdout otherwise.
fn run_script(mut cmd: Command, what: &str) -> Result<Option<String>> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned())),
        Some(UNAVAILABLE) => {
            eprintln!("SKIPPED (lab VM): {what}: {}", stderr.trim());
            Ok(None)
        }
        _ => bail!("{what} failed ({}): {stderr}", out.status),
    }
}

/// A built lab for one architecture.
#[derive(Clone, Debug)]
pub struct Lab {
    arch: Arch,
    dir: PathBuf,
}

impl Lab {
    /// Builds the lab for `arch` if not cached (downloads Debian packages,
    /// installs QEMU; needs root the first time). `Ok(None)`, with the reason
    /// printed as `SKIPPED (lab VM): …`, when QEMU or the kernel package
    /// cannot be had here.
    pub fn get(arch: Arch) -> Result<Option<Lab>> {
        let mut cmd = script("build.sh");
        cmd.arg(arch.name());
        let Some(out) = run_script(cmd, &format!("scripts/lab/build.sh {}", arch.name()))? else {
            return Ok(None);
        };
        let dir = PathBuf::from(out.lines().last().unwrap_or_default().trim());
        if !dir.join("lab-initramfs.cpio.gz").is_file() {
            bail!(
                "build.sh {} printed {out:?}, not a built lab dir",
                arch.name()
            );
        }
        Ok(Some(Lab { arch, dir }))
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The built state dir (`$SSV_LAB_DIR/ARCH`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The inner guest's kernel (see [`Arch::guest_kernel_name`]).
    pub fn guest_kernel(&self) -> PathBuf {
        self.dir.join("guest").join(self.arch.guest_kernel_name())
    }

    /// The inner guest's initramfs (gzipped newc cpio): busybox, the virtio
    /// modules, and an init that prints `SSV-GUEST: init reached …` and
    /// powers off (`ssv.exit=reboot` on the command line: reboots instead).
    pub fn guest_initramfs(&self) -> PathBuf {
        self.dir.join("guest/initramfs.cpio.gz")
    }

    /// Packs a guest initramfs at `out` with `init` as /init and, if given,
    /// `extra`'s contents copied over the root (scripts/lab/guest-initramfs.sh).
    pub fn make_guest_initramfs(
        &self,
        out: &Path,
        init: &Path,
        extra: Option<&Path>,
    ) -> Result<()> {
        let mut cmd = script("guest-initramfs.sh");
        cmd.arg(self.arch.name()).arg(out).arg(init);
        if let Some(extra) = extra {
            cmd.arg(extra);
        }
        run_script(cmd, "scripts/lab/guest-initramfs.sh")?
            .context("guest-initramfs.sh: lab unavailable")?;
        Ok(())
    }

    /// Boots the lab VM with `payload` at /payload, runs its run.sh and
    /// waits (at most `timeout`, then QEMU is stopped). The payload's files
    /// under /payload/out are in [`LabRun::results`] afterwards.
    /// A console silent for [`SILENCE_LIMIT`] stops the VM too.
    pub fn run(&self, payload: &Payload, timeout: Duration) -> Result<LabRun> {
        self.run_until_silent(payload, timeout, SILENCE_LIMIT)
    }

    /// [`Lab::run`], with the VM stopped once its console has said nothing
    /// for `silence` (status 126).
    pub fn run_until_silent(
        &self,
        payload: &Payload,
        timeout: Duration,
        silence: Duration,
    ) -> Result<LabRun> {
        let log = payload.work.path().join("console.log");
        let results = payload.work.path().join("out");
        let started = Instant::now();
        let mut child = script("run.sh")
            .arg(self.arch.name())
            .arg(payload.dir())
            .arg(timeout.as_secs().max(1).to_string())
            .env("SSV_LAB_LOG", &log)
            .env("SSV_LAB_RESULTS", &results)
            .env("SSV_LAB_QUIET", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so an overrun can stop QEMU with it.
            .process_group(0)
            .spawn()
            .context("starting scripts/lab/run.sh")?;
        let pid = child.id();
        let stderr = child.stderr.take();
        let stderr_reader = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut e) = stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
            }
            s
        });
        // run.sh enforces the timeout itself; this is the backstop.
        let deadline = started + timeout + Duration::from_secs(60);
        let (mut console_len, mut console_grew) = (0, Instant::now());
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            let now = Instant::now();
            if now > deadline {
                stop_group(&mut child);
                bail!("lab run.sh overran its timeout; killed process group {pid}");
            }
            // The silence counts from the console's first line: building
            // the lab (apt, the first time) prints nothing there.
            let len = std::fs::metadata(&log).map_or(0, |m| m.len());
            if len != console_len || len == 0 {
                (console_len, console_grew) = (len, now);
            } else if now - console_grew > silence {
                stop_group(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = stderr_reader.join().unwrap_or_default();
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let code = status.map_or(LAB_VM_SILENT, |s| s.code().unwrap_or(-1));
        // 2 and 3 are also run.sh's own failures: a payload's status is
        // only one the VM reported.
        if (code == 2 || code == UNAVAILABLE) && !console.contains("SSV-LAB-EXIT:") {
            bail!(
                "lab run.sh {} failed (status {code}): {stderr}",
                self.arch.name()
            );
        }
        Ok(LabRun {
            status: code,
            console,
            log,
            results,
            elapsed: started.elapsed(),
        })
    }
}

/// Stops run.sh's process group (`child` leads it): SIGTERM first, so its
/// exit trap removes its work files, then SIGKILL.
fn stop_group(child: &mut std::process::Child) {
    let group = -(child.id() as i32);
    for (sig, grace) in [(libc::SIGTERM, 10), (libc::SIGKILL, 0)] {
        // SAFETY: kill has no memory-safety preconditions; the group is
        // the one `child` leads.
        unsafe { libc::kill(group, sig) };
        let end = Instant::now() + Duration::from_secs(grace);
        while Instant::now() < end {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = child.wait();
}

/// What a lab run returned.
#[derive(Debug)]
pub struct LabRun {
    /// The payload's exit status; 124 on timeout; 125 if the VM stopped
    /// without reporting one; 126 if its console went silent (it was
    /// stopped then).
    pub status: i32,
    /// The serial console, each line prefixed `[   s.mmm]` (seconds since
    /// QEMU started).
    pub console: String,
    /// The console log file (lives as long as the [`Payload`]).
    pub log: PathBuf,
    /// Copy of the files the payload wrote under /payload/out.
    pub results: PathBuf,
    pub elapsed: Duration,
}

/// run.sh's status when the lab VM stopped without reporting the payload's.
const LAB_VM_STOPPED: i32 = 125;

/// A lab VM whose console says nothing for this long is stopped: it froze
/// (its emulated CPU spinning, BENCHMARKS.md, issue 7). Every payload prints
/// more often: the benchmark's boots are limited to 300 s each and print
/// when they end, `lab_vmm` runs are limited to 300 s in all.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(360);

/// [`LabRun::status`] of a lab VM stopped because its console went silent
/// ([`SILENCE_LIMIT`], or the limit given to [`Lab::run_until_silent`]).
const LAB_VM_SILENT: i32 = 126;

/// Console lines by which the lab's nested virtualization (KVM in the lab
/// VM, itself under QEMU's software emulation of SVM) shows it failed
/// under a nested guest: the lab kernel's own crash and lockups, a nested
/// guest's CPU that stops taking interrupts, and a nested guest's triple
/// fault, which ssv-vmm reports as a reset (the test guests never ask for
/// one). A lab VM that stops without a payload status (125: its kernel
/// reset, which prints nothing) is the same failure. So is lockd giving up
/// its lockspace (`lab-disk.sh` prints its log when a daemon exits): its
/// renewals, on a LUN in the lab's tmpfs that no other host touches, fail
/// only when the lab VM's CPU stopped running it for 8 s.
/// BENCHMARKS.md, issue 7, has what is known of them.
pub const NESTED_FAILURE_SIGNS: [&str; 5] = [
    "BUG: TASK stack guard page",
    "watchdog: BUG: soft lockup",
    "rcu_preempt detected stalls",
    "ssv-vmm: the guest reset",
    "its leases are lost, stopping their holders",
];

impl LabRun {
    /// The first lines (at most 3) that show the lab's nested
    /// virtualization failed ([`NESTED_FAILURE_SIGNS`]), if the run failed
    /// with any.
    pub fn nested_failure(&self) -> Option<String> {
        if self.status == 0 {
            return None;
        }
        let last = self.console.lines().last().unwrap_or("(no console output)");
        if self.status == LAB_VM_STOPPED {
            return Some(format!(
                "the lab VM stopped without a payload status; its console's last line: {last}"
            ));
        }
        if self.status == LAB_VM_SILENT {
            return Some(format!(
                "the lab VM froze: its console went silent and it was stopped; its last line: {last}"
            ));
        }
        let lines: Vec<&str> = self
            .console
            .lines()
            .filter(|l| NESTED_FAILURE_SIGNS.iter().any(|s| l.contains(s)))
            .take(3)
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// Seconds from QEMU's start to the first console line containing
    /// `marker`.
    pub fn time_of(&self, marker: &str) -> Option<f64> {
        let line = self.console.lines().find(|l| l.contains(marker))?;
        let stamp = line.strip_prefix('[')?.split(']').next()?;
        stamp.trim().parse().ok()
    }
}

/// A payload directory for a lab VM (mounted at /payload inside), in a
/// scratch dir removed on drop.
pub struct Payload {
    work: tempfile::TempDir,
    dir: PathBuf,
}

impl Payload {
    /// `base`: parent for the scratch dir (pass
    /// `Some(env!("CARGO_TARGET_TMPDIR").as_ref())` from integration tests).
    pub fn new(base: Option<&Path>) -> Result<Payload> {
        let work = match base {
            Some(b) => tempfile::Builder::new().prefix("lab-").tempdir_in(b)?,
            None => tempfile::Builder::new().prefix("lab-").tempdir()?,
        };
        let dir = work.path().join("payload");
        std::fs::create_dir(&dir)?;
        Ok(Payload { work, dir })
    }

    /// The payload directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `rel` (relative to the payload dir) with `contents`.
    pub fn add_file(&self, rel: &str, contents: &[u8]) -> Result<PathBuf> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(Path::new("/payload").join(rel))
    }

    /// The script the lab VM runs (with busybox sh, in /payload); its exit
    /// status is the run's.
    pub fn set_run_script(&self, script: &str) -> Result<()> {
        self.add_file("run.sh", script.as_bytes()).map(|_| ())
    }

    /// Copies a dynamically linked binary with its shared libraries and
    /// loader (an arm64 binary: from Debian's arm64 packages) into the
    /// payload; returns its path inside the lab VM (`/usr/local/bin/NAME`
    /// unless it lives under /usr, /bin or /sbin).
    pub fn add_binary(&self, binary: &Path) -> Result<PathBuf> {
        let mut cmd = script("payload-bin.sh");
        cmd.arg(&self.dir).arg(binary);
        let out = run_script(cmd, "scripts/lab/payload-bin.sh")?
            .context("payload-bin.sh: lab unavailable")?;
        Ok(PathBuf::from(out.trim()))
    }

    /// Adds Debian's QEMU for `arch` and /payload/qemu-boot.sh, which boots
    /// `KERNEL INITRD [APPEND [QEMU_ARGS…]]` under QEMU/KVM in the lab VM.
    pub fn add_qemu(&self, arch: Arch) -> Result<()> {
        let mut cmd = script("payload-qemu.sh");
        cmd.arg(arch.name()).arg(&self.dir);
        run_script(cmd, "scripts/lab/payload-qemu.sh")?
            .context("payload-qemu.sh: lab unavailable")?;
        Ok(())
    }

    /// Copies the lab's inner guest kernel and initramfs to
    /// /payload/guest/{bzImage|Image, initramfs.cpio.gz}.
    pub fn add_guest(&self, lab: &Lab) -> Result<()> {
        let guest = self.dir.join("guest");
        std::fs::create_dir_all(&guest)?;
        std::fs::copy(lab.guest_kernel(), guest.join(lab.arch.guest_kernel_name()))
            .context("copying the guest kernel")?;
        std::fs::copy(lab.guest_initramfs(), guest.join("initramfs.cpio.gz"))
            .context("copying the guest initramfs")?;
        Ok(())
    }
}

/// Returns early from the calling test (with the given value, or `()`)
/// after printing why, when the lab for `$arch` cannot be had; otherwise
/// evaluates to the [`Lab`]. Build failures panic.
#[macro_export]
macro_rules! lab_or_skip {
    ($arch:expr) => {
        $crate::lab_or_skip!($arch, ())
    };
    ($arch:expr, $ret:expr) => {
        match $crate::lab::Lab::get($arch) {
            Ok(Some(lab)) => lab,
            Ok(None) => return $ret,
            Err(e) => panic!("building the lab VM: {e:#}"),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_of_reads_the_first_stamped_line() {
        let run = LabRun {
            status: 0,
            console:
                "[   1.250] boot\n[  12.500] SSV-GUEST: init reached\n[  13.000] SSV-GUEST: again\n"
                    .into(),
            log: PathBuf::new(),
            results: PathBuf::new(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(run.time_of("SSV-GUEST"), Some(12.5));
        assert_eq!(run.time_of("absent"), None);
    }

    #[test]
    fn nested_failure_names_only_the_labs_own_failures() {
        let run = |status, console: &str| LabRun {
            status,
            console: console.into(),
            log: PathBuf::new(),
            results: PathBuf::new(),
            elapsed: Duration::ZERO,
        };
        // As a CI run printed it: the nested guest's triple fault.
        let reset = "[  43.338] vm event disk.grown\n[  43.340] ssv-vmm: the guest reset (an x86 triple fault, i.e. it crashed, or a reset request); start the VM again\n[  43.367] SSV-LAB-EXIT: 123\n";
        let lines = run(123, reset).nested_failure().unwrap();
        assert!(lines.contains("the guest reset"), "{lines}");
        assert!(!lines.contains("disk.grown"), "{lines}");
        let oops = "[ 80.1] BUG: TASK stack guard page was hit at 00000000 (stack is 0..1)\n";
        assert!(run(124, oops).nested_failure().is_some());
        // As another CI run printed it: the lab VM reset with no word.
        let silent = "[  18.960] kvm [160]: vcpu0, Unhandled WRMSR(0xc0010007) = 0xffff\n";
        let lines = run(125, silent).nested_failure().unwrap();
        assert!(lines.contains("Unhandled WRMSR"), "{lines}");
        // The lab VM froze and was stopped.
        let lines = run(LAB_VM_SILENT, silent).nested_failure().unwrap();
        assert!(lines.contains("froze"), "{lines}");
        assert!(lines.contains("Unhandled WRMSR"), "{lines}");
        // lockd's lockspace failed, as lab-disk.sh prints lockd's log.
        let fenced = "[ 95.1] LAB: a daemon exited at 94.9s; the ends of ssvd's, lockd's and the guest's logs:\n[ 95.2] [2026-11-24T08:53:01Z ERROR lockd::daemon::space] lockspace pool0 host id 1: renewal failing for 8.01s: timeout; its leases are lost, stopping their holders\n";
        let lines = run(16, fenced).nested_failure().unwrap();
        assert!(lines.contains("renewal failing"), "{lines}");
        assert!(!lines.contains("a daemon exited"), "{lines}");
        // A run that passed, or failed otherwise, is not the lab's.
        assert_eq!(run(0, reset).nested_failure(), None);
        assert_eq!(
            run(
                1,
                "[  9.0] SSV-GUEST: FAIL chunk 3 differs\n[  9.1] SSV-LAB-EXIT: 1\n"
            )
            .nested_failure(),
            None
        );
    }

    #[test]
    fn payload_files_land_under_payload() {
        let p = Payload::new(None).unwrap();
        let inside = p.add_file("a/b.txt", b"x").unwrap();
        assert_eq!(inside, Path::new("/payload/a/b.txt"));
        assert_eq!(std::fs::read(p.dir().join("a/b.txt")).unwrap(), b"x");
    }
}

//! A private, metadata-only lvm2 environment.
//!
//! Every command runs with `LVM_SYSTEM_DIR` pointing at a temp dir whose
//! lvm.conf accepts only the given devices, uses no hints, udev, devices
//! file, backups, archives, lvmetad/lvmpolld/lvmlockd/dbus or syslog, keeps
//! its lock files in the temp dir and never talks to device-mapper
//! (`global/activation = 0` and `--driverloaded n` on every command).

use crate::report::{self, LvReport, PvReport, VgReport};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Lines every command prints because of this environment's settings;
/// dropped from [`Lvm2::vgck`]/[`Lvm2::pvck`] stderr.
const NOISE: [&str; 2] = [
    "WARNING: Activation disabled. No device-mapper interaction will be attempted.",
    "WARNING: This metadata update is NOT backed up.",
];

/// Commands that ignore `--driverloaded` (everything else accepts it: it is
/// a common option of all lvm2 2.03.16 commands).
const NO_DRIVERLOADED: [&str; 2] = ["version", "help"];

/// A size argument for lvcreate/lvextend/lvreduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// `-L <n>b`
    Bytes(u64),
    /// `-l <n>`
    Extents(u64),
}

impl Size {
    fn args(self, sign: &str) -> [String; 2] {
        match self {
            Size::Bytes(n) => ["-L".into(), format!("{sign}{n}b")],
            Size::Extents(n) => ["-l".into(), format!("{sign}{n}")],
        }
    }
}

pub struct Lvm2 {
    dir: tempfile::TempDir,
    lvm: PathBuf,
    devices: Vec<PathBuf>,
}

impl Lvm2 {
    /// A fresh environment that sees exactly `devices` (e.g. `/dev/loop3`).
    pub fn new(devices: &[PathBuf]) -> Result<Lvm2> {
        let lvm = crate::find_tool("lvm").context("lvm not found")?;
        let dir = tempfile::Builder::new()
            .prefix("ssv-lvm2-")
            .tempdir()
            .context("creating LVM_SYSTEM_DIR")?;
        for sub in ["lock", "backup", "archive", "profile", "cache"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let conf = lvm_conf(dir.path(), devices)?;
        std::fs::write(dir.path().join("lvm.conf"), conf)?;
        Ok(Lvm2 {
            dir,
            lvm,
            devices: devices.to_vec(),
        })
    }

    /// The private `LVM_SYSTEM_DIR`.
    pub fn system_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn devices(&self) -> &[PathBuf] {
        &self.devices
    }

    /// `lvm <args>` with this environment and `--driverloaded n` inserted
    /// after the command name. stdin is /dev/null, so prompts answer "no".
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.lvm);
        cmd.env("LVM_SYSTEM_DIR", self.dir.path())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .env("LC_ALL", "C")
            .env_remove("LVM_VG_NAME")
            .env_remove("LVM_COMMAND_PROFILE")
            .stdin(Stdio::null());
        cmd.args(full_args(args));
        cmd
    }

    /// Runs `lvm <args>`; returns the output whatever the exit status
    /// (errors only if lvm could not be run).
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("running {}", self.describe(args)))
    }

    /// Like [`run`](Self::run) but fails, with the full command line,
    /// stdout and stderr, unless lvm exits 0.
    pub fn run_ok(&self, args: &[&str]) -> Result<Output> {
        let out = self.run(args)?;
        if !out.status.success() {
            bail!(
                "command failed ({}): {}\n--- stderr:\n{}--- stdout:\n{}",
                out.status,
                self.describe(args),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(out)
    }

    fn describe(&self, args: &[&str]) -> String {
        format!(
            "LVM_SYSTEM_DIR={} lvm {}",
            self.dir.path().display(),
            full_args(args).join(" ")
        )
    }

    fn run_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let out = self.run_ok(args)?;
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing JSON from {}", self.describe(args)))
    }

    // --- PVs and VGs -------------------------------------------------------

    pub fn pvcreate(&self, dev: &Path, extra: &[&str]) -> Result<()> {
        let d = path_str(dev)?;
        self.run_ok(&[&["pvcreate", "--yes"], extra, &[d]].concat())
            .map(drop)
    }

    pub fn vgcreate(&self, vg: &str, pvs: &[&Path], extra: &[&str]) -> Result<()> {
        let pvs = paths_str(pvs)?;
        self.run_ok(&[&["vgcreate", vg], extra, &pvs].concat())
            .map(drop)
    }

    pub fn vgextend(&self, vg: &str, pvs: &[&Path]) -> Result<()> {
        let pvs = paths_str(pvs)?;
        self.run_ok(&[&["vgextend", vg][..], &pvs].concat())
            .map(drop)
    }

    pub fn vgchange_addtag(&self, vg: &str, tag: &str) -> Result<()> {
        self.run_ok(&["vgchange", "--addtag", tag, vg]).map(drop)
    }

    // --- LVs (inactive, never zeroed: there is no device-mapper) -----------

    /// `lvcreate -an -Zn -n LV <size> VG <extra>`; `extra` may hold options
    /// (`-i2 -I64k`, `--addtag t`) and PV paths.
    pub fn lvcreate(&self, vg: &str, lv: &str, size: Size, extra: &[&str]) -> Result<()> {
        let [o, v] = size.args("");
        let base = ["lvcreate", "-an", "-Zn", "--yes", "-n", lv, &o, &v, vg];
        self.run_ok(&[&base[..], extra].concat()).map(drop)
    }

    /// Grows VG/LV by `by`; `extra` may name PVs to allocate from.
    pub fn lvextend(&self, vg: &str, lv: &str, by: Size, extra: &[&str]) -> Result<()> {
        let [o, v] = by.args("+");
        let target = format!("{vg}/{lv}");
        self.run_ok(&[&["lvextend", &o, &v, &target][..], extra].concat())
            .map(drop)
    }

    /// Shrinks VG/LV by `by` (no filesystem check: the LV is inactive).
    pub fn lvreduce(&self, vg: &str, lv: &str, by: Size, extra: &[&str]) -> Result<()> {
        let [o, v] = by.args("-");
        let target = format!("{vg}/{lv}");
        self.run_ok(&[&["lvreduce", "--yes", &o, &v, &target][..], extra].concat())
            .map(drop)
    }

    pub fn lvremove(&self, vg: &str, lv: &str) -> Result<()> {
        self.run_ok(&["lvremove", "--yes", &format!("{vg}/{lv}")])
            .map(drop)
    }

    pub fn lvrename(&self, vg: &str, old: &str, new: &str) -> Result<()> {
        self.run_ok(&["lvrename", vg, old, new]).map(drop)
    }

    pub fn lvchange_addtag(&self, vg: &str, lv: &str, tag: &str) -> Result<()> {
        self.run_ok(&["lvchange", "--addtag", tag, &format!("{vg}/{lv}")])
            .map(drop)
    }

    // --- reports -----------------------------------------------------------

    pub fn vgs(&self, vg: &str) -> Result<VgReport> {
        let v = self.run_json(
            &[
                &["vgs"][..],
                report::JSON_BYTES,
                &["-o", report::VG_FIELDS, vg],
            ]
            .concat(),
        )?;
        let mut rows = report::rows(&v, "vg")?;
        match (rows.len(), rows.pop()) {
            (1, Some(row)) => VgReport::from_row(&row),
            (n, _) => bail!("vgs {vg}: expected 1 row, got {n}"),
        }
    }

    /// Visible LVs of `vg`, each with its segments (from `lvs --segments`).
    pub fn lvs(&self, vg: &str) -> Result<Vec<LvReport>> {
        let v = self.run_json(
            &[
                &["lvs"][..],
                report::JSON_BYTES,
                &["-o", report::LV_FIELDS, vg],
            ]
            .concat(),
        )?;
        let mut lvs = report::rows(&v, "lv")?
            .iter()
            .map(LvReport::from_row)
            .collect::<Result<Vec<_>>>()?;
        let s = self.run_json(
            &[
                &["lvs", "--segments"][..],
                report::JSON_BYTES,
                &["-o", report::SEG_FIELDS, vg],
            ]
            .concat(),
        )?;
        for row in report::rows(&s, "seg")? {
            let (name, seg) = report::seg_from_row(&row)?;
            let lv = lvs
                .iter_mut()
                .find(|l| l.name == name)
                .with_context(|| format!("segment of unknown LV {name}"))?;
            lv.segments.push(seg);
        }
        for lv in &mut lvs {
            lv.segments.sort_by_key(|s| s.start_pe);
        }
        Ok(lvs)
    }

    /// All PVs this environment sees (orphans have `vg_name == ""`).
    pub fn pvs(&self) -> Result<Vec<PvReport>> {
        let v = self
            .run_json(&[&["pvs"][..], report::JSON_BYTES, &["-o", report::PV_FIELDS]].concat())?;
        report::rows(&v, "pv")?
            .iter()
            .map(PvReport::from_row)
            .collect()
    }

    // --- checks ------------------------------------------------------------

    /// `vgck VG`: (exit code, stderr without this environment's noise lines).
    /// Note: lvm 2.03.16 exits 0 for a stale-but-valid copy (only warns).
    pub fn vgck(&self, vg: &str) -> Result<(i32, String)> {
        self.check(&["vgck", vg])
    }

    /// `pvck DEV`: (exit code, stderr without noise); 5 on label/header errors.
    pub fn pvck(&self, dev: &Path) -> Result<(i32, String)> {
        self.check(&["pvck", path_str(dev)?])
    }

    fn check(&self, args: &[&str]) -> Result<(i32, String)> {
        let out = self.run(args)?;
        let code = out
            .status
            .code()
            .with_context(|| format!("{} killed: {}", self.describe(args), out.status))?;
        Ok((code, strip_noise(&String::from_utf8_lossy(&out.stderr))))
    }

    /// The committed metadata text of the first MDA on `dev`, exactly as
    /// stored (without the trailing NUL), via `pvck --dump metadata -f`.
    pub fn dump_metadata(&self, dev: &Path) -> Result<String> {
        let file = self.dir.path().join("dump.txt");
        let _ = std::fs::remove_file(&file);
        self.run_ok(&[
            "pvck",
            "--dump",
            "metadata",
            "-f",
            path_str(&file)?,
            path_str(dev)?,
        ])?;
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))
    }
}

fn full_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    let needs = matches!(args.first(), Some(c) if !NO_DRIVERLOADED.contains(c))
        && !args.contains(&"--driverloaded");
    if needs {
        v.splice(1..1, ["--driverloaded", "n"]);
    }
    v
}

/// Removes the lines every command of this environment prints.
pub fn strip_noise(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !NOISE.contains(&l.trim()))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("non-UTF-8 path {}", p.display()))
}

fn paths_str<'a>(ps: &[&'a Path]) -> Result<Vec<&'a str>> {
    ps.iter().map(|p| path_str(p)).collect()
}

/// Escapes a device path for an lvm regex filter `a|^...$|`.
fn regex_escape(s: &str) -> Result<String> {
    if s.contains('|') || s.contains('"') {
        bail!("device path {s:?} cannot be used in an lvm filter");
    }
    Ok(s.chars()
        .map(|c| {
            if "\\.^$*+?()[]{}".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect())
}

fn lvm_conf(dir: &Path, devices: &[PathBuf]) -> Result<String> {
    let mut filter = devices
        .iter()
        .map(|d| Ok(format!("\"a|^{}$|\"", regex_escape(path_str(d)?)?)))
        .collect::<Result<Vec<_>>>()?;
    filter.push("\"r|.*|\"".into());
    let filter = filter.join(", ");
    let d = path_str(dir)?;
    Ok(format!(
        r#"# Generated by ssv-tests: a private, metadata-only lvm2 environment.
config {{
	profile_dir = "{d}/profile"
}}
devices {{
	dir = "/dev"
	scan = [ "/dev" ]
	global_filter = [ {filter} ]
	filter = [ {filter} ]
	obtain_device_list_from_udev = 0
	external_device_info_source = "none"
	hints = "none"
	use_devicesfile = 0
	scan_lvs = 0
	multipath_component_detection = 0
	md_component_detection = 0
	fw_raid_component_detection = 0
}}
backup {{
	backup = 0
	archive = 0
	backup_dir = "{d}/backup"
	archive_dir = "{d}/archive"
}}
log {{
	syslog = 0
}}
global {{
	activation = 0
	locking_dir = "{d}/lock"
	wait_for_locks = 1
	use_lvmlockd = 0
	use_lvmpolld = 0
	notify_dbus = 0
	event_activation = 0
	system_id_source = "none"
}}
activation {{
	udev_sync = 0
	udev_rules = 0
	verify_udev_operations = 0
	monitoring = 0
}}
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driverloaded_is_inserted_after_the_command() {
        assert_eq!(
            full_args(&["vgs", "vg"]),
            ["vgs", "--driverloaded", "n", "vg"]
        );
        assert_eq!(full_args(&["version"]), ["version"]);
        assert_eq!(
            full_args(&["lvs", "--driverloaded", "n"]),
            ["lvs", "--driverloaded", "n"]
        );
    }

    #[test]
    fn filter_escaping() {
        assert_eq!(regex_escape("/dev/loop1").unwrap(), "/dev/loop1");
        assert_eq!(regex_escape("/dev/a.b+").unwrap(), "/dev/a\\.b\\+");
        assert!(regex_escape("/dev/a|b").is_err());
    }
}

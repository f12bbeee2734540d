//! ssv hosts on one machine: each a real `lockd` and a real `ssvd` process
//! with its own host id, state directory and sockets, sharing LUN files.
//! Processes are stopped by pid when the host is dropped.

use crate::leases::{built_bin, lockd_bin};
use anyhow::{bail, Context, Result};
use ssvd::client::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct HostProc {
    pub id: u64,
    pub dir: PathBuf,
    pub client: Client,
    pub config: PathBuf,
    lockd: Option<Child>,
    ssvd: Option<Child>,
}

/// `ssvd` built with this test's profile.
pub fn ssvd_bin() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| built_bin("ssv-daemon", "ssvd"))
}

fn wait_for_socket(path: &Path, child: &mut Child, what: &str, log: &Path) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "{what} exited ({st}) before serving {}; its log:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not serve {} within 20 s", path.display())
}

impl HostProc {
    /// Starts lockd (io_timeout `io_timeout` s) and ssvd for host `id`,
    /// with `luns` as its LUN files.
    pub fn start(base: &Path, id: u64, luns: &[PathBuf], io_timeout: u64) -> Result<HostProc> {
        let entries: Vec<String> = luns.iter().map(|l| format!("file = {l:?}")).collect();
        Self::start_with(base, id, &entries, io_timeout)
    }

    /// As [`HostProc::start`], with each of `lun_entries` the body of one
    /// `[[lun]]` table (e.g. `iscsi = "iscsi://…"`). lockd logs in to iSCSI
    /// LUNs as `iqn.2026-11.io.ssv:host<ID>-lockd`: hosts on one machine
    /// share a host name, so lockd's default name would be the same on each.
    pub fn start_with(
        base: &Path,
        id: u64,
        lun_entries: &[String],
        io_timeout: u64,
    ) -> Result<HostProc> {
        Self::start_with_toml(base, id, lun_entries, io_timeout, "")
    }

    /// As [`HostProc::start_with`], with `extra_toml` (whole tables, e.g.
    /// `"[export]\niscsi_portals = [\"127.0.0.1:3260\"]\n"`) appended to
    /// ssvd's configuration.
    pub fn start_with_toml(
        base: &Path,
        id: u64,
        lun_entries: &[String],
        io_timeout: u64,
        extra_toml: &str,
    ) -> Result<HostProc> {
        let dir = base.join(format!("host{id}"));
        std::fs::create_dir_all(&dir)?;
        let lockd_sock = dir.join("lockd.sock");
        let lockd_log = dir.join("lockd.log");
        let mut lockd = Command::new(lockd_bin())
            .args(["daemon", "--socket"])
            .arg(&lockd_sock)
            .args([
                "-o",
                &io_timeout.to_string(),
                "--watchdog-fire",
                &(3 * io_timeout).to_string(),
            ])
            // A regular file: never arm a real watchdog from a test.
            .arg("--watchdog")
            .arg(dir.join("watchdog"))
            .arg("--initiator-name")
            .arg(san::iscsi::lockd_initiator_name(&format!("host{id}")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&lockd_log)?)
            .spawn()
            .context("starting lockd")?;
        wait_for_socket(&lockd_sock, &mut lockd, "lockd", &lockd_log)?;
        let sock = dir.join("ssvd.sock");
        let mut cfg = format!(
            "host_id = {id}\nstate_dir = {:?}\n[api]\nsocket = {:?}\n[lockd]\nsocket = {:?}\nlease_wait_secs = 60\n",
            dir.join("state"),
            sock,
            lockd_sock
        );
        for l in lun_entries {
            cfg.push_str(&format!("[[lun]]\n{l}\n"));
        }
        cfg.push_str(extra_toml);
        let config = dir.join("ssv.toml");
        std::fs::write(&config, cfg)?;
        let mut h = HostProc {
            id,
            client: Client::unix(&sock),
            dir,
            config,
            lockd: Some(lockd),
            ssvd: None,
        };
        h.start_ssvd()?;
        Ok(h)
    }

    /// (Re)starts ssvd alone.
    pub fn start_ssvd(&mut self) -> Result<()> {
        let log = self.dir.join("ssvd.log");
        let mut ssvd = Command::new(ssvd_bin())
            .arg("-c")
            .arg(&self.config)
            // SSVD_LOG overrides the level, e.g. `info,ssvd::pool=debug`.
            .env(
                "RUST_LOG",
                std::env::var("SSVD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)?,
            )
            .spawn()
            .context("starting ssvd")?;
        let sock = match &self.client.endpoint {
            ssvd::client::Endpoint::Unix(p) => p.clone(),
            ssvd::client::Endpoint::Tcp { .. } => bail!("unix socket expected"),
        };
        let r = wait_for_socket(&sock, &mut ssvd, "ssvd", &log);
        self.ssvd = Some(ssvd);
        r
    }

    /// Creates volume `id` (named `id` too) of `size` bytes and opens it
    /// for writing on this host; returns its NBD export's URI.
    pub fn open_new_volume(&self, id: &str, size: u64) -> Result<String> {
        self.client.post(
            "/v1/volumes",
            &serde_json::json!({"id": id, "name": id, "size": size.to_string()}),
        )?;
        let v = self
            .client
            .post(&format!("/v1/volumes/{id}/session"), &serde_json::json!({}))?;
        Ok(v["nbd"].as_str().context("no NBD URI")?.to_string())
    }

    pub fn ssvd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ssvd.log")).unwrap_or_default()
    }

    pub fn ssvd_pid(&self) -> Option<u32> {
        self.ssvd.as_ref().map(Child::id)
    }

    /// SIGTERM to ssvd alone (it closes its volumes); lockd stays.
    pub fn stop_ssvd(&mut self) {
        if let Some(c) = self.ssvd.take() {
            kill(c, libc::SIGTERM);
        }
    }

    /// SIGKILL of both daemons: the host is gone without a word.
    pub fn kill9(&mut self) {
        // Both signalled before either is reaped, lockd first: a lockd that
        // outlives its ssvd by even milliseconds sees the holder exit and
        // releases its leases on disk, which a dead host never does.
        let children: Vec<Child> = [self.lockd.take(), self.ssvd.take()]
            .into_iter()
            .flatten()
            .collect();
        for c in &children {
            // SAFETY: kill with a pid we spawned and have not waited for
            // (a zombie at worst, so the pid is not reused).
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
        }
        for c in children {
            kill(c, libc::SIGKILL);
        }
    }

    /// SIGTERM to ssvd (it closes its volumes), then lockd.
    pub fn stop(&mut self) {
        if let Some(c) = self.ssvd.take() {
            kill(c, libc::SIGTERM);
        }
        if let Some(c) = self.lockd.take() {
            kill(c, libc::SIGTERM);
        }
    }
}

fn kill(mut c: Child, sig: i32) {
    // SAFETY: kill with a pid we spawned and still own (not yet waited for).
    unsafe { libc::kill(c.id() as i32, sig) };
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for HostProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pool `vg` on the LUN files `luns`, read with our LVM engine: panics
/// if any extent of any PV belongs to two LVs. Returns the first PV's
/// device hint (the path ssvd recorded).
pub fn assert_no_extent_twice(luns: &[&Path], vg: &str) -> Result<Option<String>> {
    let mut pvs = Vec::new();
    for lun in luns {
        let dev = san::FileDev::open(lun, &san::OpenOptions::new().read_only(true))?;
        pvs.push(lvm::PvDev::new(
            std::sync::Arc::new(dev),
            lun.display().to_string(),
        ));
    }
    let vg = lvm::OpenVg::open(&pvs, Some(vg))?;
    let mut owner: std::collections::HashMap<(String, u64), String> = Default::default();
    for lv in &vg.vg().lvs {
        for seg in &lv.segments {
            if let lvm::SegmentKind::Striped { stripes, .. } = &seg.kind {
                for s in stripes {
                    for pe in s.start_pe..s.start_pe + seg.area_len() {
                        if let Some(other) = owner.insert((s.pv.clone(), pe), lv.name.clone()) {
                            panic!("extent {pe} of {} belongs to {other} and {}", s.pv, lv.name);
                        }
                    }
                }
            }
        }
    }
    Ok(vg.vg().pvs.first().and_then(|p| p.device.clone()))
}

/// Stock lvm2's `vgck` of `vg` on the LUN files `luns` (through loop
/// devices) must be clean; skipped, with a message, where lvm2 cannot run.
pub fn assert_stock_vgck_clean(luns: &[&Path], vg: &str) -> Result<()> {
    if let Some(why) = crate::skip_reason() {
        eprintln!("SKIPPED stock vgck: {why}");
        return Ok(());
    }
    let loops = luns
        .iter()
        .map(|l| crate::LoopDev::attach(l))
        .collect::<Result<Vec<_>>>()?;
    let devs: Vec<PathBuf> = loops.iter().map(|l| l.path().to_path_buf()).collect();
    let lvm = crate::Lvm2::new(&devs)?;
    let (code, out) = lvm.vgck(vg)?;
    anyhow::ensure!(code == 0, "stock vgck {vg}: {out}");
    anyhow::ensure!(!lvm.lvs(vg)?.is_empty(), "stock lvm2 sees no LV in {vg}");
    Ok(())
}

/// Hosts 1..=n on the LUN files `luns`, each with its own lockd and ssvd.
pub fn start_hosts(
    base: &Path,
    n: u64,
    luns: &[PathBuf],
    io_timeout: u64,
) -> Result<Vec<HostProc>> {
    (1..=n)
        .map(|id| HostProc::start(base, id, luns, io_timeout))
        .collect()
}

/// Host 1 on a fresh sparse LUN file of `size` bytes, with pool `pool0` on it.
pub fn one_host_with_pool(scratch: &crate::Scratch, size: u64) -> Result<(HostProc, PathBuf)> {
    let lun = scratch.sparse_file("lun0.img", size)?;
    let h = HostProc::start(scratch.path(), 1, std::slice::from_ref(&lun), 1)?;
    h.client.post(
        "/v1/pools",
        &serde_json::json!({"name": "pool0", "luns": [lun.display().to_string()]}),
    )?;
    Ok((h, lun))
}

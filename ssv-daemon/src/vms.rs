//! Volumes written by other processes on this host (VMMs), and the VMs
//! ssvd runs.
//!
//! An attachment hands a volume to an external writer: ssvd answers with
//! what the writer needs to open it in-process (the VG, its PVs, the
//! chain's layers, the lease and lockd's socket) and records it, so that
//! neither a session nor a second attachment opens the volume meanwhile.
//! The writer takes the volume's lease itself (lockd then fences the
//! writer's process, not ssvd), grows its top LV through
//! `POST /v1/volumes/{id}/grow`, and for an online snapshot holds its I/O
//! and asks `POST /v1/volumes/{id}/attach/snapshot`: ssvd makes the new top
//! layer while the writer holds the lease here, and the writer reopens.

use crate::host::{lock, Host};
use crate::leases::slot_location;
use crate::model::SnapshotInfo;
use crate::snapshots::CreateSnapshot;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct AttachRequest {
    /// What writes the volume, e.g. `vmm` (for status and events).
    pub writer: String,
    /// The writer's process: its lease holder in lockd.
    pub pid: u32,
    /// Reads only: the writer takes the lease shared.
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttachedPv {
    /// The LUN's path or URI, as the pool records it.
    pub path: String,
    /// The PV's LVM UUID.
    pub uuid: String,
    /// For an iSCSI LUN: how the writer logs in to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<crate::luns::IscsiAccess>,
}

/// A lease as lockd names it (`LOCKSPACE:RESOURCE:PATH:OFFSET`).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct LeaseSpec {
    pub lockspace: String,
    pub resource: String,
    pub path: String,
    pub offset: u64,
}

impl From<&LeaseSpec> for lockd::proto::ResourceSpec {
    fn from(l: &LeaseSpec) -> Self {
        lockd::proto::ResourceSpec {
            lockspace: l.lockspace.clone(),
            resource: l.resource.clone(),
            path: l.path.clone(),
            offset: l.offset,
        }
    }
}

/// What an external writer needs to open a volume itself.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Attachment {
    pub volume: String,
    pub name: String,
    /// The pool, which is the VG's name.
    pub pool: String,
    pub writer: String,
    pub pid: u32,
    pub read_only: bool,
    /// The top layer's LV (written), then the layers below, top first.
    pub layers: Vec<String>,
    pub pvs: Vec<AttachedPv>,
    /// The volume's lease: the writer holds it (exclusive, or shared when
    /// read-only) for as long as it has the volume open.
    pub lease: LeaseSpec,
    /// lockd's socket on this host.
    pub lockd_socket: String,
    /// The pool's growth policy.
    pub threshold_percent: u8,
    pub chunk: u64,
}

/// What an online snapshot answers: the snapshot and the chain to reopen.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AttachedSnapshot {
    pub snapshot: SnapshotInfo,
    /// The volume's layers now, the new top first.
    pub layers: Vec<String>,
}

/// An attachment and whether its writer is holding its I/O for a layer
/// change right now.
pub(crate) struct Attached {
    pub info: Attachment,
    pub quiesced: bool,
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

impl Host {
    /// Hands the volume to an external writer (see the module's text).
    pub fn attach(&self, volume: &str, req: &AttachRequest) -> Result<Attachment> {
        if req.pid == 0 || !alive(req.pid) {
            return Err(Error::Invalid(format!(
                "process {} does not exist; attach from the writer's own process",
                req.pid
            )));
        }
        let (pool, rec) = self.resolve(volume)?;
        if lock(&self.sessions).contains_key(&rec.id) {
            return Err(Error::Conflict(format!(
                "volume {} is open in a session on this host; close it first (`ssvctl volume close {}`)",
                rec.id, rec.id
            )));
        }
        let _busy = self.mark_busy(&rec.id)?;
        {
            let mut att = lock(&self.attachments);
            if let Some(a) = att.get(&rec.id) {
                if a.info.pid == req.pid {
                    return Ok(a.info.clone());
                }
                if alive(a.info.pid) {
                    return Err(Error::Conflict(format!(
                        "volume {} is attached to {} (pid {}); detach it there first",
                        rec.id, a.info.writer, a.info.pid
                    )));
                }
                log::warn!(
                    "volume {}: dropping the attachment of pid {}, which is gone",
                    rec.id,
                    a.info.pid
                );
                att.remove(&rec.id);
                self.save_attachments(&att);
            }
        }
        let vg = pool.refresh()?;
        self.locks.join(&vg)?;
        let (path, offset) = slot_location(&vg, rec.lease_slot)?;
        let policy = self.growth(&pool).0;
        let info = Attachment {
            volume: rec.id.clone(),
            name: rec.name.clone(),
            pool: pool.name().to_string(),
            writer: req.writer.clone(),
            pid: req.pid,
            read_only: req.read_only,
            layers: rec.layers.iter().map(|l| l.lv.clone()).collect(),
            pvs: vg
                .pvs
                .iter()
                .map(|p| {
                    let path = p.device.clone().unwrap_or_default();
                    AttachedPv {
                        iscsi: crate::luns::iscsi_access(&path),
                        path,
                        uuid: p.id.to_string(),
                    }
                })
                .collect(),
            lease: LeaseSpec {
                lockspace: vg.name.clone(),
                resource: rec.id.clone(),
                path,
                offset,
            },
            lockd_socket: self.config.lockd.socket.display().to_string(),
            threshold_percent: policy.threshold_percent,
            chunk: policy.chunk,
        };
        self.change_attachments(|att| {
            att.insert(
                rec.id.clone(),
                Attached {
                    info: info.clone(),
                    quiesced: false,
                },
            )
        });
        self.events.emit(
            "volume.attached",
            Some(pool.name()),
            Some(&rec.id),
            format!(
                "volume {} attached to {} (pid {}){}",
                rec.id,
                req.writer,
                req.pid,
                if req.read_only { ", read-only" } else { "" }
            ),
        );
        Ok(info)
    }

    /// Ends an attachment (the writer closed the volume, or exited).
    pub fn detach(&self, volume: &str) -> Result<()> {
        let (pool, rec) = self.resolve(volume)?;
        let Some(a) = self.change_attachments(|att| att.remove(&rec.id)) else {
            return Err(Error::NotFound(format!(
                "volume {} is not attached on this host",
                rec.id
            )));
        };
        self.events.emit(
            "volume.detached",
            Some(pool.name()),
            Some(&rec.id),
            format!(
                "volume {} detached from {} (pid {})",
                rec.id, a.info.writer, a.info.pid
            ),
        );
        Ok(())
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        let mut v: Vec<Attachment> = lock(&self.attachments)
            .values()
            .map(|a| a.info.clone())
            .collect();
        v.sort_by(|a, b| a.volume.cmp(&b.volume));
        v
    }

    /// An online snapshot for the attached writer, which has flushed and
    /// holds its I/O: the lease must be held by the writer's process here.
    /// The writer reopens the volume on the returned top afterwards.
    pub fn attached_snapshot(
        &self,
        volume: &str,
        pid: u32,
        req: &CreateSnapshot,
    ) -> Result<AttachedSnapshot> {
        let (_, rec) = self.resolve(volume)?;
        {
            let mut att = lock(&self.attachments);
            let a = att.get_mut(&rec.id).ok_or_else(|| {
                Error::Conflict(format!("volume {} is not attached on this host", rec.id))
            })?;
            if a.info.pid != pid || a.info.read_only {
                return Err(Error::Conflict(format!(
                    "volume {} is attached to pid {}{}: only its writer snapshots it this way",
                    rec.id,
                    a.info.pid,
                    if a.info.read_only { " read-only" } else { "" }
                )));
            }
            let held = self.locks.status()?.leases.iter().any(|l| {
                l.spec.resource == rec.id
                    && l.spec.lockspace == a.info.pool
                    && l.pid == pid
                    && !l.shared
            });
            if !held {
                return Err(Error::Conflict(format!(
                    "pid {pid} does not hold the lease of volume {} on this host",
                    rec.id
                )));
            }
            a.quiesced = true;
        }
        let out = self.create_snapshot(&rec.id, req);
        if let Some(a) = lock(&self.attachments).get_mut(&rec.id) {
            a.quiesced = false;
        }
        let (snapshot, _) = out?;
        let (_, rec) = self.find(&rec.id)?;
        let layers: Vec<String> = rec.layers.iter().map(|l| l.lv.clone()).collect();
        self.change_attachments(|att| {
            if let Some(a) = att.get_mut(&rec.id) {
                a.info.layers = layers.clone();
            }
        });
        Ok(AttachedSnapshot { snapshot, layers })
    }

    /// Whether the volume's attached writer holds its I/O for a layer
    /// change; an error while it is attached and not holding it.
    pub(crate) fn attached_writer_quiesced(&self, id: &str) -> Result<bool> {
        match lock(&self.attachments).get(id) {
            None => Ok(false),
            Some(a) if a.quiesced => Ok(true),
            Some(a) => Err(Error::Conflict(format!(
                "volume {id} is attached to {} (pid {}); change it through its writer (e.g. `ssvctl vm snapshot`) or detach it first",
                a.info.writer, a.info.pid
            ))),
        }
    }

    pub(crate) fn is_attached(&self, id: &str) -> bool {
        lock(&self.attachments).contains_key(id)
    }
}

// ------------------------------------------------------------------ VMs

/// `POST /v1/vms`: a VM ssvd runs as an `ssv-vmm` process.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateVm {
    /// Letters, digits, '-', '_' and '.'.
    pub name: String,
    /// Guest RAM in MiB (default 256).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// vCPUs (default 1).
    #[serde(default)]
    pub vcpus: Option<u8>,
    /// A Linux kernel (bzImage or ELF), with `initrd` and `cmdline`.
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initrd: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Or a flat 16-bit image started at 0:0x7c00.
    #[serde(default)]
    pub realmode: Option<String>,
    /// Volumes by id or name, in the order the guest sees them; a `:ro`
    /// suffix attaches one read-only.
    #[serde(default)]
    pub disks: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VmInfo {
    pub name: String,
    pub pid: u32,
    /// `running` while the process lives, `exited` after.
    pub state: String,
    /// Volume ids, in the guest's order.
    pub disks: Vec<String>,
    /// The VMM's control socket.
    pub api: String,
    /// The serial console's log.
    pub console: String,
    pub started_ms: u64,
    /// How the process ended, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
    /// The VMM's own status (`GET /v1/vms/{name}` only, while running).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

pub(crate) struct VmProc {
    info: std::sync::Mutex<VmInfo>,
}

impl VmProc {
    pub(crate) fn new(info: VmInfo) -> VmProc {
        VmProc {
            info: std::sync::Mutex::new(info),
        }
    }
}

fn check_vm_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "VM name {name:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One request to a VMM's control socket; its reply's `result`.
pub fn vmm_call(
    api: &std::path::Path,
    request: serde_json::Value,
    timeout: std::time::Duration,
) -> Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let unavailable =
        |e: std::io::Error| Error::Unavailable(format!("the VMM's API at {}: {e}", api.display()));
    let mut s = std::os::unix::net::UnixStream::connect(api).map_err(unavailable)?;
    s.set_read_timeout(Some(timeout)).map_err(unavailable)?;
    let mut line = request.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(unavailable)?;
    let mut reply = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut reply)
        .map_err(unavailable)?;
    let v: serde_json::Value = serde_json::from_str(&reply)
        .map_err(|e| Error::Unavailable(format!("the VMM answered {reply:?}: {e}")))?;
    if v["ok"] == true {
        Ok(v["result"].clone())
    } else {
        Err(Error::Conflict(format!(
            "the VMM refused: {}",
            v["error"].as_str().unwrap_or("no reason given")
        )))
    }
}

impl Host {
    fn vmm_binary(&self) -> Result<std::path::PathBuf> {
        if let Some(p) = &self.config.vm.vmm {
            return Ok(p.clone());
        }
        let exe = std::env::current_exe()
            .map_err(|e| Error::Storage(format!("finding ssvd's own binary: {e}")))?;
        Ok(exe.with_file_name("ssv-vmm"))
    }

    pub(crate) fn vm_dir(&self, name: &str) -> std::path::PathBuf {
        self.config.state_dir.join("vms").join(name)
    }

    /// Starts a VM: an `ssv-vmm` process with the volumes as disks, its
    /// API socket and console log under the state directory.
    pub fn start_vm(self: &std::sync::Arc<Self>, req: &CreateVm) -> Result<VmInfo> {
        use std::os::unix::fs::DirBuilderExt;
        check_vm_name(&req.name)?;
        if let Some(v) = lock(&self.vms).get(&req.name) {
            if lock(&v.info).exit.is_none() {
                return Err(Error::Conflict(format!("VM {} is running", req.name)));
            }
        }
        let mut disk_ids = Vec::new();
        let mut disk_args = Vec::new();
        for d in &req.disks {
            let (vol, ro) = match d.strip_suffix(":ro") {
                Some(v) => (v, true),
                None => (d.as_str(), false),
            };
            let (_, rec) = self.resolve(vol)?;
            disk_args.push(format!(
                "ssvd={},volume={}{}",
                self.config.api.socket.display(),
                rec.id,
                if ro { ",readonly" } else { "" }
            ));
            disk_ids.push(rec.id);
        }
        let dir = self.vm_dir(&req.name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Storage(format!("creating {}: {e}", dir.display())))?;
        let (api, console) = (dir.join("api.sock"), dir.join("console.log"));
        let bin = self.vmm_binary()?;
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg("--memory")
            .arg(req.memory_mib.unwrap_or(256).to_string())
            .arg("--vcpus")
            .arg(req.vcpus.unwrap_or(1).to_string())
            .arg("--serial")
            .arg(&console)
            .arg("--api")
            .arg(&api);
        match (&req.realmode, &req.kernel) {
            (Some(img), None) => {
                cmd.arg("--realmode").arg(img);
            }
            (None, Some(k)) => {
                cmd.arg("--kernel").arg(k);
                if let Some(i) = &req.initrd {
                    cmd.arg("--initrd").arg(i);
                }
                if let Some(c) = &req.cmdline {
                    cmd.arg("--cmdline").arg(c);
                }
            }
            _ => {
                return Err(Error::Invalid(
                    "a VM boots either a `kernel` or a `realmode` image".into(),
                ))
            }
        }
        for d in &disk_args {
            cmd.arg("--ssvd-disk").arg(d);
        }
        let log = std::fs::File::create(dir.join("vmm.log"))
            .map_err(|e| Error::Storage(format!("creating the VMM's log: {e}")))?;
        // Its own process group: a signal to ssvd's group (Ctrl-C in a
        // terminal) does not reach the VMs, which outlive an ssvd restart.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Unavailable(format!(
                "starting {}: {e} (set [vm] vmm in the configuration)",
                bin.display()
            ))
        })?;
        let info = VmInfo {
            name: req.name.clone(),
            pid: child.id(),
            state: "running".into(),
            disks: disk_ids,
            api: api.display().to_string(),
            console: console.display().to_string(),
            started_ms: now_ms(),
            exit: None,
            status: None,
        };
        let vm = std::sync::Arc::new(VmProc::new(info.clone()));
        lock(&self.vms).insert(req.name.clone(), vm.clone());
        self.save_vm(&info);
        self.events.emit(
            "vm.started",
            None,
            None,
            format!("VM {} started (pid {})", req.name, info.pid),
        );
        let host = self.clone();
        let (name, apip) = (req.name.clone(), api.clone());
        std::thread::Builder::new()
            .name("vm-watch".into())
            .spawn(move || {
                host.forward_events(&name, &apip, child.id());
                let status = child.wait();
                host.vm_exited(&name, &vm, status);
            })
            .map_err(|e| Error::Storage(format!("cannot watch the VM's process: {e}")))?;
        Ok(info)
    }

    /// Forwards the VMM's events into ssvd's (`vm.<event>`) until its API
    /// closes; returns once the stream ends or never opens.
    pub(crate) fn forward_events(&self, name: &str, api: &std::path::Path, pid: u32) {
        use std::io::{BufRead, Write};
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut conn = loop {
            if let Ok(c) = std::os::unix::net::UnixStream::connect(api) {
                break c;
            }
            let gone = !alive(pid) || std::time::Instant::now() > until;
            if gone || lock(&self.vms).get(name).is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        if conn
            .write_all(b"{\"id\":0,\"op\":\"subscribe\"}\n")
            .is_err()
        {
            return;
        }
        let reader = std::io::BufReader::new(conn);
        for line in reader.lines().skip(1) {
            let Ok(line) = line else { return };
            let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let kind = e["event"].as_str().unwrap_or("event");
            self.events.emit(
                &format!("vm.{kind}"),
                None,
                e["disk"].as_str(),
                format!("VM {name}: {e}"),
            );
        }
    }

    fn vm_exited(
        &self,
        name: &str,
        vm: &VmProc,
        status: std::io::Result<std::process::ExitStatus>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let exit = match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(sig)) => format!("killed by signal {sig}"),
                _ => s.to_string(),
            },
            Err(e) => format!("unknown ({e})"),
        };
        self.vm_ended(name, vm, exit);
    }

    /// Records the end of a VM's process.
    pub(crate) fn vm_ended(&self, name: &str, vm: &VmProc, exit: String) {
        let (pid, info) = {
            let mut info = lock(&vm.info);
            info.state = "exited".into();
            info.exit = Some(exit.clone());
            (info.pid, info.clone())
        };
        self.save_vm(&info);
        // A VMM that died did not detach: its attachments end here (its
        // lockd connection closed with it, which released the leases).
        self.change_attachments(|att| att.retain(|_, a| a.info.pid != pid));
        self.events.emit(
            "vm.exited",
            None,
            None,
            format!("VM {name} (pid {pid}) exited: {exit}"),
        );
    }

    pub fn vms(&self) -> Vec<VmInfo> {
        let mut v: Vec<VmInfo> = lock(&self.vms)
            .values()
            .map(|p| lock(&p.info).clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn vm(&self, name: &str) -> Result<VmInfo> {
        lock(&self.vms)
            .get(name)
            .map(|p| lock(&p.info).clone())
            .ok_or_else(|| Error::NotFound(format!("no VM {name} on this host (`ssvctl vm list`)")))
    }

    fn running_vm(&self, name: &str) -> Result<VmInfo> {
        let v = self.vm(name)?;
        if v.exit.is_some() {
            return Err(Error::Conflict(format!(
                "VM {name} is not running ({})",
                v.exit.unwrap_or_default()
            )));
        }
        Ok(v)
    }

    /// The VM, with the VMM's own status while it runs.
    pub fn show_vm(&self, name: &str) -> Result<VmInfo> {
        let mut v = self.vm(name)?;
        if v.exit.is_none() {
            v.status = vmm_call(
                std::path::Path::new(&v.api),
                serde_json::json!({"id": 1, "op": "status"}),
                std::time::Duration::from_secs(10),
            )
            .ok();
        }
        Ok(v)
    }

    /// Asks the VM to shut down; kills it after the stop timeout.
    pub fn stop_vm(&self, name: &str) -> Result<VmInfo> {
        let v = self.vm(name)?;
        if v.exit.is_none() {
            let asked = vmm_call(
                std::path::Path::new(&v.api),
                serde_json::json!({"id": 1, "op": "shutdown"}),
                std::time::Duration::from_secs(5),
            );
            if let Err(e) = &asked {
                log::warn!("VM {name}: shutdown through its API: {e}; killing it");
            }
            let wait =
                std::time::Duration::from_secs(self.config.vm.stop_timeout_secs.unwrap_or(10));
            let until = std::time::Instant::now()
                + if asked.is_ok() {
                    wait
                } else {
                    Default::default()
                };
            while std::time::Instant::now() < until && self.vm(name)?.exit.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if self.vm(name)?.exit.is_none() && crate::restart::is_vmm(v.pid, &v.api) {
                // SAFETY: kill of a pid whose command line is this VM's
                // VMM; no exit is recorded, so its watcher still waits.
                unsafe { libc::kill(v.pid as i32, libc::SIGKILL) };
                let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while std::time::Instant::now() < until && self.vm(name)?.exit.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        }
        self.vm(name)
    }

    /// Forgets an exited VM (its console log and directory go too).
    pub fn remove_vm(&self, name: &str) -> Result<()> {
        self.running_vm(name)
            .err()
            .ok_or_else(|| Error::Conflict(format!("VM {name} is running; stop it first")))?;
        self.vm(name)?;
        lock(&self.vms).remove(name);
        let _ = std::fs::remove_dir_all(self.vm_dir(name));
        Ok(())
    }

    /// Pauses (`pause`) or resumes the VM through its VMM; its state after
    /// (the VMM answers both with it).
    pub fn pause_vm(&self, name: &str, pause: bool) -> Result<serde_json::Value> {
        let v = self.running_vm(name)?;
        let op = if pause { "pause" } else { "resume" };
        vmm_call(
            std::path::Path::new(&v.api),
            serde_json::json!({"id": 1, "op": op}),
            std::time::Duration::from_secs(10),
        )
    }

    /// An online snapshot of one of the VM's disks, through its VMM.
    pub fn snapshot_vm(
        &self,
        name: &str,
        disk: Option<&str>,
        snap: &str,
    ) -> Result<serde_json::Value> {
        let v = self.running_vm(name)?;
        let disk = match disk {
            Some(d) => self.resolve(d)?.1.id,
            None => match v.disks.as_slice() {
                [one] => one.clone(),
                [] => return Err(Error::Invalid(format!("VM {name} has no disk"))),
                _ => {
                    return Err(Error::Invalid(format!(
                        "VM {name} has several disks ({}): say which",
                        v.disks.join(", ")
                    )))
                }
            },
        };
        vmm_call(
            std::path::Path::new(&v.api),
            serde_json::json!({"id": 1, "op": "snapshot", "disk": disk, "name": snap}),
            std::time::Duration::from_secs(120),
        )
    }

    /// The console log's path.
    pub fn vm_console(&self, name: &str) -> Result<std::path::PathBuf> {
        Ok(self.vm(name)?.console.into())
    }

    /// Stops every VM (shutdown of ssvd with `[vm] stop_with_ssvd`).
    pub fn stop_all_vms(&self) {
        for v in self.vms() {
            if v.exit.is_none() {
                if let Err(e) = self.stop_vm(&v.name) {
                    log::warn!("stopping VM {}: {e}", v.name);
                }
            }
        }
    }
}

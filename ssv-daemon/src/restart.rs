//! What outlives ssvd: VMs and the volumes attached to them.
//!
//! A restart of ssvd (an upgrade, a crash) must not stop the VMs it runs,
//! as a restart of libvirtd or VDSM does not. VMMs run in their own process
//! group and hold their leases through lockd, not ssvd; while ssvd is away
//! their growth requests wait for it (`vmm::disks`). ssvd keeps what it
//! knows of them under its state directory, rewritten on every change:
//! `vms/NAME/vm.json` (the VM's [`VmInfo`]) and `attachments.json` (every
//! [`Attachment`]). At start it adopts the VMMs that still run, and the
//! attachments whose writer still holds the volume's lease in lockd.

use crate::host::{lock, Host};
use crate::vms::{Attached, Attachment, VmInfo, VmProc};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Replaces `path` with `value` as JSON: written beside it, then renamed,
/// so a crash leaves the old file or the new one.
fn save_json(path: &Path, value: &impl serde::Serialize) {
    let tmp = path.with_extension("json.new");
    let r = serde_json::to_vec_pretty(value)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        log::warn!(
            "saving {}: {e}; a restart of ssvd will not know it",
            path.display()
        );
    }
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read(path).ok()?;
    match serde_json::from_slice(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!("ignoring {}: {e}", path.display());
            None
        }
    }
}

/// Whether `pid` is the VMM serving `api`: its command line names that
/// socket, so a pid reused by another process is not taken for it.
pub(crate) fn is_vmm(pid: u32, api: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == api.as_bytes()))
}

/// Blocks until process `pid` (not a child of ours) has ended.
fn wait_gone(pid: u32) {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return; // already gone
        }
        // No pidfds (a kernel before 5.3): look now and then.
        while Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        return;
    }
    // SAFETY: the fd was just returned to us and is owned here only.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // A pidfd turns readable when its process ends.
    // SAFETY: one valid pollfd, for the length given.
    while unsafe { libc::poll(&mut p, 1, -1) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
}

impl Host {
    fn attachments_file(&self) -> PathBuf {
        self.config.state_dir.join("attachments.json")
    }

    /// Records the attachments as they are now (call with them locked).
    pub(crate) fn save_attachments(&self, att: &HashMap<String, Attached>) {
        let infos: Vec<&Attachment> = att.values().map(|a| &a.info).collect();
        save_json(&self.attachments_file(), &infos);
    }

    /// Changes the attachments with `f` and records them, under one lock.
    pub(crate) fn change_attachments<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, Attached>) -> T,
    ) -> T {
        let mut att = lock(&self.attachments);
        let out = f(&mut att);
        self.save_attachments(&att);
        out
    }

    pub(crate) fn save_vm(&self, info: &VmInfo) {
        let dir = self.vm_dir(&info.name);
        if dir.is_dir() {
            save_json(&dir.join("vm.json"), info);
        }
    }

    /// At start: takes over the attachments and VMs that outlived the last
    /// ssvd. Call once the pools are attached.
    pub fn adopt(self: &Arc<Self>) {
        self.adopt_attachments();
        self.adopt_vms();
    }

    fn adopt_attachments(&self) {
        let Some(saved) = load_json::<Vec<Attachment>>(&self.attachments_file()) else {
            return;
        };
        let held = match self.locks.status() {
            Ok(s) => s.leases,
            Err(e) => {
                log::warn!("lockd's leases: {e}; attachments of the last ssvd are dropped");
                Vec::new()
            }
        };
        self.change_attachments(|att| {
            for a in saved {
                let holds = held.iter().any(|l| {
                    l.pid == a.pid
                        && l.spec.resource == a.volume
                        && l.spec.lockspace == a.pool
                        && l.shared == a.read_only
                });
                if holds {
                    log::info!(
                        "volume {} is still attached to {} (pid {})",
                        a.volume,
                        a.writer,
                        a.pid
                    );
                    att.insert(
                        a.volume.clone(),
                        Attached {
                            info: a,
                            quiesced: false,
                        },
                    );
                } else {
                    log::info!(
                        "volume {}: its writer {} (pid {}) ended while ssvd was away",
                        a.volume,
                        a.writer,
                        a.pid
                    );
                }
            }
        });
    }

    fn adopt_vms(self: &Arc<Self>) {
        let Ok(dirs) = std::fs::read_dir(self.config.state_dir.join("vms")) else {
            return;
        };
        for d in dirs.flatten() {
            let Some(mut info) = load_json::<VmInfo>(&d.path().join("vm.json")) else {
                continue;
            };
            info.status = None;
            let adopt = info.exit.is_none() && is_vmm(info.pid, &info.api);
            if info.exit.is_none() && !adopt {
                info.state = "exited".into();
                info.exit = Some("ended while ssvd was not running".into());
                self.save_vm(&info);
                self.events.emit(
                    "vm.exited",
                    None,
                    None,
                    format!(
                        "VM {} (pid {}) ended while ssvd was away",
                        info.name, info.pid
                    ),
                );
            }
            let vm = Arc::new(VmProc::new(info.clone()));
            lock(&self.vms).insert(info.name.clone(), vm.clone());
            if !adopt {
                continue;
            }
            log::info!("VM {} (pid {}) still runs: adopted", info.name, info.pid);
            let host = self.clone();
            let spawned = std::thread::Builder::new()
                .name("vm-watch".into())
                .spawn(move || {
                    host.forward_events(&info.name, Path::new(&info.api), info.pid);
                    wait_gone(info.pid);
                    host.vm_ended(
                        &info.name,
                        &vm,
                        "ended; its exit status is not known (ssvd restarted while it ran)".into(),
                    );
                });
            if let Err(e) = spawned {
                log::error!("cannot watch an adopted VM: {e}");
            }
        }
    }
}

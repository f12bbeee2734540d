//! The VM's control API: what the VM and its disks let an operator (ssvd)
//! do, and the events they report.
//!
//! - [`Controller`]: the operations, over the [`VmControl`] the VM type
//!   implements and the [`DiskControl`] each disk implements, so the API
//!   is tested with test implementations of both.
//! - [`protocol`]: one JSON request per line, one reply per request.
//! - [`server`]: the Unix socket (mode 0600).
//! - [`events`]: `paused`, `resumed`, `disk.grown`, `disk.no_space`,
//!   `disk.space_back`, `lease.lost`, `snapshot.created`, `shutdown`.
//!
//! The VM pauses for two reasons, an operator's (`user`) and a full pool
//! (`enospc`); it runs again once no reason is left, so an operator's
//! resume does not restart a VM whose disk has no space, and space coming
//! back does not resume a VM the operator paused.

pub mod events;
pub mod protocol;
pub mod server;
pub mod vm;

pub use events::{kind, EventHub};
pub use server::ApiServer;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

/// What the API needs of the VM. Implemented by the VM type (its vCPU
/// threads), and by tests.
pub trait VmControl: Send + Sync {
    fn vcpus(&self) -> u32;
    fn memory_bytes(&self) -> u64;
    /// Stops every vCPU; returns once none runs guest code.
    fn pause_vcpus(&self) -> Result<(), String>;
    fn resume_vcpus(&self) -> Result<(), String>;
    /// Ends the VM; the process exits once its threads have stopped.
    fn shutdown(&self) -> Result<(), String>;
}

/// What the API needs of a disk.
pub trait DiskControl: Send + Sync {
    /// The disk's name in the API (its volume id, or as configured).
    fn id(&self) -> &str;
    fn status(&self) -> DiskStatus;
    /// An online snapshot: flush, hold the disk's I/O, have ssvd make the
    /// new top layer, switch to it, release the I/O. Returns the snapshot
    /// as ssvd describes it.
    fn snapshot(&self, name: &str) -> Result<Value, String>;
}

/// A disk's allocation and growth.
#[derive(Clone, Debug, Serialize)]
pub struct DiskStatus {
    pub id: String,
    pub read_only: bool,
    /// The guest's size of the disk, in bytes.
    pub virtual_size: u64,
    /// The top layer's LV, as mapped here.
    pub lv_size: u64,
    /// Highest allocated byte of the top layer.
    pub allocated_end: u64,
    /// Layer LVs, top first.
    pub layers: Vec<String>,
    /// Its lease was lost: no I/O reaches it any more.
    pub fenced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<ssvd::host::GrowthInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// An operator asked.
    User,
    /// A disk's pool is full; the VM resumes when space is back.
    Enospc,
}

pub struct Controller {
    vm: Arc<dyn VmControl>,
    disks: Vec<Arc<dyn DiskControl>>,
    pub events: Arc<EventHub>,
    /// Why the VM is paused; empty while it runs.
    paused: Mutex<BTreeSet<PauseReason>>,
}

impl Controller {
    pub fn new(
        vm: Arc<dyn VmControl>,
        disks: Vec<Arc<dyn DiskControl>>,
        events: Arc<EventHub>,
    ) -> Controller {
        Controller {
            vm,
            disks,
            events,
            paused: Mutex::default(),
        }
    }

    fn reasons(&self) -> std::sync::MutexGuard<'_, BTreeSet<PauseReason>> {
        self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a reason to be paused; the vCPUs stop if they ran.
    pub fn pause(&self, why: PauseReason) -> Result<(), String> {
        let mut r = self.reasons();
        if r.contains(&why) {
            return Ok(());
        }
        if r.is_empty() {
            self.vm.pause_vcpus()?;
        }
        r.insert(why);
        let reasons: Vec<_> = r.iter().copied().collect();
        drop(r);
        self.events
            .emit(kind::PAUSED, json!({"reason": why, "reasons": reasons}));
        Ok(())
    }

    /// Drops a reason to be paused; the vCPUs run again once none is left.
    pub fn resume(&self, why: PauseReason) -> Result<(), String> {
        let mut r = self.reasons();
        if !r.contains(&why) {
            return Ok(());
        }
        if r.len() == 1 {
            self.vm.resume_vcpus()?;
        }
        r.remove(&why);
        let still: Vec<_> = r.iter().copied().collect();
        drop(r);
        if still.is_empty() {
            self.events.emit(kind::RESUMED, json!({"reason": why}));
        }
        Ok(())
    }

    /// A disk's pool filled up: its I/O is held and the VM pauses.
    pub fn disk_no_space(&self, disk: &str, error: &str) {
        self.events
            .emit(kind::DISK_NO_SPACE, json!({"disk": disk, "error": error}));
        if let Err(e) = self.pause(PauseReason::Enospc) {
            log::error!("pausing the VM for disk {disk} without space: {e}");
        }
    }

    /// Space came back for a disk: held I/O went through; the VM resumes
    /// unless something else keeps it paused.
    pub fn disk_space_back(&self, disk: &str) {
        self.events
            .emit(kind::DISK_SPACE_BACK, json!({"disk": disk}));
        if let Err(e) = self.resume(PauseReason::Enospc) {
            log::error!("resuming the VM after space came back for disk {disk}: {e}");
        }
    }

    /// `running`, or `paused` with the reasons.
    pub fn state(&self) -> Value {
        let r = self.reasons();
        if r.is_empty() {
            json!({"state": "running"})
        } else {
            let reasons: Vec<_> = r.iter().copied().collect();
            json!({"state": "paused", "reason": reasons[0], "reasons": reasons})
        }
    }

    pub fn disks(&self) -> Vec<DiskStatus> {
        self.disks.iter().map(|d| d.status()).collect()
    }

    pub fn status(&self) -> Value {
        let mut s = self.state();
        s["vcpus"] = json!(self.vm.vcpus());
        s["memory"] = json!(self.vm.memory_bytes());
        s["disks"] = json!(self.disks());
        s
    }

    pub fn shutdown(&self) -> Result<(), String> {
        self.events
            .emit(kind::SHUTDOWN, json!({"reason": "requested"}));
        self.vm.shutdown()
    }

    pub fn snapshot(&self, disk: &str, name: &str) -> Result<Value, String> {
        let d = self.disks.iter().find(|d| d.id() == disk).ok_or_else(|| {
            format!(
                "no disk {disk:?} (disks: {})",
                self.disks
                    .iter()
                    .map(|d| d.id().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let snap = d.snapshot(name)?;
        self.events.emit(
            kind::SNAPSHOT_CREATED,
            json!({"disk": disk, "name": name, "snapshot": snap}),
        );
        Ok(snap)
    }
}

/// Serves the control API of a running VM and its ssvd disks on `path`;
/// from now on the disks' space events pause and resume the VM.
pub fn serve_vm(
    path: &std::path::Path,
    running: &Arc<crate::vm::RunningVm>,
    vcpus: u8,
    memory: u64,
    disks: &[Arc<crate::disks::SsvdDisk>],
    hub: &Arc<EventHub>,
    space: &vm::SpaceEvents,
) -> std::io::Result<ApiServer> {
    let control = vm::RunningVmControl::new(running.clone(), u32::from(vcpus), memory);
    let disks = disks
        .iter()
        .map(|d| d.clone() as Arc<dyn DiskControl>)
        .collect();
    let ctl = Arc::new(Controller::new(Arc::new(control), disks, hub.clone()));
    space.bind(ctl.clone());
    ApiServer::start(path, ctl)
}

#[cfg(test)]
pub(crate) mod tests;

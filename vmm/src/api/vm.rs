//! The API over the real VM: [`VmControl`] for a running VM, and the
//! block devices' space events routed to the [`Controller`] (which pauses
//! the VM while a pool is full).

use super::{Controller, EventHub, VmControl};
use crate::devices::virtio::block::DiskEvents;
use crate::vm::{RunningVm, VmExit};
use serde_json::json;
use std::sync::{Arc, OnceLock};

/// A running VM as the API sees it.
pub struct RunningVmControl {
    vm: Arc<RunningVm>,
    vcpus: u32,
    memory: u64,
}

impl RunningVmControl {
    pub fn new(vm: Arc<RunningVm>, vcpus: u32, memory: u64) -> RunningVmControl {
        RunningVmControl { vm, vcpus, memory }
    }
}

impl VmControl for RunningVmControl {
    fn vcpus(&self) -> u32 {
        self.vcpus
    }
    fn memory_bytes(&self) -> u64 {
        self.memory
    }
    fn pause_vcpus(&self) -> Result<(), String> {
        self.vm.pause().map_err(|e| e.to_string())
    }
    fn resume_vcpus(&self) -> Result<(), String> {
        self.vm.resume().map_err(|e| e.to_string())
    }
    fn shutdown(&self) -> Result<(), String> {
        self.vm.control().request_exit(VmExit::Stopped);
        Ok(())
    }
}

/// Where block devices report a full pool. Devices exist before the
/// controller (which needs the running VM), so it is bound later; until
/// then the events only go to subscribers.
#[derive(Default)]
pub struct SpaceEvents {
    hub: Arc<EventHub>,
    controller: OnceLock<Arc<Controller>>,
}

impl SpaceEvents {
    pub fn new(hub: Arc<EventHub>) -> SpaceEvents {
        SpaceEvents {
            hub,
            controller: OnceLock::new(),
        }
    }

    pub fn bind(&self, ctl: Arc<Controller>) {
        if self.controller.set(ctl).is_err() {
            log::warn!("the disks' space events were bound twice; keeping the first controller");
        }
    }
}

impl DiskEvents for SpaceEvents {
    fn no_space(&self, disk: &str, error: &str) {
        match self.controller.get() {
            Some(c) => c.disk_no_space(disk, error),
            None => self.hub.emit(
                super::kind::DISK_NO_SPACE,
                json!({"disk": disk, "error": error}),
            ),
        }
    }
    fn space_back(&self, disk: &str) {
        match self.controller.get() {
            Some(c) => c.disk_space_back(disk),
            None => self
                .hub
                .emit(super::kind::DISK_SPACE_BACK, json!({"disk": disk})),
        }
    }
}

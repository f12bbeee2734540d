//! ssv's VMM: one process per VM. vCPU threads run the guest under KVM; its
//! disks are thin volumes read and written in-process (no daemon on the data
//! path), so a write that needs the LV to grow completes a little later
//! instead of pausing the VM.
//!
//! - [`memory`]: guest RAM (vm-memory).
//! - [`vm`]: KVM, the device buses, the vCPU threads (pause, resume, stop).
//! - [`devices`]: virtio over PCI (MSI-X) and MMIO, virtio-blk on thin, the
//!   serial console.
//! - [`arch`]: what differs between x86_64 and aarch64 (boot, registers,
//!   interrupt controller, device tree).
//! - [`config`]: what a VM is made of, as the command line gives it.
//! - [`api`]: the control socket (status, pause, snapshot, events);
//!   [`disks`]: thin volumes opened through ssvd; [`leases`]: their lockd
//!   leases, held by this process; [`seccomp`]: per-thread filters;
//!   [`threads`]: threads a vCPU causes, started without its filter.

pub mod api;
pub mod arch;
pub mod config;
pub mod devices;
pub mod disks;
pub mod leases;
pub mod memory;
pub mod seccomp;
pub mod threads;
pub mod vm;

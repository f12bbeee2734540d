//! Devices the guest sees.

pub mod exit_port;
pub mod pci;
pub mod serial;
pub mod virtio;

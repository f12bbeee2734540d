//! Devices the guest sees.

pub mod exit_port;
pub mod serial;
pub mod virtio;

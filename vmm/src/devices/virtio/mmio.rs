//! The virtio-mmio transport (virtio 1.2 §4.2, version 2 registers).

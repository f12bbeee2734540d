//! virtio-blk on thin volumes.

#!/bin/sh
# /sbin/ssv-virtio in inner-guest initramfs images: loads the virtio
# transports and virtio-blk (all modules in Debian's cloud kernels).
# Those kernels lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES: virtio_mmio.device=
# on the command line is ignored, so a VMM announces virtio-mmio devices in
# the device tree (aarch64) or offers virtio-pci.
modprobe virtio_mmio || exit 1
modprobe virtio_pci 2>/dev/null
modprobe virtio_blk

#!/usr/bin/env bash
# Puts Debian's QEMU for ARCH into a lab payload, so the payload can run
# QEMU/KVM inside the lab VM: the binary with its libraries and loader
# (payload-bin.sh), its firmware (x86_64: /usr/share/qemu and
# /usr/share/seabios), and PAYLOAD_DIR/qemu-boot.sh, which boots a kernel
# under KVM with the flags that work nested:
#   sh /payload/qemu-boot.sh KERNEL INITRD [APPEND [EXTRA_QEMU_ARGS...]]
# Usage: scripts/lab/payload-qemu.sh ARCH PAYLOAD_DIR
# x86_64 takes the host's QEMU (lab_host_qemu: installed or unpacked); aarch64
# unpacks qemu-system-arm:arm64 and its arm64 libraries.
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ $# -eq 2 ] || lab_die "usage: payload-qemu.sh ARCH PAYLOAD_DIR"
ARCH=$1
PAYLOAD=$2
lab_arch "$ARCH"
mkdir -p "$PAYLOAD"

case "$ARCH" in
x86_64)
    lab_host_qemu
    if [ -n "${QEMU_ROOT:-}" ]; then
        # The unpacked package, with the host's own libraries for the rest.
        LD_LIBRARY_PATH=$(lab_lib_path "$QEMU_ROOT") \
            "$LAB_SCRIPTS/payload-bin.sh" --sysroot "$QEMU_ROOT" "$PAYLOAD" "$QEMU_ROOT/usr/bin/qemu-system-x86_64" >/dev/null
        share=$QEMU_ROOT/usr/share
    else
        "$LAB_SCRIPTS/payload-bin.sh" "$PAYLOAD" /usr/bin/qemu-system-x86_64 >/dev/null
        share=/usr/share
    fi
    # Debian's QEMU looks for firmware in both (--firmwarepath).
    mkdir -p "$PAYLOAD/sysroot/usr/share"
    cp -rL "$share/qemu" "$share/seabios" "$PAYLOAD/sysroot/usr/share/"
    ;;
aarch64)
    root=$(lab_arm64_qemu_sysroot)
    "$LAB_SCRIPTS/payload-bin.sh" --sysroot "$root" "$PAYLOAD" "$root/usr/bin/qemu-system-aarch64" >/dev/null
    ;;
esac
cp "$LAB_SCRIPTS/qemu-boot.sh" "$PAYLOAD/qemu-boot.sh"

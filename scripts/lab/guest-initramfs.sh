#!/usr/bin/env bash
# Packs an inner-guest initramfs: busybox, the guest virtio modules (under
# /lib/modules/KVER; `/sbin/ssv-virtio` loads them, taking virtio-mmio
# devices from the kernel command line), an init, and optionally a directory
# copied over the root.
# Usage: scripts/lab/guest-initramfs.sh ARCH OUT.cpio.gz [INIT [EXTRA_DIR]]
# INIT defaults to scripts/lab/guest-init.sh. Needs scripts/lab/build.sh ARCH first.
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ $# -ge 2 ] || lab_die "usage: guest-initramfs.sh ARCH OUT.cpio.gz [INIT [EXTRA_DIR]]"
ARCH=$1
OUTFILE=$2
INIT=${3:-$LAB_SCRIPTS/guest-init.sh}
EXTRA=${4:-}
lab_arch "$ARCH"
BUILT=$LAB_DIR/$ARCH
[ -d "$BUILT/guest/modules" ] && [ -x "$BUILT/pkg/bin/busybox" ] ||
    lab_die "$BUILT is not built (run scripts/lab/build.sh $ARCH)"
KVER=$(ls "$BUILT/pkg/lib/modules")

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,lib/modules}
cp "$BUILT/pkg/bin/busybox" "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$INIT" "$root/init"
cp "$LAB_SCRIPTS/guest-virtio.sh" "$root/sbin/ssv-virtio"
chmod 755 "$root/init" "$root/sbin/ssv-virtio"
# The kernel opens /dev/console for init before anything is mounted.
mknod "$root/dev/console" c 5 1
cp -a "$BUILT/guest/modules" "$root/lib/modules/$KVER"
cp "$BUILT/pkg/lib/modules/$KVER/modules.dep" "$root/lib/modules/$KVER/"
[ -n "$EXTRA" ] && cp -a "$EXTRA/." "$root/"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6) >"$OUTFILE.tmp"
mv "$OUTFILE.tmp" "$OUTFILE"

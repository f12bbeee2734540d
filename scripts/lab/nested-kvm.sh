#!/usr/bin/env bash
# Proves nested KVM on ARCH: boots the lab VM with a payload that runs
# Debian's QEMU with -enable-kvm inside it, booting the inner guest (same
# kernel, busybox init) to its init line. Exits 0 when that line appears.
# Usage: scripts/lab/nested-kvm.sh ARCH [TIMEOUT_SECONDS (default 600)]
set -euo pipefail
. "$(dirname "$0")/common.sh"
[ $# -ge 1 ] || lab_die "usage: nested-kvm.sh ARCH [TIMEOUT_SECONDS]"
ARCH=$1
lab_arch "$ARCH"
BUILT=$("$LAB_SCRIPTS/build.sh" "$ARCH")
mkdir -p "$LAB_DIR/runs"
payload=$(mktemp -d "$LAB_DIR/runs/nested-$ARCH.XXXXXX")
trap 'rm -rf "$payload"' EXIT
"$LAB_SCRIPTS/payload-qemu.sh" "$ARCH" "$payload"
cp -r "$BUILT/guest" "$payload/guest"
rm -rf "$payload/guest/modules"
cp "$LAB_SCRIPTS/nested-kvm-run.sh" "$payload/run.sh"
"$LAB_SCRIPTS/run.sh" "$ARCH" "$payload" "${2:-600}"

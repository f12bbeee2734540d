#!/usr/bin/env bash
# Builds the lab VM and the inner guest for one architecture, from Debian
# packages only, into $SSV_LAB_DIR/ARCH (default <repo>/state/lab/ARCH).
# Usage: scripts/lab/build.sh x86_64|aarch64 [--force]
# Prints the state dir on success. Does nothing if already built from the
# current candidate kernel (unless --force).
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ $# -ge 1 ] || lab_die "usage: build.sh x86_64|aarch64 [--force]"
ARCH=$1
FORCE=${2:-}
lab_arch "$ARCH"
OUT=$LAB_DIR/$ARCH
lab_lock

lab_apt_install cpio e2fsprogs gzip binutils
[ "$DEB_ARCH" = arm64 ] && lab_enable_arm64

KPKG=$(lab_kernel_pkg)
[ -n "$KPKG" ] || lab_unavailable "linux-image-$KERNEL_FLAVOUR has no versioned image package in apt sources"
STAMP="$KPKG $(apt-cache policy "$KPKG:$DEB_ARCH" | awk '/Candidate:/ {print $2}') busybox-static:$DEB_ARCH"
if [ "$FORCE" != --force ] && [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$STAMP" ]; then
    echo "$OUT"
    exit 0
fi

lab_need_root "building the lab (device nodes in its initramfs)"
lab_log "building $ARCH lab from $KPKG"
rm -rf "$OUT"
mkdir -p "$OUT/pkg" "$OUT/guest"
for deb in $(lab_fetch "$KPKG:$DEB_ARCH" "busybox-static:$DEB_ARCH"); do
    dpkg-deb -x "$deb" "$OUT/pkg"
done
PKG=$OUT/pkg
KVER=$(ls "$PKG/lib/modules")
[ "$(echo "$KVER" | wc -l)" = 1 ] || lab_die "expected one kernel version in $PKG/lib/modules"
BUSYBOX=$PKG/bin/busybox

# The kernel: x86 ships a bzImage; arm64 ships the raw Image (with the EFI
# stub's PE header in front, which the arm64 boot protocol allows), possibly
# gzipped in other Debian releases.
VMLINUZ=$PKG/boot/vmlinuz-$KVER
if [ "$ARCH" = aarch64 ]; then
    if [ "$(head -c2 "$VMLINUZ" | od -An -tx1 | tr -d ' ')" = 1f8b ]; then
        gzip -dc "$VMLINUZ" >"$OUT/kernel"
    else
        cp "$VMLINUZ" "$OUT/kernel"
    fi
    [ "$(dd if="$OUT/kernel" bs=1 skip=56 count=4 status=none)" = $'ARM\x64' ] ||
        lab_die "$VMLINUZ is not an arm64 Image (no ARM\\x64 magic at 0x38)"
else
    cp "$VMLINUZ" "$OUT/kernel"
fi

# modules.dep for busybox modprobe; the host runs the amd64 busybox for this
# (it only reads the modules' .modinfo, whatever their architecture).
HOST_BUSYBOX=$BUSYBOX
if [ "$DEB_ARCH" != amd64 ]; then
    HOST_BUSYBOX=$LAB_DIR/host/busybox
    if [ ! -x "$HOST_BUSYBOX" ]; then
        tmp=$(mktemp -d)
        dpkg-deb -x "$(DEB_ARCH=amd64 lab_fetch busybox-static:amd64)" "$tmp"
        mkdir -p "$LAB_DIR/host"
        cp "$tmp/bin/busybox" "$HOST_BUSYBOX"
        rm -rf "$tmp"
    fi
fi
"$HOST_BUSYBOX" depmod -b "$PKG" "$KVER"

# Module names (as modprobe spells them) -> the .ko paths they need, deps first.
modules_closure() {
    local dep=$PKG/lib/modules/$KVER/modules.dep
    awk -v want="$*" '
        { sub(/:$/, "", $1); f = $1; n = f; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n)
          deps[n] = ""; for (i = 2; i <= NF; i++) deps[n] = deps[n] " " $i; path[n] = f
          file2name[f] = n }
        function visit(n,   k, a, i) { if (n in seen) return; seen[n] = 1
          k = split(deps[n], a, " "); for (i = k; i >= 1; i--) visit(file2name[a[i]]); print path[n] }
        END { k = split(want, w, " "); for (i = 1; i <= k; i++) {
                m = w[i]; gsub(/-/, "_", m); if (!(m in path)) { print "missing module " m > "/dev/stderr"; exit 1 }
                visit(m) } }' "$dep"
}

# Copies busybox, the named modules (with their deps and modules.dep) and
# an init into a fresh initramfs tree at $1.
initramfs_tree() {
    local root=$1 init=$2
    shift 2
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,lib/modules/"$KVER"}
    cp "$BUSYBOX" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    cp "$init" "$root/init"
    chmod 755 "$root/init"
    mknod "$root/dev/console" c 5 1
    mknod "$root/dev/null" c 1 3
    local ko
    for ko in $(modules_closure "$@"); do
        mkdir -p "$root/lib/modules/$KVER/$(dirname "$ko")"
        cp "$PKG/lib/modules/$KVER/$ko" "$root/lib/modules/$KVER/$ko"
    done
    cp "$PKG/lib/modules/$KVER/modules.dep" "$root/lib/modules/$KVER/"
}

pack_cpio() { (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6) >"$2"; }

# (a) The lab VM: early virtio modules in the initramfs, every module on a
# read-only ext4 disk (modules.img), the payload on a second disk.
EARLY=(virtio_pci virtio_blk)
[ "$ARCH" = x86_64 ] && EARLY+=(kvm_amd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
initramfs_tree "$tmp/lab" "$LAB_SCRIPTS/lab-init.sh" "${EARLY[@]}"
pack_cpio "$tmp/lab" "$OUT/lab-initramfs.cpio.gz"

mods_kib=$(du -sk "$PKG/lib/modules" | cut -f1)
mke2fs -q -t ext4 -L ssvmodules -d "$PKG/lib/modules" "$OUT/modules.img" "$((mods_kib * 5 / 4 + 16384))K" >&2

# (b) The inner guest: the same kernel and a busybox initramfs whose init
# prints a line and powers off; virtio modules are in it for later guests.
GUEST_KERNEL=bzImage
[ "$ARCH" = aarch64 ] && GUEST_KERNEL=Image
cp "$OUT/kernel" "$OUT/guest/$GUEST_KERNEL"
GUEST_MODULES=(virtio_mmio virtio_pci virtio_blk virtio_console)
mkdir -p "$OUT/guest/modules"
for ko in $(modules_closure "${GUEST_MODULES[@]}"); do
    mkdir -p "$OUT/guest/modules/$(dirname "$ko")"
    cp "$PKG/lib/modules/$KVER/$ko" "$OUT/guest/modules/$ko"
done
"$LAB_SCRIPTS/guest-initramfs.sh" "$ARCH" "$OUT/guest/initramfs.cpio.gz"

echo "$KVER" >"$OUT/kver"
echo "$STAMP" >"$OUT/stamp"
lab_log "built $OUT (kernel $KVER)"
echo "$OUT"

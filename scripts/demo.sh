#!/usr/bin/env bash
# The main job on the embedded default: a sparse file as the LUN.
# Formats it as an ssv pool (an LVM2 VG) with ssvadm, carves volumes, grows
# one, tags them, shows what is on disk, and lets stock lvm2 check it.
#   STATE=dir (default ./state) holds the LUN file; it is re-created each run.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${STATE:-$PWD/state}
bash scripts/deps.sh
cargo build --release -q -p tools --bin ssvadm
ssvadm=$PWD/target/release/ssvadm
mkdir -p "$state"
lun=$state/lun0.img
rm -f "$lun"
truncate -s 20G "$lun"
echo "== LUN: $lun (20 GiB sparse file)"
step() { echo "\$ ssvadm $*"; "$ssvadm" "$@"; }
step pv format "$lun"
step vg create pool0 "$lun"
for v in vol-a vol-b vol-c; do
    step lv create "pool0/$v" --size 1g --tag ssv --tag "ssv.name=$v" "$lun"
done
step lv extend pool0/vol-a --size 1g "$lun"
step lv rename pool0/vol-c vol-c2 "$lun"
step lv remove pool0/vol-b "$lun"
step vg tag pool0 --add ssv.pool=demo "$lun"
step inspect "$lun"
if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null && command -v lvm >/dev/null; then
    echo "== stock lvm2 reads the same pool (metadata only: --driverloaded n)"
    loop=$(losetup -f --show "$lun")
    conf=$(mktemp -d)
    trap 'losetup -d "$loop"; rm -rf "$conf"' EXIT
    cat > "$conf/lvm.conf" <<CONF
devices { global_filter = [ "a|^$loop\$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 hints = "none" }
global { locking_dir = "$conf" }
backup { backup = 0 archive = 0 }
CONF
    export LVM_SYSTEM_DIR=$conf LVM_SUPPRESS_FD_WARNINGS=1
    lvm vgs --driverloaded n pool0 2>/dev/null
    lvm lvs --driverloaded n -o lv_name,lv_size,lv_tags,seg_pe_ranges --segments pool0 2>/dev/null
    lvm vgck --driverloaded n pool0 2>/dev/null && echo "vgck pool0: clean"
else
    echo "== (not root, or lvm2/losetup missing: skipping the lvm2 cross-check)"
fi

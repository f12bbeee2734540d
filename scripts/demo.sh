#!/usr/bin/env bash
# The main job on the embedded default: a sparse file as the LUN.
# Formats it as an ssv pool (an LVM2 VG) with ssvadm, carves volumes, grows
# one, tags them; writes a thin volume until its LV grows, snapshots and
# clones it and lets stock qemu-img check the clone in place; shows what is
# on disk and lets stock lvm2 check it; then two lockd hosts share leases
# kept in the pool's ssv_leases LV.
#   STATE=dir (default ./state) holds the LUN file; it is re-created each run.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${STATE:-$PWD/state}
bash scripts/deps.sh
cargo build --release -q -p tools --bin ssvadm -p lockd --bin lockd
ssvadm=$PWD/target/release/ssvadm
lockd=$PWD/target/release/lockd
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
step lv create pool0/ssv_leases --extents 1 --tag ssv "$lun"

echo "== thin volumes: qcow2 images in LVs that grow as they are written"
step volume create pool0/disk1 --size 10g --initial 1g "$lun"
head -c 1200M /dev/urandom > "$state/data.bin"
step volume write pool0/disk1 --from "$state/data.bin" "$lun"
step volume snapshot pool0/disk1 disk1-s1 "$lun"
head -c 64M /dev/urandom > "$state/more.bin"
step volume write pool0/disk1-s1 --from "$state/more.bin" --offset 2g "$lun"
step volume info pool0/disk1-s1 "$lun"
step volume clone pool0/disk1-s1 disk2 "$lun"
# Stock qemu-img reads the clone in place inside the LUN (the LV's byte range).
read -r off lvsize < <("$ssvadm" volume info --json pool0/disk2 "$lun" | python3 -c '
import json, sys
l = json.load(sys.stdin)["layers"][0]
print(l["pv_offset"], l["lv_size"])')
img="json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"raw\",\"offset\":$off,\"size\":$lvsize,\"file\":{\"driver\":\"file\",\"filename\":\"$lun\"}}}"
echo "\$ qemu-img check <disk2 in place: $lun at byte $off>"
qemu-img check "$img"
"$ssvadm" volume read pool0/disk2 --to "$state/disk2.raw" "$lun" >/dev/null
python3 - "$state" <<'PY'
import sys
d = sys.argv[1]
with open(f"{d}/data.bin", "rb") as f: a = f.read()
with open(f"{d}/more.bin", "rb") as f: b = f.read()
with open(f"{d}/disk2.raw", "rb") as f:
    assert f.read(len(a)) == a, "clone differs in the first write"
    f.seek(2 << 30); assert f.read(len(b)) == b, "clone differs in the second write"
print("clone disk2 holds both writes, byte for byte")
PY
rm -f "$state/data.bin" "$state/more.bin" "$state/disk2.raw"
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

echo "== leases: two lockd hosts in the pool's ssv_leases LV (io_timeout 1 s for the demo)"
# The LV's first byte on the LUN: pe_start + its first extent.
leases_off=$("$ssvadm" inspect --json "$lun" | python3 -c '
import json, sys
vg = json.load(sys.stdin)["vgs"][0]
lv = next(l for l in vg["lvs"] if l["name"] == "ssv_leases")
pe = lv["segments"][0]["stripes"][0]["start_pe"]
print(vg["pvs"][0]["pe_start_bytes"] + pe * vg["extent_size_bytes"])')
mib=1048576
run() { echo "\$ lockd $*"; "$lockd" "$@"; }
run direct init -s "pool0:0:$lun:$leases_off" -o 1
run direct init -r "pool0:pool:$lun:$((leases_off + mib))" -n 16
run direct init -r "pool0:vol-a:$lun:$((leases_off + 2 * mib))" -n 16
pids=()
stop_daemons() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'stop_daemons; [ -n "${loop:-}" ] && losetup -d "$loop"; rm -rf "${conf:-}"' EXIT
for h in 1 2; do
    RUST_LOG=warn "$lockd" daemon --socket "$state/lockd$h.sock" -o 1 --watchdog-fire 3 2>"$state/lockd$h.log" &
    pids+=($!)
done
sleep 0.5
for h in 1 2; do
    run client --socket "$state/lockd$h.sock" add-lockspace -s "pool0:$h:$lun:$leases_off" &
done
wait "${!}"
sleep 4.5   # two renewals each, so each host has seen the other alive
pool="pool0:pool:$lun:$((leases_off + mib))"
echo "\$ (host 1 holds the pool lease for 2 s; host 2 asks for it meanwhile)"
"$lockd" client --socket "$state/lockd1.sock" command -r "$pool" -- sleep 2 &
holder=$!
sleep 0.5
if "$lockd" client --socket "$state/lockd2.sock" command -r "$pool" -- true 2>&1; then
    echo "unexpected: both hosts held the pool lease" >&2; exit 1
else
    echo "host 2: busy, as it must be (exit code $?)"
fi
wait "$holder"
run client --socket "$state/lockd2.sock" command -r "$pool" -- echo "host 2 now holds the pool lease"
run client --socket "$state/lockd1.sock" acquire -r "pool0:vol-a:$lun:$((leases_off + 2 * mib)):SH" -p "${pids[0]}"
run client --socket "$state/lockd1.sock" status
run direct dump "$lun:$leases_off:$((3 * mib))"
if command -v sanlock >/dev/null; then
    echo "\$ sanlock direct dump $lun:$leases_off:$((3 * mib))   # stock sanlock reads the same records"
    sanlock direct dump "$lun:$leases_off:$((3 * mib))"
fi

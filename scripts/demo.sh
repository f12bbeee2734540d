#!/usr/bin/env bash
# The main job on the embedded default: a sparse file as the LUN.
# Starts lockd and ssvd on it, makes a pool and a thin volume with ssvctl,
# writes the volume through its NBD export with qemu-io until its LV grows,
# snapshots it while open, clones the snapshot (with progress), checks the
# clone (its data through NBD, its qcow2 with stock qemu-img check on the
# LV's bytes, which ssvadm serves over NBD), and lets stock lvm2 read the
# pool. Prints what happened.
#   STATE=dir (default ./state) holds the LUN file, configuration, sockets
#   and logs; the LUN is re-created each run.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${STATE:-$PWD/state}
bash scripts/deps.sh
cargo build --release -q -p ssv-daemon --bin ssvd -p tools --bin ssvctl --bin ssvadm -p lockd --bin lockd
bin=$PWD/target/release
mkdir -p "$state"
state=$(cd "$state" && pwd)
lun=$state/lun0.img
pids=()
cleanup() {
    # ssvd first (it closes its volumes and releases their leases), then lockd.
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    [ -n "${loop:-}" ] && losetup -d "$loop"
    [ -n "${conf:-}" ] && rm -rf "$conf"
    return 0
}
trap cleanup EXIT
rm -f "$lun" "$state"/*.sock "$state"/*.log
truncate -s 20G "$lun"
echo "== LUN: $lun (20 GiB sparse file)"

# lockd: io_timeout 2 s so joining the pool's lockspace takes seconds (the
# default, 10 s, suits SANs); a file stands in for /dev/watchdog.
RUST_LOG=warn "$bin/lockd" daemon --socket "$state/lockd.sock" -o 2 --watchdog-fire 6 \
    --watchdog "$state/watchdog" 2>"$state/lockd.log" &
pids=($! "${pids[@]}")
cat > "$state/ssv.toml" <<TOML
host_id = 1
state_dir = "$state/ssvd"
[api]
socket = "$state/ssvd.sock"
[lockd]
socket = "$state/lockd.sock"
[nbd]
socket = "$state/nbd.sock"
[[lun]]
file = "$lun"
TOML
for _ in $(seq 100); do [ -S "$state/lockd.sock" ] && break; sleep 0.1; done
RUST_LOG=info "$bin/ssvd" -c "$state/ssv.toml" 2>"$state/ssvd.log" &
pids=($! "${pids[@]}")
for _ in $(seq 100); do [ -S "$state/ssvd.sock" ] && break; sleep 0.1; done
export SSVD_SOCKET=$state/ssvd.sock
step() { echo "\$ ssvctl $*"; "$bin/ssvctl" "$@"; }

echo "== a pool on the LUN (an LVM2 VG with ssv's leases LV), and a thin volume"
step lun list
step pool create pool0 "$lun"
step volume create web --size 10g
step volume open web
uri=$("$bin/ssvctl" --json volume show web | python3 -c 'import json,sys; print(json.load(sys.stdin)["nbd"])')

echo "== qemu-io writes 1.2 GiB through NBD: the 1 GiB LV grows while it writes"
echo "\$ qemu-io -f raw -c 'write -P 0x5a 0 1200M' -c flush $uri"
qemu-io -f raw -c 'write -P 0x5a 0 1200M' -c flush "$uri" | tail -2
step volume show web

echo "== a snapshot while open; later writes go to the new top"
step snapshot create web before-upgrade
echo "\$ qemu-io -f raw -c 'write -P 0xa5 2G 64M' $uri"
qemu-io -f raw -c 'write -P 0xa5 2G 64M' "$uri" | tail -1
step snapshot list web

echo "== a full clone of the snapshot (a job, with progress), checked"
step volume clone web web-copy --snapshot before-upgrade
step volume open web-copy
curi=$("$bin/ssvctl" --json volume show web-copy | python3 -c 'import json,sys; print(json.load(sys.stdin)["nbd"])')
echo "\$ qemu-io -f raw -c 'read -P 0x5a 0 1200M' -c 'read -P 0 2G 64M' $curi"
qemu-io -f raw -c 'read -P 0x5a 0 1200M' -c 'read -P 0 2G 64M' "$curi" | grep -v '^read' || true
echo "the clone holds the snapshot's 1200 MiB of 0x5a and none of the later write"
step volume close web-copy
# Stock qemu-img checks the clone's qcow2 where it lies: the LV's own bytes,
# served read-only over NBD by ssvadm (an LV may have several segments).
lv=$("$bin/ssvctl" --json volume show web-copy | python3 -c 'import json,sys; print(json.load(sys.stdin)["top"])')
"$bin/ssvadm" lv serve "pool0/$lv" --socket "$state/lv.sock" "$lun" >/dev/null &
serve=$!
for _ in $(seq 100); do [ -S "$state/lv.sock" ] && break; sleep 0.1; done
echo "\$ qemu-img check -f qcow2 nbd+unix:///$lv?socket=$state/lv.sock   # the clone's LV, served by ssvadm lv serve"
qemu-img check -f qcow2 "nbd+unix:///$lv?socket=$state/lv.sock"
kill "$serve"; wait "$serve" 2>/dev/null || true

echo "== what happened"
step volume list
step pool show pool0
step job list
echo "\$ grep event $state/ssvd.log"
grep -o 'event .*' "$state/ssvd.log" || true
echo "\$ curl --unix-socket $state/ssvd.sock http://ssvd/metrics | grep -E 'extensions|sessions'"
python3 - "$state/ssvd.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: ssvd\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(65536): data += chunk
for line in data.decode().splitlines():
    if line.startswith("ssvd_lv_extension") or line.startswith("ssvd_sessions"):
        print(line)
PY
step volume close web
kill "${pids[0]}" && wait "${pids[0]}" 2>/dev/null || true   # ssvd
pids=("${pids[@]:1}")

if [ "$(id -u)" = 0 ] && command -v losetup >/dev/null && command -v lvm >/dev/null; then
    echo "== stock lvm2 reads the same pool (metadata only: --driverloaded n)"
    loop=$(losetup -f --show "$lun")
    conf=$(mktemp -d)
    cat > "$conf/lvm.conf" <<CONF
devices { global_filter = [ "a|^$loop\$|", "r|.*|" ] obtain_device_list_from_udev = 0 use_devicesfile = 0 hints = "none" }
global { locking_dir = "$conf" }
backup { backup = 0 archive = 0 }
CONF
    export LVM_SYSTEM_DIR=$conf LVM_SUPPRESS_FD_WARNINGS=1
    lvm vgs --driverloaded n pool0 2>/dev/null
    lvm lvs --driverloaded n -o lv_name,lv_size,lv_tags pool0 2>/dev/null
    lvm vgck --driverloaded n pool0 2>/dev/null && echo "vgck pool0: clean"
else
    echo "== (not root, or lvm2/losetup missing: skipping the lvm2 cross-check)"
fi
echo "== done; logs in $state/ssvd.log and $state/lockd.log"

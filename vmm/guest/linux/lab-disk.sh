#!/bin/sh
# Runs in a lab VM (sourced by the payload's run.sh, which sets KERNEL,
# CONSOLE, VCPUS, MIB, CHUNK, HOLD): starts lockd and ssvd on a sparse-file
# LUN, makes a pool and a thin volume with a small initial LV, and runs the
# guest (init.sh, ssv.mode=disk) as a VM of ssvd on it. While the guest
# holds between the two halves it writes, ssvctl takes an online snapshot of
# the disk, then pauses the VM and resumes it. After the guest's power-off
# it records both layers' LV sizes and copies both layers' qcow2 out of
# their LVs (ssvadm lv read), from which the host reads the content (with
# qemu-img: sums in the lab's emulated CPU took minutes). Results go to
# /payload/out; the exit status says which step failed.
cd /payload || exit 2
out=/payload/out
bin=/usr/local/bin
st=/tmp/ssv
lun=$st/lun.img
vm=$st/state/vms/guest
uptime_s() { cut -d' ' -f1 /proc/uptime; }
export PATH=$bin:$PATH
export SSVD_SOCKET=$st/ssvd.sock
wait_socket() {
    for _ in $(seq 300); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    return 1
}
stop_daemons() {
    kill "$ssvd" 2>/dev/null && wait "$ssvd"
    kill "$lockd" 2>/dev/null && wait "$lockd"
}

mkdir -p $st
truncate -s 2G $lun
# io_timeout 1 s: joining the pool's lockspace takes seconds.
RUST_LOG=info $bin/lockd daemon --socket $st/lockd.sock -o 1 --watchdog-fire 3 \
    --watchdog $st/watchdog 2>$out/lockd.log &
lockd=$!
cat >$st/ssv.toml <<TOML
host_id = 1
state_dir = "$st/state"
[api]
socket = "$st/ssvd.sock"
[lockd]
socket = "$st/lockd.sock"
[nbd]
socket = "$st/nbd.sock"
[growth]
initial = "32m"
chunk = "${CHUNK}"
[vm]
vmm = "$bin/ssv-vmm"
[[lun]]
file = "$lun"
TOML
wait_socket $st/lockd.sock || { cat $out/lockd.log; exit 10; }
RUST_LOG=info $bin/ssvd -c $st/ssv.toml 2>$out/ssvd.log &
ssvd=$!
wait_socket $st/ssvd.sock || { cat $out/ssvd.log; exit 10; }
{
    ssvctl pool create pool0 $lun --extent-size 4m &&
        ssvctl volume create disk --size 512m
} >$out/ssvctl.log 2>&1 || { cat $out/ssvctl.log $out/ssvd.log; exit 10; }
ssvctl --json volume show disk >$out/info-before.json 2>>$out/ssvctl.log || exit 11

echo "LAB: ssv-vmm starts at $(uptime_s)s"
ssvctl vm start guest --memory 512 --vcpus "$VCPUS" \
    --kernel "/payload/guest/$KERNEL" --initrd /payload/guest/vmm-initramfs.cpio.gz \
    --cmdline "console=$CONSOLE panic=-1 loglevel=4 ssv.mode=disk ssv.mib=$MIB ssv.hold=$HOLD" \
    --disk disk >>$out/ssvctl.log 2>&1 || { cat $out/ssvctl.log; exit 12; }
exited() { ssvctl --json vm show guest | grep -q '"exit"'; }
# ssvd or lockd gone ends the run at once, with their logs' ends.
daemons_alive() {
    kill -0 "$ssvd" 2>/dev/null && kill -0 "$lockd" 2>/dev/null && return 0
    echo "LAB: a daemon exited at $(uptime_s)s; the ends of ssvd's, lockd's and the guest's logs:"
    tail -n 30 $out/ssvd.log
    tail -n 30 $out/lockd.log
    tail -n 20 $vm/console.log
    exit 16
}

# The guest holds after its first half: snapshot, pause, resume.
until grep -q 'SSV-GUEST: wrote chunks .* holding' $vm/console.log 2>/dev/null; do
    daemons_alive
    exited && break
    sleep 0.2
done
if ! exited; then
    echo "LAB: the guest holds at $(uptime_s)s"
    ssvctl --json vm snapshot guest half >$out/snapshot.json 2>>$out/ssvctl.log || exit 13
    echo "LAB: online snapshot taken at $(uptime_s)s"
    ssvctl --json vm pause guest >$out/paused.json 2>>$out/ssvctl.log || exit 14
    sleep 2
    ssvctl --json vm resume guest >$out/resumed.json 2>>$out/ssvctl.log || exit 15
    echo "LAB: paused and resumed by $(uptime_s)s"
fi
until exited; do
    daemons_alive
    sleep 0.5
done
ssvctl --json vm show guest >$out/vm.json
cp $vm/console.log $out/guest.log
cp $vm/vmm.log $out/vmm.err
echo "LAB: ssv-vmm exited at $(uptime_s)s: $(grep -o '"exit": *"[^"]*"' $out/vm.json)"
grep -a 'SSV-GUEST' $out/guest.log
grep -q '"exit": *"exit code 0"' $out/vm.json || { tail -n 40 $out/guest.log; cat $out/vmm.err; exit 20; }
ssvctl --json volume show disk >$out/info-after.json 2>>$out/ssvctl.log || exit 21
stop_daemons

lv_of() { grep -o "\"$1\": *\"[^\"]*\"" "$2" | head -n 1 | cut -d'"' -f4; }
top=$(lv_of top $out/info-after.json)
[ -f $out/snapshot.json ] && snap=$(lv_of lv $out/snapshot.json)

# Each layer's qcow2 as a file, for qemu-img check on the host.
for lv in $top $snap; do
    $bin/ssvadm lv read "pool0/$lv" --to "$out/$lv.qcow2" $lun >>$out/ssvadm.log 2>&1 || exit 24
done
echo "LAB: layers copied out by $(uptime_s)s"
# How near the lab's load came to fencing (a failed renewal is one whose
# I/O took over io_timeout; 8 s of them stop ssvd and the VM).
echo "LAB: lockd renewals that failed: $(grep -c 'renewal failed\|no renewal' $out/lockd.log)"
exit 0

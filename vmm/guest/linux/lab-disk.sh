#!/bin/sh
# Runs in a lab VM (sourced by the payload's run.sh, which sets KERNEL,
# CONSOLE, VCPUS, MIB, CHUNK): makes a VG on a sparse file with ssvadm and
# a thin volume with a small initial LV, boots the guest (init.sh,
# ssv.mode=disk) under ssv-vmm on it, then checks from outside what the
# guest did: the LV's size before and after, the volume's content per
# chunk (ssvadm volume read) and its qcow2 metadata (qemu-img check over
# ssvadm's NBD export, when the payload has qemu-img). Results go to
# /payload/out; the exit status says which step failed.
cd /payload || exit 2
out=/payload/out
pv=/tmp/pv.img
ssvadm=/usr/local/bin/ssvadm
uptime_s() { cut -d' ' -f1 /proc/uptime; }

truncate -s 2G $pv
{
    $ssvadm pv format $pv &&
        $ssvadm vg create vg0 $pv --extent-size 4m &&
        $ssvadm volume create vg0/disk --size 512m --initial 32m $pv
} >$out/ssvadm.log 2>&1 || { cat $out/ssvadm.log; exit 10; }
$ssvadm volume info vg0/disk --json $pv >$out/info-before.json 2>>$out/ssvadm.log || exit 11

echo "LAB: ssv-vmm starts at $(uptime_s)s"
/usr/local/bin/ssv-vmm --memory 512 --vcpus "$VCPUS" \
    --kernel "guest/$KERNEL" --initrd guest/vmm-initramfs.cpio.gz \
    --cmdline "console=$CONSOLE pci=off panic=-1 loglevel=4 ssv.mode=disk ssv.mib=$MIB" \
    --disk "vg=vg0,lv=disk,pv=$pv,chunk=$CHUNK" \
    --serial $out/guest.log 2>$out/vmm.err
status=$?
echo "$status" >$out/vmm.status
echo "LAB: ssv-vmm exited with $status at $(uptime_s)s"
grep -a 'SSV-GUEST' $out/guest.log
[ "$status" = 0 ] || { tail -n 40 $out/guest.log; cat $out/vmm.err; exit 20; }

$ssvadm volume info vg0/disk --json $pv >$out/info-after.json 2>>$out/ssvadm.log || exit 21

# The volume as the guest left it, chunk by chunk (32 MiB, as init.sh writes).
$ssvadm volume read vg0/disk --to /tmp/volume.raw $pv >>$out/ssvadm.log 2>&1 || exit 22
i=0
while [ $((i * 32)) -lt "$MIB" ]; do
    sum=$(dd if=/tmp/volume.raw bs=1M skip=$((i * 32)) count=32 2>/dev/null | sha256sum | cut -d' ' -f1)
    echo "$i $sum" >>$out/volume-sums.txt
    i=$((i + 1))
done
rm -f /tmp/volume.raw

# qemu-img reads the qcow2 in the LV through ssvadm's read-only NBD export.
if [ -x /usr/bin/qemu-img ]; then
    $ssvadm lv serve vg0/disk --socket /tmp/nbd.sock $pv >>$out/ssvadm.log 2>&1 &
    server=$!
    for _ in $(seq 100); do
        [ -S /tmp/nbd.sock ] && break
        sleep 0.1
    done
    /usr/bin/qemu-img check -f qcow2 "nbd+unix:///disk?socket=/tmp/nbd.sock" >$out/qemu-img-check.txt 2>&1
    echo "$?" >$out/qemu-img-check.status
    kill $server
    wait $server
    cat $out/qemu-img-check.txt
fi
exit 0

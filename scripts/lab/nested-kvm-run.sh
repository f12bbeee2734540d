#!/bin/sh
# Payload run.sh (see nested-kvm.sh): boots the inner guest under QEMU/KVM
# inside the lab VM and succeeds when its init prints its line. Times are
# the lab VM's uptime, so they are wall-clock seconds.
cd /payload
kernel=guest/bzImage
[ -f "$kernel" ] || kernel=guest/Image
uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "SSV-NESTED: $(dmesg | grep -m1 -iE 'kvm.*(nested|hyp mode|vhe|amd-v|svm)' || echo 'no kvm banner in dmesg')"
start=$(uptime_s)
echo "SSV-NESTED: starting QEMU/KVM at ${start}s"
sh qemu-boot.sh "$kernel" guest/initramfs.cpio.gz "loglevel=4" 2>&1 |
    while IFS= read -r line; do
        echo "$line" >>out/inner.log
        echo "inner| $line"
        case "$line" in
        *SSV-GUEST:*) echo "SSV-NESTED: inner init line at $(uptime_s)s (QEMU started at ${start}s)" ;;
        esac
    done
end=$(uptime_s)
echo "SSV-NESTED: QEMU exited at ${end}s"
grep -q 'SSV-GUEST: init reached' out/inner.log || { echo "SSV-NESTED: FAILED, no init line"; exit 1; }
echo "$start $end" >out/times
awk -v s="$start" -v e="$end" 'BEGIN { printf "SSV-NESTED: OK, inner boot to init and power-off took %.2f s\n", e - s }'

#!/bin/sh
# /init of the lab VM (busybox). Mounts the module and payload disks, loads
# KVM, runs the payload's run.sh, and powers off after printing
# "SSV-LAB-EXIT: <status>" on the console (run.sh on the host parses it).
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
exec </dev/console >/dev/console 2>&1

finish() {
    echo "SSV-LAB-EXIT: $1"
    sync
    poweroff -f
}

echo "SSV-LAB: init at $(cut -d' ' -f1 /proc/uptime)s uptime, kernel $(uname -r) $(uname -m)"
modprobe virtio_pci && modprobe virtio_blk || finish 120

# The host names the disks by their virtio serial.
disk_by_serial() {
    local d
    for _ in $(seq 50); do
        for d in /sys/block/vd*; do
            [ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
        done
        sleep 0.1
    done
    return 1
}
mods=$(disk_by_serial ssv-modules) || { echo "SSV-LAB: no modules disk"; finish 121; }
mount -t ext4 -o ro "$mods" /lib/modules || finish 121
payload=$(disk_by_serial ssv-payload) || { echo "SSV-LAB: no payload disk"; finish 122; }
mkdir -p /payload
mount -t ext4 "$payload" /payload || finish 122

case "$(uname -m)" in
x86_64) modprobe kvm_amd || echo "SSV-LAB: modprobe kvm_amd failed" ;;
esac
if [ -c /dev/kvm ]; then
    echo "SSV-LAB: /dev/kvm present"
else
    echo "SSV-LAB: /dev/kvm missing"
fi

# Binaries with their libraries, laid out as in a root file system
# (scripts/lab/payload-bin.sh), join the initramfs root.
# Busybox's applet links go first: cp would write through them into busybox.
if [ -d /payload/sysroot ]; then
    (cd /payload/sysroot && find . ! -type d) | while read -r f; do
        [ -L "/$f" ] && rm -f "/$f"
    done
    cp -a /payload/sysroot/. /
fi
rm -rf /payload/out
mkdir -p /payload/out
echo "SSV-LAB: payload starts at $(cut -d' ' -f1 /proc/uptime)s uptime"
cd /payload
sh ./run.sh
status=$?
cd /
umount /payload || status=123
finish "$status"

#!/bin/sh
# /init of the Linux guest the VMM lab tests boot (busybox, the virtio
# modules and /sbin/ssv-io in the initramfs). Its first line is the boot
# benchmark's marker; then it loads virtio, reports CPUs and the disk's
# queues, and runs what `ssv.mode=` on the kernel command line asks:
#   disk      write ssv.mib MiB (default 256) of random data to /dev/vda in
#             32 MiB chunks from two writers at once (O_DIRECT), read every
#             chunk back after dropping the page cache and compare; prints
#             each chunk's sha256 for the host to check the volume against.
#             With ssv.hold=SECS, writes the first half, says so, waits
#             SECS seconds (the host snapshots and pauses the VM meanwhile),
#             then writes the second half
#   randread  ssv-io randread over the first ssv.span MiB (default 256)
#             for ssv.secs seconds (default 10) with ssv.jobs jobs (1),
#             each at most ssv.rate reads a second (0: unpaced)
#   (none)    nothing more
# and powers off (ACPI S5; the VMM's sleep control register ends the VM).
# Result lines start with "SSV-GUEST:"; a failure prints "SSV-GUEST: FAIL".
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
echo "SSV-GUEST: init reached at $(/bin/busybox cut -d' ' -f1 /proc/uptime)s uptime"
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp

# The console's last lines may still wait in the tty for the UART's
# interrupts: give them a moment before the power goes.
stop() {
    sync
    sleep 0.5
    poweroff -f
}
fail() {
    echo "SSV-GUEST: FAIL $*"
    stop
}
# ssv.NAME=VALUE from the kernel command line, or $2.
arg() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "ssv.$1="*) echo "${w#*=}"; return ;; esac
    done
    echo "$2"
}

echo "SSV-GUEST: $(uname -m) cpus=$(nproc)"
mode=$(arg mode none)
[ "$mode" = none ] && stop
/sbin/ssv-virtio || fail "loading the virtio modules"
for _ in $(seq 100); do
    [ -b /dev/vda ] && break
    sleep 0.1
done
[ -b /dev/vda ] || fail "no /dev/vda"
echo "SSV-GUEST: vda queues=$(ls /sys/block/vda/mq | wc -l) sectors=$(cat /sys/block/vda/size)"

CHUNK=32
# Writes chunk $1 of random data, remembering its sha256.
write_chunk() {
    f=/tmp/chunk.$1
    dd if=/dev/urandom of="$f" bs=1M count=$CHUNK 2>/dev/null || return 1
    sha256sum <"$f" | cut -d' ' -f1 >"/tmp/sum.$1"
    dd if="$f" of=/dev/vda bs=1M seek=$(($1 * CHUNK)) oflag=direct conv=notrunc 2>/dev/null || return 1
    rm -f "$f"
}
# Writer $1 of 2 of chunks $2 to $3 - 1: chunks $2+$1, $2+$1+2, ...
writer() {
    i=$(($2 + $1))
    while [ "$i" -lt "$3" ]; do
        write_chunk "$i" || { echo "writer $1: chunk $i failed" >/tmp/writer.$1.err; return 1; }
        i=$((i + 2))
    done
}
# Chunks $1 to $2 - 1, from two writers at once.
write_chunks() {
    writer 0 "$1" "$2" &
    w0=$!
    writer 1 "$1" "$2" &
    w1=$!
    wait $w0 || fail "$(cat /tmp/writer.0.err)"
    wait $w1 || fail "$(cat /tmp/writer.1.err)"
}

case "$mode" in
disk)
    mib=$(arg mib 256)
    chunks=$((mib / CHUNK))
    hold=$(arg hold 0)
    half=$chunks
    [ "$hold" -gt 0 ] && half=$((chunks / 2))
    started=$(cut -d' ' -f1 /proc/uptime)
    write_chunks 0 "$half"
    if [ "$half" -lt "$chunks" ]; then
        sync
        echo "SSV-GUEST: wrote chunks 0 to $((half - 1)); holding ${hold}s"
        sleep "$hold"
        echo "SSV-GUEST: writing chunks $half to $((chunks - 1))"
        write_chunks "$half" "$chunks"
    fi
    sync
    echo "SSV-GUEST: wrote $mib MiB in $chunks chunks ($started s to $(cut -d' ' -f1 /proc/uptime) s uptime)"
    echo 3 >/proc/sys/vm/drop_caches
    i=0
    while [ "$i" -lt "$chunks" ]; do
        got=$(dd if=/dev/vda bs=1M skip=$((i * CHUNK)) count=$CHUNK iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)
        want=$(cat /tmp/sum.$i)
        [ "$got" = "$want" ] || fail "chunk $i reads back as $got, wrote $want"
        echo "SSV-GUEST: chunk $i offset_mib=$((i * CHUNK)) mib=$CHUNK sha256=$want"
        i=$((i + 1))
    done
    echo "SSV-GUEST: disk ok: $mib MiB written, read back and compared"
    ;;
randread)
    # What the CPU offers the guest, and where the modules are (a failed
    # boot's trace names a RIP).
    grep -m1 "^flags" /proc/cpuinfo | sed 's/^/SSV-GUEST: cpu /'
    sed 's/^/SSV-GUEST: module /' /proc/modules
    ssv-io randread /dev/vda "$(arg span 256)" "$(arg secs 10)" "$(arg jobs 1)" "$(arg rate 0)" || fail "randread"
    # Where the disk's interrupts went, and the IPIs between the CPUs.
    grep -E "virtio|CAL|RES" /proc/interrupts | tr -s ' ' | sed 's/^/SSV-GUEST: irq /'
    ;;
*) fail "unknown ssv.mode=$mode" ;;
esac
stop

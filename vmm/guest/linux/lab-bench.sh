#!/bin/sh
# Runs in the x86_64 lab VM (sourced by the benchmark's run.sh, which sets
# ROUNDS, SECS, SPAN, JOBS, LIMIT): ssv-vmm against QEMU/KVM (qemu-boot.sh), same
# kernel, same initramfs (init.sh), two vCPUs and 512 MiB each, one
# virtio-blk disk with the same SPAN MiB of random data: for ssv-vmm a thin
# volume (qcow2 in an LV of a VG on a sparse file, filled with `ssvadm
# volume write`), for QEMU a qcow2 file converted from the same raw data
# (`qemu-img convert`, default 64 KiB clusters as the thin volume's). All
# files are on the lab VM's tmpfs, which neither opens with O_DIRECT: both
# VMMs read through the lab VM's page cache.
#   boot: ROUNDS boots each, alternating, ssv.mode=none; `ssv-io stamp`
#         times process start to the init's first line
#         -> out/boot.txt "ours|qemu SECONDS"
#   iops: one boot each with ssv.mode=randread (ssv-io randread, 4 KiB,
#         O_DIRECT, JOBS jobs, SECS seconds over the SPAN MiB)
#         -> out/iops.txt "ours|qemu IOPS"
#         (ROUNDS=0, the smoke round: these boots' times go to boot.txt)
cd /payload || exit 2
echo "LAB: lab VM CPUs: $(nproc)"
out=/payload/out
pv=/tmp/pv.img
ssvadm=/usr/local/bin/ssvadm
marker="SSV-GUEST: init reached"
append="loglevel=4 ssv.span=$SPAN ssv.secs=$SECS ssv.jobs=$JOBS ${APPEND_EXTRA:-}"

dd if=/dev/urandom of=/tmp/content.raw bs=1M count="$SPAN" 2>/dev/null || exit 10
truncate -s 2G $pv
{
    $ssvadm pv format $pv &&
        $ssvadm vg create vg0 $pv --extent-size 4m &&
        $ssvadm volume create vg0/disk --size "${SPAN}m" --initial 32m $pv &&
        $ssvadm volume write vg0/disk --from /tmp/content.raw $pv
} >$out/ssvadm.log 2>&1 || { cat $out/ssvadm.log; exit 11; }
/usr/bin/qemu-img convert -f raw -O qcow2 /tmp/content.raw /tmp/content.qcow2 || exit 12
rm -f /tmp/content.raw

# No boot may hang the run: each VMM gets LIMIT seconds; a hung one's
# threads are printed (ssv-io stamp) with the console's end.
LIMIT=${LIMIT:-300}
ours() {
    /payload/ssv-io stamp -t $LIMIT "$marker" /usr/local/bin/ssv-vmm --memory 512 --vcpus 2 \
        --kernel guest/bzImage --initrd guest/vmm-initramfs.cpio.gz \
        --cmdline "console=ttyS0 panic=-1 $append ssv.mode=$1" ${OURS_EXTRA:-} \
        --disk "vg=vg0,lv=disk,pv=$pv"
}
qemu() {
    /payload/ssv-io stamp -t $LIMIT "$marker" sh /payload/qemu-boot.sh guest/bzImage guest/vmm-initramfs.cpio.gz \
        "$append ssv.mode=$1" -smp 2 -m 512M \
        ${QEMU_DISK:--drive file=/tmp/content.qcow2,format=qcow2,if=virtio}
}
# Whether a boot in mode $2 whose console is $1 and exit status $3 went
# well: the guest reached its init (and read, in randread mode) and powered
# off cleanly; else the boot is shown as "LAB: $4 failed".
booted() {
    grep -q "SSV-IO: stamp $marker [0-9]" "$1" && ! grep -q "SSV-GUEST: FAIL" "$1" &&
        { [ "$2" != randread ] || grep -q "SSV-IO: randread" "$1"; } &&
        [ "$3" = 0 ] && return 0
    echo "LAB: $4 failed (status $3); its console's end:"
    tail -n 60 "$1" | sed "s/^/LAB: | /"
    return 1
}
# The time to init that `ssv-io stamp` measured, in the console log $1.
time_to_init() {
    sed -n "s/^SSV-IO: stamp $marker \([0-9.]*\)$/\1/p" "$1"
}
# Runs "$1 $2" (ours|qemu, mode), its console in out/$1-$2-$3.log, until
# it booted; a failed boot is tried once more, a second failure ends the run.
boot() {
    log=$out/$1-$2-$3.log
    for try in 1 2; do
        $1 "$2" >"$log" 2>&1
        booted "$log" "$2" $? "$1 $2 round $3 try $try" && return 0
        cp "$log" "$log.failed$try"
    done
    exit 20
}

# TRACE=1 (randread boots only): the lab kernel counts its KVM's exits,
# hypercalls and accepted interrupts (printed after each boot) and traces
# exits and injected events (a failed boot's last lines are shown); the
# guest runs without KASLR, so its RIPs match the kernel's System.map.
tracing=/sys/kernel/tracing
trace_hists="kvm_exit:exit_reason,vcpu_id kvm_hypercall:nr kvm_apic_accept_irq:apicid,vec"
trace_start() {
    [ "${TRACE:-0}" = 1 ] || return 0
    [ -e $tracing/trace ] || mount -t tracefs nodev $tracing || return 0
    echo 0 >$tracing/tracing_on
    echo 16384 >$tracing/buffer_size_kb
    for e in kvm_exit kvm_inj_exception kvm_inj_virq kvm_userspace_exit; do
        echo 1 >$tracing/events/kvm/$e/enable
    done
    for h in $trace_hists; do
        echo "!hist:keys=${h#*:}" >$tracing/events/kvm/${h%%:*}/trigger 2>/dev/null
        echo "hist:keys=${h#*:}" >$tracing/events/kvm/${h%%:*}/trigger
    done
    : >$tracing/trace
    echo 1 >$tracing/tracing_on
}
trace_hist() {
    [ "${TRACE:-0}" = 1 ] || return 0
    for h in $trace_hists; do
        grep -a "hitcount" $tracing/events/kvm/${h%%:*}/hist | sed "s/^/LAB: hist $1 ${h%%:*} | /"
    done
}
trace_show() {
    [ "${TRACE:-0}" = 1 ] || return 0
    echo 0 >$tracing/tracing_on
    tail -n "$2" $tracing/trace | sed "s/^/LAB: trace $1 | /"
}
[ "${TRACE:-0}" = 1 ] && append="$append nokaslr"

# RANDREAD_BOOTS=N: only N randread boots of ours (RANDREAD_SIDE=qemu:
# QEMU's), one after another, traced if TRACE=1; each failure is shown and
# counted and none ends the run (how often a boot fails under the lab's
# nested KVM: BENCHMARKS.md, issue 7). QEMU_DISK replaces QEMU's disk
# options and APPEND_EXTRA adds to both kernel command lines.
if [ "${RANDREAD_BOOTS:-0}" -gt 0 ]; then
    n=1
    fails=0
    while [ "$n" -le "$RANDREAD_BOOTS" ]; do
        log=$out/${RANDREAD_SIDE:-ours}-randread-$n.log
        trace_start
        ${RANDREAD_SIDE:-ours} randread >"$log" 2>&1
        status=$?
        trace_hist "$n"
        if booted "$log" randread $status "randread boot $n"; then
            echo "LAB: randread boot $n: $(grep -a 'SSV-IO: randread' "$log" | tr -d '\r')"
            grep -a 'SSV-GUEST: \(vda\|irq\|cpu\)' "$log" | tr -d '\r' | sed "s/^/LAB: randread boot $n: /"
        else
            trace_show "$n" 400
            fails=$((fails + 1))
        fi
        n=$((n + 1))
    done
    echo "LAB: randread boots: $fails of $RANDREAD_BOOTS failed"
    exit 0
fi

i=1
while [ "$i" -le "$ROUNDS" ]; do
    for side in ours qemu; do
        boot $side none "$i"
        t=$(time_to_init $out/$side-none-$i.log)
        echo "$side $t" >>$out/boot.txt
        echo "LAB: boot $side round $i: $t s to init"
    done
    i=$((i + 1))
done
for side in ours qemu; do
    boot $side randread 1
    if [ "$ROUNDS" = 0 ]; then
        echo "$side $(time_to_init $out/$side-randread-1.log)" >>$out/boot.txt
    fi
    line=$(grep -a 'SSV-IO: randread' $out/$side-randread-1.log)
    echo "LAB: $side $line"
    echo "$side ${line##*iops=}" | tr -d '\r' >>$out/iops.txt
done
grep -a 'SSV-GUEST: \(vda\|irq\|cpu\)' $out/ours-randread-1.log $out/qemu-randread-1.log
exit 0

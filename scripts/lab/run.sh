#!/usr/bin/env bash
# Boots the lab VM for ARCH under QEMU's software emulation (which gives the
# VM a nested /dev/kvm), with PAYLOAD_DIR on a disk mounted at /payload, runs
# /payload/run.sh there and exits with its status.
# Usage: scripts/lab/run.sh ARCH PAYLOAD_DIR [TIMEOUT_SECONDS (default 600)]
#
# The console goes to stdout and to a log (lines prefixed with seconds since
# QEMU started); files the payload writes under /payload/out are copied back.
# Environment:
#   SSV_LAB_DIR      state dir (default <repo>/state/lab); built on first use
#   SSV_LAB_LOG      console log file (default $SSV_LAB_DIR/runs/ARCH-<time>-<pid>.log)
#   SSV_LAB_RESULTS  where /payload/out is copied (default PAYLOAD_DIR/out)
#   SSV_LAB_MEM      lab VM memory (default 4G)
#   SSV_LAB_SMP      lab VM CPUs (default 1 on x86_64, 2 on aarch64)
#   SSV_LAB_CPU      QEMU -cpu (default max; aarch64: max,pauth-impdef=on)
#   SSV_LAB_ACCEL    QEMU -accel (default tcg; tcg,thread=single runs all the
#                    lab VM's CPUs on one host thread)
#   SSV_LAB_QUIET=1  console only to the log, not stdout
# Exit status: the payload's; 124 on timeout; 125 if the lab VM stopped
# without reporting one; 2 if the lab could not be built or started; 3 if
# something it needs cannot be had here (see common.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ $# -ge 2 ] || lab_die "usage: run.sh ARCH PAYLOAD_DIR [TIMEOUT_SECONDS]"
ARCH=$1
PAYLOAD=$(cd "$2" && pwd) || lab_die "no payload dir $2"
TIMEOUT=${3:-600}
lab_arch "$ARCH"
[ -f "$PAYLOAD/run.sh" ] || lab_die "$PAYLOAD has no run.sh"

BUILT=$("$LAB_SCRIPTS/build.sh" "$ARCH") || exit $?
lab_host_qemu
mkdir -p "$LAB_DIR/runs"
LOG=${SSV_LAB_LOG:-$LAB_DIR/runs/$ARCH-$(date +%Y%m%d-%H%M%S)-$$.log}
RESULTS=${SSV_LAB_RESULTS:-$PAYLOAD/out}
WORK=$(mktemp -d "$LAB_DIR/runs/work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# The payload disk: ext4 made from the directory, with room for results.
kib=$(du -sk --apparent-size "$PAYLOAD" | cut -f1)
mke2fs -q -t ext4 -L ssvpayload -d "$PAYLOAD" "$WORK/payload.img" "$((kib * 5 / 4 + 512 * 1024))K" >/dev/null ||
    lab_die "mke2fs of the payload failed"

# One CPU for the x86_64 lab: with two, TCG's emulation of nested SVM fails
# nested guests of both VMMs under I/O (triple faults, stalled CPUs, the lab
# kernel's own crash) far more often than with one (BENCHMARKS.md, issue 7).
case "$ARCH" in x86_64) smp=${SSV_LAB_SMP:-1} ;; *) smp=${SSV_LAB_SMP:-2} ;; esac
args=(-m "${SSV_LAB_MEM:-4G}" -smp "$smp" -accel "${SSV_LAB_ACCEL:-tcg}"
    -display none -monitor none -serial stdio -nic none -no-reboot
    -kernel "$BUILT/kernel" -initrd "$BUILT/lab-initramfs.cpio.gz"
    -append "console=$CONSOLE panic=-1 loglevel=4"
    -drive "if=none,id=mods,format=raw,readonly=on,file=$BUILT/modules.img"
    -device virtio-blk-pci,drive=mods,serial=ssv-modules
    -drive "if=none,id=payload,format=raw,file=$WORK/payload.img"
    -device virtio-blk-pci,drive=payload,serial=ssv-payload)
case "$ARCH" in
x86_64) args=(-cpu "${SSV_LAB_CPU:-max}" "${args[@]}") ;;
# pauth-impdef: the emulated pointer authentication uses a cheap hash instead
# of QARMA, which otherwise dominates TCG time for a Debian arm64 kernel.
aarch64) args=(-machine virt,virtualization=on,gic-version=3 -cpu "${SSV_LAB_CPU:-max,pauth-impdef=on}" "${args[@]}") ;;
esac

lab_log "booting $ARCH lab VM with payload $PAYLOAD (timeout ${TIMEOUT}s, log $LOG)"
: >"$LOG"
start=$EPOCHREALTIME
set +e
timeout -k 5 "$TIMEOUT" "${QEMU_CMD[@]}" "${args[@]}" </dev/null 2>&1 |
    while IFS= read -r line; do
        line=${line%$'\r'}
        us=$((${EPOCHREALTIME/./} - ${start/./}))
        printf -v stamped '[%4d.%03d] %s' $((us / 1000000)) $((us % 1000000 / 1000)) "$line"
        echo "$stamped" >>"$LOG"
        [ "${SSV_LAB_QUIET:-}" = 1 ] || echo "$stamped"
    done
qemu_status=${PIPESTATUS[0]}
set -e

if [ -d "$RESULTS" ]; then rm -rf "$RESULTS"; fi
mkdir -p "$RESULTS"
debugfs -R "rdump /out $WORK" "$WORK/payload.img" >/dev/null 2>&1 &&
    [ -d "$WORK/out" ] && cp -a "$WORK/out/." "$RESULTS/"

status=$(sed -n 's/.*SSV-LAB-EXIT: \([0-9]*\).*/\1/p' "$LOG" | tail -n1)
if [ "$qemu_status" = 124 ] || [ "$qemu_status" = 137 ]; then
    lab_log "timed out after ${TIMEOUT}s (log $LOG)"
    exit 124
fi
if [ -z "$status" ]; then
    lab_log "lab VM stopped (QEMU status $qemu_status) without an exit status (log $LOG)"
    exit 125
fi
lab_log "payload exit status $status (log $LOG)"
exit "$status"

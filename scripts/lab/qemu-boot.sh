#!/bin/sh
# Runs inside a lab VM (copied into payloads by payload-qemu.sh): boots
# KERNEL with INITRD under QEMU with KVM, console on stdout, no NIC (QEMU
# would look for a NIC option ROM), and QEMU exits when the guest stops.
# Usage: sh qemu-boot.sh KERNEL INITRD [APPEND [EXTRA_QEMU_ARGS...]]
kernel=$1
initrd=$2
shift 2
case "$(uname -m)" in
x86_64) qemu=qemu-system-x86_64 console=ttyS0 machine="-machine pc" ;;
aarch64) qemu=qemu-system-aarch64 console=ttyAMA0 machine="-machine virt,gic-version=host" ;;
*) echo "qemu-boot.sh: unsupported $(uname -m)"; exit 2 ;;
esac
append="console=$console panic=-1"
if [ $# -gt 0 ]; then
    append="$append $1"
    shift
fi
exec $qemu -enable-kvm $machine -cpu host -m 256M -smp 1 \
    -display none -monitor none -serial stdio -nic none -no-reboot \
    -kernel "$kernel" -initrd "$initrd" -append "$append" "$@"

#!/bin/sh
# /init of the inner guest (busybox): prints one line on the console and
# stops the machine. `ssv.exit=reboot` on the kernel command line stops it by
# reboot instead of power-off, for a VMM that implements reset but not ACPI.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
echo "SSV-GUEST: init reached at $(/bin/busybox cut -d' ' -f1 /proc/uptime)s uptime on $(/bin/busybox uname -m)"
case " $(/bin/busybox cat /proc/cmdline) " in
*" ssv.exit=reboot "*) /bin/busybox reboot -f ;;
*) /bin/busybox poweroff -f ;;
esac

#!/usr/bin/env bash
# Copies dynamically linked binaries into a payload with every shared library
# they load (DT_NEEDED, transitively) and their dynamic loader, laid out as a
# root file system under PAYLOAD_DIR/sysroot; the lab VM's init copies that
# tree over its root before running the payload, so the binaries run as-is.
# Usage: scripts/lab/payload-bin.sh [--sysroot DIR] PAYLOAD_DIR BINARY...
#   --sysroot DIR  resolve libraries in DIR instead of / (default for an
#                  arm64 binary on an x86_64 host: the lab's arm64 sysroot,
#                  Debian's arm64 libc and QEMU libraries)
# A binary under DIR/usr, DIR/bin or DIR/sbin keeps its path; any other goes
# to /usr/local/bin/NAME. Prints each binary's path inside the lab VM.
set -euo pipefail
. "$(dirname "$0")/common.sh"

SYSROOT=
if [ "${1:-}" = --sysroot ]; then
    SYSROOT=$(cd "$2" && pwd)
    shift 2
fi
[ $# -ge 2 ] || lab_die "usage: payload-bin.sh [--sysroot DIR] PAYLOAD_DIR BINARY..."
DEST=$1/sysroot
shift
command -v readelf >/dev/null || lab_apt_install binutils

declare -A done_libs=()

# Where $1 is: under $SYSROOT, else (for a binary of the host's own
# architecture, whose sysroot holds only what the host lacks) on the host.
src_of() {
    if [ -e "$SYSROOT$1" ]; then
        echo "$SYSROOT$1"
    elif [ -n "$SYSROOT" ] && [ "$2" = "$(uname -m)-linux-gnu" ] && [ -e "$1" ]; then
        echo "$1"
    fi
}

# Copies $1 (dereferenced) to $DEST$2.
put() {
    mkdir -p "$(dirname "$DEST$2")"
    cp -L "$1" "$DEST$2"
}

triplet_of() {
    case "$(readelf -h "$1" | awk -F: '/Machine:/ {print $2}')" in
    *X86-64*) echo x86_64-linux-gnu ;;
    *AArch64*) echo aarch64-linux-gnu ;;
    *) lab_die "$1: unsupported ELF machine" ;;
    esac
}

# Copies the libraries $1 needs, then theirs.
put_needed() {
    local elf=$1 triplet=$2 lib dir found
    for lib in $(readelf -d "$elf" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
        [ -n "${done_libs[$lib]:-}" ] && continue
        done_libs[$lib]=1
        found=
        for dir in "/lib/$triplet" "/usr/lib/$triplet" /lib /usr/lib /lib64 /usr/lib64; do
            found=$(src_of "$dir/$lib" "$triplet")
            [ -n "$found" ] && break
        done
        [ -n "$found" ] || lab_die "$elf needs $lib, not found under ${SYSROOT:-/}"
        put "$found" "/usr/lib/$triplet/$lib"
        put_needed "$found" "$triplet"
    done
}

for bin in "$@"; do
    [ -f "$bin" ] || lab_die "no binary $bin"
    if [ -z "$SYSROOT" ] && [ "$(uname -m)" != aarch64 ] && [ "$(triplet_of "$bin")" = aarch64-linux-gnu ]; then
        SYSROOT=$(lab_arm64_qemu_sysroot)
    fi
    bin=$(realpath -s "$bin")
    rel=${bin#"$SYSROOT"}
    case "$rel" in
    /usr/* | /bin/* | /sbin/*) inside=$rel ;;
    *) inside=/usr/local/bin/$(basename "$bin") ;;
    esac
    mkdir -p "$(dirname "$DEST$inside")"
    cp -L "$bin" "$DEST$inside"
    triplet=$(triplet_of "$bin")
    interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
    # The loader must be at the exact path the binary names.
    if [ -n "$interp" ]; then
        src=$(src_of "$interp" "$triplet")
        [ -n "$src" ] || lab_die "$bin needs its loader $interp, not found under ${SYSROOT:-/}"
        put "$src" "$interp"
    fi
    put_needed "$bin" "$triplet"
    echo "$inside"
done
